"""The compiled training step (detr_ft/train/compiled_step.py): through the entry, `--torch_compile` compiles a graph
per image canvas for the forward and one per target bucket for each of the criterion's two device parts, none after
the first epoch; its losses and gradients are the eager step's on the same weights, and a run killed and resumed
ends where the eager run ends; CUDA graphs keep gradients in stable buffers under gradient accumulation and are
refused under several processes.

What runs here is dynamo and AOTAutograd (`aot_eager`: the graphs inductor would receive, forward and backward,
without its code generation); CUDA graph capture itself runs only on a GPU (scripts/gpu_check.sh).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DEALT_CANVAS_RUN_ARGUMENTS
from entry_runs import entry_argv, entry_command, final_weights, kill_after_checkpoint, run_in_process
from test_buckets_equivalence import Training, assert_step_agrees
from transformers import Trainer, TrainerCallback, TrainingArguments

from detr_ft.config import FlagError, parse_arguments
from detr_ft.model.criterion import DetrCriterion
from detr_ft.train.checkpoints import COMPLETE_MARKER
from detr_ft.train.compiled_step import (
    StableGradBuffers,
    StableGradBuffersCallback,
    compiled_step_callbacks,
    criterion_compile_options,
    cuda_graph_problems,
    uses_cuda_graphs,
)
from detr_ft.train.flag_checks import check_flags

CANVASES, BUCKETS, EPOCHS = 3, 2, 2
# Measured on the same weights at every step (10 steps over 3 canvases), at OMP_NUM_THREADS 1 and 2: aot_eager's loss
# terms equal the eager ones bit for bit, its gradients within 4.1e-9 of the largest gradient entry. ~1000x margin
# for the gradients; a wrong loss is far off (tests/test_buckets_equivalence.py lists how far).
LOSS_RTOL, GRAD_TOL = 1e-6, 5e-6


def logged(run_dir) -> list[tuple[float, float]]:
    """(loss, grad_norm) of every logged step."""
    state = json.loads(sorted(run_dir.glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    return [(entry["loss"], entry["grad_norm"]) for entry in state["log_history"] if "loss" in entry]


def canvas_run(data_dir, output_dir, *flags: str) -> dict:
    """Two epochs of 48 steps over 3 canvases and 2 target buckets, both met in the first epoch."""
    argv = entry_argv(data_dir, output_dir, "--image_size", "64", "--image_buckets", str(CANVASES),
                      "--num_buckets", str(BUCKETS), "--per_device_train_batch_size", "2", "--logging_steps", "1",
                      "--num_train_epochs", str(EPOCHS), "--ckpt_store_interval_epochs", str(EPOCHS), *flags)
    assert run_in_process(argv) == 0
    return json.loads((output_dir / "run_summary.json").read_text())


@pytest.mark.slow  # two entry runs
def test_compiled_step_compiles_a_graph_per_canvas_and_two_per_bucket_and_none_after(aspect_ratio_dir, tmp_path,
                                                                                     record_compiled_graphs):
    """Through the entry, two epochs: a graph for each canvas (the forward) and for each bucket (the matching costs,
    the loss terms), compiled when each first comes and never again, and every step but the audited one (eager)
    running them. The first step, on the same weights as the eager run's, logs the same loss and gradient norm;
    later steps drift apart as any two runs' float rounding does through training (the test below compares every
    step on shared weights)."""
    recorder = record_compiled_graphs("aot_eager")
    summary = canvas_run(aspect_ratio_dir, tmp_path / "compiled", "--torch_compile", "--torch_compile_backend",
                         "aot_eager")
    canvas_run(aspect_ratio_dir, tmp_path / "eager", "--max_steps", "1")

    assert len(summary["image_canvases"]) == CANVASES and len(summary["buckets"]) == BUCKETS
    assert recorder.graphs_per_frame() == [CANVASES, BUCKETS, BUCKETS]  # forward (compiled first), costs, loss terms
    assert summary["graph_compilations"]["torch_compile"] == CANVASES + 2 * BUCKETS and recorder.symbolic == []
    runs = [recorder.frames[graph] for graph, _ in recorder.training_runs]
    assert runs == list(dict.fromkeys(recorder.frames)) * (summary["steps"] - 1)
    (eager_first,) = logged(tmp_path / "eager")
    assert logged(tmp_path / "compiled")[0] == pytest.approx(eager_first, rel=LOSS_RTOL)


def test_compiled_losses_and_gradients_equal_the_eager_ones_at_every_step(aspect_ratio_dir):
    """The forward compiled as the Trainer compiles it and the criterion as `--torch_compile` compiles it, against
    the eager forward and criterion on the same weights at every step of a short training over 3 canvases (the
    optimizer steps with the eager gradients)."""
    torch._dynamo.reset()
    training = Training(aspect_ratio_dir, image_buckets=3)
    model, parameters = training.model, training.parameters
    forward = torch.compile(model, backend="aot_eager", dynamic=False)
    criterion = DetrCriterion(model.config, criterion_compile_options(
        parse_arguments(["--output_dir", "unused", "--torch_compile", "--torch_compile_backend", "aot_eager"]
                        ).training, "cpu"))
    shapes = set()
    for step, (_, batch) in enumerate(training.batches):
        images = {"pixel_values": batch["pixel_values"], "pixel_mask": batch["pixel_mask"]}
        shapes.add(tuple(batch["pixel_values"].shape[2:]))
        loss, loss_dict = training.criterion(model(**images), batch["labels"])
        grads = torch.autograd.grad(loss, parameters)
        compiled_loss, compiled_dict = criterion(forward(**images), batch["labels"])
        compiled_grads = torch.autograd.grad(compiled_loss, parameters)

        assert_step_agrees(step, (compiled_loss, compiled_dict, compiled_grads), (loss, loss_dict, grads),
                           training.names, LOSS_RTOL, GRAD_TOL)
        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = grad
        training.optimizer.step()
        training.optimizer.zero_grad()
    assert len(shapes) == CANVASES
    torch._dynamo.reset()


@pytest.mark.slow  # an entry run in a subprocess, killed, and its rerun
def test_captured_step_with_accumulation_killed_and_resumed_trains_as_the_eager_run(canvas_coco, tmp_path,
                                                                                    dealt_canvas_reference_run,
                                                                                    logged_losses):
    """dynamo's cudagraphs backend (CUDA-graph handling: the stable gradient buffers under accumulation; CPU graphs
    are not captured) on three canvases, each step's 2 batches from different canvases, killed after the first
    checkpoint and rerun: it resumes and ends where the uninterrupted eager run ends, loss by loss, bit for bit."""
    argv = entry_argv(canvas_coco, tmp_path, *DEALT_CANVAS_RUN_ARGUMENTS, "--torch_compile",
                      "--torch_compile_backend", "cudagraphs")
    assert compiled_step_callbacks(parse_arguments(argv).training)  # the buffers are in this run
    first, last = tmp_path / "checkpoint-3", tmp_path / "checkpoint-6"
    assert kill_after_checkpoint(entry_command(argv), first / COMPLETE_MARKER) < 0
    assert not (last / COMPLETE_MARKER).exists()
    assert run_in_process(argv) == 0
    assert logged_losses(last) == logged_losses(dealt_canvas_reference_run / last.name)
    weights, expected = final_weights(tmp_path), final_weights(dealt_canvas_reference_run)
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)


@pytest.mark.parametrize(("flags", "captured"), [
    (["--torch_compile", "--torch_compile_mode", "reduce-overhead"], True),
    (["--torch_compile", "--torch_compile_mode", "max-autotune"], True),
    (["--torch_compile", "--torch_compile_backend", "cudagraphs"], True),
    (["--torch_compile"], False),
    (["--torch_compile", "--torch_compile_mode", "max-autotune-no-cudagraphs"], False),
    (["--torch_compile", "--torch_compile_backend", "eager", "--torch_compile_mode", "reduce-overhead"], False),
    ([], False),
])
def test_cuda_graph_modes_are_told_apart(flags, captured):
    training = parse_arguments(["--output_dir", "unused", *flags]).training
    assert uses_cuda_graphs(training) == captured
    accumulating = parse_arguments(["--output_dir", "unused", *flags, "--gradient_accumulation_steps", "2"]).training
    assert [type(callback) for callback in compiled_step_callbacks(accumulating)] == (
        [StableGradBuffersCallback] if captured else [])
    assert compiled_step_callbacks(training) == []


def test_cuda_graphs_with_several_processes_are_refused_by_name(monkeypatch):
    args = parse_arguments(["--output_dir", "unused", "--model_name_or_path", "detr-tiny", "--torch_compile",
                            "--torch_compile_mode", "reduce-overhead"])
    check_flags(args)  # one process
    monkeypatch.setattr("detr_ft.train.flag_checks.launched_processes", lambda: 2)
    with pytest.raises(FlagError, match="--torch_compile_mode reduce-overhead with 2 processes: CUDA graphs under "
                                        "DistributedDataParallel"):
        check_flags(args)
    compiled = parse_arguments(["--output_dir", "unused", "--torch_compile"]).training
    assert cuda_graph_problems(compiled, processes=2) == []


class TwoLayers(torch.nn.Module):
    """A trained linear layer under a frozen one, with a Trainer-shaped output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trained = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Linear(2, 1).requires_grad_(False)

    def forward(self, x, labels):
        return {"loss": (self.frozen(self.trained(x)).squeeze(-1) - labels).square().mean()}


class GradientsAtOptimizerStep(TrainerCallback):
    """The .grad tensor of every parameter, just before each optimizer step."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.seen: list[list[torch.Tensor | None]] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.seen.append([parameter.grad for parameter in self.model.parameters()])


def accumulate(output_dir, stable_buffers: bool) -> tuple[TwoLayers, GradientsAtOptimizerStep]:
    """4 optimizer steps of 2 micro-batches of 2 samples each, with or without `StableGradBuffersCallback`."""
    torch.manual_seed(1)
    samples = [{"x": torch.randn(3), "labels": torch.randn(())} for _ in range(16)]
    model = TwoLayers()
    gradients = GradientsAtOptimizerStep(model)
    args = TrainingArguments(output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, learning_rate=0.1, report_to="none", use_cpu=True,
                             save_strategy="no")
    callbacks = [StableGradBuffersCallback(), gradients] if stable_buffers else [gradients]
    Trainer(model=model, args=args, train_dataset=samples, callbacks=callbacks).train()
    return model, gradients


def test_stable_grad_buffers_hold_every_gradient_and_train_as_without(tmp_path):
    model, gradients = accumulate(tmp_path / "stable", stable_buffers=True)
    plain_model, plain_gradients = accumulate(tmp_path / "plain", stable_buffers=False)

    first = gradients.seen[0]
    assert first[2] is first[3] is None  # the frozen layer gets no buffer
    for step in gradients.seen:  # the same tensors, step after step: the Trainer's zero_grad did not drop them
        assert all(grad is buffer for grad, buffer in zip(step[:2], first[:2], strict=True))
    assert all(plain is not first[0] for plain, *_ in plain_gradients.seen)  # without: a new tensor every step
    for name, value in model.state_dict().items():  # accumulated and zeroed as the Trainer does it
        assert torch.equal(value, plain_model.state_dict()[name]), name


def test_stable_grad_buffers_accumulate_backwards_and_start_from_zero():
    model = TwoLayers()
    grads = StableGradBuffers(model)
    batch = {"x": torch.randn(4, 3), "labels": torch.randn(4)}
    single = torch.autograd.grad(model(**batch)["loss"], [model.trained.weight])[0]  # (2, 3)
    for _ in range(2):  # the second attach must zero what the first steps left
        grads.attach()
        model(**batch)["loss"].backward()
        model(**batch)["loss"].backward()
        assert model.trained.weight.grad is grads.buffers[0]
        torch.testing.assert_close(model.trained.weight.grad, 2 * single)
