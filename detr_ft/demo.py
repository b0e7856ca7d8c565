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
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from detr_ft.data.synthetic import write_synthetic_coco
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


def main(argv: list[str] | None = None) -> int:
    demos = {(): demo, ("canvases",): demo_canvases}
    chosen = tuple(sys.argv[1:] if argv is None else argv)
    if chosen not in demos:
        print("usage: python -m detr_ft.demo [canvases]", file=sys.stderr)
        return 2
    demos[chosen]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
