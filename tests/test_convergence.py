"""Learning works: the demo's from-scratch recipe, cut to 8 epochs (1,024 steps, 2-3 minutes on 2 cores), must
reach mAP50 0.4 on the synthetic validation set (it gives about 0.55; a transformers-default init gives ~0.02)."""

import json

import pytest

import run_object_detection
from detr_ft.demo import recipe, write_data

pytestmark = pytest.mark.slow  # minutes of training


def test_demo_recipe_learns_to_detect_shapes(tmp_path):
    output_dir = tmp_path / "run"
    argv = recipe(write_data(tmp_path / "data"), output_dir, epochs=8, eval_every=8)
    assert run_object_detection.main([*argv, "--disable_tqdm", "true"]) == 0
    final = json.loads((output_dir / "eval_history.json").read_text())[-1]
    assert final["step"] == 1024
    assert final["metrics"]["map_50"] >= 0.4, final["metrics"]
