"""`python -m bench.run_bench --quick`: every measure runs and the counts hold; timings are not asserted (load)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run_bench import MAX_MAP_DIFF

REPO = Path(__file__).resolve().parent.parent

MEASURES_OF_BOTH_PATHS = (
    "syncs_per_step", "recompiles", "compile_warmup_s", "eager_steps_per_s", "matcher_ms_per_step",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str]:
    """The results and the printed output of one quick run, started as `make bench` starts it."""
    output = tmp_path_factory.mktemp("bench") / "results.json"
    command = [sys.executable, "-m", "bench.run_bench", "--quick", "--output", str(output)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(output.read_text()), finished.stdout


def test_results_hold_every_measure(quick_run):
    results, _ = quick_run
    for measure in MEASURES_OF_BOTH_PATHS:
        assert set(results[measure]) == {"stock", "ours"}, measure
        assert all(value >= 0 for value in results[measure].values()), measure
    assert set(results["map_eval_s"]) == {"pycocotools", "ours"}
    assert results["eager_ratio"] > 0 and results["compile_warmup_steps"] > 0
    assert {"cpu_count", "torch", "processor"} <= set(results["machine"])
    assert set(results["goals"]) == {"syncs", "recompiles", "eager_ratio", "compile_warmup", "map_eval"}
    assert all(isinstance(goal["met"], bool) for goal in results["goals"].values())


def test_ours_syncs_once_per_step_and_stock_often(quick_run):
    results, _ = quick_run
    assert results["syncs_per_step"]["ours"] == 1
    assert results["syncs_per_step"]["stock"] >= 14
    assert results["syncs_by_op"]["ours"] == {"Tensor.cpu": 1.0}
    assert results["goals"]["syncs"]["met"]


def test_gaudi_stack_syncs_once_per_step(quick_run):
    results, printed = quick_run
    gaudi = results["gaudi_stack"]
    if "skipped" in gaudi:
        pytest.skip(gaudi["skipped"])
    assert gaudi["stack"]["transformers"].startswith("4.55") and gaudi["stack"]["optimum-habana"]
    assert gaudi["syncs_per_step"]["ours"] == 1 and gaudi["syncs_by_op"]["ours"] == {"Tensor.cpu": 1.0}
    assert gaudi["syncs_per_step"]["stock"] > 1
    assert "host syncs per step, Gaudi stack" in printed


def test_ours_compiles_once_and_stock_recompiles(quick_run):
    results, _ = quick_run
    assert results["recompiles"]["ours"] == 1 and results["graph_breaks"]["ours"] == 0
    assert results["recompiles"]["stock"] > 1 and results["image_shapes_compiled"]["stock"] > 1


def test_device_matcher_is_timed_against_scipy(quick_run):
    results, printed = quick_run
    matcher = results["device_matcher"]
    assert set(matcher["ms_per_step"]) == {"scipy", "device_eager", "device_compiled", "device_eager_worst_case"}
    assert all(ms > 0 for ms in matcher["ms_per_step"].values())
    assert "matcher ms per step, 2 layers x 2 images" in printed


def test_map_evaluations_agree(quick_run):
    results, _ = quick_run
    assert results["map_max_abs_diff"] <= MAX_MAP_DIFF
    assert 0 < results["map"]["ours"] < 1


def test_table_is_printed(quick_run):
    _, printed = quick_run
    for row in ("host syncs per step", "graph compilations", "eager steps/s", "matcher ms", "mAP eval s"):
        assert row in printed
    assert "results: " in printed
