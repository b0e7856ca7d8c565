"""Where the data comes from: a COCO-format folder or a Hugging Face hub dataset, read into one in-memory form.

Every split becomes a `CocoSplit`: the COCO json dict (images, annotations, categories) plus a function that
reads image i as stored. When a run has no evaluation split, `carve_validation` splits one off train.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from detr_ft.data.images import to_rgb


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

    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every image, from the json (nothing is decoded)."""
        return [(image["width"], image["height"]) for image in self.coco["images"]]

    def subset(self, indices: list[int], name: str) -> CocoSplit:
        images = [self.coco["images"][i] for i in indices]
        kept = {image["id"] for image in images}
        coco = {
            "images": images,
            "annotations": [a for a in self.coco["annotations"] if a["image_id"] in kept],
            "categories": self.coco["categories"],
        }
        return CocoSplit(name, coco, lambda i: self.read_image(indices[i]), self.source)


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


