"""`make demo-canvases`: do aspect-ratio canvases keep the quality? The demo's recipe (detr_ft/demo.py) trained twice
on the same images in three shapes, once on the square (`--image_buckets 1`) and once on three canvases
(`--image_buckets 3`), the same steps and seed; it prints both runs' mAP at every evaluation.

The data: synthetic shapes drawn natively as 64 x 64, 64 x 32 and 32 x 64 images (`aspect_ratios` 1, 2, 1/2 in
turn), so every shape's objects have the same pixel sizes (13-29 px) and no image is shrunk to fit: on the square a
2:1 image is padded to twice its area, on its canvas not at all. 3,840 training images, a multiple of 3 shapes x
batch 32, so both runs take the same 120 steps an epoch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from detr_ft.data.synthetic import write_synthetic_coco
from detr_ft.demo import IMAGE_SIZE, recipe
from detr_ft.train.map_history import read_history
from detr_ft.train.run_summary import SUMMARY_FILE

DATA_DIR = Path("data/synthetic_aspect_ratios")
OUTPUT_DIR = Path("outputs/demo_canvases")
TRAIN_IMAGES, VALIDATION_IMAGES, ASPECT_RATIOS = 3840, 258, (1.0, 2.0, 0.5)
EPOCHS, EVAL_EVERY_EPOCHS = 32, 4
IMAGE_BUCKETS = (1, 3)


def write_data(data_dir: Path) -> Path:
    if not (data_dir / "annotations" / "train.json").exists():
        write_synthetic_coco(data_dir, num_train=TRAIN_IMAGES, num_validation=VALIDATION_IMAGES,
                             image_size=IMAGE_SIZE, aspect_ratios=ASPECT_RATIOS, seed=0)
    return data_dir


def train(data_dir: Path, output_dir: Path, image_buckets: int, epochs: int) -> None:
    shutil.rmtree(output_dir, ignore_errors=True)
    argv = [*recipe(data_dir, output_dir, epochs=epochs, eval_every=min(EVAL_EVERY_EPOCHS, epochs)),
            "--image_buckets", str(image_buckets)]
    subprocess.run([sys.executable, "run_object_detection.py", *argv], check=True)


def main() -> int:
    data_dir = write_data(DATA_DIR)
    runs = {k: OUTPUT_DIR / f"image_buckets_{k}" for k in IMAGE_BUCKETS}
    for image_buckets, output_dir in runs.items():
        train(data_dir, output_dir, image_buckets, EPOCHS)
    histories = {k: read_history(output_dir) for k, output_dir in runs.items()}
    summaries = {k: json.loads((output_dir / SUMMARY_FILE).read_text()) for k, output_dir in runs.items()}
    print("\n  step  " + "  ".join(f"mAP50 K={k}  mAP K={k}" for k in IMAGE_BUCKETS))
    for records in zip(*histories.values(), strict=True):
        cells = "  ".join(f"{r['metrics']['map_50']:>9.3f}  {r['metrics']['map']:>7.3f}" for r in records)
        print(f"{records[0]['step']:>6}  {cells}")
    for k, summary in summaries.items():
        print(f"demo-canvases: K={k} canvases {summary['image_canvases']}, padded pixels "
              f"{summary['padded_pixel_fraction']:.1%}, {summary['train_runtime']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
