"""The trainer computes DETR's loss from a label-free forward, so that the model's forward is a pure static graph.

`LossFromOutputs` goes before transformers' Trainer or optimum-habana's GaudiTrainer (detr_ft/train/devices.py).
Its `compute_loss`, used by training steps and by evaluation's `prediction_step` (eval_loss), pops the labels, calls
the model on the images only and hands the outputs to `loss_from_outputs` (detr_ft/model/pure_forward.py): the
model's own loss function, ours or transformers', guarded or not. What the forward caches or compiles
(`--use_hpu_graphs_for_training`, `--torch_compile`) is then that forward alone, without the matcher.

The loss is a per-batch mean, as the model's was: the Trainer still divides it by the gradient accumulation steps.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from detr_ft.model.pure_forward import loss_from_outputs, use_pure_forward


class LossFromOutputs:
    """Trainer mixin: the model is called without labels; the loss is computed here, from its outputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        use_pure_forward(self.model)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, Any]:
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
