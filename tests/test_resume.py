"""kill -9 after a checkpoint, then the same command again: training resumes by itself and, with --deterministic and
augmentation on, ends with the weights and mAP history of an uninterrupted run, bit for bit on CPU; with the square
canvas and with three aspect-ratio canvases (whose sampler must give the resumed epoch the same batches)."""

import signal
import subprocess
import time

import pytest
import torch
from entry_runs import (
    entry_argv,
    entry_command,
    eval_records,
    extend_to_aspect_ratios,
    final_weights,
    logged_losses,
    reference_run,
    run_in_process,
    tiny_coco,
)

from detr_ft.train.checkpoints import COMPLETE_MARKER


def kill_after_checkpoint(command: list[str], marker, timeout: float = 300.0) -> int:
    """Start `command`, SIGKILL it as soon as `marker` exists, return its exit code."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    return process.wait()


# (data, extra arguments, steps per epoch): the square canvas on 4 images in batches of 2; three aspect-ratio
# canvases (--image_buckets 3) on 12 images of three shapes, 4 per canvas, 2 batches each.
RUNS = {
    "square": (lambda base: tiny_coco(base / "tiny_coco"), (), 2),
    "canvases": (lambda base: extend_to_aspect_ratios(tiny_coco(base / "tiny_canvas_coco", num_train=12)),
                 ("--image_size", "64", "--image_buckets", "3"), 6),
}


@pytest.mark.parametrize("run", RUNS)
def test_rerun_after_kill_resumes_and_matches_an_uninterrupted_run(run, tmp_path, tmp_path_factory):
    make_data, extra, steps_per_epoch = RUNS[run]
    data_dir = make_data(tmp_path_factory.getbasetemp())
    reference = reference_run(tmp_path_factory, data_dir, *extra)
    argv = entry_argv(data_dir, tmp_path, *extra)
    first, second = (tmp_path / f"checkpoint-{steps_per_epoch * epoch}" for epoch in (1, 2))

    assert kill_after_checkpoint(entry_command(argv), first / COMPLETE_MARKER) == -signal.SIGKILL
    assert not (second / COMPLETE_MARKER).exists()  # killed mid-run, not after it
    saved_at = (first / "model.safetensors").stat().st_mtime_ns
    assert run_in_process(argv) == 0
    assert (first / "model.safetensors").stat().st_mtime_ns == saved_at  # resumed, not redone

    resumed_state = logged_losses(second)
    assert resumed_state == logged_losses(reference / second.name)
    assert eval_records(tmp_path) == eval_records(reference)
    weights, reference_weights = final_weights(tmp_path), final_weights(reference)
    assert all(torch.equal(weights[name], reference_weights[name]) for name in reference_weights)
