"""Conditional DETR's forward without labels and without its loss, returning every decoder layer's predictions.

Why: `ConditionalDetrForObjectDetection.forward` computes the auxiliary layers' predictions only when it is given
labels, and then hands them straight to its loss (host reads inside the forward, which HPU or CUDA graphs must not
capture). The patched forward takes (pixel_values, pixel_mask), computes the predictions of every layer the loss
uses with transformers' own ops, and returns them stacked, final layer last, as `DetectionOutput`; the trainer
then calls the criterion on them.
Which layers: with `auxiliary_loss`, transformers' decoder feeds each layer's layer-normed output to the next layer
and normalises the last one twice. `logits` / `pred_boxes` come from the twice-normed states, and the loss takes the
auxiliary layers 0..L-2 from the once-normed intermediate states (its copy of the last layer there goes unused): the
stack is exactly those, `layer_logits = [aux 0, ..., aux L-2, logits]`. (The original Conditional DETR feeds the
un-normed output on; flipping `auxiliary_loss` on a pretrained checkpoint therefore changes its predictions in
transformers.)
Upstream: transformers 5.24 has no label-free way to get the auxiliary predictions. Delete when its forward returns
them without labels; keep the arithmetic in step with `ConditionalDetrForObjectDetection.forward`.
"""

import torch
from torch import Tensor, nn
from transformers.models.conditional_detr.modeling_conditional_detr import (
    ConditionalDetrForObjectDetection,
    inverse_sigmoid,
)

from detr_ft.model.outputs import DetectionOutput
from patches import swap_forward

TESTED = {"transformers": ("==4.55.*", "==5.24.*")}


def patch_model(model: nn.Module) -> int:
    """Swap the forward of every ConditionalDetrForObjectDetection in `model` (idempotent); returns how many."""
    return swap_forward(model, ConditionalDetrForObjectDetection, label_free_forward)


def label_free_forward(
    self: ConditionalDetrForObjectDetection, pixel_values: Tensor, pixel_mask: Tensor | None = None
) -> DetectionOutput:
    """The stock forward's predictions for every layer its loss uses, no labels, no loss."""
    outputs = self.model(pixel_values, pixel_mask=pixel_mask)
    reference_before_sigmoid = inverse_sigmoid(outputs.reference_points).transpose(0, 1)  # (B, Q, 2)
    logits = self.class_labels_classifier(outputs.last_hidden_state)  # (B, Q, C)
    pred_boxes = box_head(self, outputs.last_hidden_state, reference_before_sigmoid)  # (B, Q, 4)
    layer_logits, layer_boxes = logits[None], pred_boxes[None]  # (1, B, Q, C), (1, B, Q, 4)
    if self.config.auxiliary_loss:
        intermediate = outputs.intermediate_hidden_states  # (L, B, Q, d)
        outputs_class = self.class_labels_classifier(intermediate)  # (L, B, Q, C)
        outputs_coord = torch.stack([box_head(self, hidden, reference_before_sigmoid) for hidden in intermediate])
        layer_logits = torch.cat([outputs_class[:-1], layer_logits])  # (L, B, Q, C)
        layer_boxes = torch.cat([outputs_coord[:-1], layer_boxes])  # (L, B, Q, 4)
    return DetectionOutput(logits=logits, pred_boxes=pred_boxes, layer_logits=layer_logits, layer_boxes=layer_boxes)


def box_head(
    self: ConditionalDetrForObjectDetection, hidden_states: Tensor, reference_before_sigmoid: Tensor
) -> Tensor:
    """Boxes of one layer, as the stock forward computes them: (B, Q, d), (B, Q, 2) -> (B, Q, 4)."""
    tmp = self.bbox_predictor(hidden_states)  # (B, Q, 4)
    tmp[..., :2] += reference_before_sigmoid
    return tmp.sigmoid()
