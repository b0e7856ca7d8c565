"""Host reads of a Conditional / Deformable DETR training step with target buckets: transformers' forward reads the
host in every encoder layer (and, in Conditional DETR, twice more to build its masks); with the sync patches the
whole step (label-free forward, criterion, backward) reads it once, the matcher's copy. The patches keep the stock
results, Deformable DETR's overflow clamp included."""

from __future__ import annotations

import pytest
import torch
from test_family_equivalence import VARIANTS, build

from detr_ft.data.padding import DetectionCollator
from detr_ft.model.focal_criterion import FocalCriterion
from detr_ft.train.sync_audit import HostSyncCounter
from patches import deformable_detr_encoder_sync, detr_encoder_sync, detr_mask_sync

SYNC_PATCHES = {"conditional_detr": (detr_encoder_sync, detr_mask_sync),
                "deformable_detr": (deformable_detr_encoder_sync,)}
ENCODER_LAYERS = 2  # the presets'


def make_batch() -> dict:
    """Two 32 px images, the second one padded right of 20 px, with 2 and 1 objects, targets padded to 4."""
    generator = torch.Generator().manual_seed(0)
    pixel_mask = torch.ones(2, 32, 32, dtype=torch.long)  # (B, H, W)
    pixel_mask[1, :, 20:] = 0
    labels = [
        {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]]),
         "image_index": torch.tensor(0)},
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]]),
         "image_index": torch.tensor(1)},
    ]
    return {"pixel_values": torch.rand(2, 3, 32, 32, generator=generator), "pixel_mask": pixel_mask,
            "labels": DetectionCollator(bucket_sizes=[4]).targets(labels)}


def sync_patched(model: torch.nn.Module) -> torch.nn.Module:
    for patch in SYNC_PATCHES[model.config.model_type]:
        assert patch.patch_model(model) == (2 if patch is detr_mask_sync else ENCODER_LAYERS)
    return model


def training_step(model: torch.nn.Module, batch: dict) -> tuple[HostSyncCounter, HostSyncCounter, tuple]:
    """Host reads of the label-free forward and of the criterion with the backward; the outputs and gradients."""
    with HostSyncCounter() as forward_reads:
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    with HostSyncCounter() as loss_reads:
        loss, _ = FocalCriterion(model.config)(outputs, batch["labels"])
        loss.backward()
    grads = tuple(p.grad for p in model.parameters() if p.grad is not None)
    return forward_reads, loss_reads, (outputs.layer_logits, outputs.layer_boxes, loss, *grads)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_step_reads_the_host_once(variant):
    batch = make_batch()
    stock_forward_reads, stock_loss_reads, stock = training_step(build(variant, num_labels=3), batch)
    forward_reads, loss_reads, ours = training_step(sync_patched(build(variant, num_labels=3)), batch)
    # One read per encoder layer, plus Conditional DETR's two mask builds.
    masks = 2 if variant.startswith("conditional") else 0
    assert dict(stock_forward_reads.by_op) == {"aten._local_scalar_dense": ENCODER_LAYERS + masks}
    assert forward_reads.count == 0, forward_reads.by_op
    assert dict(loss_reads.by_op) == dict(stock_loss_reads.by_op) == {"Tensor.cpu": 1}
    assert all(torch.equal(a, b) for a, b in zip(ours, stock, strict=True))


def test_patched_deformable_encoder_layer_clamps_overflow_like_stock():
    model = build("deformable", num_labels=3)
    layer = model.model.encoder.layers[0]
    inputs = {}
    layer.register_forward_pre_hook(lambda module, args, kwargs: inputs.update(args=args, kwargs=kwargs),
                                    with_kwargs=True)
    batch = make_batch()
    model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    with torch.no_grad():
        layer.final_layer_norm.bias[0] = float("inf")
    stock = layer(*inputs["args"], **inputs["kwargs"])
    deformable_detr_encoder_sync.patch_model(model)
    ours = layer(*inputs["args"], **inputs["kwargs"])
    assert torch.isfinite(stock).all() and torch.equal(ours, stock)
