"""The run summary: console and `<output_dir>/run_summary.json`, written at the end of every training run.

Fields: device (the one the trainer's arguments chose), trainer, precision, image_size, buckets, image_canvases
([[H, W], ...] with --pad_images) and padded_pixel_fraction (padding share of the training images' canvas pixels),
steps, epochs, train_samples_per_second (the trainer's, first steps and evaluations included),
steady_samples_per_second (from the median step time after WARMUP_STEPS), stack (which road the run took,
`training_stack`: the trainer class, HPU lazy or eager mode, the torch.compile backend, and the torch, transformers
and optimum-habana versions; None for what does not apply or a package not installed; logged at start-up too),
graph_compilations (during training, evaluations included) and, with --audit_host_syncs, host_syncs_per_step.

Host syncs are counted over forward, loss, backward and gradient clipping of one step (the second, so one-time
set-up is not counted): the part of a step that runs as one graph on HPU. Graph compilations are read in-process at
the end of training: on HPU from Habana's `graph_compilation` metric (the counter PT_HPU_METRICS_FILE dumps), with
torch.compile from dynamo's counters (graphs compiled, recompilations included).

A resumed run's summary covers the whole run: train_loss is the mean over every step since step 0, from the logged
losses (the callback has the Trainer log at every save and at the last step, so the logs cover every step, those
restored from the checkpoint included); speed and host syncs are measured on the steps this process ran, counted
from the step it resumed at (`resumed_from_step`). A rerun with no step left to train keeps the summary there is.

The audit (--audit_host_syncs) enters `HostSyncCounter`'s torch modes in one hook (on_step_begin) and leaves them in
another (on_pre_optimizer_step). It runs only inside `with callback.host_sync_audit(): trainer.train(...)`, which
leaves the modes if the audited step raises in between (out of memory, the guard's NonFiniteLossError), so they
never outlive training. The audited step runs every aten op through two Python modes, a fixed cost per op: it is
slower, the others are not. One step per run is audited.

With `--torch_compile` the audited step runs eager (`torch.compiler.set_stance("force_eager")` for its length), and
the count is that of the eager step. Without the stance, dynamo meets the audit's dispatch mode at the compiled
forward's frame, declines to compile it, and records that refusal on the code object for good: every later step ran
eager (pytorch/pytorch#190286, seen with torch 2.13.0; the fix, #190287, makes such skips transient). The stance
can go once the project's torch has that fix: tests/test_devices.py keeps checking that every unaudited step runs the
compiled graph.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import statistics
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from detr_ft.config import DeviceArguments
from detr_ft.run_files import write_json_atomic
from detr_ft.train.sync_audit import HostSyncCounter
from detr_ft.train.training_arguments import global_batch_size

logger = logging.getLogger(__name__)

SUMMARY_FILE = "run_summary.json"
AUDITED_STEP = 1
WARMUP_STEPS = 2


def hpu_graph_compilations() -> int | None:
    """HPU graph compilations so far in this process; None without habana_frameworks.

    `metric_global("graph_compilation").stats()` gives (name, value) pairs, "TotalNumber" among them: the same
    statistics PT_HPU_METRICS_FILE receives, which is complete only when the process exits.
    """
    try:
        from habana_frameworks.torch.hpu.metrics import metric_global
    except ImportError:
        return None
    metric = metric_global("graph_compilation")
    return None if metric is None else int(dict(metric.stats())["TotalNumber"])


def graph_compilations() -> dict[str, int]:
    """Graphs compiled so far, by compiler: "hpu" (HPU graph compiler), "torch_compile" (dynamo graphs)."""
    from torch._dynamo.utils import counters

    counts = {"hpu": hpu_graph_compilations(), "torch_compile": counters["stats"].get("unique_graphs", 0)}
    return {name: count for name, count in counts.items() if count}


def stack_versions() -> dict[str, str | None]:
    """Installed versions of the packages whose code runs in a training step."""
    versions = {}
    for package in ("torch", "transformers", "optimum-habana"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def training_stack(trainer: Trainer, device: DeviceArguments) -> dict[str, str | None]:
    """Which road a run takes: the trainer class, HPU lazy or eager mode (None off HPU), the torch.compile backend
    (None without --torch_compile) and the package versions (`stack_versions`)."""
    args = trainer.args
    return {
        "trainer_class": type(trainer).__name__,
        "hpu_mode": ("lazy" if device.use_lazy_mode else "eager") if device.use_habana else None,
        "compile_backend": args.torch_compile_backend if args.torch_compile else None,
        **stack_versions(),
    }


def precision_name(args: TrainingArguments) -> str:
    return "bf16 autocast" if args.bf16 else "fp32"


def whole_run_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over the logged steps: each logged loss is the mean since the previous log, so it
    weighs by the steps since then. None when no loss was logged."""
    total, last_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last_step)
            last_step = entry["step"]
    return total / last_step if last_step else None


class RunSummaryCallback(TrainerCallback):
    """`precision`: pass `precision_name(args)` before the trainer is built; GaudiTrainer clears args.bf16 in its
    __init__ (it keeps autocast to itself), so read at the end it says fp32 on the Gaudi path."""

    def __init__(self, output_dir: str | Path, device_type: str, bucket_sizes: list[int] | None, image_size: int,
                 precision: str, image_canvases: list[tuple[int, int]] | None = None,
                 padded_pixel_fraction: float | None = None, audit_host_syncs: bool = False):
        self.path = Path(output_dir) / SUMMARY_FILE
        self.summary = {"device": device_type, "precision": precision, "image_size": image_size,
                        "buckets": bucket_sizes}
        if image_canvases:
            self.summary.update(image_canvases=[list(canvas) for canvas in image_canvases],
                                padded_pixel_fraction=round(padded_pixel_fraction, 4))
        self.compilations_before: dict[str, int] = {}
        self.counter: HostSyncCounter | None = None
        self.eager_stance: AbstractContextManager | None = None  # the audited step's, under --torch_compile
        self.auditing = False
        self.step_times: list[float] = []
        self.last_step_end: float | None = None
        self.start_step = 0
        self.audit_host_syncs = audit_host_syncs
        self.stack: dict[str, str | None] = {}

    def name_stack(self, trainer: Trainer, device: DeviceArguments) -> None:
        """Record and log which road the run takes (`training_stack`), once the trainer exists."""
        self.stack = training_stack(trainer, device)
        logger.info("training stack: %s", json.dumps(self.stack))

    def on_train_begin(self, args, state, control, **kwargs):
        self.compilations_before = graph_compilations()
        self.start_step = state.global_step  # the resumed step, restored before on_train_begin

    @contextmanager
    def host_sync_audit(self) -> Iterator[None]:
        """Around `trainer.train`: the audit (if asked for) runs inside it only, and its torch modes end with it, raise
        or not."""
        self.auditing = self.audit_host_syncs
        try:
            yield
        finally:
            self.auditing = False
            self.stop_audit()

    def stop_audit(self) -> None:
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.counter = None
        if self.eager_stance is not None:
            self.eager_stance.__exit__(None, None, None)
            self.eager_stance = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.auditing and self.counter is None and state.global_step == self.start_step + AUDITED_STEP:
            if args.torch_compile:  # else the compiled forward would run eager from here on: module docstring
                self.eager_stance = torch.compiler.set_stance("force_eager")
                self.eager_stance.__enter__()
            self.counter = HostSyncCounter(args.device).__enter__()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.counter is not None:
            self.summary["host_syncs_per_step"] = self.counter.count
            self.stop_audit()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_training_stop:
            control.should_log = True  # the loss up to every checkpoint is in its log history: see whole_run_loss
        now = time.perf_counter()
        if self.last_step_end is not None and state.global_step > self.start_step + WARMUP_STEPS:
            self.step_times.append(now - self.last_step_end)
        self.last_step_end = now

    def on_evaluate(self, args, state, control, **kwargs):
        self.last_step_end = None  # the time up to the next step end holds an evaluation: not a step time

    def on_save(self, args, state, control, **kwargs):
        self.last_step_end = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("train_samples_per_second", "train_runtime", "train_loss"):
            if logs and key in logs:
                self.summary[key] = logs[key]

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if state.global_step == self.start_step and self.path.exists():
            logger.info("no step left to train (the run is at step %d): %s kept", state.global_step, self.path)
            return
        loss = whole_run_loss(state.log_history)
        if loss is not None:
            self.summary["train_loss"] = loss
        if self.start_step:
            self.summary["resumed_from_step"] = self.start_step
        if state.global_step == self.start_step:
            self.summary["train_samples_per_second"] = None  # no step ran in this process
        self.summary.update(
            trainer="gaudi" if hasattr(args, "use_habana") else "hf",
            steps=state.global_step,
            epochs=state.epoch,
            steady_samples_per_second=self.steady_samples_per_second(args),
            graph_compilations=self.compilations_during_training(),
            stack=self.stack or stack_versions(),
        )
        write_json_atomic(self.path, self.summary)
        logger.info("run summary: %s", json.dumps(self.summary))

    def compilations_during_training(self) -> dict[str, int]:
        """Counters are per process: leave out what was compiled before this training (set-up, an earlier run)."""
        counts = {name: count - self.compilations_before.get(name, 0) for name, count in graph_compilations().items()}
        return {name: count for name, count in counts.items() if count}

    def steady_samples_per_second(self, args) -> float | None:
        """Global batch / median step time, steps after WARMUP_STEPS only (compilation, caches); None if none."""
        if not self.step_times:
            return None
        return round(global_batch_size(args) / statistics.median(self.step_times), 3)
