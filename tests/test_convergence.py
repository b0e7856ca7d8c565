"""Learning works: the demo's from-scratch recipe, cut to 8 epochs (1,024 steps, 2-3 minutes on 2 cores), must
reach mAP50 0.4 on the synthetic validation set (it gives about 0.55; a transformers-default init gives ~0.02)."""

import json

import pytest
from conftest import REPO

import run_object_detection
from detr_ft.demo import recipe, write_data

pytestmark = pytest.mark.slow  # minutes of training


def test_demo_recipe_learns_to_detect_shapes(tmp_path):
    output_dir = tmp_path / "run"
    argv = recipe(write_data(tmp_path / "data"), output_dir, "--num_train_epochs", "8", "--ckpt_store_interval_epochs",
                  "8")
    assert run_object_detection.main([*argv, "--disable_tqdm", "true"]) == 0
    final = json.loads((output_dir / "eval_history.json").read_text())[-1]
    assert final["step"] == 1024
    assert final["metrics"]["map_50"] >= 0.4, final["metrics"]


def test_canvas_demo_trains_both_runs_and_prints_their_map_side_by_side(tmp_path, monkeypatch, capsys):
    """`make demo-canvases` cut to one epoch of 96 images: both runs train on their canvases and the table pairs their
    evaluations (the full demo's numbers are in the README)."""
    from detr_ft import demo

    monkeypatch.chdir(REPO)  # the demo runs `run_object_detection.py` from the checkout, as `make` does
    monkeypatch.setattr(demo, "CANVAS_DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(demo, "CANVAS_OUTPUT_DIR", tmp_path / "runs")
    monkeypatch.setattr(demo, "CANVAS_TRAIN_IMAGES", 96)
    monkeypatch.setattr(demo, "CANVAS_VALIDATION_IMAGES", 6)
    monkeypatch.setattr(demo, "CANVAS_EPOCHS", 1)
    assert demo.main(["canvases"]) == 0

    printed = capsys.readouterr().out
    assert "demo-canvases: K=1 canvases [[64, 64]], padded pixels 33.3%" in printed
    assert "demo-canvases: K=3 canvases [[64, 32], [64, 64], [32, 64]], padded pixels 0.0%" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip().startswith("3 ")]
    assert len(rows) == 1 and len(rows[0]) == 5  # step 3: mAP50 and mAP of each run
