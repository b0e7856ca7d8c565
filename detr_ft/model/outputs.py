from dataclasses import dataclass

from torch import Tensor
from transformers.utils import ModelOutput


@dataclass
class DetectionOutput(ModelOutput):
    """The label-free forward's predictions: every decoder layer's, stacked, final layer last."""
    logits: Tensor | None = None        # (B, Q, C') final decoder layer = layer_logits[-1]
    pred_boxes: Tensor | None = None    # (B, Q, 4) normalized (cx, cy, w, h) = layer_boxes[-1]
    layer_logits: Tensor | None = None  # (L, B, Q, C') L = decoder layers with auxiliary loss, else 1
    layer_boxes: Tensor | None = None   # (L, B, Q, 4)
