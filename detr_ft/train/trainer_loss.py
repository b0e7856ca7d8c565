"""The trainer computes DETR's loss from a label-free forward, so that the model's forward is a pure static graph.

`LossFromOutputs` goes before transformers' Trainer or optimum-habana's GaudiTrainer (detr_ft/train/devices.py).
Its `compute_loss`, used by training steps and by evaluation's `prediction_step` (eval_loss), pops the labels, calls
the model on the images only and hands the outputs to `loss_from_outputs` (detr_ft/model/pure_forward.py): the
model's own loss function, ours or transformers', guarded or not. What the forward caches or compiles
(`--use_hpu_graphs_for_training`, `--torch_compile`) is then that forward alone, without the matcher.

The loss is a per-batch mean, as the model's was: the Trainer still divides it by the gradient accumulation steps.

`redo_step` runs a step's micro-batches again, for the finite-loss guard when the device matcher left a problem
unfinished (detr_ft/model/device_matcher.py): the guard asks for them by setting `step_inputs` to a list at each
step's begin, so they are kept only when such a redo can happen.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from detr_ft.model.pure_forward import loss_from_outputs, use_pure_forward


class LossFromOutputs:
    """Trainer mixin: the model is called without labels; the loss is computed here, from its outputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_pure_forward(self.model)
        # This step's training micro-batches (inputs, num_items_in_batch), while a list: see `redo_step`.
        self.step_inputs: list[tuple[dict[str, Any], Tensor | int | None]] | None = None

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, Any]:
        if self.step_inputs is not None and torch.is_grad_enabled():  # a training micro-batch (evaluation: no grad)
            self.step_inputs.append((inputs, num_items_in_batch))
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)  # the cached / compiled forward: images in, predictions out
        loss, loss_dict, auxiliary_outputs = loss_from_outputs(self.accelerator.unwrap_model(model), outputs, labels)
        if not return_outputs:
            return loss
        # What the model itself returns when given labels: evaluation reads the same keys.
        outputs = type(outputs)(**{**outputs, "loss": loss, "loss_dict": loss_dict,
                                   "auxiliary_outputs": auxiliary_outputs})
        return loss, outputs

    def redo_step(self, step_inputs: list[tuple[dict[str, Any], Tensor | int | None]]) -> None:
        """Forward, loss and backward of a step's micro-batches again, as the training loop runs them (gradient
        reduction across processes on the last one only), then gradient clipping as the loop clips. The caller has
        zeroed the gradients and put back what the first pass changed (buffers, random state).

        It runs through `model_wrapped`, the model as the loop calls it (under DDP, the DistributedDataParallel
        wrapper, whose backward averages the gradients over processes); the bare model a callback gets would leave
        each process with its own gradients (tests/test_ddp.py)."""
        model = self.model_wrapped
        for index, (inputs, num_items_in_batch) in enumerate(step_inputs):
            last = index == len(step_inputs) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                self.training_step(model, inputs, num_items_in_batch)
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            fused_norm = getattr(self, "FusedNorm", None)  # GaudiTrainer's fused clipping on HPU, as its loop clips
            if fused_norm is not None:
                fused_norm.clip_norm(model.parameters())
            else:
                self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
