"""Conditional DETR and Deformable DETR through the entry, as DETR runs (tests/entry_runs.py's tiny runs, a constant
learning rate): a preset and a local folder saved like a pretrained checkpoint each train, evaluate mAP and
checkpoint, reading the host once per step (target buckets, no finite-loss guard); a run stopped after its first
checkpoint resumes to the uninterrupted run's weights; eval_checkpoints, inference and transformers' object-detection
pipeline load the saved model as its family and score it as training did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import copy_run, history_map
from entry_runs import entry_argv, final_weights, run_in_process
from PIL import Image
from test_families import saved_pretrained
from transformers import AutoConfig, AutoImageProcessor, pipeline

from detr_ft.evaluation import eval_checkpoints, inference
from detr_ft.model.families import FAMILIES
from detr_ft.train.checkpoints import complete_checkpoints
from detr_ft.train.run_summary import SUMMARY_FILE

pytestmark = pytest.mark.slow  # entry runs

# name: (model_type, a preset or None for a folder saved like a pretrained checkpoint)
SOURCES = {
    "conditional preset": ("conditional_detr", "conditional-detr-tiny"),
    "conditional folder": ("conditional_detr", None),
    "deformable preset": ("deformable_detr", "deformable-detr-tiny"),
    "deformable folder": ("deformable_detr", None),
}


def model_source(name: str, folder: Path) -> str:
    model_type, preset = SOURCES[name]
    return preset or str(saved_pretrained(model_type, folder))


def family_argv(data_dir: Path, output_dir: Path, source: str, *extra: str) -> list[str]:
    return entry_argv(data_dir, output_dir, "--model_name_or_path", source, "--lr_scheduler_type", "constant",
                      "--check_finite_loss", "false", *extra)


@pytest.fixture(scope="module")
def family_runs(tiny_coco, tmp_path_factory):
    """run(name) -> (the run folder of SOURCES[name], its model source): 2 epochs of 2 steps, run once per module."""
    runs = {}

    def run(name: str) -> tuple[Path, str]:
        if name not in runs:
            base = tmp_path_factory.mktemp(name.replace(" ", "-"))
            source = model_source(name, base / "model")
            assert run_in_process(family_argv(tiny_coco, base / "run", source)) == 0
            runs[name] = base / "run", source
        return runs[name]

    return run


@pytest.mark.parametrize("name", SOURCES)
def test_trains_evaluates_and_checkpoints_as_its_family_reading_the_host_once_per_step(name, family_runs):
    run_dir, _ = family_runs(name)
    family = FAMILIES[SOURCES[name][0]]

    assert [record["step"] for record in json.loads((run_dir / "eval_history.json").read_text())] == [2, 4]
    assert [path.name for path in complete_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["host_syncs_per_step"] == 1
    for saved in (run_dir, run_dir / "checkpoint-2"):
        assert AutoConfig.from_pretrained(saved).model_type == family.model_type
        # what pipeline("object-detection") post-processes with: the family's own sigmoid top-k
        assert type(AutoImageProcessor.from_pretrained(saved)).__name__.startswith(family.image_processor)


@pytest.mark.parametrize("name", SOURCES)
def test_a_run_stopped_after_its_first_checkpoint_resumes_to_the_uninterrupted_runs_weights(
        name, family_runs, tiny_coco, tmp_path):
    reference, source = family_runs(name)

    assert run_in_process(family_argv(tiny_coco, tmp_path, source, "--num_train_epochs", "1")) == 0
    assert run_in_process(family_argv(tiny_coco, tmp_path, source)) == 0

    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["resumed_from_step"] == 2
    weights, reference_weights = final_weights(tmp_path), final_weights(reference)
    assert weights.keys() == reference_weights.keys()
    assert all(torch.equal(weights[key], reference_weights[key]) for key in reference_weights)
    assert history_map(tmp_path) == history_map(reference)


@pytest.mark.parametrize("name", SOURCES)
def test_eval_checkpoints_and_inference_score_the_map_training_logged(name, family_runs, tmp_path):
    run_dir = copy_run(family_runs(name)[0], tmp_path / "run")
    logged = history_map(run_dir)

    assert eval_checkpoints.main(["--run_dir", str(run_dir)]) == 0
    scored = json.loads((run_dir / "checkpoint_metrics.json").read_text())["checkpoints"]
    assert {record["checkpoint"]: record["metrics"]["map"] for record in scored} == pytest.approx(logged, abs=1e-6)

    assert inference.main(["--model_path", str(run_dir / "checkpoint-2"), "--output_dir", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["map"] == pytest.approx(
        logged["checkpoint-2"], abs=1e-6)


@pytest.mark.parametrize("name", ["conditional preset", "deformable folder"])
def test_the_pipeline_finds_what_inference_finds(name, family_runs, tiny_coco, tmp_path):
    """transformers' pipeline on the saved run: the family's model class and post-processing, the top (query,
    class) pairs by sigmoid score, as our inference writes them."""
    run_dir, _ = family_runs(name)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(tiny_coco / "images" / "validation_000001.png", images)
    detector = pipeline("object-detection", model=str(run_dir), device="cpu")
    assert inference.main(["--model_path", str(run_dir), "--output_dir", str(tmp_path / "out"),
                           "--images_dir", str(images)]) == 0
    ours = json.loads((tmp_path / "out" / "predictions.json").read_text())
    names = {c["id"]: c["name"] for c in json.loads((tmp_path / "out" / "categories.json").read_text())}

    with Image.open(images / "validation_000001.png") as image:
        found = detector(image.convert("RGB"), threshold=0.0)  # the top min(100, Q * C) pairs, best first
    assert type(detector.model) is FAMILIES[SOURCES[name][0]].model_class
    assert len(found) == len(ours) == min(100, detector.model.config.num_queries * len(names))
    for theirs, mine in zip(found, ours, strict=True):
        x, y, w, h = mine["bbox"]
        assert theirs["label"] == names[mine["category_id"]]
        assert theirs["score"] == pytest.approx(mine["score"], abs=1e-4)
        corners = [theirs["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]  # truncated to int pixels
        assert corners == pytest.approx([x, y, x + w, y + h], abs=1.0)
