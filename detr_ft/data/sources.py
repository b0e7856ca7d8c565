"""Where the data comes from: a COCO-format folder or a Hugging Face hub dataset, read into one in-memory form.

Every split becomes a `CocoSplit`: the COCO json dict (images, annotations, categories) plus a function that
reads image i as stored. When a run has no evaluation split, `carve_validation` splits one off train. A folder
or hub dataset that cannot be read (no json where the layout puts it, a YOLO folder, a json that does not parse,
the hub out of reach) raises `DatasetError` naming the file and the way out.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from detr_ft.data.images import to_rgb
from detr_ft.data.size_repair import SizeRepair

COCO_LAYOUT = "images/ and annotations/<split>.json (COCO: images, annotations, categories)"
VALIDATION_NAMES = ("validation", "val", "valid")  # what exporters call the evaluation split's json
TEST_SPLIT = "test"  # scored once with the final model, when the dataset has it
MAKE_CPPE5 = ("`make cppe5` downloads the original CPPE-5 release into that layout in data/cppe5 (then "
              "--dataset_dir data/cppe5)")


class DatasetError(ValueError):
    """The data breaks a rule that has no safe fix; the message names the file, the entries and the fix."""


@dataclass
class CocoSplit:
    """One split: its COCO json dict, how to read image i (index into coco["images"]) as stored, and where the
    json came from (named in data error messages). Its size repairs belong to the json file: a subset has none."""

    name: str
    coco: dict
    read_image: Callable[[int], Image.Image]
    source: str = ""
    image_dir: Path | None = None  # where a folder's file_names are read from; None for hub splits
    size_repairs: tuple[SizeRepair, ...] = ()  # what validation did to images whose json size was not theirs

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
        return CocoSplit(name, coco, SubsetImages(self.read_image, indices), self.source, self.image_dir)


# The image readers are classes, not closures: a data loader worker started by forkserver or spawn gets the dataset
# pickled.
@dataclass(frozen=True)
class FolderImages:
    """Image i of `coco` from `image_dir`, by its json file_name."""

    image_dir: Path
    coco: dict

    def __call__(self, i: int) -> Image.Image:
        return Image.open(self.image_dir / self.coco["images"][i]["file_name"])


@dataclass(frozen=True)
class SubsetImages:
    """Image i of a subset: image indices[i] of the split it was taken from."""

    read_image: Callable[[int], Image.Image]
    indices: list[int]

    def __call__(self, i: int) -> Image.Image:
        return self.read_image(self.indices[i])


@dataclass(frozen=True)
class HubImages:
    """Image i of a hub split (decoded by `datasets`)."""

    hf_split: object

    def __call__(self, i: int) -> Image.Image:
        return self.hf_split[i]["image"]


def missing_layout_error(dataset_dir: Path, annotation_file: Path) -> DatasetError:
    """Why `annotation_file` is not there, in the user's terms: no folder, a YOLO folder, or which jsons there are."""
    if not dataset_dir.is_dir():
        return DatasetError(f"--dataset_dir {dataset_dir} is not a folder: it must hold {COCO_LAYOUT}")
    if (dataset_dir / "labels").is_dir() and next((dataset_dir / "labels").rglob("*.txt"), None):
        return DatasetError(f"{dataset_dir} is a YOLO dataset (images/ + labels/*.txt), which detr-ft does not read: "
                            f"it needs {COCO_LAYOUT}; convert the YOLO labels to a COCO json per split first")
    present = sorted(p.name for p in (dataset_dir / "annotations").glob("*.json"))
    return DatasetError(f"no {annotation_file}: --dataset_dir must hold {COCO_LAYOUT}; annotations/ holds "
                        f"{present or 'no json'}")


def read_annotations(annotation_file: Path) -> dict:
    """The parsed COCO json; a UTF-8 byte-order mark (Windows tools write one) is accepted."""
    if annotation_file.is_dir():
        raise DatasetError(f"{annotation_file} is a directory, not a COCO json file: put the split's json there")
    try:
        return json.loads(annotation_file.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DatasetError(f"{annotation_file}: not UTF-8 text (byte {error.start}): save it as UTF-8 JSON") from error
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno} (character {error.pos})"
        if error.msg == "Extra data":
            raise DatasetError(f"{annotation_file}: trailing data after the JSON object at {where}: remove "
                               "everything after the object's closing brace") from error
        raise DatasetError(f"{annotation_file}: not valid JSON: {error.msg} at {where}: repair or export it "
                           "again") from error


def load_coco_folder(dataset_dir: str | Path, split: str) -> CocoSplit:
    """`dataset_dir/annotations/<split>.json` with images under `dataset_dir/images/`."""
    dataset_dir = Path(dataset_dir)
    annotation_file = dataset_dir / "annotations" / f"{split}.json"
    try:
        if not annotation_file.exists():
            raise missing_layout_error(dataset_dir, annotation_file)
        coco = read_annotations(annotation_file)
    except PermissionError as error:  # the json, or a folder on its way
        raise DatasetError(f"{error.filename or annotation_file} cannot be read: permission denied (give the user "
                           "running this read access to it and its folders, e.g. chmod a+rX or chown)") from error
    return CocoSplit(split, coco, FolderImages(dataset_dir / "images", coco), str(annotation_file),
                     dataset_dir / "images")


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
    return CocoSplit(name, coco, HubImages(hf_split), f"hub split {name!r}")


def carve_validation(train: CocoSplit, fraction: float, seed: int) -> tuple[CocoSplit, CocoSplit]:
    """Split a validation set off train: `fraction` of the images, chosen by a seeded permutation. Train's size
    repairs stay with the train part, so that the run's audit lists each once."""
    order = np.random.default_rng(seed).permutation(len(train.coco["images"])).tolist()
    num_eval = max(1, round(fraction * len(order)))
    rest = dataclasses.replace(train.subset(sorted(order[num_eval:]), train.name), size_repairs=train.size_repairs)
    return rest, train.subset(sorted(order[:num_eval]), "validation")


def load_hub_dataset(name: str):
    """`datasets.load_dataset(name)`; its failures raised as DatasetError saying what to do instead."""
    from datasets import load_dataset
    from huggingface_hub import constants

    try:
        return load_dataset(name)
    except Exception as error:  # noqa: BLE001 - datasets and huggingface_hub raise many types (network, hub, scripts)
        if "Dataset scripts are no longer supported" in str(error):
            raise DatasetError(f"hub dataset {name!r} is a loading script, which datasets >= 4 no longer runs "
                               f"({error}). Ways out: {MAKE_CPPE5}, or pass a parquet copy of CPPE-5 on the hub as "
                               "--dataset_name") from error
        offline = "" if constants.HF_HUB_OFFLINE else (
            "; set HF_HUB_OFFLINE=1 to fail at once instead of retrying the hub (a dataset in the cache still loads)")
        raise DatasetError(f"hub dataset {name!r} cannot be loaded ({type(error).__name__}: {error}). Offline? Train "
                           f"on a local COCO folder: --dataset_dir DIR holding {COCO_LAYOUT}; {MAKE_CPPE5}"
                           f"{offline}") from error


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
        annotations = Path(dataset_dir) / "annotations"
        if (annotations / f"{eval_split}.json").exists():
            return train, load_coco_folder(dataset_dir, eval_split)
        for name in VALIDATION_NAMES if eval_split in VALIDATION_NAMES else ():  # another spelling of the same split
            if name != eval_split and (annotations / f"{name}.json").exists():
                raise DatasetError(f"no {annotations / eval_split}.json, but found {annotations / name}.json: pass "
                                   f"--eval_split {name} to evaluate on it (or remove it to carve train)")
        return train, None
    hub = load_hub_dataset(dataset_name)
    train = coco_from_hub_split(hub[train_split], train_split)
    return train, coco_from_hub_split(hub[eval_split], eval_split) if eval_split in hub else None




def load_test_split(dataset_name: str | None, dataset_dir: str | None) -> CocoSplit | None:
    """The dataset's TEST_SPLIT from its COCO folder (preferred when given) or the hub; None when it has none."""
    if dataset_dir:
        exists = (Path(dataset_dir) / "annotations" / f"{TEST_SPLIT}.json").exists()
        return load_coco_folder(dataset_dir, TEST_SPLIT) if exists else None
    hub = load_hub_dataset(dataset_name)
    return coco_from_hub_split(hub[TEST_SPLIT], TEST_SPLIT) if TEST_SPLIT in hub else None
