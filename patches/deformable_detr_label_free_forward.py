"""Deformable DETR's forward without labels and without its loss, returning every decoder layer's predictions.

Why: `DeformableDetrForObjectDetection.forward` computes every decoder layer's predictions but hands the stack only
to its loss, which it calls inside the forward when given labels (host reads that HPU or CUDA graphs must not
capture); without labels it returns the final layer's alone. The patched forward takes (pixel_values, pixel_mask),
computes the predictions of the layers the loss uses with transformers' own ops (each layer's head on its hidden
states and its reference points: the query's learned one for layer 0, the previous layer's refined box with
`with_box_refine`, the top encoder proposals with `two_stage`) and returns them stacked, final layer last, as
`DetectionOutput`; the trainer then calls the criterion on them. Without `auxiliary_loss` only the final layer's
are computed, the only ones the loss reads. The two-stage encoder proposals are left out: transformers' loss does
not read them.
Upstream: transformers 5.24 has no label-free way to get the auxiliary predictions. Delete when its forward returns
them without labels; keep the arithmetic in step with `DeformableDetrForObjectDetection.forward`.
"""

import torch
from torch import Tensor, nn
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrForObjectDetection,
    inverse_sigmoid,
)

from detr_ft.model.outputs import DetectionOutput
from patches import swap_forward

TESTED = {"transformers": ("==4.55.*", "==5.24.*")}


def patch_model(model: nn.Module) -> int:
    """Swap the forward of every DeformableDetrForObjectDetection in `model` (idempotent); returns how many."""
    return swap_forward(model, DeformableDetrForObjectDetection, label_free_forward)


def label_free_forward(
    self: DeformableDetrForObjectDetection, pixel_values: Tensor, pixel_mask: Tensor | None = None
) -> DetectionOutput:
    """The stock forward's predictions for every layer its loss uses, no labels, no loss."""
    outputs = self.model(pixel_values, pixel_mask=pixel_mask)
    hidden_states = outputs.intermediate_hidden_states  # (B, L, Q, d)
    num_layers = hidden_states.shape[1]
    layers = range(num_layers) if self.config.auxiliary_loss else [num_layers - 1]
    layer_logits, layer_boxes = [], []
    for layer in layers:
        reference = outputs.init_reference_points if layer == 0 else outputs.intermediate_reference_points[:, layer - 1]
        reference = inverse_sigmoid(reference)  # (B, Q, 2 | 4)
        layer_logits.append(self.class_embed[layer](hidden_states[:, layer]))  # (B, Q, C)
        delta_bbox = self.bbox_embed[layer](hidden_states[:, layer])  # (B, Q, 4)
        if reference.shape[-1] == 4:
            outputs_coord_logits = delta_bbox + reference  # (B, Q, 4)
        else:
            delta_bbox[..., :2] += reference
            outputs_coord_logits = delta_bbox  # (B, Q, 4)
        layer_boxes.append(outputs_coord_logits.sigmoid())
    layer_logits, layer_boxes = torch.stack(layer_logits), torch.stack(layer_boxes)  # (L, B, Q, C), (L, B, Q, 4)
    return DetectionOutput(logits=layer_logits[-1], pred_boxes=layer_boxes[-1], layer_logits=layer_logits,
                           layer_boxes=layer_boxes)
