"""detr_ft.data.synthetic: deterministic, valid COCO folders with tight boxes."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from detr_ft.data.synthetic import CATEGORIES, SIDE_RANGE, draw_shape, write_synthetic_coco

SMALL = {"num_train": 30, "num_validation": 10, "num_test": 5, "image_size": 48, "min_objects": 2, "max_objects": 5}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    return write_synthetic_coco(tmp_path_factory.mktemp("small"), seed=3, **SMALL)


def test_same_seed_gives_identical_bytes(small_dir: Path, tmp_path: Path) -> None:
    again = folder_bytes(write_synthetic_coco(tmp_path / "again", seed=3, **SMALL))
    assert again == folder_bytes(small_dir)
    assert len(again) == 30 + 10 + 5 + 3  # images and three json files
    other_seed = folder_bytes(write_synthetic_coco(tmp_path / "other", seed=4, **SMALL))
    assert other_seed["annotations/train.json"] != again["annotations/train.json"]


def test_a_split_does_not_depend_on_the_size_of_the_others(small_dir: Path, tmp_path: Path) -> None:
    bigger_train = write_synthetic_coco(tmp_path, seed=3, **{**SMALL, "num_train": 7, "num_test": 0})
    validation = "annotations/validation.json"
    assert folder_bytes(bigger_train)[validation] == folder_bytes(small_dir)[validation]
    assert not (bigger_train / "annotations" / "test.json").exists()


@pytest.mark.parametrize("split, num_images", [("train", 30), ("validation", 10), ("test", 5)])
def test_annotations_are_valid_coco(small_dir: Path, split: str, num_images: int) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(small_dir / "annotations" / f"{split}.json"))
    assert len(coco.getImgIds()) == num_images
    assert coco.dataset["categories"] == [
        {"id": 1, "name": "circle"},
        {"id": 2, "name": "square"},
        {"id": 3, "name": "triangle"},
    ]
    assert sorted(coco.getAnnIds()) == list(range(1, len(coco.getAnnIds()) + 1))
    for image_id, image in coco.imgs.items():
        with Image.open(small_dir / "images" / image["file_name"]) as png:
            assert png.size == (image["width"], image["height"]) == (48, 48)
            assert png.mode == "RGB"
        annotations = coco.imgToAnns[image_id]
        assert SMALL["min_objects"] <= len(annotations) <= SMALL["max_objects"]
        for annotation in annotations:
            x, y, w, h = annotation["bbox"]
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
            assert SIDE_RANGE[0] * 48 - 1 <= w <= SIDE_RANGE[1] * 48 + 1
            assert annotation["area"] == w * h
            assert annotation["iscrowd"] == 0
            assert annotation["category_id"] in {1, 2, 3}


def test_every_class_occurs(small_dir: Path) -> None:
    coco = json.loads((small_dir / "annotations" / "train.json").read_text())
    assert {annotation["category_id"] for annotation in coco["annotations"]} == {c["id"] for c in CATEGORIES}


@pytest.mark.parametrize("category_id", [1, 2, 3])
@pytest.mark.parametrize("side", [3, 6, 7, 16, 25])
def test_box_is_the_tight_extent_of_the_drawn_shape(category_id: int, side: int) -> None:
    image = Image.new("L", (40, 40), 0)
    draw_shape(ImageDraw.Draw(image), category_id, x=5, y=9, side=side, colour=255)
    rows, columns = np.nonzero(np.asarray(image))
    extent = [columns.min(), rows.min(), columns.max() - columns.min() + 1, rows.max() - rows.min() + 1]
    assert extent == [5, 9, side, side]


def test_objects_do_not_overlap_when_there_is_room(tmp_path: Path) -> None:
    roomy = write_synthetic_coco(tmp_path, num_train=1, num_validation=20, image_size=64, min_objects=1,
                                 max_objects=3, seed=3)  # three shapes of at most 29 px fit in 64 x 64
    coco = json.loads((roomy / "annotations" / "validation.json").read_text())
    boxes_per_image: dict[int, list] = {}
    for annotation in coco["annotations"]:
        boxes_per_image.setdefault(annotation["image_id"], []).append(annotation["bbox"])
    for boxes in boxes_per_image.values():
        for i, (x, y, w, h) in enumerate(boxes):
            for px, py, pw, ph in boxes[i + 1 :]:
                assert x + w <= px or px + pw <= x or y + h <= py or py + ph <= y


def test_min_objects_above_max_objects_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_objects"):
        write_synthetic_coco(tmp_path, num_train=1, num_validation=1, min_objects=3, max_objects=2)


def test_command_line_matches_the_function_and_prints_one_line(tmp_path: Path) -> None:
    arguments = f"--output_dir {tmp_path / 'cli'} --num_train 4 --num_validation 2 --image_size 32 --seed 1".split()
    command = [sys.executable, "-m", "detr_ft.data.make_synthetic", *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert completed.stdout.count("\n") == 1 and "4 train, 2 validation" in completed.stdout
    from_function = write_synthetic_coco(tmp_path / "api", num_train=4, num_validation=2, image_size=32, seed=1)
    assert folder_bytes(tmp_path / "cli") == folder_bytes(from_function)


def test_aspect_ratios_draw_each_shape_natively_with_the_same_object_pixels(tmp_path: Path) -> None:
    folder = write_synthetic_coco(tmp_path, num_train=30, num_validation=1, image_size=64, min_objects=1,
                                  max_objects=3, seed=3, aspect_ratios=(1.0, 2.0, 0.5))
    coco = json.loads((folder / "annotations" / "train.json").read_text())
    shapes = [(image["width"], image["height"]) for image in coco["images"]]
    assert shapes == [(64, 64), (64, 32), (32, 64)] * 10
    for image in coco["images"]:
        with Image.open(folder / "images" / image["file_name"]) as png:
            assert png.size == (image["width"], image["height"])
    images = {image["id"]: image for image in coco["images"]}
    sides_by_shape: dict[tuple[int, int], list[int]] = {}
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        image = images[annotation["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        assert SIDE_RANGE[0] * 64 - 1 <= w <= SIDE_RANGE[1] * 64 + 1  # sides from the long side, on every shape
        sides_by_shape.setdefault((image["width"], image["height"]), []).append(w)
    assert len(sides_by_shape) == 3 and min(max(sides) for sides in sides_by_shape.values()) > 64 // 3


def test_an_aspect_ratio_too_narrow_for_the_largest_object_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aspect ratio 4"):
        write_synthetic_coco(tmp_path, num_train=1, num_validation=1, image_size=64, aspect_ratios=(1.0, 4.0))


def test_command_line_takes_aspect_ratios(tmp_path: Path) -> None:
    arguments = f"--output_dir {tmp_path / 'cli'} --num_train 3 --num_validation 1 --aspect_ratios 1 2 0.5".split()
    command = [sys.executable, "-m", "detr_ft.data.make_synthetic", *arguments]
    subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    from_function = write_synthetic_coco(tmp_path / "api", num_train=3, num_validation=1, aspect_ratios=(1, 2, 0.5))
    assert folder_bytes(tmp_path / "cli") == folder_bytes(from_function)
