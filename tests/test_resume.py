"""kill -9 after a checkpoint, then the same command again: training resumes by itself and, with --deterministic and
augmentation on, ends with the weights, mAP history and run summary of an uninterrupted run, bit for bit on CPU.
A rerun after the final save failed keeps the run summary."""

import json
import shutil
import signal
import subprocess
import time

import pytest
import torch
from entry_runs import entry_argv, entry_command, eval_records, final_weights, run_in_process

from detr_ft.train.checkpoints import COMPLETE_MARKER
from detr_ft.train.run_summary import SUMMARY_FILE

pytestmark = pytest.mark.slow  # entry runs, one in a subprocess


def kill_after_checkpoint(command: list[str], marker, timeout: float = 300.0) -> int:
    """Start `command`, SIGKILL it as soon as `marker` exists, return its exit code."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def summary(run_dir):
    return json.loads((run_dir / SUMMARY_FILE).read_text())


def test_rerun_after_kill_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_coco, reference_run, logged_losses):
    reference = reference_run
    argv = entry_argv(tiny_coco, tmp_path)

    assert kill_after_checkpoint(entry_command(argv), tmp_path / "checkpoint-2" / COMPLETE_MARKER) == -signal.SIGKILL
    assert not (tmp_path / "checkpoint-4" / COMPLETE_MARKER).exists()  # killed mid-run, not after it
    saved_at = (tmp_path / "checkpoint-2" / "model.safetensors").stat().st_mtime_ns
    assert run_in_process(argv) == 0
    assert (tmp_path / "checkpoint-2" / "model.safetensors").stat().st_mtime_ns == saved_at  # resumed, not redone

    resumed_state = logged_losses(tmp_path / "checkpoint-4")
    assert resumed_state == logged_losses(reference / "checkpoint-4")
    assert eval_records(tmp_path) == eval_records(reference)
    weights, reference_weights = final_weights(tmp_path), final_weights(reference)
    assert all(torch.equal(weights[name], reference_weights[name]) for name in reference_weights)

    # The summary covers the whole run, not the part after the resume.
    assert summary(tmp_path)["resumed_from_step"] == 2
    assert summary(tmp_path)["train_loss"] == summary(reference)["train_loss"]
    assert summary(tmp_path)["host_syncs_per_step"] == summary(reference)["host_syncs_per_step"] is not None


def test_rerun_after_the_final_save_failed_keeps_the_run_summary(tmp_path, tiny_coco, reference_run):
    run_dir = shutil.copytree(reference_run, tmp_path / "run")
    (run_dir / "model.safetensors").unlink()  # the final save failed (a full disk); every checkpoint is complete

    assert run_in_process(entry_argv(tiny_coco, run_dir)) == 0

    assert summary(run_dir) == summary(reference_run)  # not train_loss 0.0, samples/s 0.0 from a run of no step
    assert (run_dir / "model.safetensors").exists()
