"""DETR's forward without its loss, and the loss from that forward's outputs: two calls instead of one.

transformers' `DetrForObjectDetection.forward` computes the loss inside itself when it is given labels, and the
auxiliary layers' predictions only then. Under HPU graphs (optimum-habana's ModuleCacher caches `model.forward`) or
CUDA graphs, whatever runs inside the forward is captured and replayed; the matcher (a host copy and scipy, or the
device matcher's data-dependent search) must not be. So the trainer (detr_ft/train/trainer_loss.py) calls the model
without labels and computes the loss itself:

    outputs = model(pixel_values, pixel_mask)                 # `pure_forward`: a static graph, no host read
    loss, loss_dict, auxiliary_outputs = loss_from_outputs(model, outputs, labels)

`pure_forward` is the stock forward without the loss, returning every auxiliary layer's predictions whenever the
config has `auxiliary_loss` (as facebookresearch/detr's forward does). `loss_from_outputs` calls the model's own
`loss_function` with the arguments the stock forward gives it: ours (`padded_detr_loss`, installed by
`use_static_shape_loss`) or transformers' (`--num_buckets 0`), wrapped by the finite-loss guard when it is on. The
loss is still computed in one place; a model called with labels (the old route) gives the very same loss.
"""

from collections.abc import Callable
from types import MethodType

import torch
from torch import Tensor
from transformers import DetrForObjectDetection
from transformers.models.detr.modeling_detr import DetrObjectDetectionOutput


def pure_forward(self: DetrForObjectDetection, pixel_values: Tensor, pixel_mask: Tensor | None = None,
                 **kwargs) -> DetrObjectDetectionOutput:
    """The stock forward's predictions, no loss: `logits` (B, Q, C+1), `pred_boxes` (B, Q, 4) and, with
    `config.auxiliary_loss`, `auxiliary_outputs`: one {"logits", "pred_boxes"} per decoder layer but the last."""
    outputs = self.model(pixel_values, pixel_mask=pixel_mask, **kwargs)
    logits = self.class_labels_classifier(outputs.last_hidden_state)  # (B, Q, C+1)
    pred_boxes = self.bbox_predictor(outputs.last_hidden_state).sigmoid()  # (B, Q, 4)
    auxiliary_outputs = None
    if self.config.auxiliary_loss:
        # The stock forward's ops on the stacked layers, so the loss sees the same numbers.
        outputs_class = self.class_labels_classifier(outputs.intermediate_hidden_states)  # (L, B, Q, C+1)
        outputs_coord = self.bbox_predictor(outputs.intermediate_hidden_states).sigmoid()  # (L, B, Q, 4)
        auxiliary_outputs = [{"logits": c, "pred_boxes": b} for c, b in zip(outputs_class[:-1], outputs_coord[:-1],
                                                                            strict=True)]
    return DetrObjectDetectionOutput(
        logits=logits,
        pred_boxes=pred_boxes,
        auxiliary_outputs=auxiliary_outputs,
        last_hidden_state=outputs.last_hidden_state,
        decoder_hidden_states=outputs.decoder_hidden_states,
        decoder_attentions=outputs.decoder_attentions,
        cross_attentions=outputs.cross_attentions,
        encoder_last_hidden_state=outputs.encoder_last_hidden_state,
        encoder_hidden_states=outputs.encoder_hidden_states,
        encoder_attentions=outputs.encoder_attentions,
    )


def use_pure_forward(model: DetrForObjectDetection) -> None:
    """Make this model's forward `pure_forward` (per instance: the class, saving and loading are untouched)."""
    model.forward = MethodType(pure_forward, model)


def loss_from_outputs(
    model: DetrForObjectDetection, outputs: DetrObjectDetectionOutput, labels: dict | list,
    loss_function: Callable | None = None,
) -> tuple[Tensor, dict[str, Tensor], list[dict[str, Tensor]] | None]:
    """`loss_function` (default: `model.loss_function`) on a `pure_forward`'s outputs, called as the stock forward
    calls it."""
    outputs_class = outputs_coord = None
    if model.config.auxiliary_loss:
        # The loss functions take every layer's predictions, final layer last, and use all but that last one.
        outputs_class = torch.stack([*(aux["logits"] for aux in outputs.auxiliary_outputs), outputs.logits])
        outputs_coord = torch.stack([*(aux["pred_boxes"] for aux in outputs.auxiliary_outputs), outputs.pred_boxes])
    loss_function = loss_function or model.loss_function
    return loss_function(outputs.logits, labels, model.device, outputs.pred_boxes, model.config,
                               outputs_class, outputs_coord)  # (L, B, Q, C+1), (L, B, Q, 4) with aux
