"""`make eval-all-checkpoints OUTDIR=<run dir>`: mAP of every complete checkpoint of a run, in step order.

    python -m detr_ft.evaluation.eval_checkpoints --run_dir outputs/demo [--split test] [--redo]

Data, image size and padding default to the run's own (`run_args.json`, each checkpoint's preprocessor_config.json),
and the evaluation is training's (`detr_ft.evaluation.loop.predict_rows` + `CocoMetrics.score`), so a checkpoint scores
the mAP that eval_history.json logged for it. Writes `checkpoint_metrics.json` / `.csv` (one row per checkpoint,
the best by mAP named) and `map_vs_epoch.png` into the run dir. Checkpoints already in checkpoint_metrics.json
for the same settings are not evaluated again (unless --redo); incomplete checkpoints (no marker) and unreadable
ones (e.g. truncated weights) are named and skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import transformers
from tqdm import tqdm
from transformers import DetrForObjectDetection, HfArgumentParser

from detr_ft.train.arguments import TRAINING_DEFAULTS, DataArguments
from detr_ft.train.map_history import write_json_atomic
from detr_ft.train.checkpoints import checkpoint_step, complete_checkpoints
from detr_ft.data.dataset import CocoSplit, DetectionDataset
from detr_ft.evaluation.loop import CocoMetrics, label_to_category_ids, predict_rows
from detr_ft.evaluation.coco_map import SUMMARY_NAMES
from detr_ft.data.prepare import RUN_ARGUMENTS_FILE, validated_splits

logger = logging.getLogger("detr_ft.evaluation.eval_checkpoints")  # not __name__: that is __main__ under -m

METRICS_JSON, METRICS_CSV, PLOT_FILE = "checkpoint_metrics.json", "checkpoint_metrics.csv", "map_vs_epoch.png"
TABLE_KEYS = ("map", "map_50", "map_75")


@dataclass
class EvalCheckpointsArguments:
    run_dir: str = field(metadata={"help": "Output dir of a training run (holds checkpoint-N/ and run_args.json)."})
    split: str | None = field(default=None, metadata={"help": "Split to score; default: the run's eval_split."})
    dataset_dir: str | None = field(default=None, metadata={"help": "COCO folder; default: the run's."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset; default: the run's."})
    per_device_eval_batch_size: int | None = field(default=None, metadata={"help": "Default: the run's, else 8."})
    redo: bool = field(default=False, metadata={"help": "Evaluate again checkpoints already in the json."})


def run_arguments(path: str | Path) -> dict:
    """The flags of the run that made `path` (its run dir or one of its checkpoints); {} when unknown."""
    path = Path(path)
    for folder in (path, path.parent):
        if (folder / RUN_ARGUMENTS_FILE).exists():
            return json.loads((folder / RUN_ARGUMENTS_FILE).read_text())
    return {}


def eval_batch_size(settings: dict, requested: int | None) -> int:
    """The batch size asked for, else the run's (without padded images it changes the padding, hence the boxes)."""
    return requested or settings.get("per_device_eval_batch_size") or TRAINING_DEFAULTS["per_device_eval_batch_size"]


def load_split(settings: dict, split: str) -> CocoSplit:
    """`split` of the run's dataset as training saw it (`training.validated_splits`); only the run's own eval
    split may be carved from train."""
    if not (settings.get("dataset_dir") or settings.get("dataset_name")):
        raise ValueError(f"no {RUN_ARGUMENTS_FILE} beside the model to name its dataset: pass --dataset_dir")
    names = {f.name for f in dataclasses.fields(DataArguments)}
    data = DataArguments(**{k: v for k, v in settings.items() if k in names} | {"eval_split": split})
    return validated_splits(data, carve_missing_eval=split == settings.get("eval_split"))[1]


def load_model(path: str | Path) -> DetrForObjectDetection:
    """The DETR saved at `path`, in eval mode; a damaged one (truncated weights, bad config) raises ValueError."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its loading report lists unexpected keys too; judged below
    try:
        model, loading = DetrForObjectDetection.from_pretrained(path, use_safetensors=True, output_loading_info=True)
    except Exception as error:  # safetensors, json, os and torch each raise their own types for a damaged file
        raise ValueError(f"{Path(path).name} cannot be loaded: {type(error).__name__}: {error}") from error
    finally:
        transformers.logging.set_verbosity(verbosity)
    # Unexpected keys are fine (BatchNorm's num_batches_tracked of presets); absent or misshapen ones are not.
    damaged = loading["missing_keys"] or loading["mismatched_keys"]
    if damaged:
        raise ValueError(f"{Path(path).name} cannot be loaded: weights missing or misshapen: {sorted(damaged)[:5]}")
    return model.eval()


def checkpoint_epoch(path: Path) -> float:
    try:
        return json.loads((path / "trainer_state.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path.name} has no readable trainer_state.json: {error}") from error


def split_rows(model: DetrForObjectDetection, model_path: str | Path, split: CocoSplit,
               label_to_category_id: dict[int, int], batch_size: int, image_size: int | None = None,
               pad_images: bool = False, show_progress: bool = True) -> np.ndarray:
    """Rows (N, Q, 7) of `predict_rows` on `split`, preprocessed as the model was trained (its
    preprocessor_config.json: fit into image_size, padded to image_size x image_size or not) unless overridden."""
    processor = json.loads((Path(model_path) / "preprocessor_config.json").read_text())
    image_size = image_size or processor["size"]["longest_edge"]
    pad_images = pad_images or processor.get("pad_size") is not None
    category_to_label = {category: label for label, category in label_to_category_id.items()}
    dataset = DetectionDataset(split, category_to_label, image_size)
    return predict_rows(model, dataset, image_size if pad_images else None, batch_size, show_progress)


def evaluate_checkpoint(path: Path, split: CocoSplit, batch_size: int) -> dict:
    """One record: epoch, step, checkpoint name and the metrics of `CocoMetrics.score` on `split`."""
    model, epoch = load_model(path), checkpoint_epoch(path)
    id2label = model.config.id2label  # {int: str}: from_pretrained turns json keys back into ints
    label_to_category_id = label_to_category_ids(id2label, split.coco["categories"])
    rows = split_rows(model, path, split, label_to_category_id, batch_size, show_progress=False)
    return {"epoch": epoch, "step": checkpoint_step(path), "checkpoint": path.name,
            "metrics": CocoMetrics(split, label_to_category_id, id2label).score(rows)}


def write_csv(path: Path, records: list[dict]) -> None:
    class_keys = [k for k in records[0]["metrics"] if k not in SUMMARY_NAMES]  # map_<class name>
    with path.open("w", newline="") as handle:
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
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("detr_ft").setLevel(logging.INFO)
    (args,) = HfArgumentParser(EvalCheckpointsArguments).parse_args_into_dataclasses(argv)
    run_dir = Path(args.run_dir)
    overrides = {"dataset_dir": args.dataset_dir, "dataset_name": args.dataset_name}
    settings = {**run_arguments(run_dir), **{k: v for k, v in overrides.items() if v is not None}}
    split_name = args.split or settings.get("eval_split", DataArguments.eval_split)
    batch_size = eval_batch_size(settings, args.per_device_eval_batch_size)
    checkpoints = complete_checkpoints(run_dir)
    if not checkpoints:
        logger.error("%s: no complete checkpoint (checkpoint-N/ with its completion marker)", run_dir)
        return 1
    split = load_split(settings, split_name)
    evaluated_on = {"split": split_name, "dataset": settings.get("dataset_dir") or settings.get("dataset_name"),
                    "per_device_eval_batch_size": batch_size}

    json_path = run_dir / METRICS_JSON
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    reusable = not args.redo and previous.get("evaluated_on") == evaluated_on
    done = {r["checkpoint"]: r for r in previous.get("checkpoints", [])} if reusable else {}
    records = {p.name: done[p.name] for p in checkpoints if p.name in done}
    todo = [p for p in checkpoints if p.name not in records]
    logger.info("%s: %d complete checkpoints, %d already evaluated, %d to evaluate on %s", run_dir,
                len(checkpoints), len(checkpoints) - len(todo), len(todo), split_name)
    skipped = []
    for path in tqdm(todo, desc="checkpoints", unit="ckpt"):
        try:
            records[path.name] = evaluate_checkpoint(path, split, batch_size)
        except ValueError as error:
            logger.warning("skipping %s", error)
            skipped.append({"checkpoint": path.name, "reason": str(error)})
    if not records:
        logger.error("%s: no checkpoint could be evaluated", run_dir)
        return 1

    ordered = sorted(records.values(), key=lambda r: r["step"])
    best = max(ordered, key=lambda r: r["metrics"]["map"])
    best_summary = {k: best[k] for k in ("epoch", "step", "checkpoint")} | {"map": best["metrics"]["map"]}
    write_json_atomic(json_path, {"evaluated_on": evaluated_on, "checkpoints": ordered, "best": best_summary,
                                  "skipped": skipped})
    write_csv(run_dir / METRICS_CSV, ordered)
    plot_map(run_dir / PLOT_FILE, ordered, best)
    print(f"{'epoch':>7} {'step':>7} " + " ".join(f"{k:>7}" for k in TABLE_KEYS) + "  checkpoint")
    for r in ordered:
        print(f"{r['epoch']:>7.2f} {r['step']:>7d} " + " ".join(f"{r['metrics'][k]:>7.4f}" for k in TABLE_KEYS)
              + f"  {r['checkpoint']}")
    print(f"best checkpoint: {run_dir / best['checkpoint']} (epoch {best['epoch']:g}, "
          f"mAP {best['metrics']['map']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
