"""Catch a non-finite loss at the optimizer step it happens in, before the update reaches the weights.

`NonFiniteLossGuard` wraps the model's loss function: every training loss (grad enabled; evaluation runs without)
keeps `isfinite(loss)` on the device, with the batch's labels, no host sync. Just before the optimizer step the guard,
also a TrainerCallback, reads one bool on the host, "some loss of this step was not finite", summed over processes so
that all of them decide alike. Then:

- stop (default): raise `NonFiniteLossError` naming the step and the batch's images. The update is never applied and
  nothing more is saved: the last complete checkpoint stays as it was, and rerunning the command resumes from it.
- skip (`--skip_nonfinite_batches`): zero every gradient in place and skip that one optimizer step (the parameters
  and their moments stay as they were), put back the buffers the forward changed (BatchNorm statistics, copied at
  the step's start), warn, and append {step, images} to `<output_dir>/nonfinite_batches.json`. The step still counts
  (learning-rate schedule, checkpoints); its loss is logged as 0. In place, not `p.grad = None`: HPU graphs
  (`--use_hpu_graphs_for_training`) keep writing into the gradient tensors they captured.

The same read carries the device matcher's flag when it runs fewer search steps than its worst case (`--matcher
device --matcher_steps N`, `carry_matcher_flags`): "some matching problem of this step did not finish". In that rare
step the guard recomputes the step's gradients exactly, with the host matcher: it zeroes the gradients in place,
puts back the buffers and the random state of the step's start (the same dropout masks), has the trainer run the
step's micro-batches again (`LossFromOutputs.redo_step`: forward, loss, backward, clipping), warns and counts the
step (`redone_steps`). The redone losses are then checked as above: a second read, in that step only. The step's
logged loss and gradient norm stay those of the first pass.

Cost: that one host read per optimizer step, after backward and gradient clipping. On CUDA the host waits for
backward before it queues the optimizer step; under HPU lazy mode GaudiTrainer already ends the graph after backward,
so only the clipping runs before the read. A non-finite gradient under a finite loss is not caught.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import PreTrainedModel, TrainerCallback

from detr_ft.data.padding import batch_image_index
from detr_ft.run_files import read_json_list, write_json_atomic

if TYPE_CHECKING:
    from detr_ft.model.device_matcher import DeviceMatcher
    from detr_ft.train.trainer_loss import LossFromOutputs

logger = logging.getLogger(__name__)

NONFINITE_FILE = "nonfinite_batches.json"


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite; raised before the optimizer step applies it."""


class NonFiniteLossGuard(TrainerCallback):
    """Wraps a model's loss (`install`) and acts on a non-finite one before the optimizer step; see the module doc."""

    def __init__(self, output_dir: str | Path, skip: bool = False, image_names: Sequence[str] | None = None):
        self.path = Path(output_dir) / NONFINITE_FILE
        self.skip = skip
        self.image_names = image_names
        self.step_losses: list[tuple[Tensor, dict | list[dict]]] = []  # (isfinite(loss), labels) per micro-batch
        self.saved_buffers: list[Tensor] = []
        self.incomplete_flags: list[Tensor] = []  # the device matcher's, per call (carry_matcher_flags)
        self.matcher: DeviceMatcher | None = None
        self.trainer: LossFromOutputs | None = None
        self.saved_random_state: list[Tensor] = []
        self.redone_steps = 0

    def carry_matcher_flags(self, matcher: DeviceMatcher, trainer: LossFromOutputs) -> None:
        """Read `matcher`'s "some problem did not finish" flags in this guard's one read, and redo such a step with
        the host matcher through `trainer` (see the module doc)."""
        matcher.incomplete_flags = self.incomplete_flags
        self.matcher, self.trainer = matcher, trainer

    def install(self, model: PreTrainedModel) -> None:
        """Wrap the loss function the model has now: call after any other loss is installed."""
        model.loss_function = self.wrap(model.loss_function)

    def wrap(self, loss_function: Callable) -> Callable:
        def guarded_loss(logits: Tensor, labels: dict | list[dict], *args, **kwargs):
            loss, loss_dict, auxiliary_outputs = loss_function(logits, labels, *args, **kwargs)
            if torch.is_grad_enabled():
                finite = torch.isfinite(loss)  # ()
                self.step_losses.append((finite, labels))
                if self.skip:
                    loss = torch.where(finite, loss, 0.0)  # ()
            return loss, loss_dict, auxiliary_outputs

        return guarded_loss

    def describe(self, indices: list[int]) -> str:
        if not self.image_names:
            return ", ".join(map(str, indices))
        return ", ".join(f"{i} ({self.image_names[i]})" for i in indices)

    def on_train_begin(self, args, state, control, **kwargs):
        """On resume, drop the records past the resumed step: that part of the run is trained again."""
        if state.is_world_process_zero and self.path.exists():
            write_json_atomic(self.path, [r for r in read_json_list(self.path) if r["step"] <= state.global_step])

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.skip or self.trainer is not None:
            self.saved_buffers = [buffer.clone() for buffer in model.buffers()]
        if self.trainer is not None:
            self.trainer.step_inputs = []  # keep this step's micro-batches for a redo
            self.saved_random_state = random_state(args.device)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        step_losses, self.step_losses = self.step_losses, []
        incomplete_flags = self.incomplete_flags.copy()
        self.incomplete_flags.clear()  # in place: the matcher holds this list
        if not step_losses:
            return
        nonfinite, incomplete = self.read_flags(step_losses, incomplete_flags)  # the one host sync
        if incomplete and not nonfinite:
            self.redo_on_host(args, state, model, optimizer)
            step_losses, self.step_losses = self.step_losses, []
            nonfinite, _ = self.read_flags(step_losses, [])  # the redone losses: a second read, in this step only
        if self.trainer is not None:
            self.trainer.step_inputs = None
        if not nonfinite:
            return
        nonfinite_batches = [batch_image_index(labels).tolist() for finite, labels in step_losses if not finite]
        images = self.gather_images(nonfinite_batches)
        step = state.global_step + 1
        if not self.skip:
            raise NonFiniteLossError(
                f"non-finite training loss at step {step} (epoch {state.epoch or 0.0:.2f}) on the batch of training "
                f"images {self.describe(images)}; the update was not applied. Resume from the last complete "
                "checkpoint by rerunning the command, or add --skip_nonfinite_batches")
        zero_gradients(optimizer)
        skip_next_step(optimizer)
        self.restore_buffers(model)
        logger.warning("non-finite training loss at step %d: skipped the batch of training images %s", step,
                       self.describe(images))
        if state.is_world_process_zero:
            write_json_atomic(self.path, [*read_json_list(self.path), {"step": step, "images": images}])

    @staticmethod
    def read_flags(step_losses: list[tuple[Tensor, dict | list[dict]]],
                   incomplete_flags: list[Tensor]) -> tuple[float, float]:
        """Micro-batches with a non-finite loss, and matcher calls with an unfinished problem: summed over processes,
        so that all of them decide alike, in one host read."""
        nonfinite = (~torch.stack([finite for finite, _ in step_losses])).sum()  # ()
        incomplete = torch.stack(incomplete_flags).sum() if incomplete_flags else torch.zeros_like(nonfinite)  # ()
        counts = torch.stack([nonfinite, incomplete]).float()  # (2,)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        nonfinite, incomplete = counts.tolist()  # the host sync
        return nonfinite, incomplete

    def redo_on_host(self, args, state, model, optimizer) -> None:
        """The step's gradients again, with the host matcher, from the state at the step's start."""
        step_inputs, self.trainer.step_inputs = self.trainer.step_inputs, None  # the redo keeps nothing
        logger.warning("step %d: a matching problem did not finish in --matcher_steps %d search steps; its gradients "
                       "are recomputed with the host matcher", state.global_step + 1, self.matcher.steps)
        zero_gradients(optimizer)
        self.restore_buffers(model)
        set_random_state(args.device, self.saved_random_state)
        with self.matcher.on_host():
            self.trainer.redo_step(step_inputs)
        self.redone_steps += 1

    def restore_buffers(self, model) -> None:
        for buffer, saved in zip(model.buffers(), self.saved_buffers, strict=True):
            buffer.copy_(saved)

    @staticmethod
    def gather_images(local_batches: list[list[int]]) -> list[int]:
        """The images of this process's non-finite micro-batches, and of every other process's: sorted, unique."""
        local = [i for batch in local_batches for i in batch]
        if not (dist.is_available() and dist.is_initialized()):
            return sorted(set(local))
        gathered: list[list[int]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, local)
        return sorted({i for images in gathered for i in images})


def skip_next_step(optimizer: torch.optim.Optimizer) -> None:
    """Make the optimizer's next `step()` do nothing, then behave as before. The Trainer's own optimizer (accelerate's
    wrapper) calls this one's `step`; fp16's GradScaler calls the original instead (not supported with the skip)."""
    step = optimizer.step

    def skipped_step(*args, **kwargs) -> None:
        optimizer.step = step

    optimizer.step = skipped_step


def zero_gradients(optimizer: torch.optim.Optimizer) -> None:
    """In place, not `grad = None`: the tensors stay those HPU graphs write into."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.grad is not None:
                parameter.grad.zero_()


def random_state(device: torch.device) -> list[Tensor]:
    """The CPU generator's state and, on an accelerator, its generator's: what dropout and LayerDrop draw from."""
    module = None if device.type == "cpu" else torch.get_device_module(device.type)
    return [torch.get_rng_state(), *([module.get_rng_state()] if hasattr(module, "get_rng_state") else [])]


def set_random_state(device: torch.device, states: list[Tensor]) -> None:
    torch.set_rng_state(states[0])
    if len(states) > 1:
        torch.get_device_module(device.type).set_rng_state(states[1])
