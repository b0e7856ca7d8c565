"""kill -9 after a checkpoint, then the same command again: training resumes by itself and, with --deterministic and
augmentation on, ends with the weights, mAP history and run summary of an uninterrupted run, bit for bit on CPU; with
the square canvas and with three aspect-ratio canvases (whose sampler must give the resumed epoch the same batches,
also when it deals accumulated steps over the canvases).
A rerun after the final save failed keeps the run summary."""

import json
import shutil
import signal

import pytest
import torch
from conftest import CANVAS_RUN_ARGUMENTS, DEALT_CANVAS_RUN_ARGUMENTS
from entry_runs import entry_argv, entry_command, eval_records, final_weights, kill_after_checkpoint, run_in_process

from detr_ft.train.checkpoints import COMPLETE_MARKER
from detr_ft.train.run_summary import SUMMARY_FILE

pytestmark = pytest.mark.slow  # entry runs, one in a subprocess


def summary(run_dir):
    return json.loads((run_dir / SUMMARY_FILE).read_text())


# (data fixture, reference run fixture, extra arguments, steps per epoch): the square canvas on 4 images in batches
# of 2; three aspect-ratio canvases (--image_buckets 3) on 12 images of three shapes, 4 per canvas, 2 batches each,
# one a step or 2 a step (accumulated, from different canvases).
RUNS = {
    "square": ("tiny_coco", "reference_run", (), 2),
    "canvases": ("canvas_coco", "canvas_reference_run", CANVAS_RUN_ARGUMENTS, 6),
    "dealt canvases": ("canvas_coco", "dealt_canvas_reference_run", DEALT_CANVAS_RUN_ARGUMENTS, 3),
}


@pytest.mark.parametrize("run", RUNS)
def test_rerun_after_kill_resumes_and_matches_an_uninterrupted_run(run, tmp_path, request, logged_losses):
    data_fixture, reference_fixture, extra, steps_per_epoch = RUNS[run]
    data_dir, reference = request.getfixturevalue(data_fixture), request.getfixturevalue(reference_fixture)
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

    # The summary covers the whole run, not the part after the resume.
    assert summary(tmp_path)["resumed_from_step"] == steps_per_epoch
    assert summary(tmp_path)["train_loss"] == summary(reference)["train_loss"]
    assert summary(tmp_path)["host_syncs_per_step"] == summary(reference)["host_syncs_per_step"] is not None


def test_rerun_after_the_final_save_failed_keeps_the_run_summary(tmp_path, tiny_coco, reference_run):
    run_dir = shutil.copytree(reference_run, tmp_path / "run")
    (run_dir / "model.safetensors").unlink()  # the final save failed (a full disk); every checkpoint is complete

    assert run_in_process(entry_argv(tiny_coco, run_dir)) == 0

    assert summary(run_dir) == summary(reference_run)  # not train_loss 0.0, samples/s 0.0 from a run of no step
    assert (run_dir / "model.safetensors").exists()
