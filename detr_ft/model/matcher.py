"""Hungarian matching of DETR queries to padded targets, all decoder layers and images at once.

The matching cost of query q and target t is the one of facebookresearch/detr and transformers' HungarianMatcher,
with the same ops in the same order so that the costs match bit for bit:

    cost[q, t] = bbox_cost * |box_q - box_t|_1 + class_cost * (-softmax(logits_q)[class_t])
                 + giou_cost * (-GIoU(box_q, box_t))

Costs of every (layer, image) are built on the device as one (layers, B, Q, T) tensor; the target validity mask
rides along as an extra query row, so one device->host copy is the only host sync. scipy's linear_sum_assignment
then solves each (layer, image) on its valid columns. As in the stock matcher, an image with more targets than
queries gets Q of them matched.

Compiled (`DetrCriterion`'s compile_options), the costs come from fused kernels and equal these up to float32
rounding: an assignment can then differ from the stock one only between pairings whose total costs tie to within that
rounding, either of which is an optimal matching.
"""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detr_ft.model.box_terms import pairwise_box_costs

UNMATCHED = -1


@torch.no_grad()
def matching_costs(
    logits: Tensor, pred_boxes: Tensor, class_labels: Tensor, boxes: Tensor,
    class_cost: float, bbox_cost: float, giou_cost: float,
) -> Tensor:
    """Cost of matching each query to each target, in float32 whatever the predictions' precision: (L, B, Q, C+1),
    (L, B, Q, 4), (B, T), (B, T, 4) -> (L, B, Q, T)."""
    logits, pred_boxes = logits.float(), pred_boxes.float()  # (L, B, Q, C+1), (L, B, Q, 4)
    boxes = boxes.float()  # (B, T, 4)
    layers, batch_size, num_queries = logits.shape[:3]
    out_prob = logits.softmax(-1)  # (L, B, Q, C+1)
    target_ids = class_labels[None, :, None, :].expand(layers, batch_size, num_queries, -1)  # (L, B, Q, T)
    cost_class = -out_prob.gather(-1, target_ids)  # (L, B, Q, T)
    cost_bbox, cost_giou = pairwise_box_costs(pred_boxes, boxes)  # (L, B, Q, T) each
    cost = bbox_cost * cost_bbox + class_cost * cost_class + giou_cost * cost_giou  # (L, B, Q, T)
    # NaN / inf become the largest cost, so such pairs are matched only when nothing else is left (as stock).
    max_value = torch.finfo(cost.dtype).max
    return torch.nan_to_num(cost, nan=max_value, posinf=max_value, neginf=max_value)


@torch.no_grad()
def hungarian_match(
    logits: Tensor, pred_boxes: Tensor, labels: dict[str, Tensor],
    class_cost: float, bbox_cost: float, giou_cost: float,
) -> Tensor:
    """Matched target index of every query, UNMATCHED (-1) where none: (L, B, Q) long on the logits' device.

    logits (L, B, Q, C+1), pred_boxes (L, B, Q, 4); labels: padded "class_labels" (B, T), "boxes" (B, T, 4),
    "valid" (B, T).
    """
    cost = matching_costs(logits, pred_boxes, labels["class_labels"], labels["boxes"], class_cost, bbox_cost, giou_cost)
    return host_assignment(cost, labels["valid"])


def host_assignment(cost: Tensor, valid: Tensor) -> Tensor:
    """scipy's assignment of every (layer, image) on its valid columns: (L, B, Q, T) costs, (B, T) bool -> (L, B, Q)
    long on the costs' device, after one device->host copy."""
    valid_row = valid[:, None, :].to(cost.dtype).expand(cost.shape[0], -1, -1, -1)  # (L, B, 1, T)
    packed = torch.cat([cost, valid_row], dim=2).cpu().numpy()  # (L, B, Q+1, T): the one host sync
    matched = np.full(cost.shape[:3], UNMATCHED, dtype=np.int64)  # (L, B, Q)
    for layer, image in np.ndindex(*cost.shape[:2]):
        image_cost, valid = packed[layer, image, :-1], packed[layer, image, -1]  # (Q, T), (T,)
        columns = np.flatnonzero(valid)  # (n,)
        rows, picked = linear_sum_assignment(image_cost[:, columns])  # (min(Q, n),) each
        matched[layer, image, rows] = columns[picked]
    return torch.from_numpy(matched).to(cost.device)
