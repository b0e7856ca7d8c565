"""The sync patches on the Gaudi stack (transformers 4.55.4, optimum-habana 1.21.2, `adapt_transformers_to_gaudi()`
applied by conftest.py): bit-equal to stock, and one host read per training step (the matcher's cost copy).

Run in the Gaudi venv: `.venv-gaudi/bin/python -m pytest tests/gaudi -q`; skipped where optimum-habana is absent.
"""

import pytest
import torch

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig  # noqa: E402
from transformers.models.detr.modeling_detr import DetrConvModel  # noqa: E402

from detr_ft.data.padding import DetectionCollator  # noqa: E402
from detr_ft.model.criterion import DetrCriterion  # noqa: E402
from detr_ft.train.sync_audit import HostSyncCounter  # noqa: E402
from patches import (  # noqa: E402
    apply_patches,
    detr_encoder_sync_v4,
    detr_label_free_forward,
    detr_position_embedding,
)

ENCODER_LAYERS, DECODER_LAYERS = 6, 2  # DETR-R50's encoder depth: the host reads scale with it
STOCK_SYNCS_PER_STEP = 27  # measured on this stack, see test_stock_training_step_syncs


def tiny_detr(seed: int = 0) -> DetrForObjectDetection:
    """A small random DETR in training mode, with dropout on (patches must draw the same masks)."""
    torch.manual_seed(seed)
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], out_features=["stage2"])
    config = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=32,
        encoder_layers=ENCODER_LAYERS, decoder_layers=DECODER_LAYERS, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_labels=5,
        auxiliary_loss=True, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
    )
    return DetrForObjectDetection(config).train()


def make_batch(padded: bool = False) -> dict:
    """Two 64 px images, the second one padded right of 40 px, with 2 and 1 objects; padded targets if `padded`."""
    generator = torch.Generator().manual_seed(0)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)  # (B, H, W)
    pixel_mask[1, :, 40:] = 0
    labels = [
        {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]]),
         "image_index": torch.tensor(0)},
        {"class_labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]]),
         "image_index": torch.tensor(1)},
    ]
    if padded:
        labels = DetectionCollator(bucket_sizes=[4]).targets(labels)
    return {"pixel_values": torch.rand(2, 3, 64, 64, generator=generator), "pixel_mask": pixel_mask, "labels": labels}


def criterion_loss(model: DetrForObjectDetection, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The label-free forward's logits and boxes, and DetrCriterion's loss of them on the padded labels."""
    outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    return outputs.logits, outputs.pred_boxes, DetrCriterion(model.config)(outputs, batch["labels"])[0]


def training_step(model: DetrForObjectDetection, batch: dict) -> tuple[torch.Tensor, ...]:
    """Forward, criterion and backward with fixed dropout masks: predictions, loss and every gradient."""
    torch.manual_seed(1)
    logits, pred_boxes, loss = criterion_loss(model, batch)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return logits, pred_boxes, loss, *grads


def test_encoder_patch_is_bit_equal_to_stock():
    stock, ours = tiny_detr(), tiny_detr()
    assert detr_encoder_sync_v4.patch_model(ours) == ENCODER_LAYERS
    for model in (stock, ours):
        detr_label_free_forward.patch_model(model)

    stock_results, our_results = training_step(stock, make_batch(padded=True)), training_step(ours, make_batch(True))

    assert len(our_results) == len(stock_results) > 4
    for stock_tensor, our_tensor in zip(stock_results, our_results, strict=True):
        assert torch.equal(our_tensor, stock_tensor)


def test_encoder_patch_clamps_overflow_like_stock():
    model = tiny_detr()
    layer = model.model.encoder.layers[0]
    with torch.no_grad():
        layer.final_layer_norm.bias[0] = float("inf")
    hidden_states, object_queries = torch.randn(2, 2, 16, 32)  # (B, HW, d) each
    torch.manual_seed(1)
    (stock,) = layer(hidden_states, None, object_queries)
    detr_encoder_sync_v4.patch_model(model)
    torch.manual_seed(1)
    (ours,) = layer(hidden_states, None, object_queries)

    assert torch.isfinite(stock).all() and torch.equal(ours, stock)


def test_position_embedding_patch_computes_on_the_device_what_habana_computes_on_the_cpu():
    habana, ours = tiny_detr().model.backbone, tiny_detr().model.backbone
    assert detr_position_embedding.patch_model(ours) == 1
    batch = make_batch()

    with HostSyncCounter() as habana_syncs:
        habana_out, habana_pos = habana(batch["pixel_values"], batch["pixel_mask"])
    with HostSyncCounter() as our_syncs:
        our_out, our_pos = ours(batch["pixel_values"], batch["pixel_mask"])

    assert dict(habana_syncs.by_op) == {"Tensor.to": 2}  # feature map and mask to the CPU (conftest: "hpu" is cpu)
    assert our_syncs.count == 0
    assert torch.equal(our_pos[0], habana_pos[0]) and torch.equal(our_out[0][0], habana_out[0][0])


def test_cpu_position_embedding_keeps_habanas_forward():
    model = tiny_detr()
    applied = apply_patches(model, static_shapes=True, cpu_position_embedding=True)

    assert "detr_position_embedding" not in applied
    assert "forward" not in vars(model.model.backbone)
    assert DetrConvModel.forward.__name__ == "gaudi_DetrConvModel_forward"  # what adapt_transformers_to_gaudi set


def test_our_training_step_has_one_sync():
    model = tiny_detr()
    applied = apply_patches(model, static_shapes=True)
    batch = make_batch(padded=True)  # outside the counter: the data loader's tensors, moved to the device

    with HostSyncCounter() as counter:
        criterion_loss(model, batch)[2].backward()

    assert applied == ["detr_label_free_forward", "detr_encoder_sync_v4", "detr_position_embedding",
                       "detr_loss_num_boxes", "habana_detr_loss"]
    assert dict(counter.by_op) == {"Tensor.cpu": 1}  # the matcher's cost copy


def test_stock_training_step_syncs():
    """The stock path as a Gaudi host runs it (Habana's position embedding, matcher and loss; only the missing
    method bound): its host reads, by kind, reported here."""
    model = tiny_detr()
    apply_patches(model, static_shapes=False, label_free_forward=False)
    batch = make_batch()

    with HostSyncCounter() as counter:
        model(**batch).loss.backward()

    print(f"stock path, transformers 4.55.4 + optimum-habana 1.21.2: {counter.count} host syncs: {dict(counter.by_op)}")
    assert counter.count == STOCK_SYNCS_PER_STEP, counter.by_op
