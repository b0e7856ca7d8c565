"""Catch a non-finite loss at the optimizer step it happens in, before the update reaches the weights.

The trainer hands the guard every training loss (`record`: grad enabled; evaluation runs without), which keeps
`isfinite(loss)` on the device with the batch's labels: no host sync. Just before the optimizer step the guard, a
TrainerCallback the trainer holds, reads one bool on the host, "some loss of this step was not finite", summed over
processes so that all of them decide alike. Then:

- stop (default): raise `NonFiniteLossError` naming the step and the batch's images. The update is never applied and
  nothing more is saved: the last complete checkpoint stays as it was, and rerunning the command resumes from it.
- skip (`--skip_nonfinite_batches`): the optimizer step runs, and what it changed (parameters, moments, step
  counts) is put back right after it, as are the buffers the forward changed (BatchNorm statistics, copied at the
  step's start); warn, and append {step, images} to `<output_dir>/nonfinite_batches.json`. The step still counts
  (learning-rate schedule, checkpoints); its loss is logged as 0, not as NaN in the logged mean. Everything is put
  back in place: HPU graphs (`--use_hpu_graphs_for_training`) keep writing into the tensors they captured. The
  parameters and the optimizer state are copied only in a skipped step, the buffers at every step's start.

Cost: that one host read per optimizer step, after backward and gradient clipping. On CUDA the host waits for
backward before it queues the optimizer step; under HPU lazy mode GaudiTrainer already ends the graph after backward,
so only the clipping runs before the read. A non-finite gradient under a finite loss is not caught.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import TrainerCallback

from detr_ft.data.padding import batch_image_index
from detr_ft.run_files import read_json_list, write_json_atomic

logger = logging.getLogger(__name__)

NONFINITE_FILE = "nonfinite_batches.json"


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite; raised before the optimizer step applies it."""


class NonFiniteLossGuard(TrainerCallback):
    """Acts on a non-finite training loss before the optimizer step; see the module doc."""

    def __init__(self, output_dir: str | Path, skip: bool = False, image_names: Sequence[str] | None = None):
        self.path = Path(output_dir) / NONFINITE_FILE
        self.skip = skip
        self.image_names = image_names
        self.step_losses: list[tuple[Tensor, dict | list[dict]]] = []  # (isfinite(loss), labels) per micro-batch
        self.saved_buffers: list[Tensor] = []
        self.saved_optimizer: tuple[list[Tensor], dict] | None = None  # a skipped step's parameters and state

    def record(self, loss: Tensor, labels: dict | list[dict]) -> Tensor:
        """Keep whether a training micro-batch's loss () is finite; with skip, a non-finite one becomes 0."""
        finite = torch.isfinite(loss)  # ()
        self.step_losses.append((finite, labels))
        return torch.where(finite, loss, 0.0) if self.skip else loss  # ()

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
        if not step_losses or not self.count_nonfinite(step_losses):  # the one host sync
            return
        images = self.gather_images([batch_image_index(labels).tolist() for finite, labels in step_losses
                                     if not finite])
        step = state.global_step + 1
        if not self.skip:
            raise NonFiniteLossError(
                f"non-finite training loss at step {step} (epoch {state.epoch or 0.0:.2f}) on the batch of training "
                f"images {self.describe(images)}; the update was not applied. Resume from the last complete "
                "checkpoint by rerunning the command, or add --skip_nonfinite_batches")
        self.saved_optimizer = copy_optimizer(optimizer)
        for buffer, saved in zip(model.buffers(), self.saved_buffers, strict=True):
            buffer.copy_(saved)
        logger.warning("non-finite training loss at step %d: skipped the batch of training images %s", step,
                       self.describe(images))
        if state.is_world_process_zero:
            write_json_atomic(self.path, [*read_json_list(self.path), {"step": step, "images": images}])

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.saved_optimizer is not None:
            restore_optimizer(optimizer, *self.saved_optimizer)
            self.saved_optimizer = None

    @staticmethod
    def count_nonfinite(step_losses: list[tuple[Tensor, dict | list[dict]]]) -> float:
        """Micro-batches with a non-finite loss, summed over processes, so that all of them decide alike."""
        nonfinite = (~torch.stack([finite for finite, _ in step_losses])).sum().float()  # ()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(nonfinite)
        return nonfinite.item()  # the host sync

    @staticmethod
    def gather_images(local_batches: list[list[int]]) -> list[int]:
        """The images of this process's non-finite micro-batches, and of every other process's: sorted, unique."""
        local = [i for batch in local_batches for i in batch]
        if not (dist.is_available() and dist.is_initialized()):
            return sorted(set(local))
        gathered: list[list[int]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, local)
        return sorted({i for images in gathered for i in images})


def copy_optimizer(optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], dict]:
    """Copies of the parameters an optimizer steps and of its per-parameter state (moments, step counts)."""
    parameters = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]
    state = {parameter: {key: value.clone() if isinstance(value, Tensor) else value for key, value in entry.items()}
             for parameter, entry in optimizer.state.items()}
    return parameters, state


def restore_optimizer(optimizer: torch.optim.Optimizer, parameters: list[Tensor], state: dict) -> None:
    """Put back what `copy_optimizer` copied, in place; state the step created is dropped."""
    with torch.no_grad():
        for parameter, saved in zip((p for g in optimizer.param_groups for p in g["params"]), parameters, strict=True):
            parameter.copy_(saved)
    for parameter in list(optimizer.state):
        if parameter not in state:
            del optimizer.state[parameter]
            continue
        for key, saved in state[parameter].items():
            current = optimizer.state[parameter][key]
            if isinstance(saved, Tensor) and isinstance(current, Tensor):
                current.copy_(saved)
            else:
                optimizer.state[parameter][key] = saved
