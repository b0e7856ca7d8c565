"""Conditional DETR and Deformable DETR through the real entry and optimum-habana's GaudiTrainer (`--trainer gaudi`,
use_habana=False) on CPU, with the Gaudi stack's transformers 4.55: trained by the project's criterion (optimum-habana
patches neither model), evaluated, checkpointed, one host read per step; their own loss (`--num_buckets 0`), which
would run through optimum-habana's replacement of DETR's, is refused in one line.

Run in the Gaudi venv: `.venv-gaudi/bin/python -m pytest tests/gaudi -q`; skipped where optimum-habana is absent.
"""

import json
import logging
import math

import pytest

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

import run_object_detection  # noqa: E402
from detr_ft.model.families import FAMILIES  # noqa: E402
from detr_ft.model.presets import load_preset  # noqa: E402
from detr_ft.train.map_history import read_history  # noqa: E402
from detr_ft.train.run_summary import SUMMARY_FILE  # noqa: E402

pytestmark = pytest.mark.slow  # entry runs

MAX_STEPS = 2
PRESETS = ["conditional-detr-tiny", "deformable-detr-tiny"]


def gaudi_argv(data_dir, output_dir, preset: str, *extra: str) -> list[str]:
    return ["--trainer", "gaudi", "--device", "cpu", "--model_name_or_path", preset, "--dataset_dir", str(data_dir),
            "--output_dir", str(output_dir), "--pad_images", "--image_size", "64", "--max_steps", str(MAX_STEPS),
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--logging_steps", "1",
            "--report_to", "none", "--seed", "0", *extra]


@pytest.mark.parametrize("preset", PRESETS)
def test_the_family_trains_through_the_gaudi_trainer_reading_the_host_once_per_step(preset, synthetic_coco,
                                                                                     tmp_path):
    data_dir = synthetic_coco(num_train=8, num_validation=4, image_size=64, seed=0)
    argv = gaudi_argv(data_dir, tmp_path, preset, "--pad_objects", "--num_buckets", "1", "--audit_host_syncs",
                      "--check_finite_loss", "false")

    assert run_object_detection.main(argv) == 0

    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["trainer"] == "gaudi" and summary["stack"]["transformers"] == "4.55.4"
    assert summary["host_syncs_per_step"] == 1 and summary["steps"] == MAX_STEPS
    assert math.isfinite(summary["train_loss"])
    assert [record["step"] for record in read_history(tmp_path)] == [MAX_STEPS]
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == load_preset(preset).model_type
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"]
    assert saved == FAMILIES[load_preset(preset).model_type].image_processor
    assert (tmp_path / f"checkpoint-{MAX_STEPS}" / "model.safetensors").exists()


@pytest.mark.parametrize("preset", PRESETS)
def test_the_familys_own_loss_is_refused_on_the_gaudi_trainer(preset, synthetic_coco, tmp_path, caplog):
    data_dir = synthetic_coco(num_train=8, num_validation=4, image_size=64, seed=0)

    assert run_object_detection.main(gaudi_argv(data_dir, tmp_path / "run", preset)) == 2

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("--num_buckets 0 (or no --pad_objects) with optimum-habana's")
    assert not (tmp_path / "run").exists()
