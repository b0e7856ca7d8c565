"""Host reads per training step through the real entry on the Gaudi stack (transformers 4.55.4, optimum-habana
1.21.2, GaudiTrainer, `adapt_transformers_to_gaudi()` applied by conftest.py), with DETR-R50's 6 encoder layers:
ours 1 (the matcher's cost copy), 2 with the finite-loss guard; the stock path's count is reported.

Run in the Gaudi venv: `.venv-gaudi/bin/python -m pytest tests/gaudi -q`; skipped where optimum-habana is absent.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

from test_sync_patches_v4 import STOCK_SYNCS_PER_STEP, tiny_detr  # noqa: E402

import run_object_detection  # noqa: E402
from detr_ft.data.synthetic import write_synthetic_coco  # noqa: E402
from detr_ft.train.run_summary import SUMMARY_FILE  # noqa: E402

RUNS = {
    "ours": ["--pad_objects", "--num_buckets", "1", "--check_finite_loss", "False"],
    "ours_with_guard": ["--pad_objects", "--num_buckets", "1"],
    "stock": ["--check_finite_loss", "False"],  # transformers' loss on per-image targets: Habana's, under adapt
}


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, dict]:
    model_dir = tmp_path_factory.mktemp("detr6")
    tiny_detr().save_pretrained(model_dir)  # a local HF DETR: the entry's pretrained path
    dataset_dir = write_synthetic_coco(tmp_path_factory.mktemp("synthetic"), num_train=8, num_validation=4,
                                       image_size=64, seed=0)
    results = {}
    for name, flags in RUNS.items():
        output_dir = tmp_path_factory.mktemp(name)
        status = run_object_detection.main([
            "--trainer", "gaudi", "--device", "cpu", "--model_name_or_path", str(model_dir),
            "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir), "--pad_images", "--image_size", "64",
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
            "--report_to", "none", "--seed", "0", "--audit_host_syncs", *flags,
        ])
        assert status == 0
        results[name] = json.loads(Path(output_dir, SUMMARY_FILE).read_text())
    return results


def test_ours_reads_once_per_step(summaries):
    assert summaries["ours"]["host_syncs_per_step"] == 1


def test_the_finite_loss_guard_adds_one_read(summaries):
    assert summaries["ours_with_guard"]["host_syncs_per_step"] == 2


def test_stock_path_runs_and_its_reads_are_reported(summaries):
    stock = summaries["stock"]["host_syncs_per_step"]
    print(f"host syncs per step, Gaudi stack: stock {stock}, ours 1 (2 with the guard)")
    # batches of 2 images, as in test_sync_patches_v4 (2 copies per image), and TransformersCriterion's read of
    # whether the predictions are finite (the stock matcher refuses NaN boxes before any loss exists)
    assert stock == STOCK_SYNCS_PER_STEP + 1


def test_summary_names_the_stack(summaries):
    for summary in summaries.values():
        assert summary["stack"]["transformers"] == "4.55.4" and summary["stack"]["optimum-habana"] == "1.21.2"
        assert summary["stack"]["torch"]
