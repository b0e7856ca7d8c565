"""Conditional DETR's and Deformable DETR's post-processing for evaluation: sigmoid scores, top k over (query, class).

These models score each class of each query by its own sigmoid, with no no-object class, so one query may be a
detection of several classes. As ConditionalDetrImageProcessor and DeformableDetrImageProcessor
`post_process_object_detection` (threshold 0, top_k 100) and the reference code's PostProcess: the k = min(100,
Q * C) highest p = sigmoid(logits)[q, c] over all (query, class) pairs, each with its class c and its query's box,
kept as normalized (cx, cy, w, h). The rows then go to `coco_map.detections_from_predictions` as DETR's per-query
rows do (K rows per image instead of Q).
"""

import torch

TOP_K = 100


def postprocess_focal_logits(logits: torch.Tensor, pred_boxes: torch.Tensor, top_k: int = TOP_K) -> torch.Tensor:
    """(B, Q, C) logits and (B, Q, 4) boxes -> (B, K, 6) [score, label, cx, cy, w, h], K = min(top_k, Q * C), on
    the device, highest score first."""
    num_classes = logits.shape[-1]
    probabilities = logits.sigmoid().flatten(1)  # (B, Q*C)
    scores, pairs = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)  # (B, K) each
    labels, queries = pairs % num_classes, torch.div(pairs, num_classes, rounding_mode="floor")  # (B, K) each
    boxes = pred_boxes.gather(1, queries[..., None].expand(-1, -1, 4))  # (B, K, 4)
    return torch.cat([scores[..., None], labels[..., None].to(scores.dtype), boxes.to(scores.dtype)], -1)  # (B, K, 6)
