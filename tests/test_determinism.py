"""--deterministic: two runs of the same command agree bit for bit on CPU (losses, mAP, weights); --seed matters."""

import pytest
import torch
from entry_runs import entry_argv, eval_records, final_weights, run_in_process

pytestmark = pytest.mark.slow  # entry runs


def test_two_deterministic_runs_are_identical(tmp_path, tiny_coco, reference_run, logged_losses):
    reference = reference_run
    assert run_in_process(entry_argv(tiny_coco, tmp_path)) == 0

    losses = logged_losses(tmp_path / "checkpoint-4")
    assert [step for step, _ in losses] == list(range(1, 5))
    assert losses == logged_losses(reference / "checkpoint-4")
    assert eval_records(tmp_path) == eval_records(reference)
    assert [r["step"] for r in eval_records(tmp_path)] == [2, 4]
    weights, reference_weights = final_weights(tmp_path), final_weights(reference)
    assert all(torch.equal(weights[name], reference_weights[name]) for name in reference_weights)


def test_another_seed_gives_another_run(tmp_path, tiny_coco, reference_run, logged_losses):
    """The comparison above is sensitive: --seed changes the initial weights, hence the first loss."""
    reference = reference_run
    argv = entry_argv(tiny_coco, tmp_path, "--max_steps", "1", "--ckpt_store_interval_epochs", "10")
    assert run_in_process([*argv, "--seed", "8"]) == 0
    (first_step, first_loss), = logged_losses(tmp_path / "checkpoint-1")
    assert first_step == 1 and first_loss != logged_losses(reference / "checkpoint-4")[0][1]
