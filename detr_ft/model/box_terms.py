"""What every DETR family's criterion shares: the L1 and GIoU matching costs and losses on padded targets, the box
count n they are divided by, and the weighted sum over decoder layers.

Boxes are normalized (cx, cy, w, h); n is the number of valid targets in the global batch, averaged over processes
and at least 1 (`average_num_boxes`):

    matching:  cost_bbox[q, t] = |box_q - box_t|_1          cost_giou[q, t] = -GIoU(box_q, box_t)
    loss:      loss_bbox = sum_(q, t matched) |box_q - box_t|_1 / n
               loss_giou = sum_(q, t matched) (1 - GIoU(box_q, box_t)) / n

as transformers' HungarianMatcher / DeformableDetrHungarianMatcher and ImageLoss.loss_boxes compute them, with the
same ops in the same order. Unmatched queries compare the padding box with itself (L1 0, GIoU 1): they add exactly
zero and get exactly zero gradient, whatever they predict.
"""

import torch
import torch.distributed as dist
from torch import Tensor

from detr_ft.data.padding import PAD_BOX
from detr_ft.model.box_ops import center_to_corners, generalized_box_iou


def pairwise_box_costs(pred_boxes: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """L1 and -GIoU of every (query, target): (L, B, Q, 4), (B, T, 4) -> (L, B, Q, T) each."""
    target_boxes = boxes.expand(pred_boxes.shape[0], -1, -1, -1)  # (L, B, T, 4)
    cost_bbox = torch.cdist(pred_boxes.flatten(0, 1), target_boxes.flatten(0, 1), p=1)  # (L*B, Q, T)
    cost_giou = -generalized_box_iou(
        center_to_corners(pred_boxes)[..., :, None, :], center_to_corners(target_boxes)[..., None, :, :]
    )  # (L, B, Q, T)
    return cost_bbox.view_as(cost_giou), cost_giou


def matched_box_losses(
    pred_boxes: Tensor, boxes: Tensor, matched: Tensor, num_boxes: Tensor
) -> tuple[Tensor, Tensor]:
    """loss_bbox and loss_giou of each layer, (L,) each: predictions (L, B, Q, 4), padded targets (B, T, 4),
    `matched` (L, B, Q) target index or -1, `num_boxes` () the n above."""
    layers, batch_size = matched.shape[:2]
    padding_box = pred_boxes.new_tensor(PAD_BOX)  # (4,)
    is_matched = matched >= 0  # (L, B, Q)
    # Unmatched queries point at one appended padding target: T = 0 works, all stays finite.
    target_index = torch.where(is_matched, matched, boxes.shape[1])  # (L, B, Q)
    padded_boxes = torch.cat([boxes, padding_box.expand(batch_size, 1, 4)], dim=1)  # (B, T+1, 4)
    box_index = target_index[..., None].expand(-1, -1, -1, 4)  # (L, B, Q, 4)
    target_boxes = padded_boxes.expand(layers, -1, -1, -1).gather(2, box_index)  # (L, B, Q, 4)
    source_boxes = torch.where(is_matched[..., None], pred_boxes, padding_box)  # (L, B, Q, 4)

    loss_bbox = (source_boxes - target_boxes).abs().sum((1, 2, 3)) / num_boxes  # (L,)
    giou = generalized_box_iou(center_to_corners(source_boxes), center_to_corners(target_boxes))  # (L, B, Q)
    loss_giou = (1 - giou).sum((1, 2)) / num_boxes  # (L,)
    return loss_bbox, loss_giou


def average_num_boxes(valid: Tensor) -> Tensor:
    """Valid targets in the batch, summed over processes and divided by their number, at least 1: () float."""
    num_boxes = valid.sum().float()  # ()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_boxes)
        num_boxes = num_boxes / dist.get_world_size()
    return num_boxes.clamp(min=1)


def weighted_sum(losses: dict[str, Tensor], weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """(total, loss_dict) from per-layer terms, (L,) each, final layer last: loss_dict keyed as transformers keys it
    (final layer's terms, then auxiliary layer i's suffixed "_i"), the total summed in that order."""
    final = next(iter(losses.values())).shape[0] - 1
    loss_dict, weight_dict = {}, {}
    for layer in [final, *range(final)]:
        suffix = "" if layer == final else f"_{layer}"
        loss_dict.update({name + suffix: values[layer] for name, values in losses.items()})
        weight_dict.update({name + suffix: weight for name, weight in weights.items()})
    loss = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
    return loss, loss_dict
