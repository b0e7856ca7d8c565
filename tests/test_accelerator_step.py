"""bench/accelerator_step.py, scripts/gpu_check.sh's measure of the step's paths: on the CPU, at toy sizes, the derived
numbers (TFLOP/s, ratios to stock, the printed table) follow from the measured ones, the captured path's accumulation
check holds, a path past the time budget is skipped by name; the profile's counts and busy fraction follow from the
profiler's events (stand-ins for the CUDA events a CPU has none of); device names find their peak."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from bench.accelerator_step import StepArguments, failures, format_table, run
from bench.device_peaks import dense_bf16_peak
from bench.kernel_profile import STEP_MARK, covered_length, summarize

BATCH = 2


@pytest.fixture(scope="module", autouse=True)
def denormals_back_to_default():
    """The bench's build_model flushes denormals for its process: not for the tests after these."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def measured() -> dict:
    arguments = StepArguments(device="cpu", image_size=64, batch_sizes=[BATCH], paths=["stock", "eager", "captured"],
                              resnet50=False, compile_backend="aot_eager", warmup_steps=2, timed_steps=2,
                              profiled_steps=1, output="unused")
    return run(arguments)


def test_derived_numbers_and_the_table_follow_from_the_measured_ones(measured):
    paths = {m["path"]: m for m in measured["measured"]}
    assert list(paths) == ["stock", "eager", "captured"] and measured["skipped"] == []
    table = format_table(measured)
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in table.splitlines() if line.startswith("| ")
                                              and not line.startswith("| path") and not line.startswith("| ---"))}
    for path, m in paths.items():
        assert m["tflops"] == pytest.approx(m["flop_per_step"] * m["images_per_s"] / BATCH / 1e12)
        assert m["flop_per_step"] > 0 and m["images_per_s"] > 0
        versus = m["images_per_s"] / paths["stock"]["images_per_s"]
        assert rows[path][:3] == [str(BATCH), f"{m['images_per_s']:.1f}", f"{versus:.2f}x"], path
        assert rows[path][3:6] == ["-", "-", "-"]  # busy, kernels, launches: no device events on a CPU
    # the same function on our paths: the same FLOP, counted on the eager form of the captured step
    assert paths["captured"]["flop_per_step"] == paths["eager"]["flop_per_step"]
    assert paths["captured"]["accumulation_deviation"] <= 1e-6 and paths["captured"]["cudagraph_skips"] == 0
    assert failures(measured) == []
    assert measured["peak"] is None and "peak unknown" in table


def test_a_failed_accumulation_or_an_uncaptured_graph_is_named(measured):
    broken = {**measured, "measured": [{**m, "accumulation_deviation": 0.5, "cudagraph_skips": 2}
                                       for m in measured["measured"] if m["path"] == "captured"]}
    assert failures(broken) == [f"captured, batch {BATCH}: 2 graphs not captured",
                                f"captured, batch {BATCH}: accumulated gradients off by 5.0e-01 of the largest"]


def test_paths_past_the_time_budget_are_skipped_by_name():
    arguments = StepArguments(device="cpu", image_size=64, batch_sizes=[BATCH, 4], paths=["eager", "compiled"],
                              resnet50=False, budget_s=0.0, output="unused")
    results = run(arguments)
    assert results["measured"] == []
    assert [(s["path"], s["batch"]) for s in results["skipped"]] == [("eager", 2), ("eager", 4), ("compiled", 2),
                                                                      ("compiled", 4)]
    assert "skipped: compiled, batch 4 (time budget 0 s)" in format_table(results)


def event(name: str, device: DeviceType, start: float, end: float) -> SimpleNamespace:
    """A stand-in for the profiler's FunctionEvent: what `summarize` reads of one."""
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))


def test_profile_counts_kernels_launches_and_the_busy_time_of_its_steps():
    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    events = [
        event(STEP_MARK, cpu, 0, 40), event(STEP_MARK, cpu, 50, 80),
        event("cudaLaunchKernel", cpu, 1, 2), event("cudaLaunchKernel", cpu, 3, 4),
        event("cudaGraphLaunch", cpu, 51, 52),
        event("aten::mm", cpu, 1, 3),  # an op, not a launch
        event("gemm_kernel", cuda, 10, 30), event("add_kernel", cuda, 25, 35),  # overlapping: 10-35
        event("Memcpy HtoD (Pageable -> Device)", cuda, 60, 70),  # busy, not a kernel
        event("graph_kernel", cuda, 85, 100),  # past the last step's end on the host: the window ends at 100
    ]
    profile = summarize(events, steps=2)
    assert profile.kernels_per_step == 3 / 2 and profile.launch_calls_per_step == 3 / 2
    assert profile.busy_fraction == pytest.approx((25 + 10 + 15) / 100)
    assert summarize([e for e in events if e.device_type == cpu], steps=2).busy_fraction is None


def test_covered_length_is_the_union_within_the_window():
    assert covered_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7), (-1, 0.5)], 0, 5.5) == pytest.approx(3.5)
    assert covered_length([], 0, 10) == 0


@pytest.mark.parametrize(("name", "part", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.0),
    ("NVIDIA H200", "H200 SXM", 989.0),
    ("NVIDIA H200 NVL", "H200 NVL", 835.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA L40S", "L40S", 362.0),
    ("NVIDIA L4", "L4", 121.0),
    ("NVIDIA A10", "A10", 125.0),
])
def test_device_names_find_their_dense_bf16_peak(name, part, tflops):
    assert dense_bf16_peak(name) == (part, tflops)


def test_an_unknown_device_has_no_peak():
    assert dense_bf16_peak("Tesla V100-SXM2-16GB") is None and dense_bf16_peak("cpu") is None
