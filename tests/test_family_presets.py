"""The Conditional DETR and Deformable DETR presets build their family's model, and the family's from-scratch
initialisation gives what the reference code starts from: boxes on the reference points, class probabilities at the
focal prior, xavier-uniform transformer weights, N(0, 1) queries, deformable attention as transformers sets it."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    CONFIG_MAPPING,
    AutoModelForObjectDetection,
    ConditionalDetrForObjectDetection,
    DeformableDetrForObjectDetection,
)

from detr_ft.model.presets import load_preset
from detr_ft.model.scratch_init import init_conditional_detr, init_deformable_detr
from patches import conditional_detr_label_free_forward, deformable_detr_label_free_forward

TWO_STAGE = {"with_box_refine": True, "two_stage": True, "two_stage_num_proposals": 16}
FAMILIES = {
    "conditional_detr": (ConditionalDetrForObjectDetection, init_conditional_detr, conditional_detr_label_free_forward),
    "deformable_detr": (DeformableDetrForObjectDetection, init_deformable_detr, deformable_detr_label_free_forward),
}


def fresh(preset_name: str, initialise: bool = True, **overrides):
    """The preset's model for 3 classes, with its family's initialisation (or transformers' alone), label-free."""
    preset = load_preset(preset_name)
    torch.manual_seed(0)
    config = CONFIG_MAPPING[preset.model_type](**{**preset.config, **overrides}, num_labels=3)
    model = AutoModelForObjectDetection.from_config(config)
    model_class, init, patch = FAMILIES[preset.model_type]
    assert type(model) is model_class
    if initialise:
        init(model)
    patch.patch_model(model)
    return model.eval()


def predictions(model):
    pixel_values = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)
    with torch.no_grad():
        return model(pixel_values=pixel_values, pixel_mask=torch.ones(2, 64, 64, dtype=torch.long))


def xavier_std(weight: torch.Tensor) -> float:
    fan_out, fan_in = weight.shape
    return math.sqrt(2 / (fan_in + fan_out))


@pytest.mark.parametrize("preset_name", ["conditional-detr-tiny", "deformable-detr-tiny"])
def test_class_probabilities_start_at_the_focal_prior(preset_name):
    """Every class at about 1%: the many unmatched queries do not swamp the first steps' focal loss, as they do
    from transformers' initialisation (about 50%)."""
    ours = predictions(fresh(preset_name)).layer_logits.sigmoid().mean()
    stock = predictions(fresh(preset_name, initialise=False)).layer_logits.sigmoid().mean()
    assert 0.005 < ours < 0.03 and stock > 0.3


def test_conditional_detr_boxes_start_on_the_reference_points():
    model = fresh("conditional-detr-tiny")
    pixel_values = torch.rand(1, 3, 64, 64)  # (1, 3, H, W)
    with torch.no_grad():
        reference = model.model(pixel_values).reference_points.transpose(0, 1)  # (1, Q, 2)
    boxes = predictions(model).layer_boxes  # (L, B, Q, 4)
    torch.testing.assert_close(boxes[..., :2], reference.expand(boxes.shape[0], 2, -1, -1), rtol=1e-5, atol=1e-6)
    assert torch.equal(boxes[..., 2:], torch.full_like(boxes[..., 2:], 0.5))


@pytest.mark.parametrize(("overrides", "size"), [({}, 1 / (1 + math.exp(2))),
                                                 ({"with_box_refine": True}, 1 / (1 + math.exp(2))),
                                                 (TWO_STAGE, None)])
def test_deformable_detr_boxes_start_on_the_reference_points(overrides, size):
    """Width and height 0.12 (bias -2) in every layer, the first layer's refined box carried on with box refinement;
    two-stage: the proposals' own sizes, 0.05 * 2^level."""
    model = fresh("deformable-detr-tiny", **overrides)
    boxes = predictions(model).layer_boxes  # (L, B, Q, 4)
    if size is not None:
        torch.testing.assert_close(boxes[..., 2:], torch.full_like(boxes[..., 2:], size))
    else:
        levels = torch.log2(boxes[..., 2:] / 0.05)  # (L, B, Q, 2)
        torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    torch.testing.assert_close(boxes, boxes[:1].expand_as(boxes))  # later layers keep the first layer's box


@pytest.mark.parametrize("preset_name", ["conditional-detr-tiny", "deformable-detr-tiny"])
def test_transformer_weights_and_queries_start_as_in_the_reference_code(preset_name):
    model = fresh(preset_name)
    fc1 = model.model.encoder.layers[0].mlp.fc1.weight  # an encoder feed-forward matrix: xavier-uniform
    assert abs(float(fc1.detach().std()) / xavier_std(fc1) - 1) < 0.1
    queries = model.model.query_position_embeddings.weight
    assert abs(float(queries.detach().std()) - 1) < 0.1
    if preset_name == "deformable-detr-tiny":  # deformable attention: sampling on a grid around the reference
        attention = model.model.encoder.layers[0].self_attn
        stock = fresh(preset_name, initialise=False).model.encoder.layers[0].self_attn
        assert not attention.sampling_offsets.weight.any()
        assert torch.equal(attention.sampling_offsets.bias, stock.sampling_offsets.bias)
        assert not attention.attention_weights.weight.any()
