"""The model card: README.md in a run's output folder, as transformers' `Trainer.create_model_card` writes one, with
what a reader of a detection model needs: the base model, the dataset, the classes, the recipe and the mAP."""

from __future__ import annotations

import json
from pathlib import Path

from detr_ft.evaluation.coco_map import SUMMARY_NAMES
from detr_ft.evaluation.report import TABLE_KEYS, format_map_table

CARD_FILE = "README.md"


def metrics_table(rows: dict[str, dict[str, float]]) -> list[str]:
    """A markdown table: one row per split, TABLE_KEYS and every class's AP as columns."""
    class_keys = {k for metrics in rows.values() for k in metrics if k.startswith("map_") and k not in SUMMARY_NAMES}
    keys = [*TABLE_KEYS, *sorted(class_keys)]
    lines = ["| split | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
    for split, metrics in rows.items():
        lines.append(f"| {split} | " + " | ".join(f"{metrics[k]:.4f}" if k in metrics else "-" for k in keys) + " |")
    return lines


def model_card(run_arguments: dict, classes: list[str], history: list[dict],
               test_metrics: dict[str, float] | None) -> str:
    """The card's markdown: front matter for the hub, then what was trained on what, how, and how well."""
    base = run_arguments["model_name_or_path"]
    dataset = run_arguments.get("dataset_dir") or run_arguments.get("dataset_name")
    front = ["---", "library_name: transformers", "pipeline_tag: object-detection", "tags:", "- object-detection",
             "- detr-ft"]
    if "/" in base and not Path(base).exists():
        front.append(f"base_model: {base}")
    if not run_arguments.get("dataset_dir"):
        front += ["datasets:", f"- {dataset}"]
    rows = {}
    if history:
        rows[f"{run_arguments['eval_split']} (final evaluation)"] = history[-1]["metrics"]
    if test_metrics:
        rows["test"] = test_metrics
    lines = [*front, "---", "", "# Object detector fine-tuned with detr-ft", "",
             f"Fine-tuned from `{base}` on `{dataset}` with static shapes (detr-ft), "
             f"{len(classes)} classes: {', '.join(classes)}.", "", "## Results (COCO mAP)", ""]
    lines += [*metrics_table(rows), ""] if rows else ["No evaluation was run.", ""]
    if len(history) > 1:
        lines += ["Every evaluation of the run:", "", "```", format_map_table(history), "```", ""]
    lines += ["## Use", "", "```python", "from transformers import pipeline", "",
              'detector = pipeline("object-detection", model="path/to/this/folder")',
              'detector("image.jpg", threshold=0.5)', "```", "",
              "## Training recipe", "", "The run's flags (`run_args.json`):", "", "```json",
              json.dumps(run_arguments, indent=2), "```", ""]
    return "\n".join(lines)


def write_model_card(output_dir: str | Path, run_arguments: dict, classes: list[str], history: list[dict],
                     test_metrics: dict[str, float] | None) -> Path:
    path = Path(output_dir) / CARD_FILE
    path.write_text(model_card(run_arguments, classes, history, test_metrics))
    return path
