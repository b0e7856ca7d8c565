"""`make infer`: detections of a trained DETR-family model on a dataset split or on a folder of images.

    python -m detr_ft.evaluation.inference --model_path outputs/demo/checkpoint-800 --output_dir outputs/infer \\
        [--dataset_dir data/synthetic --split test] [--threshold 0.5] [--pad_images --image_size 64]
    python -m detr_ft.evaluation.inference --model_path outputs/demo --images_dir photos/ --output_dir outputs/infer

`--model_path` is a checkpoint or a run dir (its final model); the dataset and split default to the run's
(run_args.json beside the model) and its eval split. Images go through evaluation's own path
(`DetectionDataset`: resize to fit image_size, ImageNet normalisation; `predict_rows`: padded static-shape
batches through `Trainer.evaluate`); image size and padding default to the model's preprocessor_config.json.
Writes into --output_dir:

    predictions.json  COCO results, [x, y, w, h] in original pixels, with score: every query of every image (DETR),
                      the top 100 (query, class) pairs (Conditional, Deformable DETR), as the model's family scores
    images.json       the image ids of predictions.json and their files (a COCO `images` list)
    categories.json   the category ids of predictions.json and their names
    annotated/        each image with its detections scoring >= --threshold drawn (class name and score), at its
                      path relative to the images folder
    metrics.json      COCO mAP when the split has annotations (the same `CocoMetrics.score` as training)

Category ids: a dataset split's own, matched to the model's classes by name; for an image folder the model's
label ids. An image of a folder that cannot be decoded is named, skipped and counted; the rest are written.

Refused in one line before any image is run (exit 2): a --model_path that is not a folder, or whose model files
are missing or damaged; a run_args.json beside it that cannot be read; --threshold outside [0, 1]; an --output_dir
that cannot be created. A write that fails afterwards (a full disk) exits 4.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from transformers import HfArgumentParser

from detr_ft.config import DataArguments
from detr_ft.console import on_terminal, setup_logging
from detr_ft.data.labels import ClassMapping
from detr_ft.data.sources import CocoSplit
from detr_ft.data.validation import inspect_image, leaves_image_folder, listing
from detr_ft.evaluation.coco_map import detections_from_predictions
from detr_ft.evaluation.loop import CocoMetrics
from detr_ft.evaluation.saved_run import (
    DamagedModelError,
    eval_batch_size,
    load_saved_model,
    load_split,
    several_processes_error,
    split_rows,
)
from detr_ft.run_files import RunArgumentsError, atomic_path, read_run_arguments, write_json_atomic
from detr_ft.write_failure import describe_write_failure, one_line

logger = logging.getLogger("detr_ft.evaluation.inference")  # not __name__: that is __main__ under -m

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


@dataclass
class InferenceArguments:
    model_path: str = field(metadata={"help": "A checkpoint-N folder or a run dir (its final model)."})
    output_dir: str = field(metadata={"help": "Folder for predictions.json, annotated/ and metrics.json."})
    dataset_dir: str | None = field(default=None, metadata={"help": "COCO folder; default: the run's dataset."})
    split: str | None = field(default=None, metadata={"help": "Split to detect on; default: the run's eval split."})
    images_dir: str | None = field(default=None, metadata={"help": "A plain folder of images, instead of a split."})
    threshold: float = field(default=0.5, metadata={"help": "Lowest score drawn on annotated images."})
    image_size: int | None = field(default=None, metadata={"help": "Default: the model's preprocessor_config."})
    pad_images: bool = field(
        default=False, metadata={"help": "Pad to image_size (static shapes); on anyway if the model trained so."}
    )
    batch_size: int | None = field(default=None, metadata={"help": "Default: the run's eval batch size, else 8."})


def image_folder_split(images_dir: str | Path, id2label: dict[int, str]) -> tuple[CocoSplit, list[str]]:
    """The decodable images of a folder as a split without annotations (its categories are the model's labels),
    and the files skipped because they cannot be decoded, each with the decoder's error."""
    paths = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {images_dir}")
    images, readable, skipped = [], [], []
    for path in paths:
        report = inspect_image(partial(Image.open, path))  # a full decode: only that finds a truncated file
        if isinstance(report, Exception):
            skipped.append(f"{path.name} ({type(report).__name__}: {report})")
            continue
        width, height = report[2]  # displayed size: EXIF orientation applied, as `CocoSplit.open_image` does
        readable.append(path)
        images.append({"id": len(images) + 1, "file_name": path.name, "width": width, "height": height})
    if skipped:
        logger.warning("%s: skipping %d images that cannot be decoded: %s", images_dir, len(skipped), listing(skipped))
    if not images:
        raise ValueError(f"no image in {images_dir} can be decoded")
    categories = [{"id": label, "name": name} for label, name in sorted(id2label.items())]
    return CocoSplit(Path(images_dir).name, {"images": images, "annotations": [], "categories": categories},
                     lambda i: Image.open(readable[i]), str(images_dir)), skipped


def annotated_path(image: dict) -> str:
    """Where an image's drawing goes under annotated/: its path relative to the images folder (so a/img.jpg and
    b/img.jpg are both kept); its id for a file outside that folder or an image without a file (hub)."""
    name = image["file_name"]
    if name and not leaves_image_folder(name):
        return os.path.normpath(name)
    return f"{image['id']}_{Path(name).name}" if name else f"{image['id']}.png"


def draw_detections(image: Image.Image, detections: list[dict], names: dict[int, str],
                    threshold: float) -> Image.Image:
    """`image` with a box, class name and score for each detection scoring >= threshold."""
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, image.height // 40))
    for detection in sorted(detections, key=lambda d: d["score"]):
        if detection["score"] < threshold:
            continue
        x, y, w, h = detection["bbox"]
        colour = PALETTE[detection["category_id"] % len(PALETTE)]
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=max(1, image.height // 200))
        text = f"{names[detection['category_id']]} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x, y), text, font=font, anchor="lb")
        draw.rectangle([left, top, right, bottom], fill=colour)
        draw.text((x, y), text, fill=(255, 255, 255), font=font, anchor="lb")
    return image


def flag_error(args: InferenceArguments) -> str | None:
    """What is wrong with the flags, checked before the model is read, or None."""
    if args.images_dir and (args.dataset_dir or args.split):
        return "--images_dir or --dataset_dir/--split, not both"
    if not 0 <= args.threshold <= 1:
        return f"--threshold {args.threshold}: a score threshold must be in [0, 1], e.g. 0.5"
    if not Path(args.model_path).is_dir():
        kind = "a file, not a folder" if Path(args.model_path).exists() else "no such folder"
        return f"--model_path {args.model_path}: {kind}; give a checkpoint-N folder or a run folder (its final model)"
    if args.images_dir and not Path(args.images_dir).is_dir():
        return f"--images_dir {args.images_dir}: no such folder"
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        return f"--output_dir {args.output_dir} is a file, not a folder: choose another --output_dir"
    return None


def make_output_dir(output_dir: Path) -> str | None:
    """Create output_dir/annotated; why it cannot be, or None."""
    try:
        (output_dir / "annotated").mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only file system, no permission, a file on the way
        return f"--output_dir {output_dir} cannot be created ({one_line(error)}): choose another --output_dir"
    return None


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    (args,) = HfArgumentParser(InferenceArguments).parse_args_into_dataclasses(argv)
    refusal = several_processes_error("detr_ft.evaluation.inference") or flag_error(args)
    if refusal:
        logger.error("%s", refusal)
        return 2
    output_dir = Path(args.output_dir)
    try:
        settings = read_run_arguments(args.model_path)
        saved = load_saved_model(args.model_path)
    except DamagedModelError as error:
        logger.error("%s: give another --model_path (another checkpoint of the run)", error)
        return 2
    except RunArgumentsError as error:
        logger.error("%s", error)
        return 2
    id2label = saved.model.config.id2label
    skipped = []
    try:
        if args.images_dir:
            split, skipped = image_folder_split(args.images_dir, id2label)
            classes = ClassMapping.identity(id2label)
        else:
            settings = {**settings, **({"dataset_dir": args.dataset_dir} if args.dataset_dir else {})}
            split = load_split(settings, args.split or settings.get("eval_split", DataArguments.eval_split))
            classes = ClassMapping.for_model(id2label, split.coco["categories"])
    except ValueError as error:  # DatasetError included: the data or the flags, named in the message
        logger.error("%s", error)
        return 2
    refusal = make_output_dir(output_dir)  # before the images are run through the model
    if refusal:
        logger.error("%s", refusal)
        return 2
    rows = split_rows(saved, split, classes, eval_batch_size(settings, args.batch_size), args.image_size,
                      args.pad_images, show_progress=on_terminal())
    try:
        write_outputs(output_dir, split, classes, rows, args.threshold, skipped)
    except OSError as error:
        message = describe_write_failure(error, f"--output_dir {output_dir}", output_dir,
                                         "choose another --output_dir")
        if message is None:
            raise
        logger.error("%s", message)
        return 4
    return 0


def write_outputs(output_dir: Path, split: CocoSplit, classes: ClassMapping, rows: np.ndarray, threshold: float,
                  skipped: list[str]) -> None:
    """predictions.json, images.json, categories.json, annotated/ and (with annotations) metrics.json from the
    rows (N, K, 7) of `predict_rows`; each file whole or not at all (a full disk leaves no half file to trust)."""
    images = split.coco["images"]
    detections = detections_from_predictions(rows[..., :6], [image["id"] for image in images],
                                             [(image["height"], image["width"]) for image in images],
                                             classes.category_ids)
    write_json_atomic(output_dir / "predictions.json", detections, indent=None)
    write_json_atomic(output_dir / "images.json", images)
    names = classes.category_names
    categories = [{"id": category_id, "name": name} for category_id, name in sorted(names.items())]
    write_json_atomic(output_dir / "categories.json", categories)
    per_image = len(detections) // len(images)  # K rows of every image, image after image
    for i, image in enumerate(images):
        picture = draw_detections(split.open_image(i), detections[i * per_image:(i + 1) * per_image], names,
                                  threshold)
        target = output_dir / "annotated" / annotated_path(image)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            picture.save(temporary, format=Image.registered_extensions()[target.suffix.lower()])
    shown = int((rows[..., 0] >= threshold).sum())
    unreadable = f" ({len(skipped)} more skipped: cannot be decoded)" if skipped else ""
    print(f"{len(images)} images{unreadable}, {shown} detections scoring >= {threshold} drawn in "
          f"{output_dir / 'annotated'}")
    if split.coco["annotations"]:
        metrics = CocoMetrics(split, classes).score(rows)
        write_json_atomic(output_dir / "metrics.json", metrics)
        print(f"{split.name}: mAP {metrics['map']:.4f}  mAP50 {metrics['map_50']:.4f}  mAP75 {metrics['map_75']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
