"""`make demo`: the whole job offline on CPU: synthetic shapes, detr-tiny from scratch, mAP per checkpoint.

A fixed number of steps (not seconds), so the result does not depend on the machine's load. The recipe is the
one tests/test_convergence.py holds to a floor, so a change that breaks learning fails the tests.
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

DATA_DIR = Path("data/synthetic")
OUTPUT_DIR = Path("outputs/demo")
TRAIN_IMAGES, VALIDATION_IMAGES, IMAGE_SIZE = 4096, 256, 64
EPOCHS, EVAL_EVERY_EPOCHS = 12, 4  # 128 steps an epoch at batch 32


def write_data(data_dir: Path) -> Path:
    if not (data_dir / "annotations" / "train.json").exists():
        write_synthetic_coco(data_dir, num_train=TRAIN_IMAGES, num_validation=VALIDATION_IMAGES,
                             image_size=IMAGE_SIZE, seed=0)
    return data_dir


def recipe(data_dir: Path, output_dir: Path, epochs: int = EPOCHS, eval_every: int = EVAL_EVERY_EPOCHS) -> list[str]:
    """Command-line arguments of the from-scratch recipe: detr-tiny, 64 px, static shapes, AdamW 3e-4 constant,
    gradient clipping 0.1, batch 32."""
    return [
        "--model_name_or_path", "detr-tiny", "--dataset_dir", str(data_dir), "--output_dir", str(output_dir),
        "--pad_images", "--image_size", str(IMAGE_SIZE), "--pad_objects", "--num_buckets", "1", "--augment", "false",
        "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--learning_rate", "3e-4",
        "--lr_scheduler_type", "constant", "--max_grad_norm", "0.1", "--num_train_epochs", str(epochs),
        "--ckpt_store_interval_epochs", str(eval_every), "--save_total_limit", "2", "--logging_steps", "128",
        "--dataloader_num_workers", "1", "--seed", "0", "--report_to", "none",
    ]


def main() -> int:
    shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
    subprocess.run([sys.executable, "run_object_detection.py", *recipe(write_data(DATA_DIR), OUTPUT_DIR)], check=True)
    history = read_history(OUTPUT_DIR)
    seconds = json.loads((OUTPUT_DIR / SUMMARY_FILE).read_text())["train_runtime"]
    final = history[-1]["metrics"]  # the entry has just printed the table of every evaluation
    print(f"demo: mAP50={final['map_50']:.3f} mAP={final['map']:.3f} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
