"""`make eval-all-checkpoints OUTDIR=<run dir>`: mAP of every complete checkpoint of a run, in step order.

    python -m detr_ft.evaluation.eval_checkpoints --run_dir outputs/demo [--split test] [--redo]

Data, image size and padding default to the run's own (`run_args.json`, each checkpoint's preprocessor_config.json),
and the evaluation is training's (`detr_ft.evaluation.loop.predict_rows` + `CocoMetrics.score`), so a checkpoint scores
the mAP that eval_history.json logged for it. Writes `checkpoint_metrics.json` / `.csv` (one row per checkpoint,
the best by mAP named) and `map_vs_epoch.png` into the run dir.

Each checkpoint's row goes into checkpoint_metrics.json (atomically) as soon as it is scored, so an interrupted call
(killed, a full disk) keeps the rows it scored; the next call with the same settings scores only the others
(--redo: all again), then the csv, plot and best are rewritten from the json's rows. Incomplete checkpoints (no
marker) and unreadable ones (any file the model, its processor or its epoch is read from: missing, truncated, not
json) are named and skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from transformers import HfArgumentParser

from detr_ft.config import DataArguments
from detr_ft.console import on_terminal, setup_logging
from detr_ft.data.labels import ClassMapping
from detr_ft.data.sources import CocoSplit
from detr_ft.evaluation.coco_map import SUMMARY_NAMES
from detr_ft.evaluation.loop import CocoMetrics
from detr_ft.evaluation.report import TABLE_KEYS, format_map_table
from detr_ft.evaluation.saved_run import (
    DamagedModelError,
    eval_batch_size,
    load_saved_model,
    load_split,
    several_processes_error,
    split_rows,
)
from detr_ft.run_files import RunArgumentsError, atomic_path, read_run_arguments, write_json_atomic
from detr_ft.train.checkpoints import checkpoint_step, complete_checkpoints
from detr_ft.write_failure import describe_write_failure, one_line

logger = logging.getLogger("detr_ft.evaluation.eval_checkpoints")  # not __name__: that is __main__ under -m

METRICS_JSON, METRICS_CSV, PLOT_FILE = "checkpoint_metrics.json", "checkpoint_metrics.csv", "map_vs_epoch.png"


@dataclass
class EvalCheckpointsArguments:
    run_dir: str = field(metadata={"help": "Output dir of a training run (holds checkpoint-N/ and run_args.json)."})
    split: str | None = field(default=None, metadata={"help": "Split to score; default: the run's eval_split."})
    dataset_dir: str | None = field(default=None, metadata={"help": "COCO folder; default: the run's."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset; default: the run's."})
    per_device_eval_batch_size: int | None = field(default=None, metadata={"help": "Default: the run's, else 8."})
    redo: bool = field(default=False, metadata={"help": "Evaluate again checkpoints already in the json."})


def checkpoint_epoch(path: Path) -> float:
    try:
        return json.loads((path / "trainer_state.json").read_text())["epoch"]
    except (KeyError, TypeError) as error:  # readable (load_saved_model checked it), but not a Trainer's state
        raise DamagedModelError(f"{path} cannot be loaded: trainer_state.json has no epoch ({error!r})") from error


def evaluate_checkpoint(path: Path, split: CocoSplit, batch_size: int) -> dict:
    """One record: epoch, step, checkpoint name and the metrics of `CocoMetrics.score` on `split`."""
    saved = load_saved_model(path, also_required=("trainer_state.json",))
    epoch = checkpoint_epoch(path)
    # from_pretrained turns id2label's json keys back into ints
    classes = ClassMapping.for_model(saved.model.config.id2label, split.coco["categories"])
    rows = split_rows(saved, split, classes, batch_size, show_progress=False)
    return {"epoch": epoch, "step": checkpoint_step(path), "checkpoint": path.name,
            "metrics": CocoMetrics(split, classes).score(rows)}


def previous_records(json_path: Path, evaluated_on: dict) -> dict[str, dict]:
    """The rows of an earlier call with the same settings, by checkpoint name; none when it used others."""
    if not json_path.exists():
        return {}
    try:
        previous = json.loads(json_path.read_text())
        if previous.get("evaluated_on") != evaluated_on:
            return {}
        return {r["checkpoint"]: r for r in previous["checkpoints"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # not json, or not this file's
        logger.warning("%s cannot be read (%s): evaluating every checkpoint again", json_path, one_line(error))
        return {}


def in_step_order(records: dict[str, dict]) -> list[dict]:
    return sorted(records.values(), key=lambda r: r["step"])


def best_record(records: list[dict]) -> dict | None:
    """The highest mAP (the first of ties in step order): epoch, step, checkpoint, map."""
    if not records:
        return None
    best = max(records, key=lambda r: r["metrics"]["map"])
    return {k: best[k] for k in ("epoch", "step", "checkpoint")} | {"map": best["metrics"]["map"]}


def write_records(json_path: Path, evaluated_on: dict, records: list[dict], skipped: list[dict]) -> None:
    write_json_atomic(json_path, {"evaluated_on": evaluated_on, "checkpoints": records, "best": best_record(records),
                                  "skipped": skipped})


def write_csv(path: Path, records: list[dict]) -> None:
    class_keys = [k for k in records[0]["metrics"] if k not in SUMMARY_NAMES]  # map_<class name>
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "checkpoint", *TABLE_KEYS, *class_keys])
        for r in records:
            writer.writerow([r["epoch"], r["step"], r["checkpoint"], *(r["metrics"].get(k) for k in TABLE_KEYS),
                             *(r["metrics"].get(k) for k in class_keys)])


def plot_map(path: Path, records: list[dict], best: dict) -> None:
    import matplotlib  # imported here: the Agg (file only) backend is chosen when needed, not on import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, label in (("map", "mAP@[.5:.95]"), ("map_50", "mAP@.5")):
        axes.plot(epochs, [r["metrics"][key] for r in records], marker="o", label=label)
    axes.axvline(best["epoch"], color="grey", linestyle=":", label=f"best: {best['checkpoint']}")
    axes.set(xlabel="epoch", ylabel="mAP", title=path.parent.name)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    (args,) = HfArgumentParser(EvalCheckpointsArguments).parse_args_into_dataclasses(argv)
    refusal = several_processes_error("detr_ft.evaluation.eval_checkpoints")
    if refusal:
        logger.error("%s", refusal)
        return 2
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        logger.error("--run_dir %s: no such folder (the --output_dir of a training run)", run_dir)
        return 2
    try:
        return evaluate_run(run_dir, args)
    except RunArgumentsError as error:
        logger.error("%s", error)
        return 2
    except OSError as error:
        message = describe_write_failure(error, f"the run folder {run_dir}", run_dir,
                                         "copy the run elsewhere and pass that --run_dir; rerunning scores only the "
                                         "checkpoints not yet in checkpoint_metrics.json")
        if message is None:
            raise
        logger.error("%s", message)
        return 4


def evaluate_run(run_dir: Path, args: EvalCheckpointsArguments) -> int:
    """Score the checkpoints of `run_dir` not yet scored for these settings, writing each row as it is scored."""
    overrides = {"dataset_dir": args.dataset_dir, "dataset_name": args.dataset_name}
    settings = {**read_run_arguments(run_dir), **{k: v for k, v in overrides.items() if v is not None}}
    split_name = args.split or settings.get("eval_split", DataArguments.eval_split)
    batch_size = eval_batch_size(settings, args.per_device_eval_batch_size)
    checkpoints = complete_checkpoints(run_dir)
    if not checkpoints:
        logger.error("%s: no complete checkpoint (checkpoint-N/ with its completion marker)", run_dir)
        return 1
    try:
        split = load_split(settings, split_name)
    except ValueError as error:  # DatasetError included: the data or the flags, named in the message
        logger.error("%s", error)
        return 2
    evaluated_on = {"split": split_name, "dataset": settings.get("dataset_dir") or settings.get("dataset_name"),
                    "per_device_eval_batch_size": batch_size}

    json_path = run_dir / METRICS_JSON
    done = {} if args.redo else previous_records(json_path, evaluated_on)
    records = {p.name: done[p.name] for p in checkpoints if p.name in done}
    todo = [p for p in checkpoints if p.name not in records]
    logger.info("%s: %d complete checkpoints, %d already evaluated, %d to evaluate on %s", run_dir,
                len(checkpoints), len(checkpoints) - len(todo), len(todo), split_name)
    skipped = []
    # Before any scoring, so that a folder it cannot write fails at once.
    write_records(json_path, evaluated_on, in_step_order(records), skipped)
    for path in tqdm(todo, desc="checkpoints", unit="ckpt", disable=not on_terminal()):
        try:
            records[path.name] = evaluate_checkpoint(path, split, batch_size)
        except ValueError as error:  # DamagedModelError, or classes that do not match the split's
            logger.warning("skipping %s", error)
            skipped.append({"checkpoint": path.name, "reason": str(error)})
        write_records(json_path, evaluated_on, in_step_order(records), skipped)
    if not records:
        logger.error("%s: no checkpoint could be evaluated", run_dir)
        return 1

    scored = in_step_order(records)
    best = best_record(scored)
    write_csv(run_dir / METRICS_CSV, scored)
    plot_map(run_dir / PLOT_FILE, scored, best)
    print(format_map_table(scored))
    print(f"best checkpoint: {run_dir / best['checkpoint']} (epoch {best['epoch']:g}, mAP {best['map']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
