"""`python -m bench.run_bench --quick`: the numbers it reports agree with what the measured code does, and the
derived ones (ratios, table) with the reported ones. Timings themselves are not asserted (load)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.run_bench import MAX_MAP_DIFF, QUICK
from bench.training_step import forward_and_loss
from bench.workload import PATHS, build_model, make_batches, make_samples
from detr_ft.data.padding import DetectionCollator
from detr_ft.model.device_matcher import worst_case_steps
from detr_ft.model.matcher import hungarian_match
from detr_ft.train.sync_audit import HostSyncCounter

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # compiles both paths, each in its own process


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str]:
    """The results and the printed output of one quick run, started as `make bench` starts it."""
    output = tmp_path_factory.mktemp("bench") / "results.json"
    command = [sys.executable, "-m", "bench.run_bench", "--quick", "--output", str(output)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(output.read_text()), finished.stdout


@pytest.fixture(scope="module")
def quick_batches() -> dict[str, list[dict]]:
    """The batches of the quick workload, as each path collates them."""
    samples = make_samples(QUICK.workload)
    return {path: make_batches(QUICK.workload, path, samples) for path in PATHS}


def test_reported_syncs_are_what_the_sync_audit_counts_on_the_same_steps(quick_run, quick_batches):
    results, _ = quick_run
    for path in PATHS:
        model = build_model(QUICK.workload, path)
        with HostSyncCounter() as counter:
            for batch in quick_batches[path][:QUICK.sync_steps]:
                model(**batch).loss.backward()
        assert results["syncs_per_step"][path] == counter.count / QUICK.sync_steps, path
        assert results["syncs_by_op"][path] == {op: n / QUICK.sync_steps for op, n in counter.by_op.items()}, path
    assert results["syncs_per_step"]["ours"] == 1 and results["syncs_per_step"]["stock"] >= 14


def test_static_path_compiles_once_per_bucket_and_stock_once_per_image_shape(quick_run, quick_batches):
    """model.model is compiled with dynamic=False: each image shape is a graph (stock: its graph breaks, more)."""
    results, _ = quick_run
    compiled = {path: quick_batches[path][:QUICK.compile_batches] for path in PATHS}
    image_shapes = {path: {tuple(batch["pixel_values"].shape) for batch in compiled[path]} for path in PATHS}
    target_shapes = {tuple(batch["labels"]["class_labels"].shape) for batch in compiled["ours"]}

    assert len(image_shapes["ours"]) == len(target_shapes) == results["num_buckets"] == 1
    assert results["recompiles"]["ours"] == results["num_buckets"] and results["graph_breaks"]["ours"] == 0
    assert results["image_shapes_compiled"] == {path: len(image_shapes[path]) for path in PATHS}
    assert results["recompiles"]["stock"] >= len(image_shapes["stock"]) > 1
    assert results["compile_warmup_steps"] == QUICK.compile_epochs * len(compiled["ours"])


def test_gaudi_stack_syncs_once_per_step(quick_run):
    results, printed = quick_run
    gaudi = results["gaudi_stack"]
    if "skipped" in gaudi:
        pytest.skip(gaudi["skipped"])
    assert gaudi["stack"]["transformers"].startswith("4.55") and gaudi["stack"]["optimum-habana"]
    assert gaudi["syncs_per_step"]["ours"] == 1 and gaudi["syncs_by_op"]["ours"] == {"Tensor.cpu": 1.0}
    assert gaudi["syncs_per_step"]["stock"] > 1
    assert "host syncs per step, Gaudi stack" in printed


def test_ratios_follow_from_the_reported_numbers(quick_run):
    results, _ = quick_run
    eager, warmup, map_seconds = results["eager_steps_per_s"], results["compile_warmup_s"], results["map_eval_s"]
    assert results["eager_ratio"] == pytest.approx(eager["ours"] / eager["stock"])
    assert results["compile_warmup_speedup"] == pytest.approx(warmup["stock"] / warmup["ours"])
    assert results["map_eval_speedup"] == pytest.approx(map_seconds["pycocotools"] / map_seconds["ours"])
    assert results["goals"]["eager_ratio"]["met"] == (results["eager_ratio"] >= 1.0)


def test_device_matcher_is_timed_against_scipy(quick_run):
    results, printed = quick_run
    matcher = results["device_matcher"]
    assert set(matcher["ms_per_step"]) == {"scipy", "device_eager", "device_compiled", "device_eager_worst_case"}
    assert all(ms > 0 for ms in matcher["ms_per_step"].values())
    assert "matcher ms per step, 2 layers x 2 images" in printed


def test_training_step_per_matcher_finds_the_same_loss_and_the_device_matcher_reads_nothing(quick_run):
    """Every matcher's step computes the loss of the host matcher's step, recomputed here on the same batch (the
    device matcher is exact); QUICK's short step count covers the worst case, so the device step reads nothing."""
    results, printed = quick_run
    step = results["matcher_step"]
    _, batch_size, _, target_slots = QUICK.matcher_shape
    workload = replace(QUICK.workload, batch_size=batch_size)
    model = build_model(workload, "ours")
    batch = DetectionCollator(workload.image_size, [target_slots])(make_samples(workload)[:batch_size])
    torch.manual_seed(workload.seed)
    expected = float(forward_and_loss(model, batch, hungarian_match).detach())
    assert set(step["loss"]) == set(step["ms_per_step"]) == {"scipy", "device_eager", "device_compiled"}
    assert all(loss == pytest.approx(expected, rel=1e-6) for loss in step["loss"].values()), (step["loss"], expected)
    assert step["short_steps"] >= worst_case_steps(workload.num_queries, target_slots)
    assert step["host_reads_per_step"] == {"scipy": 1, "device_eager": 0}
    assert f"batch {batch_size}, {target_slots} target slots: scipy {step['ms_per_step']['scipy']:.0f}" in printed


def test_map_evaluations_agree(quick_run):
    results, _ = quick_run
    assert abs(results["map"]["ours"] - results["map"]["pycocotools"]) <= results["map_max_abs_diff"] <= MAX_MAP_DIFF
    assert 0 < results["map"]["ours"] < 1


def test_table_prints_the_reported_numbers(quick_run):
    results, printed = quick_run
    rows = {cells[0]: cells[1:] for cells in (
        [cell.strip() for cell in line.strip("|").split("|")] for line in printed.splitlines() if line.startswith("| ")
    )}

    def row(prefix: str) -> list[str]:
        """The row named `prefix`, else the one row whose name starts with it (the Gaudi stack's syncs have a row of
        their own, "host syncs per step, Gaudi stack ...")."""
        (name,) = [name for name in rows if name == prefix] or [name for name in rows if name.startswith(prefix)]
        return rows[name]

    syncs = results["syncs_per_step"]
    assert row("host syncs per step")[:2] == [f"{syncs['stock']:.0f}", f"{syncs['ours']:.0f}"]
    assert row("graph compilations")[:2] == [str(results["recompiles"]["stock"]), str(results["recompiles"]["ours"])]
    assert row("eager steps/s")[2] == f"{results['eager_ratio']:.2f}x"
    assert row("compile warm-up s")[2] == f"{results['compile_warmup_speedup']:.2f}x"
    assert row("mAP eval s")[2] == f"{results['map_eval_speedup']:.2f}x"
    assert printed.splitlines()[-1].startswith("results: ") and printed.rstrip().endswith("results.json")
