"""COCO mAP through the Trainer's own evaluation loop (so devices, precision and DDP gathering come for free).

`preprocess_logits_for_metrics` runs on the device per batch and shrinks DETR's outputs to one static-shape
tensor (B, Q, 7): [score, label, cx, cy, w, h, image_index]; `compute_metrics` turns the gathered rows into
COCO detections in original pixels and scores them against the split's own COCO json.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from transformers import EvalPrediction
from transformers.models.detr.modeling_detr import DetrObjectDetectionOutput

from detr_ft.data import CocoSplit
from detr_ft.metrics import coco_map, detections_from_predictions, postprocess_logits

# Every output but logits and pred_boxes stays on the device during evaluation.
EVAL_IGNORE_KEYS = [f.name for f in dataclasses.fields(DetrObjectDetectionOutput)
                    if f.name not in ("loss", "logits", "pred_boxes")]


def preprocess_logits_for_metrics(outputs: tuple, labels: dict | list[dict]) -> torch.Tensor:
    logits, pred_boxes = outputs[:2]  # (B, Q, C+1), (B, Q, 4)
    if isinstance(labels, dict):
        image_index = labels["image_index"]  # (B,)
    else:
        image_index = torch.stack([target["image_index"] for target in labels])  # (B,)
    detections = postprocess_logits(logits.float(), pred_boxes.float())  # (B, Q, 6)
    index_column = image_index.to(detections)[:, None, None].expand(-1, detections.shape[1], 1)  # (B, Q, 1)
    return torch.cat([detections, index_column], dim=-1)  # (B, Q, 7)


class CocoMetrics:
    """`compute_metrics` for the Trainer: mAP of the gathered detections on `split`."""

    def __init__(self, split: CocoSplit, label_to_category_id: dict[int, int], id2label: dict[int, str]):
        self.split = split
        self.label_to_category_id = label_to_category_id
        self.category_names = {label_to_category_id[label]: name for label, name in id2label.items()}

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        batches = prediction.predictions
        rows = np.concatenate(batches if isinstance(batches, list) else [batches])  # (N, Q, 7)
        return self.score(rows)

    def score(self, rows: np.ndarray) -> dict[str, float]:
        """mAP of rows (N, Q, 7) as made by `preprocess_logits_for_metrics`; filler rows (index -1) skipped."""
        rows = rows[rows[:, 0, 6] >= 0]  # (n, Q, 7)
        images = [self.split.coco["images"][int(i)] for i in rows[:, 0, 6]]
        detections = detections_from_predictions(
            rows[..., :6],
            image_ids=[image["id"] for image in images],
            orig_sizes=[(image["height"], image["width"]) for image in images],
            label_to_category_id=self.label_to_category_id,
        )
        return coco_map(self.split.coco, detections, self.category_names)
