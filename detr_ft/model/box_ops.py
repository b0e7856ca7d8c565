"""Box formats and generalized IoU, as transformers' and facebookresearch/detr's box_ops, without host syncs."""

import torch
from torch import Tensor


def center_to_corners(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1), as transformers' center_to_corners_format."""
    center_x, center_y, width, height = boxes.unbind(-1)  # 4 x (...)
    return torch.stack(
        [center_x - 0.5 * width, center_y - 0.5 * height, center_x + 0.5 * width, center_y + 0.5 * height], dim=-1
    )  # (..., 4)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of corner boxes (..., 4) broadcast against (..., 4), e.g. (Q, 1, 4) x (T, 4) -> (Q, T) pairwise.

    Same formula and op order as transformers' generalized_box_iou, without its data-dependent format check
    (a host sync). Degenerate boxes give inf / NaN, as they do there.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])  # (...)
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])  # (...)
    inter_wh = (torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]  # (...)
    union = area1 + area2 - inter  # (...)
    iou = inter / union  # (...)
    hull_wh = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]  # (...)
    return iou - (hull - union) / hull
