"""Shared fixtures: the real CPPE-5 test split, small synthetic COCO folders, tiny offline DETRs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CPPE5_TEST = REPO.parent / "shared" / "data" / "cppe5-test"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core CPU (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def cppe5_dir() -> Path:
    if not (CPPE5_TEST / "annotations" / "test.json").exists():
        pytest.skip(f"the real CPPE-5 test split is not at {CPPE5_TEST} (it lives in ../shared beside the checkout)")
    return CPPE5_TEST


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """64 px shapes: 96 train and 24 validation images, 1-4 objects each."""
    from detr_ft.data.synthetic import write_synthetic_coco

    return write_synthetic_coco(tmp_path_factory.mktemp("synthetic"), num_train=96, num_validation=24,
                                image_size=64, seed=0)


IMAGE_SIZE, SIDE = 64, 26


def write_centered_shapes(folder: Path, num_images: dict[str, int], seed: int = 0) -> Path:
    """A COCO folder whose every image holds one shape (random class) in the same central box."""
    from detr_ft.data.synthetic import CATEGORIES, draw_shape

    rng = np.random.default_rng(seed)
    offset = (IMAGE_SIZE - SIDE) // 2
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    for split, count in num_images.items():
        images, annotations = [], []
        for i in range(1, count + 1):
            category_id = int(rng.integers(1, len(CATEGORIES) + 1))
            background, colour = tuple(rng.integers(150, 256, 3).tolist()), tuple(rng.integers(0, 100, 3).tolist())
            image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
            draw_shape(ImageDraw.Draw(image), category_id, offset, offset, SIDE, colour)
            image.save(folder / "images" / f"{split}_{i}.png")
            images.append({"id": i, "file_name": f"{split}_{i}.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE})
            annotations.append({"id": i, "image_id": i, "category_id": category_id,
                                "bbox": [offset, offset, SIDE, SIDE], "area": SIDE * SIDE, "iscrowd": 0})
        coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """detr-tiny, 48 train / 16 validation images, 3 epochs, a checkpoint and mAP every epoch.

    Shared by test_eval_checkpoints.py and test_inference.py.
    """
    base = tmp_path_factory.mktemp("eval-checkpoints-run")
    run_dir = base / "run"
    data_dir = write_centered_shapes(base / "data", {"train": 48, "validation": 16})
    argv = ["--model_name_or_path", "detr-tiny", "--dataset_dir", str(data_dir), "--output_dir", str(run_dir),
            "--image_size", str(IMAGE_SIZE), "--pad_images", "--pad_objects", "--augment", "false",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--num_train_epochs", "3",
            "--ckpt_store_interval_epochs", "1", "--seed", "0", "--report_to", "none", "--disable_tqdm", "true"]
    import run_object_detection

    assert run_object_detection.main(argv) == 0
    return run_dir


def history_map(run_dir: Path) -> dict[str, float]:
    return {Path(r["checkpoint"]).name: r["metrics"]["map"]
            for r in json.loads((run_dir / "eval_history.json").read_text())}


