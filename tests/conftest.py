"""Shared fixtures: the real CPPE-5 test split, small synthetic COCO folders, tiny offline DETRs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CPPE5_TEST = REPO.parent / "shared" / "data" / "cppe5-test"


@pytest.fixture(scope="session")
def cppe5_dir() -> Path:
    if not (CPPE5_TEST / "annotations" / "test.json").exists():
        pytest.skip(f"the real CPPE-5 test split is not at {CPPE5_TEST} (it lives in ../shared beside the checkout)")
    return CPPE5_TEST


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """64 px shapes: 96 train and 24 validation images, 1-4 objects each."""
    from detr_ft.synthetic import write_synthetic_coco

    return write_synthetic_coco(tmp_path_factory.mktemp("synthetic"), num_train=96, num_validation=24,
                                image_size=64, seed=0)
