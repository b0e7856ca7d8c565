"""Detections from a model's final-layer predictions, on the device, as each family's image processor makes them
with `post_process_object_detection(threshold=0)`: rows [score, label, cx, cy, w, h], boxes kept normalized.

DETR (`softmax_detections`): one detection per query. p = softmax(logits) over the classes and the no-object class;
score = max_c p[c] and label = argmax_c p[c] over the real classes only (the last, no-object column is dropped).

Conditional DETR, Deformable DETR (`sigmoid_top_k_detections`): each class of each query scores its own sigmoid,
with no no-object class, so one query may be a detection of several classes; the k = min(100, Q * C) highest
p = sigmoid(logits)[q, c] over all (query, class) pairs, each with its class c and its query's box (as the
reference code's PostProcess).

No score threshold: COCOeval itself keeps the best `maxDets` = 100 detections per image and category.
"""

import torch

TOP_K = 100


def softmax_detections(logits: torch.Tensor, pred_boxes: torch.Tensor) -> torch.Tensor:
    """(B, Q, C+1) logits and (B, Q, 4) boxes -> (B, Q, 6) [score, label, cx, cy, w, h]."""
    probs = logits.softmax(-1)[..., :-1]  # (B, Q, C), no-object column dropped
    scores, labels = probs.max(-1)  # (B, Q), (B, Q)
    columns = [scores[..., None], labels[..., None].to(scores.dtype), pred_boxes.to(scores.dtype)]  # (B, Q, 1|1|4)
    return torch.cat(columns, -1)  # (B, Q, 6)


def sigmoid_top_k_detections(logits: torch.Tensor, pred_boxes: torch.Tensor, top_k: int = TOP_K) -> torch.Tensor:
    """(B, Q, C) logits and (B, Q, 4) boxes -> (B, K, 6) [score, label, cx, cy, w, h], K = min(top_k, Q * C),
    highest score first."""
    num_classes = logits.shape[-1]
    probabilities = logits.sigmoid().flatten(1)  # (B, Q*C)
    scores, pairs = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)  # (B, K) each
    labels, queries = pairs % num_classes, torch.div(pairs, num_classes, rounding_mode="floor")  # (B, K) each
    boxes = pred_boxes.gather(1, queries[..., None].expand(-1, -1, 4))  # (B, K, 4)
    return torch.cat([scores[..., None], labels[..., None].to(scores.dtype), boxes.to(scores.dtype)], -1)  # (B, K, 6)
