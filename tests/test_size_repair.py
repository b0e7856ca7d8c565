"""Images whose json width x height is not their own, as CPPE-5 has them: each repaired by what its boxes say or left
out, logged once per kind, audited in size_repairs.json, and refused with --on_size_mismatch refuse."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from detr_ft.config import DataArguments, StaticShapeArguments
from detr_ft.data import size_repair
from detr_ft.data.prepare import prepare_data, validated_splits
from detr_ft.data.size_repair import BOXES_SCALED, JSON_SIZE_SET, LEFT_OUT, SIDES_SWAPPED, write_size_repairs
from detr_ft.data.sources import DatasetError
from detr_ft.evaluation.saved_run import load_split

CATEGORIES = [{"id": 1, "name": "thing"}]
NEIGHBOUR = "neighbour.png"  # a correct image after the faulty one: it must still read its own file


@dataclass(frozen=True)
class Fault:
    """One image: its file (stored size, EXIF orientation), what its json says, and what the repair must give."""

    file_size: tuple[int, int]
    json_size: tuple[int, int]
    json_boxes: list[list[float]]
    repair: str
    new_size: tuple[int, int] | None  # None: left out
    true_boxes: list[list[float]] | None  # the boxes on the image the model sees; None: left out
    orientation: int = 1
    evidence: str = ""  # words the audit's reason must hold


FAULTS = {
    "json size wrong, boxes drawn on the file": Fault(
        (80, 60), (50, 40), [[10, 10, 65, 30], [5, 20, 20, 35]], JSON_SIZE_SET, (80, 60),
        [[10, 10, 65, 30], [5, 20, 20, 35]]),
    "image downscaled after annotation, boxes on the json size": Fault(
        (80, 60), (161, 121), [[20, 10, 130, 100], [2, 4, 30, 20]], BOXES_SCALED, (80, 60),
        [[20 * 80 / 161, 10 * 60 / 121, 130 * 80 / 161, 100 * 60 / 121],
         [2 * 80 / 161, 4 * 60 / 121, 30 * 80 / 161, 20 * 60 / 121]]),
    "sides swapped, boxes drawn on the file": Fault(
        (60, 80), (80, 60), [[5, 50, 40, 25]], SIDES_SWAPPED, (60, 80), [[5, 50, 40, 25]]),
    "sides swapped, boxes drawn on the image turned a quarter turn": Fault(
        (60, 80), (80, 60), [[50, 5, 25, 40]], LEFT_OUT, None, None, evidence="cannot tell which way"),
    "boxes fit neither size": Fault(
        (80, 60), (100, 100), [[50, 10, 60, 20]], LEFT_OUT, None, None, evidence="fit neither"),
    "boxes fit only a json size of another shape": Fault(
        (80, 60), (100, 100), [[50, 10, 45, 20]], LEFT_OUT, None, None, evidence="aspect ratio is not"),
    "stored pixels of an EXIF-turned photo downscaled after annotation": Fault(
        (40, 64), (80, 128), [[10, 70, 60, 50]], BOXES_SCALED, (40, 64), [[5, 35, 30, 25]], orientation=6),
    "boxes inside both sizes: the image is trusted": Fault(
        (80, 60), (160, 120), [[10, 10, 30, 20]], JSON_SIZE_SET, (80, 60), [[10, 10, 30, 20]],
        evidence="do not decide"),
}


def write_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int], orientation: int = 1) -> None:
    image = Image.new("RGB", size, colour)
    ImageDraw.Draw(image).rectangle([2, 2, 9, 9], fill=(255 - colour[0], 0, 0))  # not uniform: pixels identify files
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(path, exif=exif)


def write_split(folder: Path, split: str, faults: dict[str, Fault]) -> dict:
    """annotations/<split>.json with one image per fault (named by its position) and a correct neighbour last."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for image_id, fault in enumerate(faults.values(), start=1):
        name = f"{split}_{image_id}.png"
        write_image(folder / "images" / name, fault.file_size, (10 * image_id, 90, 90), fault.orientation)
        images.append({"id": image_id, "file_name": name, "width": fault.json_size[0], "height": fault.json_size[1]})
        annotations += [{"id": 100 * image_id + n, "image_id": image_id, "category_id": 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0} for n, box in enumerate(fault.json_boxes)]
    neighbour_id = len(images) + 1
    write_image(folder / "images" / f"{split}_{NEIGHBOUR}", (48, 32), (200, 200, 30))
    images.append({"id": neighbour_id, "file_name": f"{split}_{NEIGHBOUR}", "width": 48, "height": 32})
    annotations.append({"id": 100 * neighbour_id, "image_id": neighbour_id, "category_id": 1,
                        "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (folder / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return coco


def boxes_of(coco: dict, image_id: int) -> list[list[float]]:
    return [ann["bbox"] for ann in coco["annotations"] if ann["image_id"] == image_id]


@pytest.mark.parametrize("name", list(FAULTS))
def test_each_mismatch_is_repaired_by_its_evidence(tmp_path, name):
    fault = FAULTS[name]
    write_split(tmp_path, "train", {name: fault})
    write_split(tmp_path, "validation", {})
    train, _ = validated_splits(DataArguments(dataset_dir=str(tmp_path)))

    (record,) = train.size_repairs
    assert (record.file_name, record.repair, record.json_size, record.new_size) == (
        "train_1.png", fault.repair, fault.json_size, fault.new_size)
    assert fault.evidence in record.evidence
    ids = [image["id"] for image in train.coco["images"]]
    if fault.new_size is None:
        assert ids == [2] and [ann["image_id"] for ann in train.coco["annotations"]] == [2]
    else:
        assert ids == [1, 2]
        assert (train.coco["images"][0]["width"], train.coco["images"][0]["height"]) == fault.new_size
        np.testing.assert_allclose(boxes_of(train.coco, 1), fault.true_boxes, rtol=1e-9)
        areas = [ann["area"] for ann in train.coco["annotations"] if ann["image_id"] == 1]
        np.testing.assert_allclose(areas, [w * h for _, _, w, h in fault.true_boxes], rtol=1e-9)
        assert train.open_image(0).size == fault.new_size
    neighbour = ids.index(2)
    expected = Image.open(tmp_path / "images" / f"train_{NEIGHBOUR}").convert("RGB")
    np.testing.assert_array_equal(np.asarray(train.open_image(neighbour)), np.asarray(expected))


def folder_with_every_fault(tmp_path: Path) -> Path:
    write_split(tmp_path, "train", FAULTS)
    write_split(tmp_path, "validation", {"json size wrong, boxes drawn on the file":
                                         FAULTS["json size wrong, boxes drawn on the file"]})
    return tmp_path


def test_each_repair_kind_is_logged_once_with_its_count_and_files(tmp_path, caplog):
    folder = folder_with_every_fault(tmp_path)
    with caplog.at_level(logging.WARNING):
        validated_splits(DataArguments(dataset_dir=str(folder)))
    train_lines = [r.getMessage() for r in caplog.records if "train.json" in r.getMessage()]
    for kind, words in size_repair.KIND_NAMES.items():
        names = [f"train_{i}.png" for i, fault in enumerate(FAULTS.values(), start=1) if fault.repair == kind]
        (line,) = [line for line in train_lines if words in line]
        assert f"{len(names)} images have a json width x height unlike the image's" in line
        assert all(name in line for name in names)
    undecided = [line for line in train_lines if "fit both sizes and do not decide" in line]
    assert len(undecided) == 1 and "the boxes of 1 of them" in undecided[0]
    assert "train_1.png (json 50x40 -> 80x60, image 80x60)" in caplog.text


def test_the_run_folder_audit_lists_every_repair_once(tmp_path):
    """The eval split is carved from train: each train repair is audited once, whichever side its image fell on."""
    folder = folder_with_every_fault(tmp_path / "data")
    (folder / "annotations" / "validation.json").unlink()
    data = prepare_data(DataArguments(dataset_dir=str(folder), image_size=64, train_val_split=0.3),
                        StaticShapeArguments())
    path = write_size_repairs(tmp_path / "run", data.size_repairs)

    rows = json.loads(path.read_text())
    assert path == tmp_path / "run" / size_repair.SIZE_REPAIRS_FILE
    assert [(row["file_name"], row["repair"]) for row in rows] == [
        (f"train_{i}.png", fault.repair) for i, fault in enumerate(FAULTS.values(), start=1)]
    for row, fault in zip(rows, FAULTS.values(), strict=True):
        assert row["json_size"] == list(fault.json_size)
        assert row["new_size"] == (list(fault.new_size) if fault.new_size else None)
        assert row["split"] == "train" and row["annotation_file"].endswith("train.json") and row["evidence"]
    kept = {image["file_name"] for image in [*data.train.split.coco["images"], *data.eval.split.coco["images"]]}
    assert kept == {f"train_{i}.png" for i, fault in enumerate(FAULTS.values(), start=1) if fault.new_size} | {
        f"train_{NEIGHBOUR}"}


def test_nothing_repaired_writes_no_audit(tmp_path, synthetic_dir):
    data = prepare_data(DataArguments(dataset_dir=str(synthetic_dir), image_size=64), StaticShapeArguments())
    assert data.size_repairs == [] and write_size_repairs(tmp_path, data.size_repairs) is None
    assert not (tmp_path / size_repair.SIZE_REPAIRS_FILE).exists()


def test_the_strict_flag_refuses_naming_every_mismatched_image(tmp_path):
    folder = folder_with_every_fault(tmp_path)
    with pytest.raises(DatasetError) as error:
        validated_splits(DataArguments(dataset_dir=str(folder), on_size_mismatch="refuse"))
    message = str(error.value)
    assert f"{len(FAULTS)} images have a json width x height unlike the image's" in message
    for i, fault in enumerate(FAULTS.values(), start=1):
        assert f"train_{i}.png (json {fault.json_size[0]}x{fault.json_size[1]}" in message
    assert NEIGHBOUR not in message


def test_a_split_whose_every_image_is_left_out_is_refused(tmp_path):
    left_out = {name: fault for name, fault in FAULTS.items() if fault.new_size is None}
    write_split(tmp_path, "train", left_out)
    coco = json.loads((tmp_path / "annotations" / "train.json").read_text())
    coco["images"] = coco["images"][:-1]  # no neighbour
    coco["annotations"] = [ann for ann in coco["annotations"] if ann["image_id"] <= len(left_out)]
    (tmp_path / "annotations" / "train.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="every image was left out"):
        validated_splits(DataArguments(dataset_dir=str(tmp_path)))


@pytest.mark.parametrize("saved_flag", [None, "repair", "refuse"])
def test_evaluation_and_inference_follow_the_runs_saved_flag(tmp_path, saved_flag):
    """eval-all-checkpoints and inference read the eval split through `load_split` with run_args.json's flags; a run
    saved before the flag existed repairs."""
    write_split(tmp_path, "train", {})
    write_split(tmp_path, "validation", {"json size wrong, boxes drawn on the file":
                                         FAULTS["json size wrong, boxes drawn on the file"]})
    settings = {"dataset_dir": str(tmp_path), "eval_split": "validation"}
    if saved_flag:
        settings["on_size_mismatch"] = saved_flag
    if saved_flag == "refuse":
        with pytest.raises(DatasetError, match="validation_1.png \\(json 50x40, image 80x60\\)"):
            load_split(settings, "validation")
        return
    split = load_split(settings, "validation")
    assert [(r.file_name, r.repair) for r in split.size_repairs] == [("validation_1.png", JSON_SIZE_SET)]
    assert (split.coco["images"][0]["width"], split.coco["images"][0]["height"]) == (80, 60)


@pytest.mark.slow  # an entry run
def test_a_folder_with_every_fault_trains_through_the_entry_with_its_repairs_logged_and_audited(tmp_path, caplog):
    """What `make train ARGS="--dataset_dir ..."` runs, on detr-tiny: the run trains on the repaired images, the log
    names each kind of repair, and size_repairs.json in the run folder lists them, the eval split's too."""
    from entry_runs import entry_argv, run_in_process

    folder = folder_with_every_fault(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        assert run_in_process(entry_argv(folder, tmp_path / "run", "--max_steps", "2")) == 0

    assert all(words in caplog.text for words in size_repair.KIND_NAMES.values())
    rows = json.loads((tmp_path / "run" / size_repair.SIZE_REPAIRS_FILE).read_text())
    assert sorted((row["split"], row["file_name"], row["repair"]) for row in rows) == sorted(
        [("train", f"train_{i}.png", fault.repair) for i, fault in enumerate(FAULTS.values(), start=1)]
        + [("validation", "validation_1.png", JSON_SIZE_SET)])
    assert (tmp_path / "run" / "model.safetensors").exists()
