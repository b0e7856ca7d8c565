"""The data of one training run: validated splits, their datasets, the class mapping, the image canvases and the
target buckets. A test split, when the dataset has one besides the train and eval splits, is validated with them
and scored once, by the final model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PIL import Image

from detr_ft.config import DataArguments, StaticShapeArguments
from detr_ft.data.augmentation import train_augmentation
from detr_ft.data.canvases import CanvasGroupedSampler, choose_canvases, padded_pixel_fraction
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.images import Canvas
from detr_ft.data.labels import ClassMapping, missing_names
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.size_repair import SizeRepair
from detr_ft.data.sources import TEST_SPLIT, CocoSplit, DatasetError, carve_validation, load_splits, load_test_split
from detr_ft.data.validation import is_crowd, refuse_if, validate_split

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: DetectionDataset
    eval: DetectionDataset
    classes: ClassMapping
    bucket_sizes: list[int] | None
    eval_classes: ClassMapping  # `classes` matched by name to the eval split's own category ids
    canvases: list[Canvas] | None = None  # --pad_images: the (H, W) canvases; None: stock per-batch padding
    test: DetectionDataset | None = None  # the dataset's TEST_SPLIT, when it is neither the train nor the eval split
    test_classes: ClassMapping | None = None

    @property
    def padded_pixel_fraction(self) -> float | None:
        """Padding share of the training images' canvas pixels (json sizes; augmentation crops aside)."""
        if self.canvases is None:
            return None
        return padded_pixel_fraction(self.train.split.image_sizes(), self.canvases, self.train.canvas_of)

    def train_sampler(self, global_batch_size: int, seed: int,
                      accumulation_steps: int) -> CanvasGroupedSampler | None:
        """Batches on one canvas each when there are several; None: the trainer's own random sampler."""
        if self.canvases is None or len(self.canvases) == 1:
            return None
        return CanvasGroupedSampler(self.train.canvas_of, global_batch_size, seed, accumulation_steps)

    def images_per_canvas(self) -> list[int]:
        """Training images of each canvas: each canvas drops its own last partial batch."""
        return [int((self.train.canvas_of == k).sum()) for k in range(len(self.train.canvases))]

    @property
    def size_repairs(self) -> list[SizeRepair]:
        """Every image whose json size was repaired or that was left out, of every split: `write_size_repairs`."""
        return [repair for dataset in (self.train, self.eval, self.test) if dataset
                for repair in dataset.split.size_repairs]

    @property
    def eval_split(self) -> CocoSplit:
        return self.eval.split

    @property
    def train_image_names(self) -> list[str]:
        """File name of each training image, "" for hub datasets: what error messages name besides the index."""
        return [image["file_name"] for image in self.train.split.coco["images"]]

    def collator(self) -> DetectionCollator:
        """An eval or test image may hold more objects than any train image: that count becomes one more bucket."""
        buckets = self.bucket_sizes
        eval_max = max(int(dataset.object_counts().max(initial=0)) for dataset in (self.eval, self.test) if dataset)
        if buckets and eval_max > buckets[-1]:
            buckets = [*buckets, eval_max]
        return DetectionCollator(bucket_sizes=buckets, canvases=self.canvases)


def class_name_problems(train: CocoSplit, evaluation: CocoSplit) -> list[str]:
    """The eval split must name the train split's classes, no more, no fewer (ids may differ: matched by name)."""
    train_names = [category["name"] for category in train.coco["categories"]]
    eval_names = [category["name"] for category in evaluation.coco["categories"]]
    problems = [f"train category {name} is not among the eval split's categories"
                for name in missing_names(train_names, eval_names)]
    problems += [f"eval category {name} is not among the train split's categories"
                 for name in missing_names(eval_names, train_names)]
    return [f"{problem} (give both splits the same category names)" for problem in problems]


def check_annotated(train: CocoSplit, evaluation: CocoSplit) -> None:
    """A train split without a box to learn from is refused; an eval split without one scores -1: a warning."""
    if not any(not is_crowd(ann) for ann in train.coco["annotations"]):
        raise DatasetError(f"{train.source or train.name}: the train split has no annotations (or only crowd "
                           "regions): nothing to learn; annotate it or point --train_split at an annotated split")
    if not evaluation.coco["annotations"]:
        logger.warning("%s: THE EVAL SPLIT HAS NO ANNOTATIONS: every mAP will be -1 (annotate it, pass another "
                       "--eval_split, or remove it to carve one from train)", evaluation.source or evaluation.name)


def validated_splits(data: DataArguments, carve_missing_eval: bool = True) -> tuple[CocoSplit, CocoSplit]:
    """Train and eval splits as training sees them: validated (eval against train's category names), the eval split
    carved from train (before validation would let a duplicate id straddle the carve) when it does not exist."""
    if data.max_image_pixels is not None:
        Image.MAX_IMAGE_PIXELS = data.max_image_pixels  # Pillow's process-wide decompression-bomb limit
    train_split, eval_split = load_splits(data.dataset_name, data.dataset_dir, data.train_split, data.eval_split)
    checks = {"allow_external_images": data.allow_external_images, "on_size_mismatch": data.on_size_mismatch}
    train_split = validate_split(train_split, **checks)
    if eval_split is not None:
        eval_split = validate_split(eval_split, **checks)
        refuse_if(class_name_problems(train_split, eval_split), eval_split.source or eval_split.name)
    elif not carve_missing_eval:
        raise DatasetError(f"{data.dataset_dir or data.dataset_name}: no split {data.eval_split!r}")
    else:
        logger.info("no %s split: carving %.0f%% of %s (seed %d)", data.eval_split, 100 * data.train_val_split,
                    data.train_split, data.train_val_seed)
        train_split, eval_split = carve_validation(train_split, data.train_val_split, data.train_val_seed)
    check_annotated(train_split, eval_split)
    return train_split, eval_split


def validated_test_split(data: DataArguments, train: CocoSplit) -> CocoSplit | None:
    """The dataset's TEST_SPLIT, validated against train's category names; None when it has none, or when it is the
    train or eval split."""
    if TEST_SPLIT in (data.train_split, data.eval_split):
        return None
    test = load_test_split(data.dataset_name, data.dataset_dir)
    if test is None:
        return None
    test = validate_split(test, allow_external_images=data.allow_external_images,
                          on_size_mismatch=data.on_size_mismatch)
    refuse_if(class_name_problems(train, test), test.source or test.name)
    return test


def prepare_data(data: DataArguments, shapes: StaticShapeArguments) -> PreparedData:
    train_split, eval_split = validated_splits(data)
    test_split = validated_test_split(data, train_split)
    classes = ClassMapping.from_categories(train_split.coco["categories"])
    augmentation = train_augmentation() if data.augment else None
    canvases = None
    if shapes.pad_images:
        canvases = choose_canvases(train_split.image_sizes(), data.image_size, shapes.image_buckets)
    train = DetectionDataset(train_split, classes.category_to_label, data.image_size, augmentation, canvases,
                             uint8_pixels=data.normalize_on_device)
    eval_classes = ClassMapping.for_model(classes.id2label, eval_split.coco["categories"])
    if eval_classes != classes:
        logger.info("the eval split numbers the classes otherwise than train: matched by name (%s)",
                    ", ".join(f"{name} {ours}->{theirs}" for name, ours, theirs in
                              zip(classes.names, classes.category_ids, eval_classes.category_ids, strict=True)
                              if ours != theirs))
    evaluation = DetectionDataset(eval_split, eval_classes.category_to_label, data.image_size, canvases=canvases)
    test = test_classes = None
    if test_split is not None:
        test_classes = ClassMapping.for_model(classes.id2label, test_split.coco["categories"])
        test = DetectionDataset(test_split, test_classes.category_to_label, data.image_size, canvases=canvases)
    buckets = compute_bucket_sizes(train.object_counts(), shapes.num_buckets) if shapes.buckets_on else None
    prepared = PreparedData(train, evaluation, classes, buckets, eval_classes, canvases, test, test_classes)
    logger.info("train: %d images, eval: %d images, %sclasses: %s, target buckets: %s", len(train), len(evaluation),
                f"test: {len(test)} images (scored by the final model), " if test else "", list(classes.names),
                buckets or "none (stock variable targets)")
    if canvases:
        logger.info("image canvases (H, W): %s, train images per canvas: %s, padded pixels: %.1f%%; graphs per "
                    "run: %d canvases x %s target buckets", canvases, prepared.images_per_canvas(),
                    100 * prepared.padded_pixel_fraction, len(canvases), len(buckets) if buckets else "variable")
    return prepared


def warn_queries_overflow(data: PreparedData, num_queries: int) -> None:
    """DETR matches at most num_queries objects per image; extra ones stay unmatched (as in stock) but count."""
    for name, dataset in (("train", data.train), ("eval", data.eval), ("test", data.test)):
        if dataset is None:
            continue
        overflow = int((dataset.object_counts() > num_queries).sum())
        if overflow:
            logger.warning("%s: %d images have more objects than num_queries=%d; the extra objects cannot be "
                           "matched and cap recall", name, overflow, num_queries)


