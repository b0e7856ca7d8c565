"""Conditional DETR's and Deformable DETR's set-prediction loss on padded targets: a sigmoid focal class term with
no no-object class, DETR's box terms, static shapes and no host sync but the matcher's one copy.

Equal to transformers' own loss for both families (DeformableDetrForObjectDetectionLoss: the LOSS_MAPPING entry of
ConditionalDetrForObjectDetection and DeformableDetrForObjectDetection) on the unpadded targets. With p = sigmoid of
a query's logit for a class, queries matched to valid targets per decoder layer by

    cost[q, t] = bbox_cost * |box_q - box_t|_1 + class_cost * (pos - neg)[q, class_t] + giou_cost * -GIoU(q, t)
    pos = 0.25 (1 - p)^2 (-log(p + 1e-8)),   neg = 0.75 p^2 (-log(1 - p + 1e-8))

(the matcher's alpha 0.25 and gamma 2 are fixed, whatever config.focal_alpha says), y[q, c] = 1 where query q is
matched to a target of class c and 0 elsewhere (an unmatched query should score every class 0), and n the valid
targets of the global batch, averaged over processes and at least 1:

    loss_ce           = sum_(q, c) a_t (1 - p_t)^2 BCE(logit[q, c], y[q, c]) / n,   p_t = p if y else 1 - p,
                        a_t = focal_alpha if y else 1 - focal_alpha
    loss_bbox, loss_giou: DETR's (detr_ft/model/box_terms.py)
    cardinality_error = mean_b |#{q: max_c p[q, c] > 0.5} - #targets_b|   (for logging, not weighted)

loss = loss_ce + bbox_loss_coefficient * loss_bbox + giou_loss_coefficient * loss_giou, summed over the decoder
layers given (auxiliary layer i's terms suffixed "_i"). loss_ce weighs 1 as in transformers; the papers' code weighs
it 2 (ConditionalDetrConfig's cls_loss_coefficient = 2 is read by nothing in transformers).
"""

import torch
from torch import Tensor
from torch.nn import functional as F
from transformers import PretrainedConfig

from detr_ft.model.box_terms import average_num_boxes, matched_box_losses, pairwise_box_costs, weighted_sum
from detr_ft.model.matcher import host_assignment
from detr_ft.model.outputs import DetectionOutput

MATCHER_ALPHA, FOCAL_GAMMA = 0.25, 2.0


class FocalCriterion:
    """`criterion(outputs, labels) -> (loss (), loss_dict)` for Conditional DETR and Deformable DETR, built from the
    model's config. labels: padded "class_labels" (B, T), "boxes" (B, T, 4), "valid" (B, T)."""

    def __init__(self, config: PretrainedConfig) -> None:
        self.class_cost, self.bbox_cost, self.giou_cost = config.class_cost, config.bbox_cost, config.giou_cost
        self.focal_alpha = config.focal_alpha
        self.weights = {"loss_ce": 1, "loss_bbox": config.bbox_loss_coefficient,
                        "loss_giou": config.giou_loss_coefficient}

    def __call__(self, outputs: DetectionOutput, labels: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        layer_logits, layer_boxes = outputs.layer_logits.float(), outputs.layer_boxes.float()  # (L, B, Q, C), (.., 4)
        boxes = labels["boxes"].float()  # (B, T, 4)
        cost = focal_matching_costs(layer_logits, layer_boxes, labels["class_labels"], boxes,
                                    self.class_cost, self.bbox_cost, self.giou_cost)  # (L, B, Q, T)
        matched = host_assignment(cost, labels["valid"])  # (L, B, Q)
        num_boxes = average_num_boxes(labels["valid"])  # ()
        loss_bbox, loss_giou = matched_box_losses(layer_boxes, boxes, matched, num_boxes)  # (L,) each
        losses = {
            "loss_ce": focal_class_loss(layer_logits, labels["class_labels"], matched, num_boxes, self.focal_alpha),
            "loss_bbox": loss_bbox,
            "loss_giou": loss_giou,
            "cardinality_error": cardinality_error(layer_logits, labels["valid"]),
        }
        return weighted_sum(losses, self.weights)


@torch.no_grad()
def focal_matching_costs(
    logits: Tensor, pred_boxes: Tensor, class_labels: Tensor, boxes: Tensor,
    class_cost: float, bbox_cost: float, giou_cost: float,
) -> Tensor:
    """Cost of matching each query to each target: (L, B, Q, C), (L, B, Q, 4), (B, T), (B, T, 4) -> (L, B, Q, T)."""
    layers, batch_size, num_queries = logits.shape[:3]
    prob = logits.sigmoid()  # (L, B, Q, C)
    neg_cost = (1 - MATCHER_ALPHA) * (prob**FOCAL_GAMMA) * (-(1 - prob + 1e-8).log())  # (L, B, Q, C)
    pos_cost = MATCHER_ALPHA * ((1 - prob) ** FOCAL_GAMMA) * (-(prob + 1e-8).log())  # (L, B, Q, C)
    target_ids = class_labels[None, :, None, :].expand(layers, batch_size, num_queries, -1)  # (L, B, Q, T)
    cost_class = pos_cost.gather(-1, target_ids) - neg_cost.gather(-1, target_ids)  # (L, B, Q, T)
    cost_bbox, cost_giou = pairwise_box_costs(pred_boxes, boxes)  # (L, B, Q, T) each
    cost = bbox_cost * cost_bbox + class_cost * cost_class + giou_cost * cost_giou  # (L, B, Q, T)
    # NaN / inf become the largest cost, so such pairs are matched only when nothing else is left (as stock).
    max_value = torch.finfo(cost.dtype).max
    return torch.nan_to_num(cost, nan=max_value, posinf=max_value, neginf=max_value)


def focal_class_loss(
    logits: Tensor, class_labels: Tensor, matched: Tensor, num_boxes: Tensor, alpha: float
) -> Tensor:
    """loss_ce of each layer, (L,): logits (L, B, Q, C), padded class_labels (B, T), `matched` (L, B, Q)."""
    num_classes = logits.shape[-1]
    # Unmatched queries take the class C, which no column holds: their one-hot row is all zeros. (F.one_hot would
    # read the classes' range on the host.)
    padded_classes = F.pad(class_labels, (0, 1), value=num_classes)  # (B, T+1)
    target_index = torch.where(matched >= 0, matched, class_labels.shape[1])  # (L, B, Q)
    target_classes = padded_classes.expand(matched.shape[0], -1, -1).gather(-1, target_index)  # (L, B, Q)
    classes = torch.arange(num_classes, device=logits.device)  # (C,)
    targets = (target_classes[..., None] == classes).to(logits.dtype)  # (L, B, Q, C)

    prob = logits.sigmoid()  # (L, B, Q, C)
    ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (L, B, Q, C)
    p_t = prob * targets + (1 - prob) * (1 - targets)  # (L, B, Q, C)
    loss = ce_loss * ((1 - p_t) ** FOCAL_GAMMA)  # (L, B, Q, C)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss  # (L, B, Q, C)
    # transformers' order: the mean over queries, summed, divided by n, times the number of queries.
    return loss.mean(2).sum((1, 2)) / num_boxes * logits.shape[2]  # (L,)


@torch.no_grad()
def cardinality_error(logits: Tensor, valid: Tensor) -> Tensor:
    """Mean over images of |queries scoring some class above 0.5 - targets|, per layer: (L, B, Q, C) -> (L,)."""
    predicted_objects = (logits.sigmoid().max(-1).values > 0.5).sum(-1)  # (L, B)
    return (predicted_objects - valid.sum(-1)).abs().float().mean(-1)  # (L,)
