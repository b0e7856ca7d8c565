"""A DETR training step with the loss outside the forward, per matcher: what the compile proofs
(tests/test_compile.py) compile and what `make bench` and scripts/gpu_check.sh time.

The forward runs without labels (backbone, encoder, decoder and the heads: a pure static graph); the set-prediction
loss is `padded_detr_loss` on its outputs, called as DetrForObjectDetection calls its loss_function when given labels:

    logits, pred_boxes = heads(decoder's last hidden state)                (B, Q, C+1), (B, Q, 4)
    outputs_class, outputs_coord = heads(every decoder layer's output)     (L, B, Q, C+1), (L, B, Q, 4)
    loss = padded_detr_loss(logits, labels, device, pred_boxes, config, outputs_class, outputs_coord, match=match)

so it equals `model(**batch).loss` with `use_static_shape_loss(model, match)` (tests/test_compile.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from transformers import DetrForObjectDetection

from detr_ft.model.loss import padded_detr_loss
from detr_ft.model.matcher import hungarian_match


def detection_outputs(model: DetrForObjectDetection, pixel_values: Tensor, pixel_mask: Tensor) -> dict[str, Tensor]:
    """The forward without labels, with the heads on every decoder layer (the model's own forward applies them to
    the intermediate layers only when it computes the loss)."""
    decoded = model.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    outputs = {"logits": model.class_labels_classifier(decoded.last_hidden_state),  # (B, Q, C+1)
               "pred_boxes": model.bbox_predictor(decoded.last_hidden_state).sigmoid()}  # (B, Q, 4)
    if model.config.auxiliary_loss:
        outputs["outputs_class"] = model.class_labels_classifier(decoded.intermediate_hidden_states)  # (L, B, Q, C+1)
        outputs["outputs_coord"] = model.bbox_predictor(decoded.intermediate_hidden_states).sigmoid()  # (L, B, Q, 4)
    return outputs


def outputs_loss(
    model: DetrForObjectDetection, outputs: dict[str, Tensor], labels: dict[str, Tensor],
    match: Callable = hungarian_match,
) -> Tensor:
    """`padded_detr_loss` of `detection_outputs` on padded labels, matching with `match`: () float."""
    loss, _, _ = padded_detr_loss(outputs["logits"], labels, outputs["logits"].device, outputs["pred_boxes"],
                                  model.config, outputs.get("outputs_class"), outputs.get("outputs_coord"), match=match)
    return loss


def forward_and_loss(model: DetrForObjectDetection, batch: dict, match: Callable = hungarian_match) -> Tensor:
    """The forward without labels, then the loss from its outputs: () float."""
    outputs = detection_outputs(model, batch["pixel_values"], batch["pixel_mask"])
    return outputs_loss(model, outputs, batch["labels"], match)
