"""The real entry point through optimum-habana's GaudiTrainer (`--trainer gaudi`, use_habana=False) on CPU, with the
Gaudi stack's transformers 4.55: trains, evaluates mAP, checkpoints and writes the run summary.

Run in the Gaudi venv: `.venv-gaudi/bin/python -m pytest tests/gaudi -q`; skipped where optimum-habana is absent.
"""

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

import run_object_detection  # noqa: E402
from detr_ft.train.map_history import read_history  # noqa: E402
from detr_ft.train.run_summary import SUMMARY_FILE  # noqa: E402

pytestmark = pytest.mark.slow  # an entry run

MAX_STEPS = 6
BATCH_SIZE = 8
NUM_TRAIN = 48  # one epoch = 6 steps: one evaluation and one checkpoint, at the last step


@pytest.fixture(scope="module")
def gaudi_run(synthetic_coco, tmp_path_factory) -> Path:
    dataset_dir = synthetic_coco(num_train=NUM_TRAIN, num_validation=16, image_size=64, seed=0)
    output_dir = tmp_path_factory.mktemp("run")
    status = run_object_detection.main([
        "--trainer", "gaudi", "--device", "cpu", "--model_name_or_path", "detr-tiny",
        "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir),
        "--pad_images", "--image_size", "64", "--pad_objects", "--num_buckets", "1",
        "--autocast",  # the seed's name for bf16 autocast: GaudiConfig.use_torch_autocast, CPU autocast off Gaudi
        "--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", str(BATCH_SIZE),
        "--per_device_eval_batch_size", "8", "--logging_steps", "1", "--seed", "0", "--audit_host_syncs",
    ])  # report_to stays at its default, TensorBoard: requirements-gaudi.txt must bring it
    assert status == 0
    return output_dir


def test_gaudi_run_trains_with_finite_losses(gaudi_run):
    state = json.loads((gaudi_run / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    losses = [log["loss"] for log in state["log_history"] if "loss" in log]

    assert state["global_step"] == MAX_STEPS
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_gaudi_run_saves_safetensors_checkpoint_and_final_model(gaudi_run):
    from safetensors.torch import load_file

    checkpoint = load_file(gaudi_run / f"checkpoint-{MAX_STEPS}" / "model.safetensors")
    final = load_file(gaudi_run / "model.safetensors")

    assert checkpoint.keys() == final.keys()
    assert "class_labels_classifier.weight" in final
    assert (gaudi_run / "gaudi_config.json").exists()  # GaudiTrainer saves the GaudiConfig it ran with


def test_gaudi_run_records_map(gaudi_run):
    history = read_history(gaudi_run)

    assert [record["step"] for record in history] == [MAX_STEPS]
    metrics = history[0]["metrics"]
    assert 0.0 <= metrics["map"] <= 1.0 and 0.0 <= metrics["map_50"] <= 1.0
    assert math.isfinite(metrics["loss"])


def test_gaudi_run_writes_the_summary(gaudi_run):
    summary = json.loads((gaudi_run / SUMMARY_FILE).read_text())

    assert summary["device"] == "cpu" and summary["trainer"] == "gaudi"
    assert summary["precision"] == "bf16 autocast"
    assert summary["image_size"] == 64 and len(summary["buckets"]) == 1
    assert summary["steps"] == MAX_STEPS
    assert summary["train_samples_per_second"] > 0 and summary["steady_samples_per_second"] > 0
    assert summary["host_syncs_per_step"] == 2  # the matcher's cost copy and the finite-loss guard's read
    assert summary["stack"]["transformers"] == "4.55.4" and summary["stack"]["optimum-habana"] == "1.21.2"
    assert summary["graph_compilations"] == {}  # no HPU, no torch.compile


def test_gaudi_run_logs_to_tensorboard(gaudi_run):
    assert list(gaudi_run.rglob("events.out.tfevents.*"))
