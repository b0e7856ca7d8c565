"""Our padded-target focal criterion (Conditional DETR, Deformable DETR) equals transformers' own loss for these
models on the same, unpadded targets: every loss_dict term, the total and the gradients of every layer's
predictions, for several bucket sizes; the matching equals transformers' matcher's, ties included; one host read."""

from __future__ import annotations

import pytest
import torch
from test_loss_equivalence import make_targets
from transformers import ConditionalDetrConfig, DeformableDetrConfig
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
from transformers.loss.loss_utils import LOSS_MAPPING

from detr_ft.data.padding import DetectionCollator
from detr_ft.model.focal_criterion import FocalCriterion, focal_matching_costs
from detr_ft.model.matcher import UNMATCHED, host_assignment
from detr_ft.model.outputs import DetectionOutput
from detr_ft.train.sync_audit import HostSyncCounter

NUM_QUERIES, NUM_LABELS, DECODER_LAYERS = 10, 5, 3
DATASET_MAX_OBJECTS = 12  # more than NUM_QUERIES: such an image gets only NUM_QUERIES matches
OBJECT_COUNTS = [[0], [3], [0, 5], [DATASET_MAX_OBJECTS, 1, 0], [2, 7, 10, 4]]
BUCKETS = ["exact", "dataset_max", 16, 24]
# The two families' configs differ in their matching costs (class_cost 2 / 1); focal_alpha off its default checks
# that the loss reads it (and the matcher does not).
FAMILIES = {
    "conditional_detr": lambda **kwargs: ConditionalDetrConfig(use_timm_backbone=False, backbone=None, **kwargs),
    "deformable_detr": lambda **kwargs: DeformableDetrConfig(use_timm_backbone=False, backbone=None, **kwargs),
}
MODEL_CLASSES = {"conditional_detr": "ConditionalDetrForObjectDetection",
                 "deformable_detr": "DeformableDetrForObjectDetection"}


def make_config(family: str, auxiliary_loss: bool):
    return FAMILIES[family](num_queries=NUM_QUERIES, num_labels=NUM_LABELS, decoder_layers=DECODER_LAYERS,
                            auxiliary_loss=auxiliary_loss, focal_alpha=0.3)


def stock_loss_function(family: str):
    """The loss transformers' forward of that family calls (`model.loss_function`)."""
    return LOSS_MAPPING[MODEL_CLASSES[family]]


def make_layers(batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Every decoder layer's logits (L, B, Q, C) and boxes (L, B, Q, 4), as a model would predict them."""
    shape = (DECODER_LAYERS, batch_size, NUM_QUERIES)
    logits = torch.randn(*shape, NUM_LABELS, generator=generator) * 2 - 2  # (L, B, Q, C)
    boxes = torch.rand(*shape, 4, generator=generator) * 0.8 + 0.1  # (L, B, Q, 4)
    return logits, boxes


def run_both(family, layers, targets, padded, config):
    """(loss, loss_dict, gradient of the stacked logits and boxes) of the stock loss and of ours, each on fresh
    leaves. The stock loss gets the final layer and the stack as the forward hands them; ours the label-free
    forward's DetectionOutput (one layer without auxiliary loss)."""
    results = []
    for ours in (False, True):
        logits, boxes = (tensor.clone().requires_grad_() for tensor in layers)  # (L, B, Q, C), (L, B, Q, 4)
        if ours:
            used_logits, used_boxes = (logits, boxes) if config.auxiliary_loss else (logits[-1:], boxes[-1:])
            outputs = DetectionOutput(logits=used_logits[-1], pred_boxes=used_boxes[-1], layer_logits=used_logits,
                                      layer_boxes=used_boxes)
            loss, loss_dict = FocalCriterion(config)(outputs, padded)
        else:
            loss, loss_dict, _ = stock_loss_function(family)(logits[-1], targets, torch.device("cpu"), boxes[-1],
                                                             config, logits, boxes)
        loss.backward()
        results.append((loss, loss_dict, logits.grad, boxes.grad))
    return results


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("auxiliary_loss", [True, False])
@pytest.mark.parametrize("bucket", BUCKETS)
@pytest.mark.parametrize("counts", OBJECT_COUNTS, ids=str)
def test_padded_focal_loss_equals_stock(family, counts, bucket, auxiliary_loss):
    generator = torch.Generator().manual_seed(len(counts) * 100 + sum(counts))
    config = make_config(family, auxiliary_loss)
    targets = make_targets(counts, generator)
    layers = make_layers(len(counts), generator)
    size = {"exact": max(counts), "dataset_max": DATASET_MAX_OBJECTS}.get(bucket, bucket)
    padded = DetectionCollator(bucket_sizes=[size]).targets(targets)
    assert padded["valid"].shape == (len(counts), size)

    (stock_loss, stock_dict, *stock_grads), (loss, loss_dict, *grads) = run_both(family, layers, targets, padded,
                                                                                 config)
    assert list(loss_dict) == list(stock_dict)
    for key in stock_dict:
        assert_close(loss_dict[key], stock_dict[key], key)
    assert_close(loss, stock_loss, "total loss")
    for name, grad, stock_grad in zip(("logits", "boxes"), grads, stock_grads, strict=True):
        assert_close(grad, stock_grad, f"gradient of the layers' {name}")


def stock_matching(layers, targets) -> torch.Tensor:
    """transformers' matcher on each layer: matched target index or UNMATCHED, (L, B, Q)."""
    matcher = DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    logits, boxes = layers
    expected = torch.full(logits.shape[:3], UNMATCHED)  # (L, B, Q)
    for layer in range(logits.shape[0]):
        indices = matcher({"logits": logits[layer], "pred_boxes": boxes[layer]}, targets)
        for image, (queries, target_ids) in enumerate(indices):
            expected[layer, image, queries] = target_ids
    return expected


def padded_matching(layers, targets, bucket_size: int) -> torch.Tensor:
    padded = DetectionCollator(bucket_sizes=[bucket_size]).targets(targets)
    cost = focal_matching_costs(*layers, padded["class_labels"], padded["boxes"], 2, 5, 2)  # (L, B, Q, T)
    return host_assignment(cost, padded["valid"])  # (L, B, Q)


@pytest.mark.parametrize("counts", OBJECT_COUNTS, ids=str)
def test_matching_equals_stock_per_layer(counts):
    generator = torch.Generator().manual_seed(sum(counts))
    targets = make_targets(counts, generator)
    layers = make_layers(len(counts), generator)
    assert torch.equal(padded_matching(layers, targets, DATASET_MAX_OBJECTS + 4), stock_matching(layers, targets))


def test_ties_are_broken_as_stock():
    """Identical queries and identical targets give equal costs: scipy then picks by position, and the padded
    columns keep the targets' positions, so the same query gets the same target."""
    generator = torch.Generator().manual_seed(0)
    targets = make_targets([4, 3], generator)
    for target in targets:
        target["class_labels"][1:3] = target["class_labels"][0]
        target["boxes"][1:3] = target["boxes"][0]
    logits, boxes = make_layers(2, generator)
    logits[:, :, 5:], boxes[:, :, 5:] = logits[:, :, :1], boxes[:, :, :1]  # queries 5.. copy query 0
    matched = padded_matching((logits, boxes), targets, 6)
    assert torch.equal(matched, stock_matching((logits, boxes), targets))
    assert (matched[..., 5:] >= 0).any(), "no copied query was matched: the tie went untested"


def test_bfloat16_predictions_give_the_float32_loss():
    generator = torch.Generator().manual_seed(0)
    config = make_config("deformable_detr", auxiliary_loss=True)
    padded = DetectionCollator(bucket_sizes=[8]).targets(make_targets([3, 0, 8], generator))
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        logits, boxes = (t.bfloat16().to(dtype).requires_grad_() for t in make_layers(3, generator.manual_seed(1)))
        outputs = DetectionOutput(logits=logits[-1], pred_boxes=boxes[-1], layer_logits=logits, layer_boxes=boxes)
        loss, loss_dict = FocalCriterion(config)(outputs, padded)
        loss.backward()
        results.append((loss, loss_dict, logits.grad, boxes.grad))
    (loss, loss_dict, *grads), (loss32, loss_dict32, *grads32) = results
    assert loss.dtype == torch.float32 and torch.equal(loss, loss32)
    assert all(torch.equal(loss_dict[k], loss_dict32[k]) for k in loss_dict32)
    assert all(g.dtype == torch.bfloat16 and torch.equal(g, g32.bfloat16()) for g, g32 in zip(grads, grads32,
                                                                                                strict=True))


def test_loss_and_backward_read_the_host_once():
    """The criterion's only host read is the matcher's one copy of all layers' costs."""
    generator = torch.Generator().manual_seed(0)
    padded = DetectionCollator(bucket_sizes=[8]).targets(make_targets([3, 0, 8], generator))
    logits, boxes = (t.requires_grad_() for t in make_layers(3, generator))
    outputs = DetectionOutput(logits=logits[-1], pred_boxes=boxes[-1], layer_logits=logits, layer_boxes=boxes)
    criterion = FocalCriterion(make_config("conditional_detr", auxiliary_loss=True))
    with HostSyncCounter() as counter:
        loss, _ = criterion(outputs, padded)
        loss.backward()
    assert dict(counter.by_op) == {"Tensor.cpu": 1}
