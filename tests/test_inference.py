"""inference: COCO results and annotated images, mAP on a split; transformers' object-detection pipeline
loads the saved models offline and finds the boxes inference finds. (Training, eval_checkpoints and inference
agreeing on mAP: test_eval_checkpoints.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import history_map
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from transformers import pipeline

from detr_ft.data.synthetic import draw_shape
from detr_ft.evaluation import inference

pytestmark = pytest.mark.slow  # the shared entry run (trained_run)


def infer(model_path: Path, output_dir: Path, *args: str) -> Path:
    assert inference.main(["--model_path", str(model_path), "--output_dir", str(output_dir), *args]) == 0
    return output_dir


@pytest.fixture
def image_folder(tmp_path: Path, trained_run: Path) -> Path:
    """A validation image (square, no resize) and a wider one (resized and padded by the model's preprocessing)."""
    folder = tmp_path / "images"
    folder.mkdir()
    data_dir = Path(json.loads((trained_run / "run_args.json").read_text())["dataset_dir"])
    shutil.copy(data_dir / "images" / "validation_1.png", folder / "square.png")
    wide = Image.new("RGB", (96, 60), (200, 220, 240))
    draw_shape(ImageDraw.Draw(wide), 2, 30, 12, 36, (20, 40, 60))
    wide.save(folder / "wide.jpg", quality=95)
    return folder


def test_inference_on_a_split_writes_coco_results_annotated_images_and_map(trained_run: Path, tmp_path: Path,
                                                                          recwarn):
    out = infer(trained_run / "checkpoint-18", tmp_path / "out", "--split", "validation", "--threshold", "0.1")
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]  # no accelerator, no pinned-memory warning

    data_dir = Path(json.loads((trained_run / "run_args.json").read_text())["dataset_dir"])
    ground_truth = COCO(str(data_dir / "annotations" / "validation.json"))
    results = ground_truth.loadRes(str(out / "predictions.json"))
    num_queries = json.loads((trained_run / "config.json").read_text())["num_queries"]
    assert len(results.getAnnIds()) == len(ground_truth.getImgIds()) * num_queries
    assert {a["category_id"] for a in results.dataset["annotations"]} <= set(ground_truth.getCatIds())

    annotated = sorted((out / "annotated").iterdir())
    assert [p.name for p in annotated] == sorted(image["file_name"] for image in ground_truth.dataset["images"])
    drawn = 0
    for path in annotated:
        with Image.open(path) as picture, Image.open(data_dir / "images" / path.name) as original:
            assert picture.size == original.size
            drawn += picture.convert("RGB").tobytes() != original.convert("RGB").tobytes()
    scores = [a["score"] for a in results.dataset["annotations"]]
    assert max(scores) >= 0.1 and drawn > 0
    assert json.loads((out / "metrics.json").read_text())["map"] == pytest.approx(
        history_map(trained_run)["checkpoint-18"], abs=1e-6)


def test_inference_on_an_image_folder_uses_the_model_labels(trained_run: Path, image_folder: Path,
                                                            tmp_path: Path):
    out = infer(trained_run, tmp_path / "out", "--images_dir", str(image_folder), "--threshold", "0.0")

    id2label = json.loads((trained_run / "config.json").read_text())["id2label"]
    assert json.loads((out / "categories.json").read_text()) == [
        {"id": int(label), "name": name} for label, name in sorted(id2label.items())]
    predictions = json.loads((out / "predictions.json").read_text())
    assert {p["category_id"] for p in predictions} <= {int(label) for label in id2label}
    assert {p["image_id"] for p in predictions} == {1, 2}
    assert not (out / "metrics.json").exists()
    for name in ("square.png", "wide.jpg"):
        with Image.open(out / "annotated" / name) as picture, Image.open(image_folder / name) as original:
            assert picture.size == original.size


@pytest.mark.parametrize("saved_model", ["checkpoint-6", "final model"])
def test_pipeline_loads_the_saved_model_offline_and_agrees_with_inference(
    trained_run: Path, image_folder: Path, tmp_path: Path, saved_model: str
):
    model_path = trained_run / "checkpoint-6" if saved_model == "checkpoint-6" else trained_run
    detector = pipeline("object-detection", model=str(model_path), device="cpu")
    out = infer(model_path, tmp_path / "out", "--images_dir", str(image_folder))
    ours = json.loads((out / "predictions.json").read_text())
    names = {c["id"]: c["name"] for c in json.loads((out / "categories.json").read_text())}

    for image_id, name in enumerate(("square.png", "wide.jpg"), start=1):  # the folder's sorted order
        with Image.open(image_folder / name) as image:
            found = detector(image.convert("RGB"), threshold=0.0)  # every query, in query order
        expected = [p for p in ours if p["image_id"] == image_id]
        assert len(found) == len(expected) > 0
        for theirs, mine in zip(found, expected, strict=True):
            x, y, w, h = mine["bbox"]
            assert theirs["label"] == names[mine["category_id"]]
            assert theirs["score"] == pytest.approx(mine["score"], abs=1e-4)
            # the pipeline truncates its box corners to int pixels
            corners = [theirs["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
            assert corners == pytest.approx([x, y, x + w, y + h], abs=1.0)


@pytest.mark.slow
def test_inference_names_skips_and_counts_undecodable_images_and_writes_the_rest(
    trained_run: Path, image_folder: Path, tmp_path: Path, caplog
):
    (image_folder / "random.jpg").write_bytes(bytes(range(256)) * 8)
    wide = (image_folder / "wide.jpg").read_bytes()
    (image_folder / "truncated.jpg").write_bytes(wide[: len(wide) // 2])
    out = infer(trained_run, tmp_path / "out", "--images_dir", str(image_folder))

    assert "skipping 2 images that cannot be decoded: random.jpg (UnidentifiedImageError" in caplog.text
    assert "truncated.jpg (OSError: Truncated File Read)" in caplog.text
    images = {image["id"]: image["file_name"] for image in json.loads((out / "images.json").read_text())}
    assert images == {1: "square.png", 2: "wide.jpg"}
    assert {p["image_id"] for p in json.loads((out / "predictions.json").read_text())} == {1, 2}
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["square.png", "wide.jpg"]


@pytest.mark.slow
def test_inference_on_an_image_folder_writes_the_id_to_file_mapping(trained_run: Path, image_folder: Path,
                                                                     tmp_path: Path):
    out = infer(trained_run, tmp_path / "out", "--images_dir", str(image_folder))

    images = json.loads((out / "images.json").read_text())
    assert images == [{"id": 1, "file_name": "square.png", "width": 64, "height": 64},
                      {"id": 2, "file_name": "wide.jpg", "width": 96, "height": 60}]
    results = COCO()
    results.dataset = {"images": images, "categories": json.loads((out / "categories.json").read_text())}
    results.createIndex()
    assert len(results.loadRes(str(out / "predictions.json")).getAnnIds()) > 0  # a COCO images list as loadRes needs


@pytest.mark.slow
def test_inference_keeps_each_images_sub_path_in_annotated(trained_run: Path, tmp_path: Path):
    data_dir = Path(shutil.copytree(json.loads((trained_run / "run_args.json").read_text())["dataset_dir"],
                                    tmp_path / "data"))
    coco = json.loads((data_dir / "annotations" / "validation.json").read_text())
    for folder, image in zip(("a", "b"), coco["images"][:2], strict=True):
        (data_dir / "images" / folder).mkdir()
        shutil.move(data_dir / "images" / image["file_name"], data_dir / "images" / folder / "img.png")
        image["file_name"] = f"{folder}/img.png"
    (data_dir / "annotations" / "validation.json").write_text(json.dumps(coco))
    out = infer(trained_run, tmp_path / "out", "--dataset_dir", str(data_dir), "--split", "validation")

    annotated = sorted(str(p.relative_to(out / "annotated")) for p in (out / "annotated").rglob("*.png"))
    assert len(annotated) == len(coco["images"])
    assert {"a/img.png", "b/img.png"} <= set(annotated)
    for folder in ("a", "b"):
        with Image.open(out / "annotated" / folder / "img.png") as picture, \
                Image.open(data_dir / "images" / folder / "img.png") as original:
            assert picture.size == original.size
