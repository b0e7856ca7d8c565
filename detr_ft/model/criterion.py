"""DETR's criterion: matcher and set-prediction loss, applied to the label-free forward's outputs.

    outputs = model(pixel_values, pixel_mask)      # every decoder layer's predictions (L, B, Q, .)
    loss, loss_dict = criterion(outputs, labels)   # any `Criterion`; model/families.py picks a model's

`DetrCriterion` takes padded targets ("class_labels" (B, T), "boxes" (B, T, 4), "valid" (B, T)) and has no host sync
but the matcher's one copy. Per decoder layer, with queries matched to valid targets by the Hungarian matcher
(detr_ft/model/matcher.py), c_q the matched class of query q (the no-object class C when unmatched), w the class
weights (1, eos_coefficient for no-object) and n the number of valid targets in the global batch, averaged over
processes and at least 1:

    loss_ce           = sum_q w[c_q] * -log softmax(logits_q)[c_q] / sum_q w[c_q]
    loss_bbox         = sum_(q, t) |box_q - box_t|_1 / n
    loss_giou         = sum_(q, t) (1 - GIoU(box_q, box_t)) / n
    cardinality_error = mean_b |#{q: argmax logits_q != C} - #targets_b|   (for logging, not weighted)

loss = sum of weight_dict[k] * loss_dict[k], with the keys ("_i" for auxiliary layer i) and weights of transformers'
ForObjectDetectionLoss, which this equals on the unpadded targets (tests/test_loss_equivalence.py). Unmatched queries
compare a padding box with itself (L1 0, GIoU 1), so they add exactly zero and get exactly zero gradient, whatever
their predictions are.

A call runs in three parts, so that the two on the device hold no host sync and take only static shapes (one target
bucket: one shape):

    cost = matching_costs(...)            # device, no grad: (L, B, Q, T)
    matched = host_assignment(cost, ...)  # the one device->host copy, scipy, indices back
    loss, loss_dict = set_loss(...)       # device: the terms above, their sum, and its backward

`compile_options` (torch.compile's backend, mode, ...) compiles the two device parts for training, each with
`dynamic=False` and `fullgraph=True`: a graph per target bucket each, whatever the image canvas
(detr_ft/train/compiled_step.py). The box count's all-reduce over processes stays outside them.

`TransformersCriterion` is transformers' own loss for any family's model through the same interface, for targets
left unpadded (`--num_buckets 0`): a list of per-image dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F
from transformers import DetrConfig, PreTrainedModel

from detr_ft.model.box_terms import average_num_boxes, matched_box_losses, weighted_sum
from detr_ft.model.matcher import host_assignment, matching_costs
from detr_ft.model.outputs import DetectionOutput

LossAndTerms = tuple[Tensor, dict[str, Tensor]]
# (outputs, labels) -> (loss (), loss_dict): labels padded (a dict of (B, T, ...) tensors) or per image (a list).
Criterion = Callable[[DetectionOutput, Any], LossAndTerms]


class DetrCriterion:
    """DETR's loss on padded targets (module docstring), with the matching costs and loss weights of `config`; its
    device parts compiled with `compile_options` when given, for training: evaluation (no grad) runs them eager, as
    its batches have other shapes (the evaluation batch size, targets beyond the training buckets) and a few
    evaluation steps would not repay their compilation."""

    def __init__(self, config: DetrConfig, compile_options: dict[str, Any] | None = None):
        self.config = config
        self.compiled = None
        if compile_options is not None:
            self.compiled = tuple(torch.compile(part, dynamic=False, fullgraph=True, **compile_options)
                                  for part in (matching_costs, set_loss))

    def __call__(self, outputs: DetectionOutput, labels: dict[str, Tensor]) -> LossAndTerms:
        config = self.config
        costs, loss = self.compiled if self.compiled and torch.is_grad_enabled() else (matching_costs, set_loss)
        logits, boxes = outputs.layer_logits, outputs.layer_boxes  # (L, B, Q, C+1), (L, B, Q, 4)
        cost = costs(logits, boxes, labels["class_labels"], labels["boxes"], config.class_cost, config.bbox_cost,
                     config.giou_cost)  # (L, B, Q, T)
        matched = host_assignment(cost, labels["valid"])  # (L, B, Q)
        num_boxes = average_num_boxes(labels["valid"])  # ()
        return loss(logits, boxes, labels["class_labels"], labels["boxes"], labels["valid"], matched, num_boxes,
                    config.eos_coefficient, config.bbox_loss_coefficient, config.giou_loss_coefficient)


def set_loss(logits: Tensor, pred_boxes: Tensor, class_labels: Tensor, boxes: Tensor, valid: Tensor, matched: Tensor,
             num_boxes: Tensor, eos_coefficient: float, bbox_weight: float, giou_weight: float) -> LossAndTerms:
    """The weighted loss and loss_dict of every layer, in float32 whatever the outputs' precision: logits (L, B, Q,
    C+1), pred_boxes (L, B, Q, 4), padded class_labels (B, T), boxes (B, T, 4) and valid (B, T), `host_assignment`'s
    matched (L, B, Q), num_boxes () -> (), {name: ()}; the final layer's terms unsuffixed and first, as transformers
    orders them."""
    losses = layer_losses(logits.float(), pred_boxes.float(), class_labels, boxes.float(), valid, matched,
                          num_boxes, eos_coefficient)  # name -> (L,)
    return weighted_sum(losses, {"loss_ce": 1, "loss_bbox": bbox_weight, "loss_giou": giou_weight})


def layer_losses(logits: Tensor, pred_boxes: Tensor, class_labels: Tensor, boxes: Tensor, valid: Tensor,
                 matched: Tensor, num_boxes: Tensor, eos_coefficient: float) -> dict[str, Tensor]:
    """loss_ce, loss_bbox, loss_giou, cardinality_error of each layer, (L,) each, from `host_assignment`'s
    `matched`."""
    layers, _, _, num_classes_with_empty = logits.shape
    no_object = num_classes_with_empty - 1
    # Unmatched queries point at one appended no-object target: T = 0 works, all stays finite.
    target_index = torch.where(matched >= 0, matched, class_labels.shape[1])  # (L, B, Q)
    padded_classes = F.pad(class_labels, (0, 1), value=no_object)  # (B, T+1)
    target_classes = padded_classes.expand(layers, -1, -1).gather(-1, target_index)  # (L, B, Q)
    class_weight = torch.ones(num_classes_with_empty, device=logits.device)  # (C+1,)
    class_weight[no_object] = eos_coefficient
    weighted_nll = F.cross_entropy(logits.permute(0, 3, 1, 2), target_classes, class_weight, reduction="none")
    loss_ce = weighted_nll.sum((1, 2)) / class_weight[target_classes].sum((1, 2))  # (L,)

    loss_bbox, loss_giou = matched_box_losses(pred_boxes, boxes, matched, num_boxes)  # (L,) each

    predicted_objects = (logits.argmax(-1) != no_object).sum(-1)  # (L, B)
    cardinality_error = (predicted_objects - valid.sum(-1)).abs().float().mean(-1)  # (L,)
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "cardinality_error": cardinality_error}


class TransformersCriterion:
    """transformers' own loss for `model` (its `loss_function`, as its forward calls it) on unpadded targets.

    Its matcher refuses non-finite predictions with a ValueError (a box "not in corner format", a cost matrix with
    NaN) before any loss exists. Such predictions get a NaN loss instead, still connected to the model, so that the
    trainer's finite-loss guard names the step and its images as it does for `DetrCriterion` (one host read, on a
    path that reads the host several times a step anyway). Under data parallel every process takes the same branch:
    the stock loss reduces its box count over processes, a collective that all of them must call."""

    def __init__(self, model: PreTrainedModel):
        self.stock_loss = model.loss_function
        self.config = model.config

    def __call__(self, outputs: DetectionOutput, labels: list[dict[str, Tensor]]) -> LossAndTerms:
        logits, boxes = outputs.layer_logits, outputs.layer_boxes  # (L, B, Q, C'), (L, B, Q, 4)
        if not all_finite(logits, boxes):
            return (logits.sum() + boxes.sum()) * 0 + float("nan"), {}  # () NaN, a zero gradient for every weight
        auxiliary = self.config.auxiliary_loss
        loss, loss_dict, _ = self.stock_loss(
            outputs.logits, labels, logits.device, outputs.pred_boxes, self.config,
            logits if auxiliary else None, boxes if auxiliary else None,
        )
        return loss, loss_dict


def all_finite(*tensors: Tensor) -> bool:
    """Whether every value of `tensors` is finite, on every process."""
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all().float()  # ()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)
