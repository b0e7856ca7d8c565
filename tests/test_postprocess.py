"""Each family's evaluation post-processing equals its image processor's own `post_process_object_detection`
(threshold 0), boxes kept normalized: DETR's softmax per query; Conditional / Deformable DETR's top (query, class)
pairs by sigmoid score."""

from __future__ import annotations

import pytest
import torch
from transformers import ConditionalDetrImageProcessorPil, DeformableDetrImageProcessorPil, DetrImageProcessorPil
from transformers.image_transforms import center_to_corners_format
from transformers.utils import ModelOutput

from detr_ft.model.postprocess import sigmoid_top_k_detections, softmax_detections


def assert_rows_match(rows: torch.Tensor, reference: list[dict]) -> None:
    for image_rows, expected in zip(rows, reference, strict=True):
        torch.testing.assert_close(image_rows[:, 0], expected["scores"])
        torch.testing.assert_close(image_rows[:, 1].long(), expected["labels"])
        torch.testing.assert_close(center_to_corners_format(image_rows[:, 2:]), expected["boxes"])


def predictions(num_queries: int, num_logits: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, num_queries, num_logits, generator=generator) * 3 - 2  # (B, Q, C')
    pred_boxes = torch.rand(3, num_queries, 4, generator=generator) * 0.5 + 0.25  # (B, Q, 4)
    return logits, pred_boxes


def test_softmax_detections_match_detr_post_processing():
    logits, pred_boxes = predictions(10, 6)
    reference = DetrImageProcessorPil().post_process_object_detection(
        ModelOutput(logits=logits, pred_boxes=pred_boxes), threshold=0, target_sizes=None)

    rows = softmax_detections(logits, pred_boxes)  # (B, Q, 6)
    assert rows.shape == (3, 10, 6) and all(len(image["scores"]) == 10 for image in reference)  # every query kept
    assert_rows_match(rows, reference)


@pytest.mark.parametrize("processor", [ConditionalDetrImageProcessorPil, DeformableDetrImageProcessorPil])
@pytest.mark.parametrize(("num_queries", "num_classes"), [(16, 4), (300, 5)], ids=["all-pairs", "top-100"])
def test_sigmoid_top_k_detections_match_the_image_processor(processor, num_queries, num_classes):
    logits, pred_boxes = predictions(num_queries, num_classes)
    reference = processor().post_process_object_detection(ModelOutput(logits=logits, pred_boxes=pred_boxes),
                                                           threshold=0, target_sizes=None)

    rows = sigmoid_top_k_detections(logits, pred_boxes)  # (B, K, 6)
    assert rows.shape == (3, min(100, num_queries * num_classes), 6)
    assert_rows_match(rows, reference)
