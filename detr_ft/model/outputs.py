"""What the label-free forward returns: every decoder layer's predictions, stacked, final layer last."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from transformers.utils import ModelOutput


@dataclass
class DetectionOutput(ModelOutput):
    """The label-free forward's predictions (patches/detr_label_free_forward.py). `logits` and `pred_boxes` are the
    final layer's, as in transformers' outputs, so evaluation and `post_process_object_detection` read them alike;
    the criterion reads the stacked layers."""

    logits: Tensor | None = None  # (B, Q, C') the final decoder layer's class logits: layer_logits[-1]
    pred_boxes: Tensor | None = None  # (B, Q, 4) its boxes, normalised (cx, cy, w, h): layer_boxes[-1]
    layer_logits: Tensor | None = None  # (L, B, Q, C') L = decoder layers with auxiliary loss, else 1
    layer_boxes: Tensor | None = None  # (L, B, Q, 4)
