"""Input validation: each rule checked on a corrupted copy of a small synthetic COCO folder."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from entry_runs import entry_command
from PIL import Image, ImageFile

import run_object_detection
from detr_ft.config import DataArguments, StaticShapeArguments
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.prepare import PreparedData, prepare_data, validated_splits
from detr_ft.data.sources import CocoSplit, DatasetError, load_coco_folder
from detr_ft.data.validation import validate_split
from detr_ft.evaluation.coco_map import coco_map


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


def validate(data_dir: Path, **checks) -> CocoSplit:
    return validate_split(load_coco_folder(data_dir, "train"), **checks)


def refusal(data_dir: Path, **checks) -> str:
    with pytest.raises(DatasetError) as error:
        validate(data_dir, **checks)
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


def test_json_size_unlike_the_image_is_refused_with_the_strict_flag(data_dir):
    coco = read_json(data_dir)
    coco["images"][2]["width"] = 100
    write_json(data_dir, coco)
    message = refusal(data_dir, on_size_mismatch="refuse")
    assert f"{coco['images'][2]['file_name']} (json 100x64, image 64x64)" in message
    assert "--on_size_mismatch repair" in message


def test_a_turned_image_with_neither_size_is_refused_with_the_strict_flag(data_dir):
    write_turned_image(data_dir, (50, 50))
    assert "(json 50x50, image 64x40)" in refusal(data_dir, on_size_mismatch="refuse")


def test_empty_split_is_refused(data_dir):
    write_json(data_dir, {**read_json(data_dir), "images": [], "annotations": []})
    assert "the split has no images" in refusal(data_dir)


@pytest.mark.parametrize(("key", "first", "second"), [("images", 2, 5), ("annotations", 2, 5), ("categories", 0, 2)])
def test_duplicate_ids_are_refused(data_dir, key, first, second):
    coco = read_json(data_dir)
    coco[key][second]["id"] = coco[key][first]["id"]
    write_json(data_dir, coco)
    assert f"1 {key} ids are used more than once: {coco[key][first]['id']}" in refusal(data_dir)


def test_problems_of_different_kinds_are_refused_in_one_message(data_dir):
    """The user fixes everything in one go: a repeated id, an unknown category and a missing image file, all named in
    the one refusal."""
    coco = read_json(data_dir)
    coco["annotations"][5]["id"] = coco["annotations"][2]["id"]
    coco["annotations"][4]["category_id"] = 9
    (data_dir / "images" / coco["images"][7]["file_name"]).unlink()
    write_json(data_dir, coco)
    message = refusal(data_dir)
    assert "3 problem(s) with no safe automatic fix" in message
    assert f"1 annotations ids are used more than once: {coco['annotations'][2]['id']}" in message
    assert f"category id outside [1, 2, 3] (ids 9): annotation ids {coco['annotations'][4]['id']}" in message
    assert f"1 image files are missing: {data_dir / 'images' / coco['images'][7]['file_name']}" in message


@pytest.mark.parametrize(("corrupt", "expected"), [
    (lambda coco: coco.pop("categories"), "key 'categories' is missing or not a list"),
    (lambda coco: coco["annotations"][1].pop("bbox"), "annotations[1] (id 2): key 'bbox' is missing"),
    (lambda coco: coco["images"][3].update(width="64"), "images[3] (id 4): 'width' must be int, got '64'"),
    (lambda coco: coco["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0] (id 1): 'bbox' must be 4 numbers"),
    (lambda coco: coco["annotations"][0].update(category_id=True), "'category_id' must be int, got True"),
    (lambda coco: coco["categories"].append("dog"), "categories[3] is a str, not an object"),
    (lambda coco: coco["images"][3].update(width=0), "images[3] (id 4): width and height must be positive, got 0x64"),
    (lambda coco: coco["images"][3].update(height=0), "images[3] (id 4): width and height must be positive, got 64x0"),
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
    images = [{**folder.coco["images"][i % 12], "id": i, "file_name": f"{i}.png"} for i in range(4096)]  # read_image
    validate_split(CocoSplit("train", {**folder.coco, "images": images, "annotations": []}, read_image))

    assert sorted(reads) == list(range(4096))
    assert len(decodes) == 4096


# Every data case refused with exit 2 naming file, entries and fix, or fixed and counted.


def prepared(data_dir: Path, **flags) -> PreparedData:
    return prepare_data(DataArguments(dataset_dir=str(data_dir), image_size=64, **flags), StaticShapeArguments())


def split_refusal(data_dir: Path, **flags) -> str:
    """The message of validated_splits' refusal (train, eval and how they relate)."""
    with pytest.raises(DatasetError) as error:
        validated_splits(DataArguments(dataset_dir=str(data_dir), **flags))
    return str(error.value)


def read_eval_json(data_dir: Path) -> dict:
    return json.loads((data_dir / "annotations" / "validation.json").read_text())


def write_eval_json(data_dir: Path, coco: dict) -> None:
    (data_dir / "annotations" / "validation.json").write_text(json.dumps(coco))


def test_two_categories_with_one_name_are_refused(data_dir):
    coco = read_json(data_dir)
    coco["categories"][2]["name"] = coco["categories"][0]["name"]
    write_json(data_dir, coco)
    assert "1 category names are used by more than one category: 'circle' (ids 1, 3)" in refusal(data_dir)


def test_eval_names_differing_only_in_case_are_refused_naming_them(data_dir):
    coco = read_eval_json(data_dir)
    coco["categories"][0]["name"] = "Circle"
    write_eval_json(data_dir, coco)
    message = split_refusal(data_dir)
    assert str(data_dir / "annotations" / "validation.json") in message
    assert "train category 'circle' (differs only in case from 'Circle') is not among the eval split's" in message
    assert "eval category 'Circle' (differs only in case from 'circle') is not among the train split's" in message
    with pytest.raises(ValueError, match="'circle' \\(differs only in case from 'Circle'\\)"):
        ClassMapping.for_model({0: "circle"}, coco["categories"])  # what eval_checkpoints and inference match by


def test_eval_split_with_swapped_names_is_scored_by_name(data_dir):
    coco = read_eval_json(data_dir)
    first, second = coco["categories"][0], coco["categories"][1]
    first["name"], second["name"] = second["name"], first["name"]
    write_eval_json(data_dir, coco)
    data = prepared(data_dir)
    name_of = {category["id"]: category["name"] for category in coco["categories"]}
    per_image = defaultdict(list)
    for ann in coco["annotations"]:
        per_image[ann["image_id"]].append(data.classes.label2id[name_of[ann["category_id"]]])
    for i, image in enumerate(coco["images"]):
        assert sorted(data.eval.objects[i][1].tolist()) == sorted(per_image[image["id"]])
    assert data.eval_classes.category_names == name_of  # what CocoMetrics scores the eval split with


def test_annotation_json_with_a_byte_order_mark_is_read(data_dir):
    coco = read_json(data_dir)
    path = data_dir / "annotations" / "train.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert validate(data_dir).coco == coco


def test_annotation_json_with_trailing_garbage_is_refused_naming_file_and_position(data_dir):
    path = data_dir / "annotations" / "train.json"
    text = path.read_text()
    path.write_text(text + "\n}garbage")
    message = split_refusal(data_dir)
    assert f"{path}: trailing data after the JSON object at line 2 column 1 (character {len(text) + 1})" in message


@pytest.mark.parametrize(("content", "expected"), [
    (None, "no {path}: --dataset_dir must hold images/ and annotations/<split>.json (COCO: images, annotations, "
           "categories); annotations/ holds ['validation.json']"),
    (b"{", "{path}: not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2 "
           "(character 1)"),
    (b"\xff", "{path}: not UTF-8 text (byte 0)"),
], ids=["missing", "broken", "not utf-8"])
def test_annotation_json_missing_or_unparsable_is_refused_naming_file_and_problem(data_dir, content, expected):
    """A COCO folder whose train json is absent or cannot be read is refused with the path and what is wrong, not a
    traceback."""
    path = data_dir / "annotations" / "train.json"
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    assert expected.format(path=path) in split_refusal(data_dir)


def test_crowd_annotations_are_kept_for_map_left_out_of_training_and_counted(data_dir, caplog):
    coco = read_json(data_dir)
    crowd = coco["annotations"][0]
    crowd["iscrowd"] = 1
    write_json(data_dir, coco)
    with caplog.at_level(logging.INFO):
        split = validate(data_dir)
    assert f"1 crowd annotations (iscrowd 1) left out of the training targets, kept as ignore regions for mAP " \
           f"(annotation ids {crowd['id']})" in caplog.text
    assert split.coco["annotations"] == coco["annotations"]
    classes = ClassMapping.from_categories(coco["categories"])
    dataset = DetectionDataset(split, classes.category_to_label, 64)
    assert dataset.object_counts().sum() == len(coco["annotations"]) - 1
    # every other box found exactly, the crowd region not at all: COCOeval ignores it, mAP stays 1
    found = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in coco["annotations"] if a is not crowd]
    assert coco_map(split.coco, found)["map"] == pytest.approx(1.0)


def test_yolo_folder_is_named_with_the_expected_coco_layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    message = split_refusal(tmp_path)
    assert f"{tmp_path} is a YOLO dataset (images/ + labels/*.txt)" in message
    assert "images/ and annotations/<split>.json" in message


def test_annotations_path_that_is_a_directory_is_refused(data_dir):
    path = data_dir / "annotations" / "train.json"
    path.unlink()
    path.mkdir()
    assert f"{path} is a directory, not a COCO json file" in split_refusal(data_dir)


@pytest.mark.parametrize("name", ["val", "valid"])
def test_validation_json_under_another_name_is_named_not_ignored(data_dir, name):
    annotations = data_dir / "annotations"
    (annotations / "validation.json").rename(annotations / f"{name}.json")
    assert f"found {annotations / name}.json: pass --eval_split {name}" in split_refusal(data_dir)
    assert len(validated_splits(DataArguments(dataset_dir=str(data_dir), eval_split=name))[1].coco["images"]) == 4


@pytest.mark.parametrize("kept", ["none", "only crowd"])
def test_train_split_without_annotations_is_refused(data_dir, kept):
    """Crowd regions are left out of the training targets, so a train split of nothing else has nothing to learn."""
    coco = read_json(data_dir)
    annotations = [] if kept == "none" else [{**ann, "iscrowd": 1} for ann in coco["annotations"]]
    write_json(data_dir, {**coco, "annotations": annotations})
    message = split_refusal(data_dir)
    assert f"{data_dir / 'annotations' / 'train.json'}: the train split has no annotations" in message
    assert "nothing to learn" in message


def test_eval_split_without_annotations_is_warned_about(data_dir, caplog):
    write_eval_json(data_dir, {**read_eval_json(data_dir), "annotations": []})
    validated_splits(DataArguments(dataset_dir=str(data_dir)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("THE EVAL SPLIT HAS NO ANNOTATIONS: every mAP will be -1" in warning for warning in warnings)


def test_image_over_pillows_pixel_limit_is_reported_as_such_and_can_be_allowed(data_dir, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after the test
    coco = read_json(data_dir)
    big = coco["images"][0]
    Image.new("1", (16000, 12000)).save(data_dir / "images" / big["file_name"])
    big["width"], big["height"] = 16000, 12000
    write_json(data_dir, coco)
    message = split_refusal(data_dir)
    assert "1 images have more pixels than Pillow's decompression-bomb limit (178956970 pixels" in message
    assert f"{big['file_name']} (16000x12000)" in message and "pass --max_image_pixels 192000000" in message
    assert "truncated" not in message
    train, _ = validated_splits(DataArguments(dataset_dir=str(data_dir), max_image_pixels=192_000_000))
    assert train.coco["images"][0]["width"] == 16000


def test_file_names_leaving_the_images_folder_are_refused_unless_allowed(data_dir):
    coco = read_json(data_dir)
    outside, absolute = coco["images"][0], coco["images"][1]
    shutil.move(data_dir / "images" / outside["file_name"], data_dir / outside["file_name"])
    outside["file_name"] = f"../{outside['file_name']}"
    absolute["file_name"] = str(data_dir / "images" / absolute["file_name"])
    write_json(data_dir, coco)
    message = split_refusal(data_dir)
    assert f"2 images have a file_name outside the images folder (absolute or through ../): " \
           f"{outside['file_name']}, {absolute['file_name']}" in message
    assert "--allow_external_images" in message
    train, _ = validated_splits(DataArguments(dataset_dir=str(data_dir), allow_external_images=True))
    assert [image["file_name"] for image in train.coco["images"][:2]] == [outside["file_name"], absolute["file_name"]]


def test_a_file_name_leaving_the_images_folder_is_refused_with_the_splits_other_problems(data_dir):
    """One message lists every problem of the split: an image outside images/ (refused before any image is opened)
    used to be refused on its own, hiding a repeated id and an unknown category that need no image opened."""
    coco = read_json(data_dir)
    coco["images"][0]["file_name"] = f"../{coco['images'][0]['file_name']}"
    coco["annotations"][5]["id"] = coco["annotations"][2]["id"]
    coco["annotations"][4]["category_id"] = 9
    write_json(data_dir, coco)
    message = refusal(data_dir)
    assert "3 problem(s) with no safe automatic fix" in message
    assert "1 images have a file_name outside the images folder" in message
    assert f"1 annotations ids are used more than once: {coco['annotations'][2]['id']}" in message
    assert "category id outside [1, 2, 3] (ids 9)" in message


def test_file_names_leaving_the_images_folder_are_refused_before_any_is_opened(data_dir, tmp_path, monkeypatch):
    """The refusal comes before the images are read: a readable image outside images/ (beside it, or anywhere through
    an absolute path) is never passed to Image.open, though it would open fine."""
    coco = read_json(data_dir)
    beside, elsewhere = coco["images"][0], coco["images"][1]
    shutil.move(data_dir / "images" / beside["file_name"], data_dir / beside["file_name"])
    shutil.move(data_dir / "images" / elsewhere["file_name"], tmp_path / elsewhere["file_name"])
    beside["file_name"] = f"../{beside['file_name']}"
    elsewhere["file_name"] = str(tmp_path / elsewhere["file_name"])
    write_json(data_dir, coco)
    opened, image_open = [], Image.open

    def recorded_open(fp, *args, **kwargs):
        if isinstance(fp, str | os.PathLike):
            opened.append(Path(fp).resolve())
        return image_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recorded_open)  # what FolderImages calls
    assert "2 images have a file_name outside the images folder" in split_refusal(data_dir)
    images = (data_dir / "images").resolve()
    assert [path for path in opened if not path.is_relative_to(images)] == []
    validated_splits(DataArguments(dataset_dir=str(data_dir), allow_external_images=True))
    assert {(data_dir / "images" / beside["file_name"]).resolve(), Path(elsewhere["file_name"])} <= set(opened)


def test_hub_dataset_offline_says_what_to_do_instead_at_once(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache
    result = subprocess.run(entry_command(["--output_dir", str(tmp_path / "run"), "--model_name_or_path", "detr-tiny"]),
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "hub dataset 'cppe-5' cannot be loaded" in result.stderr
    assert "--dataset_dir DIR" in result.stderr and "`make cppe5`" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_loading_script_names_the_ways_out(tmp_path):
    """datasets >= 4 refuses a loading script; the real refusal, of a local repo that holds one."""
    repo = tmp_path / "cppe-5"
    repo.mkdir()
    (repo / "cppe-5.py").write_text("import datasets\n")
    with pytest.raises(DatasetError) as error:
        validated_splits(DataArguments(dataset_name=str(repo)))
    message = str(error.value)
    assert "Dataset scripts are no longer supported" in message
    assert "`make cppe5` downloads the original CPPE-5 release" in message
    assert "a parquet copy of CPPE-5 on the hub as --dataset_name" in message


@pytest.mark.parametrize("damage", ["trailing garbage", "shared category name", "eval name case", "yolo folder",
                                    "json directory", "val.json", "train without annotations", "external file"])
def test_data_refusals_exit_2_through_the_entry(data_dir, tmp_path, caplog, damage):
    coco, annotations = read_json(data_dir), data_dir / "annotations"
    if damage == "trailing garbage":
        (annotations / "train.json").write_text(json.dumps(coco) + "x")
    elif damage == "shared category name":
        write_json(data_dir, {**coco, "categories": [{**c, "name": "x"} for c in coco["categories"]]})
    elif damage == "eval name case":
        write_eval_json(data_dir, {**read_eval_json(data_dir), "categories": [
            {**c, "name": c["name"].upper()} for c in coco["categories"]]})
    elif damage == "yolo folder":
        shutil.rmtree(annotations)
        (data_dir / "labels").mkdir()
        (data_dir / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    elif damage == "json directory":
        (annotations / "train.json").unlink()
        (annotations / "train.json").mkdir()
    elif damage == "val.json":
        (annotations / "validation.json").rename(annotations / "val.json")
    elif damage == "train without annotations":
        write_json(data_dir, {**coco, "annotations": []})
    else:  # a real image, readable outside images/
        outside = coco["images"][0]["file_name"]
        shutil.move(data_dir / "images" / outside, data_dir / outside)
        write_json(data_dir, {**coco, "images": [{**coco["images"][0], "file_name": f"../{outside}"},
                                                 *coco["images"][1:]]})
    argv = ["--dataset_dir", str(data_dir), "--model_name_or_path", "detr-tiny", "--output_dir", str(tmp_path / "run"),
            "--image_size", "64", "--report_to", "none", "--max_steps", "1", "--per_device_train_batch_size", "2"]
    assert run_object_detection.main(argv) == 2
    assert str(data_dir) in caplog.text and "Traceback" not in caplog.text
