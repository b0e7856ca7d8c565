"""`python -m bench.run_bench --quick`: the numbers it reports agree with what the measured code does, and the
derived ones (ratios, tables) with the reported ones. Timings themselves are not asserted (load).

The quick run compiles every path in its own process (slow); the canvas part's eager epoch and one canvas path's
compilation also run in this process at the quick sizes (seconds), so make test-fast checks them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.compile_warmup import compile_warmup
from bench.run_bench import MAX_CANVAS_SHAPES, MAX_MAP_DIFF, QUICK, eager_epoch
from bench.training_step import forward_and_loss
from bench.workload import CANVAS_PATHS, IMAGE_BUCKETS, PATHS, build_model, make_batches, make_samples, step_loss
from detr_ft.data.canvases import choose_canvases
from detr_ft.data.padding import DetectionCollator
from detr_ft.train.sync_audit import HostSyncCounter

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def denormals_back_to_default():
    """The bench's build_model flushes denormals for its process: not for the tests after these."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def quick_epoch() -> dict[str, dict]:
    """The canvas part's eager epoch of every image path at the quick sizes, in this process."""
    return eager_epoch(QUICK.workload, QUICK.eager_every, QUICK.eager_chunks)


MAIN_TABLE, CANVAS_TABLE = 0, 1  # the printed tables, in order; some row names stand in both


def table_rows(printed: str, table: int) -> dict[str, list[str]]:
    """Row name -> cells of one of the printed tables."""
    lines = printed.split("| measure |")[1 + table].splitlines()
    return {cells[0]: cells[1:] for cells in (
        [cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| "))}


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
    return {path: make_batches(QUICK.workload, path, samples) for path in CANVAS_PATHS}


def test_canvas_paths_report_the_padding_and_shapes_of_their_own_batches(quick_epoch, quick_batches):
    samples = make_samples(QUICK.workload)
    sizes = [(sample["pixel_values"].shape[2], sample["pixel_values"].shape[1]) for sample in samples]  # (w, h)
    for path in CANVAS_PATHS:
        batches, reported = quick_batches[path], quick_epoch[path]
        shapes = {tuple(batch["pixel_values"].shape[2:]) for batch in batches}
        real = sum(int(batch["pixel_mask"].sum()) for batch in batches)
        assert reported["padded_pixel_fraction"] == pytest.approx(
            1 - real / sum(batch["pixel_mask"].numel() for batch in batches)), path
        assert reported["image_shapes"] == len(shapes), path
        assert reported["timed_steps"] == len(batches[::QUICK.eager_every]) and reported["images_per_s"] > 0, path
        if path in IMAGE_BUCKETS:  # every batch on one of the canvases chosen from the epoch's sizes
            assert shapes == set(choose_canvases(sizes, QUICK.workload.image_size, IMAGE_BUCKETS[path])), path
    # The quick epoch's CPPE-5 shapes make two canvases, which pad less than the square.
    assert quick_epoch["k2"]["image_shapes"] == 2
    assert quick_epoch["k2"]["padded_pixel_fraction"] < quick_epoch["ours"]["padded_pixel_fraction"]


def test_regional_compilation_compiles_a_repeated_layer_once_per_shape():
    """Compiled by regions (accelerate's compile_regions), dynamo reuses the first encoder layer's graph for the
    others: one more encoder layer adds no compilation."""
    recompile_limit = torch._dynamo.config.recompile_limit
    compilations = []
    try:
        for encoder_layers in (2, 3):
            workload = replace(QUICK.workload, encoder_layers=encoder_layers)
            run = compile_warmup(workload, "ours", QUICK.compile_backend, 1, regional=True)
            compilations.append(run["compilations"])
    finally:
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = recompile_limit
    assert compilations[0] == compilations[1] > 1


def test_a_canvas_path_compiles_one_graph_per_canvas(quick_epoch):
    """model.model compiled with dynamic=False on the K = 2 path: one graph per canvas (1 target bucket), none
    broken; run in this process, so dynamo's state is put back afterwards."""
    recompile_limit = torch._dynamo.config.recompile_limit
    try:
        run = compile_warmup(QUICK.workload, "k2", QUICK.compile_backend, MAX_CANVAS_SHAPES)
    finally:
        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = recompile_limit
    assert run["compilations"] == run["epoch_image_shapes"] == quick_epoch["k2"]["image_shapes"] == 2
    assert run["graph_breaks"] == 0


@pytest.mark.slow  # the quick run compiles every path, each in its own process
def test_reported_syncs_are_what_the_sync_audit_counts_on_the_same_steps(quick_run, quick_batches):
    results, _ = quick_run
    for path in PATHS:
        model = build_model(QUICK.workload, path)
        with HostSyncCounter() as counter:
            for batch in quick_batches[path][:QUICK.sync_steps]:
                step_loss(model, batch).backward()
        assert results["syncs_per_step"][path] == counter.count / QUICK.sync_steps, path
        assert results["syncs_by_op"][path] == {op: n / QUICK.sync_steps for op, n in counter.by_op.items()}, path
    assert results["syncs_per_step"]["ours"] == 1 and results["syncs_per_step"]["stock"] >= 14


@pytest.mark.slow
def test_static_path_compiles_once_per_bucket_and_stock_once_per_image_shape(quick_run, quick_batches):
    """model.model is compiled with dynamic=False: each image shape is a graph (stock: its graph breaks, more; its
    count is scaled from the shapes it compiled to the epoch's)."""
    results, _ = quick_run
    image_shapes = {path: {tuple(batch["pixel_values"].shape) for batch in quick_batches[path]} for path in PATHS}
    target_shapes = {tuple(batch["labels"]["class_labels"].shape) for batch in quick_batches["ours"]}

    assert len(image_shapes["ours"]) == len(target_shapes) == results["num_buckets"] == 1
    assert results["recompiles"]["ours"] == results["num_buckets"] and results["graph_breaks"]["ours"] == 0
    assert results["image_shapes_compiled"] == {path: len(image_shapes[path]) for path in PATHS}
    assert results["recompiles"]["stock"] >= len(image_shapes["stock"]) > 1
    assert results["compile_warmup_steps"] == QUICK.workload.batches_per_epoch


@pytest.mark.slow
def test_canvas_ratios_follow_from_the_reported_numbers(quick_run):
    results, printed = quick_run
    paths, ratios = results["canvas_paths"], results["canvas_ratios"]
    for path in CANVAS_PATHS:
        images_per_s = paths[path]["images_per_s"]
        assert ratios[path]["eager_vs_square"] == pytest.approx(images_per_s / paths["ours"]["images_per_s"])
        assert ratios[path]["eager_vs_stock"] == pytest.approx(images_per_s / paths["stock"]["images_per_s"])
        assert ratios[path]["compile_warmup_stock_over_path"] == pytest.approx(
            paths["stock"]["compile_warmup_s"] / paths[path]["compile_warmup_s"])
    for path in IMAGE_BUCKETS:  # our paths compile every shape of the epoch: one graph per canvas
        assert paths[path]["compile_graphs"] == paths[path]["compile_image_shapes"]
        assert not paths[path]["compile_estimated"]
    for path, measured in results["regional_compile"].items():
        assert measured["stock_over_path"] == pytest.approx(
            results["regional_compile"]["stock"]["warmup_s"] / measured["warmup_s"])
        assert measured["whole_over_regional"] == pytest.approx(paths[path]["compile_warmup_s"] / measured["warmup_s"])
    assert "compiled by regions" in printed
    loader = results["loader"]
    if loader:
        steps = {path: paths[path]["images_per_s"] for path in CANVAS_PATHS}
        assert loader["step_images_per_s"] == steps
        assert loader["over_fastest_step"] == pytest.approx(loader["images_per_s"] / max(steps.values()))
        assert f"{loader['over_fastest_step']:.2f}x the fastest path's eager images/s" in printed
    assert "goal" not in printed and "goal" not in json.dumps(results)  # measurements and ratios, no verdicts
    rows = table_rows(printed, CANVAS_TABLE)
    assert rows["eager vs square"] == [f"{ratios[path]['eager_vs_square']:.2f}x" for path in CANVAS_PATHS]
    eager_px = results["sizes"]["canvas_eager_image_size"]
    assert rows[f"padded-pixel fraction, {eager_px} px"] == [f"{paths[path]['padded_pixel_fraction']:.3f}"
                                                             for path in CANVAS_PATHS]


@pytest.mark.slow
def test_gaudi_stack_syncs_once_per_step(quick_run):
    results, printed = quick_run
    gaudi = results["gaudi_stack"]
    if "skipped" in gaudi:
        pytest.skip(gaudi["skipped"])
    assert gaudi["stack"]["transformers"].startswith("4.55") and gaudi["stack"]["optimum-habana"]
    assert gaudi["syncs_per_step"]["ours"] == 1 and gaudi["syncs_by_op"]["ours"] == {"Tensor.cpu": 1.0}
    assert gaudi["syncs_per_step"]["stock"] > 1
    assert "host syncs per step, Gaudi stack" in printed


@pytest.mark.slow
def test_ratios_follow_from_the_reported_numbers(quick_run):
    results, _ = quick_run
    eager, warmup, map_seconds = results["eager_steps_per_s"], results["compile_warmup_s"], results["map_eval_s"]
    assert results["eager_ratio"] == pytest.approx(eager["ours"] / eager["stock"])
    assert results["compile_warmup_speedup"] == pytest.approx(warmup["stock"] / warmup["ours"])
    assert results["map_eval_speedup"] == pytest.approx(map_seconds["pycocotools"] / map_seconds["ours"])


@pytest.mark.slow
def test_training_step_finds_the_criterions_loss_with_one_host_read(quick_run):
    """The timed step computes the loss of the label-free forward and DetrCriterion, recomputed here on the same
    batch, and reads the host once (the matcher's copy)."""
    results, printed = quick_run
    step = results["matcher_step"]
    _, batch_size, _, target_slots = QUICK.matcher_shape
    workload = replace(QUICK.workload, batch_size=batch_size)
    model = build_model(workload, "ours")
    batch = DetectionCollator(workload.image_size, [target_slots])(make_samples(workload)[:batch_size])
    torch.manual_seed(workload.seed)
    expected = float(forward_and_loss(model, batch).detach())
    assert set(step["loss"]) == set(step["ms_per_step"]) == {"eager"}
    assert step["loss"]["eager"] == pytest.approx(expected, rel=1e-6), (step["loss"], expected)
    assert step["host_reads_per_step"] == {"eager": 1}
    assert f"batch {batch_size}, {target_slots} target slots: eager {step['ms_per_step']['eager']:.0f}" in printed


@pytest.mark.slow
def test_map_evaluations_agree(quick_run):
    results, _ = quick_run
    assert abs(results["map"]["ours"] - results["map"]["pycocotools"]) <= results["map_max_abs_diff"] <= MAX_MAP_DIFF
    assert 0 < results["map"]["ours"] < 1


@pytest.mark.slow
def test_table_prints_the_reported_numbers(quick_run):
    results, printed = quick_run
    rows = table_rows(printed, MAIN_TABLE)

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
