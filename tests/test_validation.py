"""Input validation: each rule checked on a corrupted copy of a small synthetic COCO folder."""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.sources import CocoSplit, load_coco_folder
from detr_ft.data.validation import DatasetError, validate_split


@pytest.fixture(scope="module")
def good_dir(synthetic_coco) -> Path:
    return synthetic_coco(num_train=12, num_validation=4, image_size=64, seed=0)


@pytest.fixture
def data_dir(good_dir, tmp_path) -> Path:
    """A fresh copy of the good folder for the test to corrupt."""
    return Path(shutil.copytree(good_dir, tmp_path / "data"))


def read_json(data_dir: Path) -> dict:
    return json.loads((data_dir / "annotations" / "train.json").read_text())


def write_json(data_dir: Path, coco: dict) -> None:
    (data_dir / "annotations" / "train.json").write_text(json.dumps(coco))


def validate(data_dir: Path) -> CocoSplit:
    return validate_split(load_coco_folder(data_dir, "train"))


def refusal(data_dir: Path) -> str:
    with pytest.raises(DatasetError) as error:
        validate(data_dir)
    message = str(error.value)
    assert str(data_dir / "annotations" / "train.json") in message
    return message


def test_good_data_passes_unchanged(data_dir, caplog):
    with caplog.at_level(logging.INFO):
        split = validate(data_dir)
    assert split.coco == read_json(data_dir)
    assert not caplog.records


def test_real_cppe5_passes_with_its_rgba_image_converted(cppe5_dir, caplog):
    with caplog.at_level(logging.INFO):
        split = validate_split(load_coco_folder(cppe5_dir, "test"))
    assert len(split.coco["annotations"]) == 207
    assert "converting 1 images to 8-bit RGB (1 RGBA)" in caplog.text


def test_missing_images_are_refused_naming_ten_and_counting_the_rest(data_dir):
    images = read_json(data_dir)["images"]
    for image in images:
        (data_dir / "images" / image["file_name"]).unlink()
    message = refusal(data_dir)
    assert f"{len(images)} image files are missing" in message
    assert images[9]["file_name"] in message and images[10]["file_name"] not in message
    assert f"and {len(images) - 10} more" in message


@pytest.mark.parametrize("damage", ["truncate", "not_an_image"])
def test_unreadable_images_are_refused(data_dir, damage):
    name = read_json(data_dir)["images"][3]["file_name"]
    path = data_dir / "images" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if damage == "truncate" else b"not a png")
    message = refusal(data_dir)
    assert "1 images cannot be decoded" in message and name in message


def test_boxes_outside_the_image_are_clipped_and_counted(data_dir, caplog):
    coco = read_json(data_dir)
    first, second = coco["annotations"][0], coco["annotations"][1]
    first["bbox"] = [-6.0, 10.0, 20.0, 70.0]
    second["bbox"] = [50.0, 50.0, 30.0, 30.0]
    write_json(data_dir, coco)
    split = validate(data_dir)
    assert f"2 boxes clipped to their image (annotation ids {first['id']}, {second['id']})" in caplog.text
    fixed = {a["id"]: a for a in split.coco["annotations"]}
    assert fixed[first["id"]]["bbox"] == [0.0, 10.0, 14.0, 54.0] and fixed[first["id"]]["area"] == 14 * 54
    assert fixed[second["id"]]["bbox"] == [50.0, 50.0, 14.0, 14.0]
    assert len(split.coco["annotations"]) == len(coco["annotations"])
    caplog.clear()
    DetectionDataset(split, ClassMapping.from_categories(coco["categories"]).category_to_label, 64)
    assert "dropped" not in caplog.text  # nothing is left for clean_objects to fix


@pytest.mark.parametrize(("bbox", "reason"), [
    ([10, 10, -5, 8], "a width or height <= 0"),
    ([10, 10, 8, 0], "a width or height <= 0"),
    ([math.nan, 10, 8, 8], "NaN or infinite coordinates"),
    ([10, 10, math.inf, 8], "NaN or infinite coordinates"),
    ([70, 10, 8, 8], "less than 1 px inside their image"),
])
def test_degenerate_boxes_are_dropped_naming_their_ids(data_dir, caplog, bbox, reason):
    coco = read_json(data_dir)
    bad = coco["annotations"][2]
    bad["bbox"] = bbox
    write_json(data_dir, coco)
    split = validate(data_dir)
    assert f"1 boxes dropped: {reason} (annotation ids {bad['id']})" in caplog.text
    assert [a["id"] for a in split.coco["annotations"]] == [a["id"] for a in coco["annotations"] if a is not bad]


def test_unknown_category_is_refused(data_dir):
    coco = read_json(data_dir)
    coco["annotations"][4]["category_id"] = 9
    write_json(data_dir, coco)
    message = refusal(data_dir)
    assert "category id outside [1, 2, 3] (ids 9)" in message and str(coco["annotations"][4]["id"]) in message


def test_eval_categories_are_checked_against_the_train_label_space(data_dir):
    split = load_coco_folder(data_dir, "validation")
    with pytest.raises(DatasetError, match="category id outside \\[1, 2\\]"):
        validate_split(split, category_ids={1: 0, 2: 1})


def test_images_without_boxes_are_kept_as_negatives(data_dir, caplog):
    coco = read_json(data_dir)
    empty, emptied = coco["images"][0]["id"], coco["images"][1]["id"]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != empty]
    for ann in coco["annotations"]:
        if ann["image_id"] == emptied:
            ann["bbox"] = [0, 0, 0, 0]
    write_json(data_dir, coco)
    with caplog.at_level(logging.INFO):
        split = validate(data_dir)
    assert f"keeping 2 images without boxes as negatives (image ids {empty}, {emptied})" in caplog.text
    assert len(split.coco["images"]) == len(coco["images"])


def test_other_image_modes_are_converted_to_rgb(data_dir, caplog):
    coco = read_json(data_dir)
    originals = [Image.open(data_dir / "images" / image["file_name"]).convert("RGB") for image in coco["images"][:5]]
    stored = [originals[0].convert("L"), originals[1].convert("RGBA"),
              originals[2].convert("P", palette=Image.Palette.ADAPTIVE), originals[3].convert("CMYK"),
              Image.fromarray(np.asarray(originals[4].convert("L"), np.uint16) * 257)]  # 16-bit, full range
    for image, pixels in zip(coco["images"], stored, strict=False):
        pixels.save(data_dir / "images" / image["file_name"], format="TIFF" if pixels.mode == "CMYK" else "PNG")
    with caplog.at_level(logging.INFO):
        split = validate(data_dir)
    assert "converting 5 images to 8-bit RGB (1 CMYK, 1 I;16, 1 L, 1 P, 1 RGBA)" in caplog.text
    expected = [originals[0].convert("L"), originals[1], originals[2], originals[3], originals[4].convert("L")]
    for i, (want, tolerance) in enumerate(zip(expected, [0, 0, 4, 0, 0], strict=True)):
        image = split.open_image(i)
        assert image.mode == "RGB" and image.size == want.size
        got = np.asarray(image.convert(want.mode), np.float32)  # (h, w) or (h, w, 3)
        assert np.abs(got - np.asarray(want, np.float32)).mean() <= tolerance


def write_turned_image(data_dir: Path, json_size: tuple[int, int]) -> tuple[CocoSplit | None, Image.Image]:
    """Image 0 stored as 40 x 64 pixels with EXIF orientation 6 (displayed 64 x 40), json saying json_size."""
    coco = read_json(data_dir)
    entry = coco["images"][0]
    path = data_dir / "images" / entry["file_name"]
    stored = Image.open(path).convert("RGB").crop((0, 0, 40, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif)
    entry["width"], entry["height"] = json_size
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != entry["id"]]
    write_json(data_dir, coco)
    return stored


def test_exif_orientation_is_applied_when_the_json_has_the_displayed_size(data_dir, caplog):
    stored = write_turned_image(data_dir, (64, 40))
    with caplog.at_level(logging.INFO):
        split = validate(data_dir)
    assert "applying the EXIF orientation of 1 images" in caplog.text
    shown = split.open_image(0)
    assert shown.size == (64, 40)
    np.testing.assert_array_equal(np.asarray(shown), np.asarray(stored.transpose(Image.Transpose.ROTATE_270)))


def test_exif_orientation_is_ignored_when_the_json_has_the_stored_size(data_dir, caplog):
    stored = write_turned_image(data_dir, (40, 64))
    with caplog.at_level(logging.INFO):
        split = validate(data_dir)
    assert "ignoring the EXIF orientation of 1 images" in caplog.text
    np.testing.assert_array_equal(np.asarray(split.open_image(0)), np.asarray(stored))


def test_json_size_unlike_the_image_is_refused(data_dir):
    coco = read_json(data_dir)
    coco["images"][2]["width"] = 100
    write_json(data_dir, coco)
    assert f"{coco['images'][2]['file_name']} (json 100x64, image 64x64)" in refusal(data_dir)


def test_a_turned_image_with_neither_size_is_refused(data_dir):
    write_turned_image(data_dir, (50, 50))
    assert "(json 50x50, image 64x40)" in refusal(data_dir)


def test_empty_split_is_refused(data_dir):
    write_json(data_dir, {**read_json(data_dir), "images": [], "annotations": []})
    assert "the split has no images" in refusal(data_dir)


@pytest.mark.parametrize("key", ["images", "annotations"])
def test_duplicate_ids_are_refused(data_dir, key):
    coco = read_json(data_dir)
    coco[key][5]["id"] = coco[key][2]["id"]
    write_json(data_dir, coco)
    assert f"1 {key} ids are used more than once: {coco[key][2]['id']}" in refusal(data_dir)


@pytest.mark.parametrize(("corrupt", "expected"), [
    (lambda coco: coco.pop("categories"), "key 'categories' is missing or not a list"),
    (lambda coco: coco["annotations"][1].pop("bbox"), "annotations[1] (id 2): key 'bbox' is missing"),
    (lambda coco: coco["images"][3].update(width="64"), "images[3] (id 4): 'width' must be int, got '64'"),
    (lambda coco: coco["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0] (id 1): 'bbox' must be 4 numbers"),
    (lambda coco: coco["annotations"][0].update(category_id=True), "'category_id' must be int, got True"),
    (lambda coco: coco["categories"].append("dog"), "categories[3] is a str, not an object"),
])
def test_malformed_json_is_refused_naming_entry_and_key(data_dir, corrupt, expected):
    coco = read_json(data_dir)
    corrupt(coco)
    write_json(data_dir, coco)
    assert expected in refusal(data_dir)


def test_annotation_of_an_image_not_in_the_file_is_refused(data_dir):
    coco = read_json(data_dir)
    coco["annotations"][6]["image_id"] = 999
    write_json(data_dir, coco)
    assert f"refer to an image id not in 'images': ids {coco['annotations'][6]['id']}" in refusal(data_dir)


def test_split_without_files_is_validated_through_read_image(good_dir):
    """Hub splits have no file names: images come from read_image, errors name the image id."""
    folder = load_coco_folder(good_dir, "validation")
    blobs = [(good_dir / "images" / image["file_name"]).read_bytes() for image in folder.coco["images"]]
    blobs[1] = blobs[1][:100]
    coco = {**folder.coco, "images": [{**image, "file_name": ""} for image in folder.coco["images"]]}
    split = CocoSplit("validation", coco, lambda i: Image.open(io.BytesIO(blobs[i])), "hub split 'validation'")
    with pytest.raises(DatasetError, match=f"(?s)hub split 'validation'.*image id {coco['images'][1]['id']} "):
        validate_split(split)


def test_thousands_of_images_are_each_read_and_decoded_once(good_dir, monkeypatch):
    """What keeps validation fast (its time is `make bench` material, not a test's): one read and one full decode per
    image, however many images, in whatever order the threads take them."""
    folder = load_coco_folder(good_dir, "train")
    reads, decodes = [], []
    load = ImageFile.ImageFile.load

    def counted_load(image):
        if image.tile:  # tiles left to decode: a decode, not a call on an image already in memory
            decodes.append(image.filename)
        return load(image)

    def read_image(i):
        reads.append(i)
        return folder.read_image(i % 12)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    images = [{**folder.coco["images"][i % 12], "id": i} for i in range(4096)]
    validate_split(CocoSplit("train", {**folder.coco, "images": images, "annotations": []}, read_image))

    assert sorted(reads) == list(range(4096))
    assert len(decodes) == 4096
