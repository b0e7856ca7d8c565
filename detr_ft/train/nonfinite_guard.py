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

Cost: that one host read per optimizer step, after backward and gradient clipping. On CUDA the host waits for
backward before it queues the optimizer step; under HPU lazy mode GaudiTrainer already ends the graph after backward,
so only the clipping runs before the read. A non-finite gradient under a finite loss is not caught.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import PreTrainedModel, TrainerCallback

from detr_ft.data.padding import batch_image_index
from detr_ft.run_files import read_json_list, write_json_atomic

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
        if self.skip:
            self.saved_buffers = [buffer.clone() for buffer in model.buffers()]

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        step_losses, self.step_losses = self.step_losses, []
        if not step_losses:
            return
        nonfinite = (~torch.stack([finite for finite, _ in step_losses])).float().sum()  # ()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(nonfinite)
        if not nonfinite.item():  # the one host sync
            return
        nonfinite_batches = [batch_image_index(labels).tolist() for finite, labels in step_losses if not finite]
        images = self.gather_images(nonfinite_batches)
        step = state.global_step + 1
        if not self.skip:
            raise NonFiniteLossError(
                f"non-finite training loss at step {step} (epoch {state.epoch or 0.0:.2f}) on the batch of training "
                f"images {self.describe(images)}; the update was not applied. Resume from the last complete "
                "checkpoint by rerunning the command, or add --skip_nonfinite_batches")
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.grad.zero_()  # no NaN left in them; the tensors stay those HPU graphs write into
        skip_next_step(optimizer)
        for buffer, saved in zip(model.buffers(), self.saved_buffers, strict=True):
            buffer.copy_(saved)
        logger.warning("non-finite training loss at step %d: skipped the batch of training images %s", step,
                       self.describe(images))
        if state.is_world_process_zero:
            write_json_atomic(self.path, [*read_json_list(self.path), {"step": step, "images": images}])

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

