"""`make demo`: the whole job offline on CPU: synthetic shapes, detr-tiny from scratch, mAP per checkpoint.

A fixed number of steps (not seconds), so the result does not depend on the machine's load. The recipe,
recipes/demo-tiny.json, is the one tests/test_convergence.py holds to a floor, so a change that breaks learning fails
the tests.

`make demo-canvases` (`python -m detr_ft.demo canvases`): do aspect-ratio canvases keep the quality? The same recipe
trained twice on the same images in three shapes, once on the square (`--image_buckets 1`) and once on three
canvases (`--image_buckets 3`), the same steps and seed; it prints both runs' mAP at every evaluation. The images are
synthetic shapes drawn natively as 64 x 64, 64 x 32 and 32 x 64 (`aspect_ratios` 1, 2, 1/2 in turn), so every
shape's objects have the same pixel sizes (13-29 px) and no image is shrunk to fit: on the square a 2:1 image is
padded to twice its area, on its canvas not at all. The 32 images of a step come as 2 accumulated batches of 16,
which the canvas run takes from 2 different canvases (an optimizer step of one canvas learns later: README).
3,840 training images, a multiple of 3 shapes x batch 16, so both runs take the same 120 steps an epoch.

`make demo-families` (`python -m detr_ft.demo families`): the three families from scratch, detr-tiny,
conditional-detr-tiny and deformable-detr-tiny (the same backbone, transformer sizes and queries), with the same
recipe, steps and seed: on the demo's synthetic data (recipes/demo-tiny.json; a quarter of the training images,
FAMILY_EPOCHS epochs, mAP after each), then on the real CPPE-5 test split (29 images beside the checkout in
shared/data/cppe5-test, skipped where it is absent), its eval images carved off as the entry carves them (15%, seed
1337), at the presets' 128 px. It prints each model's mAP at every evaluation and its seconds per step (the median
step time) and writes them to outputs/demo_families/results.json; docs/families.md holds a measured table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from detr_ft.data.synthetic import write_synthetic_coco
from detr_ft.run_files import write_json_atomic
from detr_ft.train.map_history import read_history
from detr_ft.train.run_summary import SUMMARY_FILE

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo-tiny.json"
DATA_DIR = Path("data/synthetic")
OUTPUT_DIR = Path("outputs/demo")
TRAIN_IMAGES, VALIDATION_IMAGES, IMAGE_SIZE = 4096, 256, 64  # IMAGE_SIZE: the recipe's; 128 steps an epoch

CANVAS_DATA_DIR = Path("data/synthetic_aspect_ratios")
CANVAS_OUTPUT_DIR = Path("outputs/demo_canvases")
CANVAS_TRAIN_IMAGES, CANVAS_VALIDATION_IMAGES, ASPECT_RATIOS = 3840, 258, (1.0, 2.0, 0.5)  # multiples of 3 shapes
CANVAS_EPOCHS, CANVAS_EVAL_EVERY_EPOCHS = 32, 4  # 120 steps an epoch
CANVAS_BATCH, CANVAS_ACCUMULATION = 16, 2  # each optimizer step on 2 canvases
IMAGE_BUCKETS = (1, 3)

FAMILY_PRESETS = ("detr-tiny", "conditional-detr-tiny", "deformable-detr-tiny")
FAMILY_OUTPUT_DIR = Path("outputs/demo_families")
# The demo's generator and seed with a quarter of its training images, so that a few minutes per model on a shared
# 2-core CPU see four evaluations: 32 steps of 32 images an epoch, 128 steps, mAP every 32.
FAMILY_DATA_DIR, FAMILY_TRAIN_IMAGES, FAMILY_EPOCHS = Path("data/synthetic_families"), 1024, 4
CPPE5_TEST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cppe5-test"
# 25 training images after the carve (4 eval images), 3 steps of 8 an epoch: 60 steps, mAP every 15.
CPPE5_FLAGS = ("--train_split", "test", "--image_size", "128", "--per_device_train_batch_size", "8",
               "--per_device_eval_batch_size", "8", "--num_train_epochs", "20", "--ckpt_store_interval_epochs", "5")


def write_data(data_dir: Path, num_train: int = TRAIN_IMAGES, num_validation: int = VALIDATION_IMAGES,
               aspect_ratios: tuple[float, ...] = (1.0,)) -> Path:
    """The demo's synthetic COCO folder (seed 0), written once."""
    if not (data_dir / "annotations" / "train.json").exists():
        write_synthetic_coco(data_dir, num_train=num_train, num_validation=num_validation, image_size=IMAGE_SIZE,
                             aspect_ratios=aspect_ratios, seed=0)
    return data_dir


def recipe(data_dir: Path, output_dir: Path, *overrides: str) -> list[str]:
    """The entry's arguments for the from-scratch recipe (recipes/demo-tiny.json: detr-tiny, 64 px, static shapes,
    AdamW 3e-4 constant, gradient clipping 0.1, 32 images a step) on `data_dir`, with `overrides` (flags)."""
    return [str(RECIPE), "--dataset_dir", str(data_dir), "--output_dir", str(output_dir), *overrides]


def train(argv: list[str], output_dir: Path) -> dict:
    """A fresh run of the entry; returns its run_summary.json."""
    shutil.rmtree(output_dir, ignore_errors=True)
    subprocess.run([sys.executable, "run_object_detection.py", *argv], check=True)
    return json.loads((output_dir / SUMMARY_FILE).read_text())


def demo() -> None:
    summary = train(recipe(write_data(DATA_DIR), OUTPUT_DIR), OUTPUT_DIR)
    final = read_history(OUTPUT_DIR)[-1]["metrics"]  # the entry has just printed the table of every evaluation
    print(f"demo: mAP50={final['map_50']:.3f} mAP={final['map']:.3f} ({summary['train_runtime']:.0f} s)")


def demo_canvases() -> None:
    data_dir = write_data(CANVAS_DATA_DIR, CANVAS_TRAIN_IMAGES, CANVAS_VALIDATION_IMAGES, ASPECT_RATIOS)
    runs = {k: CANVAS_OUTPUT_DIR / f"image_buckets_{k}" for k in IMAGE_BUCKETS}
    eval_every = min(CANVAS_EVAL_EVERY_EPOCHS, CANVAS_EPOCHS)
    summaries = {k: train(recipe(data_dir, output_dir, "--num_train_epochs", str(CANVAS_EPOCHS),
                                 "--ckpt_store_interval_epochs", str(eval_every),
                                 "--per_device_train_batch_size", str(CANVAS_BATCH),
                                 "--gradient_accumulation_steps", str(CANVAS_ACCUMULATION), "--image_buckets", str(k)),
                          output_dir)
                 for k, output_dir in runs.items()}
    print("\n  step  " + "  ".join(f"mAP50 K={k}  mAP K={k}" for k in IMAGE_BUCKETS))
    for records in zip(*(read_history(output_dir) for output_dir in runs.values()), strict=True):
        cells = "  ".join(f"{r['metrics']['map_50']:>9.3f}  {r['metrics']['map']:>7.3f}" for r in records)
        print(f"{records[0]['step']:>6}  {cells}")
    for k, summary in summaries.items():
        print(f"demo-canvases: K={k} canvases {summary['image_canvases']}, padded pixels "
              f"{summary['padded_pixel_fraction']:.1%}, {summary['train_runtime']:.0f} s")


def family_results(output_dir: Path, summary: dict) -> dict:
    """A run's mAP at every evaluation and its seconds per step (global batch / steady samples per second)."""
    batch = json.loads((output_dir / "run_args.json").read_text())["per_device_train_batch_size"]
    return {"evaluations": [{"step": r["step"], "map": r["metrics"]["map"], "map_50": r["metrics"]["map_50"]}
                            for r in read_history(output_dir)],
            "seconds_per_step": round(batch / summary["steady_samples_per_second"], 3),
            "train_runtime": round(summary["train_runtime"]), "host_syncs_per_step": summary["host_syncs_per_step"]}


def demo_families() -> None:
    datasets = {"synthetic": (write_data(FAMILY_DATA_DIR, FAMILY_TRAIN_IMAGES),
                              ("--num_train_epochs", str(FAMILY_EPOCHS), "--ckpt_store_interval_epochs", "1"))}
    if (CPPE5_TEST_DIR / "annotations" / "test.json").exists():
        datasets["cppe5-test"] = (CPPE5_TEST_DIR, CPPE5_FLAGS)
    else:
        print(f"demo-families: no CPPE-5 test split at {CPPE5_TEST_DIR}: synthetic data only", file=sys.stderr)
    results = {}
    for dataset, (data_dir, flags) in datasets.items():
        for preset in FAMILY_PRESETS:
            output_dir = FAMILY_OUTPUT_DIR / dataset / preset
            summary = train(recipe(data_dir, output_dir, "--model_name_or_path", preset, "--audit_host_syncs", *flags),
                            output_dir)
            results.setdefault(dataset, {})[preset] = family_results(output_dir, summary)
    write_json_atomic(FAMILY_OUTPUT_DIR / "results.json", results)
    for dataset, runs in results.items():
        print(f"\n{dataset}: mAP (mAP50) at each evaluation, and seconds per step")
        steps = [record["step"] for record in next(iter(runs.values()))["evaluations"]]
        print(f"  {'model':<22}" + "".join(f"{f'step {step}':>16}" for step in steps) + f"{'s/step':>9}")
        for preset, run in runs.items():
            cells = "".join(f"{r['map']:>8.3f} ({r['map_50']:.3f})" for r in run["evaluations"])
            print(f"  {preset:<22}{cells}{run['seconds_per_step']:>9.3f}")


def main(argv: list[str] | None = None) -> int:
    demos = {(): demo, ("canvases",): demo_canvases, ("families",): demo_families}
    chosen = tuple(sys.argv[1:] if argv is None else argv)
    if chosen not in demos:
        print("usage: python -m detr_ft.demo [canvases | families]", file=sys.stderr)
        return 2
    demos[chosen]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
