"""Tiny runs of the real entry (run_object_detection.py) shared by the resume, determinism and non-finite tests.

A run is detr-tiny on 32 px synthetic images: 4 train images in batches of 2 (2 steps per epoch, 2 epochs), a
checkpoint and an mAP evaluation every epoch, every step's loss logged in trainer_state.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "run_object_detection.py"


def tiny_coco(folder: Path, num_train: int = 4, objects_per_image: tuple[int, int] = (1, 3), seed: int = 0) -> Path:
    from detr_ft.data.synthetic import write_synthetic_coco

    if not (folder / "annotations" / "train.json").exists():
        write_synthetic_coco(folder, num_train=num_train, num_validation=2, image_size=32,
                             min_objects=objects_per_image[0], max_objects=objects_per_image[1], seed=seed)
    return folder


ASPECT_SCALES = ((1, 1), (2, 1), (1, 2))  # (width, height) factors: square, landscape 2:1, portrait 1:2


def extend_to_aspect_ratios(folder: Path) -> Path:
    """A square synthetic COCO folder rewritten once, in place, into three image shapes by image position (square,
    landscape 2:1, portrait 1:2): each image is pasted top-left onto its corner colour, twice as wide or tall; boxes
    keep their pixels. At image_size 64 their boxes are 64 x 64, 32 x 64 and 64 x 32: three canvases."""
    from PIL import Image

    marker = folder / "annotations" / "aspect_ratios_extended"
    if marker.exists():
        return folder
    for annotation_file in sorted((folder / "annotations").glob("*.json")):
        coco = json.loads(annotation_file.read_text())
        for i, entry in enumerate(coco["images"]):
            width_factor, height_factor = ASPECT_SCALES[i % len(ASPECT_SCALES)]
            path = folder / "images" / entry["file_name"]
            with Image.open(path) as image:
                extended = Image.new("RGB", (image.width * width_factor, image.height * height_factor),
                                     image.getpixel((0, 0)))
                extended.paste(image)
            extended.save(path)
            entry["width"], entry["height"] = extended.size
        annotation_file.write_text(json.dumps(coco))
    marker.touch()
    return folder


def entry_argv(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset_dir", str(data_dir), "--model_name_or_path", "detr-tiny", "--image_size", "32",
        "--pad_images", "--pad_objects", "--num_buckets", "1", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--num_train_epochs", "2",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--device", "cpu",
        "--deterministic", "--seed", "7", *extra,
    ]


def run_in_process(argv: list[str]) -> int:
    """main(argv) in this process; the global switches full determinism flips are put back afterwards."""
    from run_object_detection import main

    environment = dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return main(argv)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        os.environ.clear()
        os.environ.update(environment)


def entry_command(argv: list[str]) -> list[str]:
    return [sys.executable, str(ENTRY), *argv]


_reference_runs: dict[str, Path] = {}


def reference_run(tmp_path_factory, data_dir: Path | None = None, *extra: str) -> Path:
    """One uninterrupted run per test session (and data and extra arguments), shared by the tests that compare
    against it; default data: `tiny_coco`."""
    data_dir = data_dir or tiny_coco(tmp_path_factory.getbasetemp() / "tiny_coco")
    key = str((data_dir, extra))
    if key not in _reference_runs:
        output_dir = tmp_path_factory.mktemp("reference_run")
        assert run_in_process(entry_argv(data_dir, output_dir, *extra)) == 0
        _reference_runs[key] = output_dir
    return _reference_runs[key]


def logged_losses(checkpoint: Path) -> list[tuple[int, float]]:
    """(step, training loss) of every logged step, from the checkpoint's trainer_state.json."""
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


TIMING_METRICS = ("runtime", "samples_per_second", "steps_per_second")


def eval_records(run_dir: Path) -> list[dict]:
    """eval_history.json without timings, each checkpoint named relative to its run (runs live in other folders)."""
    records = json.loads((run_dir / "eval_history.json").read_text())
    return [{**record, "checkpoint": Path(record["checkpoint"]).name,
             "metrics": {k: v for k, v in record["metrics"].items() if k not in TIMING_METRICS}} for record in records]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")
