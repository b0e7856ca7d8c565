"""Detection datasets: a COCO-format folder or a Hugging Face hub dataset, read into one in-memory form.

Every split becomes a `CocoSplit`: the COCO json dict (images, annotations, categories) plus a function that
reads image i as stored. `DetectionDataset` turns it into model samples:

    image  -> RGB -> augment (train only) -> resize to fit image_size x image_size -> normalise (ImageNet)
    boxes  -> COCO [x, y, w, h] pixels -> normalised (cx, cy, w, h) relative to the unpadded image

Boxes are normalised by the image they belong to, before any padding (the original DETR convention), so
`box * (orig_w, orig_h)` gives original pixels whatever the resize or padding was.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

logger = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class CocoSplit:
    """One split: its COCO json dict, how to read image i (index into coco["images"]) as stored, and where the
    json came from (named in data error messages)."""

    name: str
    coco: dict
    read_image: Callable[[int], Image.Image]
    source: str = ""

    def open_image(self, i: int) -> Image.Image:
        """Image i as the model sees it: 8-bit RGB, oriented as its json width and height say (see `to_rgb`)."""
        entry = self.coco["images"][i]
        with self.read_image(i) as image:
            return to_rgb(image, (entry["width"], entry["height"]))

    def subset(self, indices: list[int], name: str) -> CocoSplit:
        images = [self.coco["images"][i] for i in indices]
        kept = {image["id"] for image in images}
        coco = {
            "images": images,
            "annotations": [a for a in self.coco["annotations"] if a["image_id"] in kept],
            "categories": self.coco["categories"],
        }
        return CocoSplit(name, coco, lambda i: self.read_image(indices[i]), self.source)


def label_maps(categories: list[dict]) -> tuple[dict[int, int], dict[int, str]]:
    """COCO category id -> contiguous label, and label -> name (sorted by category id)."""
    ordered = sorted(categories, key=lambda c: c["id"])
    return {c["id"]: i for i, c in enumerate(ordered)}, {i: c["name"] for i, c in enumerate(ordered)}


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag: 1 = as stored, 2-8 = flips and turns (`ImageOps.exif_transpose` applies them)."""
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied: orientations 5-8 turn the image by 90 degrees."""
    return (image.height, image.width) if exif_orientation(image) in (5, 6, 7, 8) else image.size


def to_rgb(image: Image.Image, annotated_size: tuple[int, int] | None = None) -> Image.Image:
    """8-bit RGB from any mode (RGBA, L, P, CMYK, I;16), EXIF orientation applied.

    16-bit values are divided by 257 (65535 -> 255), the same scale for every image, as image viewers do.

    Annotation tools show images EXIF-rotated, so boxes are taken to be in the displayed pixels; only when the
    json's `annotated_size` (w, h) matches the stored pixels and not the displayed ones were the boxes drawn on
    the stored pixels, and the orientation is ignored. (A 180-degree turn or a flip keeps the size: applied.)
    """
    if annotated_size is None or annotated_size != image.size or annotated_size == displayed_size(image):
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)  # (h, w)
        image = Image.fromarray(np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8))  # (h, w)
    return image.convert("RGB")


def load_coco_folder(dataset_dir: str | Path, split: str) -> CocoSplit:
    """`dataset_dir/annotations/<split>.json` with images under `dataset_dir/images/`."""
    dataset_dir = Path(dataset_dir)
    annotation_file = dataset_dir / "annotations" / f"{split}.json"
    coco = json.loads(annotation_file.read_text())
    image_dir = dataset_dir / "images"

    return CocoSplit(split, coco, lambda i: Image.open(image_dir / coco["images"][i]["file_name"]),
                     str(annotation_file))


def coco_from_hub_split(hf_split, name: str) -> CocoSplit:
    """A hub split in the CPPE-5 layout (image, image_id, width, height, objects{id, bbox, category})."""
    category_names = hf_split.features["objects"]["category"].feature.names  # datasets >= 4: dict of List
    images, annotations = [], []
    for row in hf_split.select_columns(["image_id", "width", "height", "objects"]):
        images.append({"id": row["image_id"], "width": row["width"], "height": row["height"], "file_name": ""})
        objects = row["objects"]
        for ann_id, bbox, category in zip(objects["id"], objects["bbox"], objects["category"], strict=True):
            annotations.append({"id": ann_id, "image_id": row["image_id"], "bbox": list(bbox),
                                "category_id": category, "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in enumerate(category_names)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return CocoSplit(name, coco, lambda i: hf_split[i]["image"], f"hub split {name!r}")


def carve_validation(train: CocoSplit, fraction: float, seed: int) -> tuple[CocoSplit, CocoSplit]:
    """Split a validation set off train: `fraction` of the images, chosen by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(train.coco["images"])).tolist()
    num_eval = max(1, round(fraction * len(order)))
    return train.subset(sorted(order[num_eval:]), train.name), train.subset(sorted(order[:num_eval]), "validation")


def load_splits(
    dataset_name: str | None,
    dataset_dir: str | None,
    train_split: str,
    eval_split: str,
) -> tuple[CocoSplit, CocoSplit | None]:
    """Train and eval splits from a local COCO folder (preferred when given) or the hub; eval is None when the
    split does not exist (then it is carved from train with `carve_validation`)."""
    if dataset_dir:
        train = load_coco_folder(dataset_dir, train_split)
        if (Path(dataset_dir) / "annotations" / f"{eval_split}.json").exists():
            return train, load_coco_folder(dataset_dir, eval_split)
        return train, None
    from datasets import load_dataset

    hub = load_dataset(dataset_name)
    train = coco_from_hub_split(hub[train_split], train_split)
    return train, coco_from_hub_split(hub[eval_split], eval_split) if eval_split in hub else None


def clip_to_image(bbox: list[float], width: int, height: int) -> list[float] | None:
    """COCO [x, y, w, h] clipped to a width x height image; None when it is not finite, has w or h <= 0, or
    keeps less than 1 pixel of width or height inside the image."""
    x, y, w, h = (float(v) for v in bbox)
    if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
        return None
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    return [x0, y0, x1 - x0, y1 - y0] if x1 - x0 >= 1.0 and y1 - y0 >= 1.0 else None


def clean_objects(split: CocoSplit, category_to_label: dict[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: boxes (n, 4) COCO xywh clipped to the image, labels (n,); degenerate boxes dropped, counted.

    After `validation.validate_split` nothing is left to clip or drop; this guards splits used without it."""
    index_of = {image["id"]: i for i, image in enumerate(split.coco["images"])}
    boxes: list[list] = [[] for _ in index_of]
    labels: list[list] = [[] for _ in index_of]
    dropped = 0
    for ann in split.coco["annotations"]:
        image = split.coco["images"][index_of[ann["image_id"]]]
        box = clip_to_image(ann["bbox"], image["width"], image["height"])
        if box is None:
            dropped += 1
            continue
        boxes[index_of[ann["image_id"]]].append(box)
        labels[index_of[ann["image_id"]]].append(category_to_label[ann["category_id"]])
    if dropped:
        logger.warning("%s: dropped %d degenerate boxes (zero area after clipping to the image)", split.name, dropped)
    return [(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lb, np.int64))
            for b, lb in zip(boxes, labels, strict=True)]


def train_augmentation() -> A.Compose:
    """Flip, colour jitter and a crop that keeps every box: mild, as for fine-tuning a pretrained DETR.

    Unseeded: `DetectionDataset` reseeds it for every sample (`reseed_augmentation`)."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            A.BBoxSafeRandomCrop(erosion_rate=0.0, p=0.3),
        ],
        bbox_params=A.BboxParams(format="coco", label_fields=["labels"], clip=True, min_area=1.0),
    )


def reseed_augmentation(augmentation: A.Compose) -> None:
    """Give each transform a fresh seed drawn from torch's generator.

    That generator is what `set_seed` seeds, what every DataLoader worker reseeds differently and what the Trainer
    checkpoints (rng_state.pth): augmentation is reproducible, differs across workers and resumes where it stopped.
    One seed per transform, because albumentations' own `set_random_seed` gives all transforms the same seed, which
    makes their coin flips identical (an image flipped is always colour-jittered too).
    """
    seeds = torch.randint(2**31, (len(augmentation.transforms),))  # (n,)
    for transform, seed in zip(augmentation.transforms, seeds.tolist(), strict=True):
        transform.set_random_seed(seed)


def resize_to_fit(image: Image.Image, size: int) -> Image.Image:
    """Scale so that the longest side is `size`, keeping the aspect ratio."""
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if new_size == image.size else image.resize(new_size, Image.BILINEAR)


class DetectionDataset(torch.utils.data.Dataset):
    """Model samples from a `CocoSplit`: pixel_values (3, h, w) with max(h, w) == image_size, plus targets."""

    def __init__(self, split: CocoSplit, category_to_label: dict[int, int], image_size: int,
                 augmentation: A.Compose | None = None):
        self.split = split
        self.image_size = image_size
        self.augmentation = augmentation
        self.objects = clean_objects(split, category_to_label)

    def __len__(self) -> int:
        return len(self.objects)

    def object_counts(self) -> np.ndarray:
        return np.array([len(labels) for _, labels in self.objects])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.split.open_image(i)
        boxes, labels = self.objects[i]  # (n, 4) xywh pixels, (n,)
        if self.augmentation is not None:
            reseed_augmentation(self.augmentation)
            out = self.augmentation(image=np.asarray(image), bboxes=boxes, labels=labels)
            image = Image.fromarray(out["image"])
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)  # (n', 4)
            labels = np.asarray(out["labels"], np.int64)  # (n',)
        size = np.array([image.width, image.height], np.float32)  # (2,)
        centers = (boxes[:, :2] + boxes[:, 2:] / 2) / size  # (n, 2)
        pixels = np.asarray(resize_to_fit(image, self.image_size), np.float32) / 255.0  # (h, w, 3)
        pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD  # (h, w, 3)
        return {
            "pixel_values": torch.from_numpy(pixels.transpose(2, 0, 1).copy()),  # (3, h, w)
            "class_labels": torch.from_numpy(labels),  # (n,)
            "boxes": torch.from_numpy(np.concatenate([centers, boxes[:, 2:] / size], axis=1)),  # (n, 4)
            "image_index": torch.tensor(i),
        }


class PaddedToMultiple(torch.utils.data.Dataset):
    """Evaluation set padded with blank filler images (image_index -1, no objects) to a multiple of `multiple`.

    With it every evaluation batch is full, so shapes stay constant with `dataloader_drop_last=True`; the
    metrics skip the fillers.
    """

    def __init__(self, dataset: DetectionDataset, multiple: int):
        self.dataset = dataset
        self.length = -(-len(dataset) // multiple) * multiple

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < len(self.dataset):
            return self.dataset[i]
        size = self.dataset.image_size
        return {
            "pixel_values": torch.zeros(3, size, size),  # (3, s, s)
            "class_labels": torch.zeros(0, dtype=torch.int64),  # (0,)
            "boxes": torch.zeros(0, 4),  # (0, 4)
            "image_index": torch.tensor(-1),
        }
