"""The data of one training run: validated splits, their datasets, the class mapping, the image canvases and the
target buckets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from detr_ft.data.augmentation import train_augmentation
from detr_ft.data.canvases import CanvasGroupedSampler, choose_canvases, padded_pixel_fraction
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.images import Canvas
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.sources import CocoSplit, carve_validation, load_splits
from detr_ft.data.validation import DatasetError, validate_split
from detr_ft.train.arguments import DataArguments, StaticShapeArguments

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: DetectionDataset
    eval: DetectionDataset
    classes: ClassMapping
    bucket_sizes: list[int] | None
    canvases: list[Canvas] | None = None  # --pad_images: the (H, W) canvases; None: stock per-batch padding

    @property
    def padded_pixel_fraction(self) -> float | None:
        """Padding share of the training images' canvas pixels (json sizes; augmentation crops aside)."""
        if self.canvases is None:
            return None
        return padded_pixel_fraction(self.train.split.image_sizes(), self.canvases, self.train.canvas_of)

    def train_sampler(self, global_batch_size: int, seed: int) -> CanvasGroupedSampler | None:
        """Batches on one canvas each when there are several; None: the trainer's own random sampler."""
        if self.canvases is None or len(self.canvases) == 1:
            return None
        return CanvasGroupedSampler(self.train.canvas_of, global_batch_size, seed)

    def images_per_canvas(self) -> list[int]:
        """Training images of each canvas: each canvas drops its own last partial batch."""
        return [int((self.train.canvas_of == k).sum()) for k in range(len(self.train.canvases))]

    @property
    def eval_split(self) -> CocoSplit:
        return self.eval.split

    @property
    def train_image_names(self) -> list[str]:
        """File name of each training image, "" for hub datasets: what error messages name besides the index."""
        return [image["file_name"] for image in self.train.split.coco["images"]]

    def collator(self) -> DetectionCollator:
        """An eval image may hold more objects than any train image: that count becomes one more bucket."""
        buckets = self.bucket_sizes
        eval_max = int(self.eval.object_counts().max(initial=0))
        if buckets and eval_max > buckets[-1]:
            buckets = [*buckets, eval_max]
        return DetectionCollator(bucket_sizes=buckets, canvases=self.canvases)


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
    classes = ClassMapping.from_categories(train_split.coco["categories"])
    augmentation = train_augmentation() if data.augment else None
    canvases = None
    if shapes.pad_images:
        canvases = choose_canvases(train_split.image_sizes(), data.image_size, shapes.image_buckets)
    train = DetectionDataset(train_split, classes.category_to_label, data.image_size, augmentation, canvases)
    evaluation = DetectionDataset(eval_split, classes.category_to_label, data.image_size, canvases=canvases)
    buckets = compute_bucket_sizes(train.object_counts(), shapes.num_buckets) if shapes.buckets_on else None
    prepared = PreparedData(train, evaluation, classes, buckets, canvases)
    logger.info("train: %d images, eval: %d images, classes: %s, target buckets: %s",
                len(train), len(evaluation), list(classes.names), buckets or "none (stock variable targets)")
    if canvases:
        logger.info("image canvases (H, W): %s, train images per canvas: %s, padded pixels: %.1f%%; graphs per "
                    "run: %d canvases x %s target buckets", canvases, prepared.images_per_canvas(),
                    100 * prepared.padded_pixel_fraction, len(canvases), len(buckets) if buckets else "variable")
    return prepared


def warn_queries_overflow(data: PreparedData, num_queries: int) -> None:
    """DETR matches at most num_queries objects per image; extra ones stay unmatched (as in stock) but count."""
    for name, dataset in (("train", data.train), ("eval", data.eval)):
        overflow = int((dataset.object_counts() > num_queries).sum())
        if overflow:
            logger.warning("%s: %d images have more objects than num_queries=%d; the extra objects cannot be "
                           "matched and cap recall", name, overflow, num_queries)


