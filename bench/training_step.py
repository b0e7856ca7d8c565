"""A DETR training step as the trainer runs it: the label-free forward, then the criterion on its outputs: what
`make bench` times on our paths.

    outputs = model(pixel_values=..., pixel_mask=...)   # patches/detr_label_free_forward.py: a pure static graph
    loss, _ = criterion(outputs, labels)                 # DetrCriterion: the host matcher's one copy, then the loss
"""

from __future__ import annotations

from torch import Tensor, nn

from detr_ft.model.criterion import DetrCriterion


def forward_and_loss(model: nn.Module, batch: dict) -> Tensor:
    """The forward without labels, then DetrCriterion on its outputs and the padded labels: () float."""
    outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    loss, _ = DetrCriterion(model.config)(outputs, batch["labels"])
    return loss
