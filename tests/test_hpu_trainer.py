"""transformers' own Trainer on HPU (`--use_habana`, here `--device hpu`: `--trainer auto` chooses it where
optimum-habana is not installed) through the entry on the CPU, with the test-only habana_frameworks
(tests/hpu_stand_in.py): the trainer and optimizer chosen, Habana's calls where GaudiTrainer makes them, and the
same losses, mAP and weights as the CPU path (`reference_run`: the same data, seed and flags). What the stand-in
cannot speak for: docs/gaudi.md."""

from __future__ import annotations

import json
import logging
import signal

import pytest
import torch
from entry_runs import (
    entry_argv,
    entry_command,
    eval_records,
    final_weights,
    launch_failure,
    run_in_process,
    run_two_processes,
)
from hpu_stand_in import subprocess_variables
from test_ddp import STEPS, data_dir, pretrained_dir, run_argv  # noqa: F401 (data_dir, pretrained_dir: fixtures)
from test_resume import kill_after_checkpoint
from transformers.models.detr.modeling_detr import DetrModel

from detr_ft.train.checkpoints import COMPLETE_MARKER
from detr_ft.train.run_summary import SUMMARY_FILE

pytestmark = pytest.mark.slow  # entry runs

HPU = ("--device", "hpu")
LAST_CHECKPOINT = "checkpoint-4"  # entry_argv: 2 epochs of 2 steps
EVAL_BATCHES = 1  # per evaluation: tiny_coco's 2 validation images in batches of 2


def summary(run_dir) -> dict:
    return json.loads((run_dir / SUMMARY_FILE).read_text())


def assert_trained_as(run_dir, reference, logged_losses) -> None:
    """Every logged loss, every mAP evaluation and the final weights are the reference run's, bit for bit."""
    assert logged_losses(run_dir / LAST_CHECKPOINT) == logged_losses(reference / LAST_CHECKPOINT)
    assert eval_records(run_dir) == eval_records(reference)
    weights, reference_weights = final_weights(run_dir), final_weights(reference)
    assert weights.keys() == reference_weights.keys()
    assert all(torch.equal(weights[name], reference_weights[name]) for name in reference_weights)


def test_eager_mode_compiles_the_forward_on_hpu_backend_and_trains_as_the_cpu_path(
        tiny_coco, reference_run, tmp_path, habana_stand_in, logged_losses, caplog):
    with caplog.at_level(logging.INFO):
        assert run_in_process(entry_argv(tiny_coco, tmp_path, *HPU)) == 0
    from habana_frameworks.torch.core import MARK_STEP_CALLERS
    from habana_frameworks.torch.dynamo.compile_backend.backends import COMPILED_GRAPHS
    from habana_frameworks.torch.hpex.normalization import CLIP_NORM_CALLS

    run = summary(tmp_path)
    assert run["stack"]["trainer_class"] == "DetectionHpuTrainer" and run["stack"]["optimum-habana"] is None
    assert run["stack"]["hpu_mode"] == "eager" and run["stack"]["compile_backend"] == "hpu_backend"
    assert "training stack: {\"trainer_class\": \"DetectionHpuTrainer\"" in caplog.text
    assert "stepped by FusedAdamW(" in caplog.text
    assert CLIP_NORM_CALLS == [0.1] * run["steps"]  # Habana's fused clipping, at --max_grad_norm's default
    assert len(COMPILED_GRAPHS) == run["graph_compilations"]["torch_compile"] == 1  # one label-free forward graph
    assert MARK_STEP_CALLERS == []  # eager mode: no lazy graph to end
    assert run["host_syncs_per_step"] == 2  # the matcher's cost copy and the finite-loss guard's read
    assert_trained_as(tmp_path, reference_run, logged_losses)


def test_lazy_mode_marks_the_steps_where_gaudi_trainer_does_and_caches_the_network_once(
        tiny_coco, reference_run, tmp_path, habana_stand_in, logged_losses):
    argv = entry_argv(tiny_coco, tmp_path, *HPU, "--use_lazy_mode", "--use_hpu_graphs_for_training",
                      "--check_finite_loss", "false")

    assert run_in_process(argv) == 0

    from habana_frameworks.torch.core import MARK_STEP_CALLERS
    from habana_frameworks.torch.hpu import CACHED_MODULES

    run = summary(tmp_path)
    assert run["stack"]["trainer_class"] == "DetectionHpuTrainer"
    assert run["stack"]["hpu_mode"] == "lazy" and run["stack"]["compile_backend"] is None
    # After each backward and after each optimizer step, and after each evaluation batch.
    assert [caller for caller in MARK_STEP_CALLERS if caller != "prediction_step"] == (
        ["training_step", "on_step_end"] * run["steps"])
    assert MARK_STEP_CALLERS.count("prediction_step") == len(eval_records(tmp_path)) * EVAL_BATCHES
    assert [type(module) for module in CACHED_MODULES] == [DetrModel]
    assert CACHED_MODULES[0].forward.calls  # the training forward ran through the cache
    assert run["host_syncs_per_step"] == 1  # the matcher's cost copy alone
    assert_trained_as(tmp_path, reference_run, logged_losses)


def test_a_killed_lazy_mode_run_resumes_to_the_uninterrupted_cpu_run(tiny_coco, reference_run, tmp_path,
                                                                     habana_stand_in, monkeypatch, logged_losses):
    for name, value in subprocess_variables().items():
        monkeypatch.setenv(name, value)
    argv = entry_argv(tiny_coco, tmp_path, *HPU, "--use_lazy_mode")
    first = tmp_path / "checkpoint-2"

    assert kill_after_checkpoint(entry_command(argv), first / COMPLETE_MARKER) == -signal.SIGKILL
    assert not (tmp_path / LAST_CHECKPOINT / COMPLETE_MARKER).exists()  # killed mid-run, not after it
    assert run_in_process(argv) == 0

    run = summary(tmp_path)
    assert run["resumed_from_step"] == 2 and run["stack"]["trainer_class"] == "DetectionHpuTrainer"
    assert_trained_as(tmp_path, reference_run, logged_losses)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_two_lazy_mode_processes_with_batch_b_log_the_losses_of_one_cpu_process_with_batch_2b(
        tmp_path, data_dir, pretrained_dir, logged_losses, monkeypatch):  # noqa: F811 (fixtures of test_ddp)
    """test_ddp.py's proof on this path: under torchrun the trainer's Habana step runs in each process, the gradients
    are averaged as on the CPU path."""
    single = tmp_path / "single"
    assert run_in_process(run_argv(data_dir, pretrained_dir, single, 4)) == 0
    for name, value in subprocess_variables().items():
        monkeypatch.setenv(name, value)
    parallel = tmp_path / "parallel"

    result = run_two_processes([*run_argv(data_dir, pretrained_dir, parallel, 2), *HPU, "--use_lazy_mode"])

    assert result.returncode == 0, launch_failure(result)
    assert summary(parallel)["stack"]["trainer_class"] == "DetectionHpuTrainer"
    single_losses = logged_losses(single / f"checkpoint-{STEPS}")
    parallel_losses = logged_losses(parallel / f"checkpoint-{STEPS}")
    assert [step for step, _ in parallel_losses] == [step for step, _ in single_losses] == list(range(1, STEPS + 1))
    for (_, expected), (_, actual) in zip(single_losses, parallel_losses, strict=True):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-5)
