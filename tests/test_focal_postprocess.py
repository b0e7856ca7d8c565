"""Conditional / Deformable DETR's evaluation post-processing equals their image processors' own
`post_process_object_detection` (threshold 0): the top (query, class) pairs by sigmoid score, boxes normalized."""

from __future__ import annotations

import pytest
import torch
from transformers import ConditionalDetrImageProcessorPil, DeformableDetrImageProcessorPil
from transformers.image_transforms import center_to_corners_format
from transformers.utils import ModelOutput

from detr_ft.evaluation.focal_postprocess import postprocess_focal_logits


@pytest.mark.parametrize("processor", [ConditionalDetrImageProcessorPil, DeformableDetrImageProcessorPil])
@pytest.mark.parametrize(("num_queries", "num_classes"), [(16, 4), (300, 5)], ids=["all-pairs", "top-100"])
def test_postprocess_focal_logits_matches_the_image_processor(processor, num_queries, num_classes):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, num_queries, num_classes, generator=generator) * 3 - 2  # (B, Q, C)
    pred_boxes = torch.rand(3, num_queries, 4, generator=generator) * 0.5 + 0.25  # (B, Q, 4)
    reference = processor().post_process_object_detection(ModelOutput(logits=logits, pred_boxes=pred_boxes),
                                                           threshold=0, target_sizes=None)

    ours = postprocess_focal_logits(logits, pred_boxes)  # (B, K, 6)
    assert ours.shape == (3, min(100, num_queries * num_classes), 6)
    for image_result, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(image_result[:, 0], expected["scores"])
        torch.testing.assert_close(image_result[:, 1].long(), expected["labels"])
        torch.testing.assert_close(center_to_corners_format(image_result[:, 2:]), expected["boxes"])
