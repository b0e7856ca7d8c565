"""A DETR training step with the loss outside the forward, per matcher: what the compile proofs
(tests/test_compile.py) compile and what `make bench` and scripts/gpu_check.sh time.

The forward runs without labels (`pure_forward`: backbone, encoder, decoder and the heads, a pure static graph); the
set-prediction loss is `padded_detr_loss` on its outputs (`loss_from_outputs`, what the trainer's `compute_loss`
does), matching with the matcher under test:

    outputs = pure_forward(model, pixel_values, pixel_mask)        logits (B, Q, C+1), pred_boxes (B, Q, 4), aux layers
    loss = loss_from_outputs(model, outputs, labels, padded_detr_loss with match)

so it equals `model(**batch).loss` with `use_static_shape_loss(model, match)` (tests/test_compile.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor
from transformers import DetrForObjectDetection
from transformers.models.detr.modeling_detr import DetrObjectDetectionOutput

from detr_ft.model.loss import padded_detr_loss
from detr_ft.model.matcher import hungarian_match
from detr_ft.model.pure_forward import loss_from_outputs, pure_forward


def outputs_loss(
    model: DetrForObjectDetection, outputs: DetrObjectDetectionOutput, labels: dict[str, Tensor],
    match: Callable = hungarian_match,
) -> Tensor:
    """`padded_detr_loss` of `pure_forward`'s outputs on padded labels, matching with `match`: () float."""
    loss, _, _ = loss_from_outputs(model, outputs, labels, partial(padded_detr_loss, match=match))
    return loss


def forward_and_loss(model: DetrForObjectDetection, batch: dict, match: Callable = hungarian_match) -> Tensor:
    """The forward without labels, then the loss from its outputs: () float."""
    outputs = pure_forward(model, batch["pixel_values"], batch["pixel_mask"])
    return outputs_loss(model, outputs, batch["labels"], match)
