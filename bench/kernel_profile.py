"""What a training step asks of an accelerator, from torch.profiler: kernels per step, the host's launch calls per
step, and the fraction of the steps' wall time the device was busy.

- kernels: device events that are kernels (copies and memsets left out), CUDA graph replays' included where the
  profiler (CUPTI) records them one by one;
- launch calls: the host's CUDA runtime/driver calls that start device work, a kernel launch or a whole graph's
  (`LAUNCH_CALLS`): what CUDA graphs cut;
- busy fraction: the union of every device event's interval (kernels, copies, memsets), over the window from the first
  step's start on the host to the later of its last step's end and the last device event's end.

On a CPU there are no device events: kernels, launch calls and the busy fraction are None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

STEP_MARK = "training_step"
LAUNCH_CALLS = frozenset({"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                          "cudaLaunchCooperativeKernel", "cudaGraphLaunch"})
NOT_KERNELS = ("Memcpy", "Memset")


@dataclass(frozen=True)
class StepProfile:
    steps: int
    kernels_per_step: float | None
    launch_calls_per_step: float | None
    busy_fraction: float | None


def profile_steps(step: Callable[[Any], Any], batches: Sequence[Any], device: str) -> StepProfile:
    """`step` run on each of `batches` under torch.profiler, each marked as one step, the device waited for."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as profiler:
        for batch in batches:
            with record_function(STEP_MARK):
                step(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return summarize(profiler.events(), len(batches))


def summarize(events: Iterable[Any], steps: int) -> StepProfile:
    """`StepProfile` of profiler events (`FunctionEvent`s: name, device_type, time_range with start and end in us)."""
    events = list(events)
    marks = [e.time_range for e in events if e.name == STEP_MARK and e.device_type == DeviceType.CPU]
    device = [e for e in events if e.device_type == DeviceType.CUDA]
    if not device:
        return StepProfile(steps, None, None, None)
    kernels = [e for e in device if not e.name.startswith(NOT_KERNELS)]
    launches = [e for e in events if e.device_type == DeviceType.CPU and e.name in LAUNCH_CALLS]
    start = min(mark.start for mark in marks)
    end = max(max(mark.end for mark in marks), max(e.time_range.end for e in device))
    busy = covered_length([(e.time_range.start, e.time_range.end) for e in device], start, end)
    return StepProfile(steps, len(kernels) / steps, len(launches) / steps, busy / (end - start))


def covered_length(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of `intervals` within [start, end]."""
    covered, reached = 0.0, start
    for low, high in sorted(intervals):
        low, high = max(low, reached), min(high, end)
        if high > low:
            covered += high - low
            reached = high
    return covered
