"""`--torch_compile` compiles the whole training step but the matcher; in a CUDA-graph mode
(`--torch_compile_mode reduce-overhead`) the forward and its backward are replayed as CUDA graphs.

    part of a step         compiled by                               graphs                CUDA graphs
    forward, backward      the Trainer (accelerate's torch.compile)  one per image canvas  in a CUDA-graph mode
    matching costs         DetrCriterion (`criterion_compile_options`) one per target bucket  no
    host assignment        eager: one device->host copy, scipy, the indices back
    loss terms, backward   DetrCriterion                             one per target bucket  no
    clipping, optimizer    eager: torch's fused AdamW (--optim adamw_torch_fused, the default), no host read

The criterion's parts are compiled with the Trainer's backend but without its mode: their graphs are a handful of
fused kernels each, between the forward and a host read that ends any graph anyway, so capturing them would save
microseconds per step for a second memory pool beside the forward's. On Gaudi the criterion stays eager (its
compilation there is unverified). Image canvases and target buckets are independent: over an epoch the step compiles
canvases + 2 x buckets graphs, and none after (tests/test_compiled_step.py counts them over two epochs).

CUDA graphs come with two rules the project enforces:
- Gradient accumulation: a captured backward writes the parameters' gradients into the graphs' memory pool, which the
  next micro-batch's replay overwrites; a .grad left pointing there would accumulate into overwritten memory (torch
  raises where it notices: pytorch/pytorch#169545). `StableGradBuffers` keeps every
  trainable parameter's .grad in memory allocated outside the graphs, zeroed in place after each optimizer step, so
  backward accumulates into it (the fix torch's own error message names). Without accumulation the gradients are
  read by the optimizer before the next replay, and the callback is not needed.
- Several processes: DistributedDataParallel's gradient hooks under CUDA graphs have not been run by this project;
  the combination is refused before any data is read (`cuda_graph_problems`).
BatchNorm layers that train (a model trained from scratch) mutate their statistics in the forward; inductor then
declines to capture the graph and logs "skipping cudagraphs". DETR fine-tuned from a pretrained model has frozen
BatchNorm.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainingArguments


def uses_cuda_graphs(training: TrainingArguments) -> bool:
    """Whether --torch_compile replays the forward as CUDA graphs: inductor in a mode that turns on its CUDA graphs
    (reduce-overhead, max-autotune), or dynamo's cudagraphs backend."""
    if not training.torch_compile:
        return False
    if training.torch_compile_backend == "cudagraphs":
        return True
    if training.torch_compile_backend != "inductor" or training.torch_compile_mode is None:
        return False
    from torch._inductor import list_mode_options

    return bool(list_mode_options().get(training.torch_compile_mode, {}).get("triton.cudagraphs"))


def criterion_compile_options(training: TrainingArguments, device_type: str) -> dict[str, Any] | None:
    """torch.compile options for DetrCriterion's device parts: the Trainer's backend, the default mode; None (eager)
    without --torch_compile or on Gaudi."""
    if not training.torch_compile or device_type == "hpu":
        return None
    return {"backend": training.torch_compile_backend}


def cuda_graph_problems(training: TrainingArguments, processes: int) -> list[str]:
    """The refused combinations of CUDA graphs with the other flags, one line each (train/flag_checks.py)."""
    if not uses_cuda_graphs(training) or processes <= 1:
        return []
    what = (f"--torch_compile_mode {training.torch_compile_mode}" if training.torch_compile_backend == "inductor"
            else f"--torch_compile_backend {training.torch_compile_backend}")
    return [f"{what} with {processes} processes: CUDA graphs under DistributedDataParallel have not been run by this "
            "project; drop --torch_compile_mode (compiled, without CUDA graphs) or train in one process"]


def compiled_criterion_settings(buckets: int) -> AbstractContextManager:
    """Around training: dynamo's recompile limit (per compiled function) holds a graph per target bucket for each of
    the criterion's parts, which are compiled with dynamic=False."""
    return torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, buckets))


class StableGradBuffers:
    """Every trainable parameter's .grad kept in one tensor allocated outside any CUDA graph (module docstring)."""

    def __init__(self, model: nn.Module):
        self.parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        with torch.no_grad():
            self.buffers = [torch.zeros_like(parameter) for parameter in self.parameters]

    def attach(self) -> None:
        """Point every .grad at its buffer, zeroed: the next backward accumulates into it."""
        torch._foreach_zero_(self.buffers)
        for parameter, buffer in zip(self.parameters, self.buffers, strict=True):
            parameter.grad = buffer


class StableGradBuffersCallback(TrainerCallback):
    """`StableGradBuffers` for the Trainer's model: attached when training starts and again after each optimizer
    step, once the Trainer's `model.zero_grad()` has set the gradients to None."""

    def __init__(self) -> None:
        self.grads: StableGradBuffers | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.grads = StableGradBuffers(model)
        self.grads.attach()

    def on_step_end(self, args, state, control, **kwargs):
        self.grads.attach()


def compiled_step_callbacks(training: TrainingArguments) -> list[TrainerCallback]:
    """The callbacks the compiled step needs: `StableGradBuffersCallback` with CUDA graphs and gradient
    accumulation."""
    if uses_cuda_graphs(training) and training.gradient_accumulation_steps > 1:
        return [StableGradBuffersCallback()]
    return []
