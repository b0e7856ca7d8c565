"""The mAP history: one record per evaluation, at every checkpoint interval, in eval_history.json."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

from detr_ft.run_files import read_json_list, write_json_atomic

logger = logging.getLogger(__name__)

HISTORY_FILE = "eval_history.json"


def read_history(output_dir: str | Path) -> list[dict]:
    return read_json_list(Path(output_dir) / HISTORY_FILE)


class MapHistoryCallback(TrainerCallback):
    """Appends one record per evaluation to `<output_dir>/eval_history.json`: epoch, step, checkpoint, metrics.

    Evaluation runs at every checkpoint interval, just before the checkpoint of the same step is saved, so the
    record names that checkpoint. On resume, records past the resumed step (from a run that crashed before
    saving their checkpoint) are dropped, so the history equals an uninterrupted run's.
    """

    def __init__(self, output_dir: str | Path, metric_prefix: str = "eval_"):
        self.path = Path(output_dir) / HISTORY_FILE
        self.metric_prefix = metric_prefix

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            kept = [r for r in read_history(self.path.parent) if r["step"] <= state.global_step]
            write_json_atomic(self.path, kept)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not any(name.startswith(self.metric_prefix) for name in metrics or {}):
            return  # another split's evaluation (the test split's, at the end)
        record = {
            "epoch": round(state.epoch or 0.0, 4),
            "step": state.global_step,
            "checkpoint": str(Path(args.output_dir) / f"checkpoint-{state.global_step}"),
            "metrics": {k.removeprefix(self.metric_prefix): v for k, v in metrics.items()},
        }
        history = [r for r in read_history(self.path.parent) if r["step"] != state.global_step] + [record]
        write_json_atomic(self.path, history)
        logger.info("mAP at step %d (epoch %.2f): map=%.4f map_50=%.4f", record["step"], record["epoch"],
                    record["metrics"].get("map", float("nan")), record["metrics"].get("map_50", float("nan")))
