"""Host syncs of one DETR training step: the stock path has many, ours (patched model + padded-target criterion)
exactly one, the matcher's cost transfer. Also: the sync counter itself, and that the patches leave the model's
results alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DECODER_LAYERS, ENCODER_LAYERS
from scipy.optimize import linear_sum_assignment
from transformers import DetrForObjectDetection

from detr_ft.data.padding import DetectionCollator
from detr_ft.model.criterion import DetrCriterion
from detr_ft.train.sync_audit import HostSyncCounter
from patches import detr_encoder_sync, detr_label_free_forward, detr_mask_sync


def patched(model: DetrForObjectDetection) -> DetrForObjectDetection:
    assert detr_encoder_sync.patch_model(model) == ENCODER_LAYERS
    assert detr_mask_sync.patch_model(model) == 2
    return model


def make_batch(padded_width: int = 40) -> dict:
    """Two 64 px images, the second one padded right of `padded_width`, with 2 and 1 objects."""
    generator = torch.Generator().manual_seed(0)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)  # (B, H, W)
    pixel_mask[1, :, padded_width:] = 0
    labels = [
        {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]]),
         "image_index": torch.tensor(0)},
        {"class_labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]]),
         "image_index": torch.tensor(1)},
    ]
    return {"pixel_values": torch.rand(2, 3, 64, 64, generator=generator), "pixel_mask": pixel_mask, "labels": labels}


def count_training_step_syncs(model: DetrForObjectDetection, batch: dict) -> HostSyncCounter:
    with HostSyncCounter() as counter:
        model(**batch).loss.backward()
    return counter


def test_stock_training_step_has_many_syncs(stock_detr):
    counter = count_training_step_syncs(stock_detr(), make_batch())
    # >= one isfinite check per encoder layer, the loss' .item(), one .cpu() per matched decoder layer, more
    assert counter.count >= 14, counter.by_op
    assert counter.by_op["Tensor.cpu"] == DECODER_LAYERS


def test_label_free_forward_reads_nothing_and_the_criterion_once(stock_detr):
    """The forward the trainer calls (and HPU graphs cache) has no host read; the matcher's copy is in the criterion:
    one host sync for the whole step."""
    model = patched(stock_detr())
    assert detr_label_free_forward.patch_model(model) == 1
    batch = make_batch()
    labels = DetectionCollator(bucket_sizes=[4]).targets(batch.pop("labels"))
    with HostSyncCounter() as forward_counter:
        outputs = model(**batch)
    with HostSyncCounter() as loss_counter:
        DetrCriterion(model.config)(outputs, labels)[0].backward()
    assert forward_counter.count == 0, forward_counter.by_op
    assert dict(loss_counter.by_op) == {"Tensor.cpu": 1}


@pytest.mark.parametrize("padded_width", [40, 64], ids=["padded", "unpadded"])
def test_patches_keep_training_outputs(stock_detr, padded_width):
    batch = make_batch(padded_width)
    results = []
    for model in (stock_detr(), patched(stock_detr())):
        torch.manual_seed(1)  # same dropout masks for both
        outputs = model(**batch)
        outputs.loss.backward()
        encoder_grad = model.model.encoder.layers[0].self_attn.q_proj.weight.grad
        results.append((outputs.encoder_last_hidden_state, outputs.logits, outputs.loss, encoder_grad))
    for stock, ours in zip(*results, strict=True):
        if padded_width < 64:  # the same masks: the same ops
            assert torch.equal(ours, stock)
        else:  # all-True mask instead of None: maybe another sdpa kernel
            torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-6)


def test_patched_encoder_layer_clamps_overflow_like_stock(stock_detr):
    model = stock_detr()
    layer = model.model.encoder.layers[0]
    with torch.no_grad():
        layer.final_layer_norm.bias[0] = float("inf")
    hidden_states = torch.randn(2, 16, model.config.d_model)  # (B, HW, d)
    torch.manual_seed(1)
    stock = layer(hidden_states, None)
    detr_encoder_sync.patch_model(model)
    torch.manual_seed(1)
    ours = layer(hidden_states, None)
    assert torch.isfinite(stock).all() and torch.equal(ours, stock)


def test_counter_counts_each_kind_of_sync_once():
    device_tensor = torch.rand(3, 4)  # (3, 4)
    with HostSyncCounter() as counter:
        device_tensor.sum().item()
        if (device_tensor > 0.5).any():
            pass
        device_tensor[device_tensor > 0.5].sum()
        host = device_tensor.cpu()
        linear_sum_assignment(host[:2])  # already on the host: no further sync
        np.asarray(host).tolist()
        device_tensor.tolist()
        (device_tensor * 2).to(torch.float64).sum()  # no sync
    assert dict(counter.by_op) == {"aten._local_scalar_dense": 2, "aten.index": 1, "Tensor.cpu": 1, "Tensor.tolist": 1}


def test_counter_counts_cpu_transfers_named_as_such():
    device_tensor = torch.rand(3, 4)  # (3, 4)
    with HostSyncCounter() as counter:
        device_tensor.to("cpu").sum().item()  # the transfer counts, the read of its host copy does not
        device_tensor.to(device="cpu", dtype=torch.float64)
        device_tensor.to(torch.float64)  # no device: stays on the device
        device_tensor.to(device_tensor.device)  # the audited device itself
    assert dict(counter.by_op) == {"Tensor.to": 2}


def test_counter_ignores_reads_of_host_created_tensors():
    device_tensor = torch.rand(3)  # (3,)
    with HostSyncCounter() as counter:
        if torch.rand([]) < 0.5:  # LayerDrop's draw: a cpu tensor even on an accelerator
            pass
        torch.tensor([1, 2]).sum().item()
    assert counter.count == 0
    with HostSyncCounter() as counter:
        if torch.rand([], device=device_tensor.device) < 0.5:  # on the device: a read
            pass
        (torch.rand([]) * device_tensor.sum()).item()  # a 0-dim host tensor times a device value: on the device
    assert dict(counter.by_op) == {"aten._local_scalar_dense": 2}
