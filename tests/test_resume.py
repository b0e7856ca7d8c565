"""kill -9 after a checkpoint, then the same command again: training resumes by itself and, with --deterministic and
augmentation on, ends with the weights and mAP history of an uninterrupted run, bit for bit on CPU."""

import signal
import subprocess
import time

import pytest
import torch
from entry_runs import entry_argv, entry_command, eval_records, final_weights, run_in_process

from detr_ft.train.checkpoints import COMPLETE_MARKER

pytestmark = pytest.mark.slow  # entry runs, one in a subprocess


def kill_after_checkpoint(command: list[str], marker, timeout: float = 300.0) -> int:
    """Start `command`, SIGKILL it as soon as `marker` exists, return its exit code."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    return process.wait()


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
