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


def test_inference_on_a_split_writes_coco_results_annotated_images_and_map(trained_run: Path, tmp_path: Path):
    out = infer(trained_run / "checkpoint-18", tmp_path / "out", "--split", "validation", "--threshold", "0.1")

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
