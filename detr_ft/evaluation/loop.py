"""COCO mAP through the Trainer's own evaluation loop (so devices, precision and DDP gathering come for free).

`DetectionRows` (the Trainer's `preprocess_logits_for_metrics`) runs on the device per batch and shrinks the model's
outputs, by its family's post-processing, to one static-shape tensor (B, K, 7): [score, label, cx, cy, w, h,
image_index] (DETR: K = Q, a row per query; Conditional and Deformable DETR: K = min(100, Q * C), the top (query,
class) pairs); `compute_metrics` turns the gathered rows into COCO detections in original pixels and scores them
against the split's own COCO json. The trainer's
`prediction_step` (train/trainer.py) hands the batch's image index as its labels, so the gathered rows of several
processes are the 1-process rows, reordered: the padded evaluation set splits into the same number of full batches
on every process.

Outside training (eval_checkpoints, inference) `predict_rows` runs the same Trainer loop on a saved model, with
the same padded evaluation set, collator and `DetectionRows`, so `CocoMetrics.score` of its rows
gives the mAP the training callback logged for that checkpoint.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from transformers import EvalPrediction, PreTrainedModel, PrinterCallback, Trainer, TrainingArguments

from detr_ft.data.dataset import DetectionDataset, PaddedToMultiple
from detr_ft.data.images import Canvas
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator
from detr_ft.data.sources import CocoSplit
from detr_ft.evaluation.coco_map import coco_map, detections_from_predictions
from detr_ft.model.families import family_of
from detr_ft.train.trainer import DetectionTrainer


class DetectionRows:
    """`preprocess_logits_for_metrics` for a model: a batch's rows (B, K, 7) from its (logits, pred_boxes) and image
    index (B,) (the trainer's `prediction_step`), by the post-processing of the model's family."""

    def __init__(self, model: PreTrainedModel):
        self.postprocess = family_of(model.config).postprocess

    def __call__(self, outputs: tuple, image_index: torch.Tensor) -> torch.Tensor:
        logits, pred_boxes = outputs[:2]  # (B, Q, C'), (B, Q, 4)
        detections = self.postprocess(logits.float(), pred_boxes.float())  # (B, K, 6)
        index_column = image_index.to(detections)[:, None, None].expand(-1, detections.shape[1], 1)  # (B, K, 1)
        return torch.cat([detections, index_column], dim=-1)  # (B, K, 7)


class RowCollector:
    """`compute_metrics` for `batch_eval_metrics` that keeps each batch's rows (B, K, 7) and scores nothing."""

    def __init__(self):
        self.rows: list[np.ndarray] = []

    def __call__(self, prediction: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        self.rows.append(torch.as_tensor(prediction.predictions).float().cpu().numpy())  # (B, K, 7)
        return {}

    def take(self) -> np.ndarray:
        """All rows collected so far (N, K, 7), and a fresh start for the next evaluation."""
        rows, self.rows = np.concatenate(self.rows), []
        return rows


class CocoMetrics(RowCollector):
    """`compute_metrics` for the Trainer with `batch_eval_metrics`: collects each batch's rows, scores at the end."""

    def __init__(self, split: CocoSplit, classes: ClassMapping):
        super().__init__()
        self.split = split
        self.classes = classes

    def __call__(self, prediction: EvalPrediction, compute_result: bool = True) -> dict[str, float]:
        super().__call__(prediction)
        return self.score(self.take()) if compute_result else {}

    def score(self, rows: np.ndarray) -> dict[str, float]:
        """mAP of rows (N, K, 7) as made by `preprocess_logits_for_metrics`; filler rows (index -1) skipped."""
        rows = rows[rows[:, 0, 6] >= 0]  # (n, K, 7)
        images = [self.split.coco["images"][int(i)] for i in rows[:, 0, 6]]
        detections = detections_from_predictions(
            rows[..., :6],
            image_ids=[image["id"] for image in images],
            orig_sizes=[(image["height"], image["width"]) for image in images],
            label_to_category_id=self.classes.category_ids,
        )
        return coco_map(self.split.coco, detections, self.classes.category_names)


def evaluate_split(trainer: Trainer, dataset: DetectionDataset, classes: ClassMapping, prefix: str) -> dict[str, float]:
    """mAP of the trainer's model on another split (`dataset`, its classes matched to the model's), through the
    trainer's own evaluation loop; the metrics' names without `prefix`, which the trainer's log gives them."""
    compute_metrics, trainer.compute_metrics = trainer.compute_metrics, CocoMetrics(dataset.split, classes)
    try:
        multiple = trainer.args.per_device_eval_batch_size * trainer.args.world_size
        metrics = trainer.evaluate(PaddedToMultiple(dataset, multiple), metric_key_prefix=prefix)
    finally:
        trainer.compute_metrics = compute_metrics
    return {name.removeprefix(f"{prefix}_"): value for name, value in metrics.items()}


def predict_rows(model: PreTrainedModel, dataset: DetectionDataset, canvases: list[Canvas] | None,
                 batch_size: int, show_progress: bool = True) -> np.ndarray:
    """Rows (N, K, 7) [score, label, cx, cy, w, h, image_index] for the N images of `dataset`, in dataset order.

    The evaluation loop of training: `Trainer.evaluate` with `batch_eval_metrics`, full batches of the padded
    set (`PaddedToMultiple`, grouped by the dataset's canvases), images padded to the smallest of `canvases`
    (H, W) holding them (None: to the batch's largest image).
    """
    collector = RowCollector()
    with tempfile.TemporaryDirectory() as scratch:  # the Trainer insists on an output_dir; nothing is saved
        # Pinned memory only helps copies to an accelerator; without one the loader warns about it on every run.
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, batch_eval_metrics=True,
                                 dataloader_drop_last=True, remove_unused_columns=False, report_to="none",
                                 dataloader_pin_memory=torch.accelerator.is_available(),
                                 disable_tqdm=not show_progress)
        trainer = DetectionTrainer(
            model=model, args=args, data_collator=DetectionCollator(canvases=canvases),
            eval_dataset=PaddedToMultiple(dataset, batch_size * args.world_size), compute_metrics=collector,
            preprocess_logits_for_metrics=DetectionRows(model))  # no criterion: predictions only
        if not show_progress:
            trainer.remove_callback(PrinterCallback)  # it would print the loop's timing dict instead
        trainer.evaluate()
    rows = collector.take()  # (N + fillers, K, 7)
    rows = rows[rows[:, 0, 6] >= 0]  # (N, K, 7)
    return rows[np.argsort(rows[:, 0, 6], kind="stable")]  # (N, K, 7)
