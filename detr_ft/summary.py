"""The run summary: console and `<output_dir>/run_summary.json`, written at the end of every training run.

Host syncs are counted over forward, loss, backward and gradient clipping of one step (the second, so one-time
set-up is not counted): the part of a step that runs as one graph on HPU;
graph compilations come from the HPU metrics file (PT_HPU_METRICS_FILE) or torch._dynamo's counters.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import TrainerCallback

from detr_ft.callbacks import write_json_atomic
from detr_ft.sync_audit import HostSyncCounter

logger = logging.getLogger(__name__)

SUMMARY_FILE = "run_summary.json"
AUDITED_STEP = 1


def graph_compilations() -> dict[str, int]:
    """Graph compilations so far: HPU (metrics file, if any) and torch.compile (dynamo frames compiled)."""
    counts = {}
    metrics_file = os.environ.get("PT_HPU_METRICS_FILE")
    if metrics_file and Path(metrics_file).exists():
        for entry in json.loads(Path(metrics_file).read_text()):  # optimum-habana/habana metric dump layout
            for name, value in entry.get("metrics", {}).get("graph_compilation", {}).items():
                if name == "TotalNumber":
                    counts["hpu_graph_compilations"] = int(value)
    from torch._dynamo.utils import counters

    if counters["stats"].get("unique_graphs"):
        counts["torch_compile_graphs"] = int(counters["stats"]["unique_graphs"])
    return counts


class RunSummaryCallback(TrainerCallback):
    def __init__(self, output_dir: str | Path, device_type: str, bucket_sizes: list[int] | None, image_size: int):
        self.path = Path(output_dir) / SUMMARY_FILE
        self.summary = {"device": device_type, "image_size": image_size, "buckets": bucket_sizes}
        self.counter: HostSyncCounter | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == AUDITED_STEP and self.counter is None:
            self.counter = HostSyncCounter(args.device).__enter__()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.counter is not None and "host_syncs_per_step" not in self.summary:
            self.counter.__exit__(None, None, None)
            self.summary["host_syncs_per_step"] = self.counter.count

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("train_samples_per_second", "train_steps_per_second", "train_runtime", "train_loss"):
            if logs and key in logs:
                self.summary[key] = logs[key]

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        precision = "bf16 autocast" if args.bf16 else "fp32"
        self.summary.update(precision=precision, steps=state.global_step, epochs=state.epoch, **graph_compilations())
        write_json_atomic(self.path, self.summary)
        logger.info("run summary: %s", json.dumps(self.summary))
