"""What run_object_detection.py assembles: datasets and collators, trainer arguments, the image processor."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import DetrImageProcessor, TrainingArguments

from detr_ft.train.arguments import DataArguments, StaticShapeArguments
from detr_ft.train.checkpoints import complete_checkpoints
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.dataset import CocoSplit, DetectionDataset, carve_validation, label_maps, load_splits, train_augmentation
from detr_ft.data.validation import DatasetError, validate_split

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: DetectionDataset
    eval: DetectionDataset
    category_to_label: dict[int, int]
    id2label: dict[int, str]
    bucket_sizes: list[int] | None

    @property
    def eval_split(self) -> CocoSplit:
        return self.eval.split

    @property
    def train_image_names(self) -> list[str]:
        """File name of each training image, "" for hub datasets: what error messages name besides the index."""
        return [image["file_name"] for image in self.train.split.coco["images"]]

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return {label: category for category, label in self.category_to_label.items()}

    def collator(self, image_size: int | None) -> DetectionCollator:
        """An eval image may hold more objects than any train image: that count becomes one more bucket."""
        buckets = self.bucket_sizes
        eval_max = int(self.eval.object_counts().max(initial=0))
        if buckets and eval_max > buckets[-1]:
            buckets = [*buckets, eval_max]
        return DetectionCollator(image_size, buckets)


def validated_splits(data: DataArguments, carve_missing_eval: bool = True) -> tuple[CocoSplit, CocoSplit]:
    """Train and eval splits as training sees them: validated (eval against train's categories), the eval split
    carved from train (before validation would let a duplicate id straddle the carve) when it does not exist."""
    train_split, eval_split = load_splits(data.dataset_name, data.dataset_dir, data.train_split, data.eval_split)
    train_split = validate_split(train_split)
    if eval_split is not None:
        return train_split, validate_split(eval_split, {c["id"] for c in train_split.coco["categories"]})
    if not carve_missing_eval:
        raise DatasetError(f"{data.dataset_dir or data.dataset_name}: no split {data.eval_split!r}")
    logger.info("no %s split: carving %.0f%% of %s (seed %d)", data.eval_split, 100 * data.train_val_split,
                data.train_split, data.train_val_seed)
    return carve_validation(train_split, data.train_val_split, data.train_val_seed)


def prepare_data(data: DataArguments, shapes: StaticShapeArguments) -> PreparedData:
    train_split, eval_split = validated_splits(data)
    category_to_label, id2label = label_maps(train_split.coco["categories"])
    augmentation = train_augmentation() if data.augment else None
    train = DetectionDataset(train_split, category_to_label, data.image_size, augmentation)
    evaluation = DetectionDataset(eval_split, category_to_label, data.image_size)
    buckets = compute_bucket_sizes(train.object_counts(), shapes.num_buckets) if shapes.buckets_on else None
    logger.info("train: %d images, eval: %d images, classes: %s, target buckets: %s",
                len(train), len(evaluation), list(id2label.values()), buckets or "none (stock variable targets)")
    return PreparedData(train, evaluation, category_to_label, id2label, buckets)


def warn_queries_overflow(data: PreparedData, num_queries: int) -> None:
    """DETR matches at most num_queries objects per image; extra ones stay unmatched (as in stock) but count."""
    for name, dataset in (("train", data.train), ("eval", data.eval)):
        overflow = int((dataset.object_counts() > num_queries).sum())
        if overflow:
            logger.warning("%s: %d images have more objects than num_queries=%d; the extra objects cannot be "
                           "matched and cap recall", name, overflow, num_queries)


def steps_per_epoch(num_train: int, training: TrainingArguments) -> int:
    """Optimizer steps in one epoch: the last partial batch is dropped (constant shapes)."""
    per_step = training.per_device_train_batch_size * training.world_size * training.gradient_accumulation_steps
    if num_train < per_step:
        raise ValueError(f"the training set has {num_train} images, fewer than one batch ({per_step}): lower "
                         "--per_device_train_batch_size")
    return num_train // per_step


def finalize_training_arguments(training: TrainingArguments, shapes: StaticShapeArguments,
                                num_train: int) -> TrainingArguments:
    """Evaluate and save every `ckpt_store_interval_epochs` epochs; constant batch shapes; determinism."""
    interval = shapes.ckpt_store_interval_epochs * steps_per_epoch(num_train, training)
    return dataclasses.replace(
        training,
        eval_strategy="steps",
        eval_steps=interval,
        save_strategy="steps",
        save_steps=interval,
        dataloader_drop_last=True,
        # mAP streams batch by batch: no concatenation of outputs (GaudiTrainer cannot skip it otherwise).
        batch_eval_metrics=True,
        remove_unused_columns=False,
        full_determinism=training.full_determinism or shapes.deterministic,
    )


def resume_checkpoint(training: TrainingArguments) -> str | None:
    """--resume_from_checkpoint if given, else the output dir's last complete checkpoint: rerunning resumes."""
    if training.resume_from_checkpoint:
        return training.resume_from_checkpoint
    checkpoints = complete_checkpoints(training.output_dir)
    if checkpoints:
        logger.info("resuming from %s (the last complete checkpoint in --output_dir)", checkpoints[-1])
        return str(checkpoints[-1])
    return None


RUN_ARGUMENTS_FILE = "run_args.json"


def save_run_arguments(output_dir: str, *arguments, **values) -> None:
    """Our own flags (the Trainer saves TrainingArguments as a pickle) and `values` as one flat json: what later
    tools such as eval_checkpoints read to rebuild the run's data and shapes."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    flat = {k: v for group in arguments for k, v in dataclasses.asdict(group).items()} | values
    (Path(output_dir) / RUN_ARGUMENTS_FILE).write_text(json.dumps(flat, indent=2))


def image_processor(image_size: int, pad_images: bool) -> DetrImageProcessor:
    """The processor saved with every checkpoint, so `pipeline("object-detection", model=ckpt)` preprocesses
    as training did: fit into image_size x image_size, ImageNet normalisation, padding."""
    return DetrImageProcessor(
        size={"shortest_edge": image_size, "longest_edge": image_size},
        do_pad=True,
        pad_size={"height": image_size, "width": image_size} if pad_images else None,
    )
