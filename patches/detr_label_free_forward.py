"""DETR's forward without its loss, returning every decoder layer's predictions: the model half of the
model/criterion split (`outputs = model(pixel_values, pixel_mask); loss = criterion(outputs, labels)`).

Why: `DetrForObjectDetection.forward` (transformers 4.55 and 5.24) computes the auxiliary decoder layers'
predictions only when it is given labels, and then computes the loss inside itself, matcher included. Whatever runs
inside the forward is what `--torch_compile`, CUDA graphs and HPU graphs capture and replay; the matcher (a host copy
and scipy) must not be. The patched forward takes images only and returns `DetectionOutput`: every layer's class
logits and boxes stacked (L, B, Q, .), final layer last, as facebookresearch/detr's forward returns them; the trainer
hands them to the criterion (detr_ft/model/criterion.py). Each layer's predictions are the stock forward's, computed
by the same ops on the same tensors (so bit for bit): the final layer from `last_hidden_state` (with auxiliary loss
the decoder normalises it a second time, and the stock loss reads it so), the others from the heads run on every
layer of `intermediate_hidden_states`, whose last one the stock loss leaves out.
Upstream: no issue (the stock forward is built around its own loss). Delete when transformers returns the auxiliary
predictions without labels; then the trainer can call the stock forward.
"""

import torch
from torch import Tensor
from transformers import DetrForObjectDetection

from detr_ft.model.outputs import DetectionOutput
from patches import swap_forward

TESTED = {"transformers": ("==4.55.*", "==5.24.*")}


def patch_model(model: DetrForObjectDetection) -> int:
    """Swap the forward of `model` (idempotent); returns how many models it patched (1)."""
    return swap_forward(model, DetrForObjectDetection, label_free_forward)


def label_free_forward(self: DetrForObjectDetection, pixel_values: Tensor, pixel_mask: Tensor | None = None,
                       **kwargs) -> DetectionOutput:
    """pixel_values (B, 3, H, W), pixel_mask (B, H, W) -> every decoder layer's logits and boxes."""
    outputs = self.model(pixel_values, pixel_mask=pixel_mask)
    layer_logits = self.class_labels_classifier(outputs.last_hidden_state)[None]  # (1, B, Q, C+1)
    layer_boxes = self.bbox_predictor(outputs.last_hidden_state).sigmoid()[None]  # (1, B, Q, 4)
    if self.config.auxiliary_loss:
        intermediate = outputs.intermediate_hidden_states  # (L, B, Q, d)
        layer_logits = torch.cat([self.class_labels_classifier(intermediate)[:-1], layer_logits])  # (L, B, Q, C+1)
        layer_boxes = torch.cat([self.bbox_predictor(intermediate).sigmoid()[:-1], layer_boxes])  # (L, B, Q, 4)
    return DetectionOutput(logits=layer_logits[-1], pred_boxes=layer_boxes[-1], layer_logits=layer_logits,
                           layer_boxes=layer_boxes)
