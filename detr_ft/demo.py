"""`make demo`: the whole job offline on CPU: synthetic shapes, detr-tiny from scratch, mAP per checkpoint.

A fixed number of steps (not seconds), so the result does not depend on the machine's load.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from detr_ft.callbacks import format_table, read_history
from detr_ft.summary import SUMMARY_FILE
from detr_ft.synthetic import write_synthetic_coco

DATA_DIR = Path("data/synthetic")
OUTPUT_DIR = Path("outputs/demo")
TRAIN_IMAGES, BATCH_SIZE, EPOCHS = 4096, 32, 16

RECIPE = [
    "--model_name_or_path", "detr-tiny", "--dataset_dir", str(DATA_DIR), "--output_dir", str(OUTPUT_DIR),
    "--pad_images", "--image_size", "64", "--pad_objects", "--num_buckets", "1", "--augment", "false",
    "--per_device_train_batch_size", str(BATCH_SIZE), "--per_device_eval_batch_size", "64",
    "--learning_rate", "3e-4", "--max_grad_norm", "0.1", "--num_train_epochs", str(EPOCHS),
    "--ckpt_store_interval_epochs", "4", "--save_total_limit", "2", "--logging_steps", "128",
    "--dataloader_num_workers", "1", "--seed", "0", "--report_to", "none",
]


def main() -> int:
    if not (DATA_DIR / "annotations" / "train.json").exists():
        write_synthetic_coco(DATA_DIR, num_train=TRAIN_IMAGES, num_validation=256, image_size=64, seed=0)
    shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
    subprocess.run([sys.executable, "run_object_detection.py", *RECIPE], check=True)
    history = read_history(OUTPUT_DIR)
    seconds = json.loads((OUTPUT_DIR / SUMMARY_FILE).read_text())["train_runtime"]
    final = history[-1]["metrics"]
    print(format_table(history))
    print(f"demo: mAP50={final['map_50']:.3f} mAP={final['map']:.3f} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
