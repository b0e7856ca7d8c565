"""Our padded-target DETR criterion equals transformers' stock loss on the same, unpadded targets: every loss_dict
term, the total, and the gradients of all model outputs, for several bucket sizes. On the device DETR_FT_TEST_DEVICE
names (tests/device_under_test.py): inputs are drawn and targets padded on the CPU, as the data loader pads them, the
same on every device, then moved there (`on_device`)."""

from __future__ import annotations

import pytest
import torch
from device_under_test import DEVICE_VARIABLE, device_under_test, float32_matmuls, on_device
from torch._dynamo.testing import CompileCounterWithBackend
from transformers import DetrConfig
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss, HungarianMatcher

from detr_ft.data.padding import DetectionCollator
from detr_ft.model.criterion import DetrCriterion, TransformersCriterion
from detr_ft.model.matcher import UNMATCHED, hungarian_match
from detr_ft.model.outputs import DetectionOutput

NUM_QUERIES, NUM_LABELS, DECODER_LAYERS = 10, 5, 3
DATASET_MAX_OBJECTS = 12  # more than NUM_QUERIES: such an image gets only NUM_QUERIES matches
OBJECT_COUNTS = [[0], [3], [0, 5], [DATASET_MAX_OBJECTS, 1, 0], [2, 7, 10, 4]]
BUCKETS = ["exact", "dataset_max", 16, 24]


@pytest.fixture(autouse=True)
def full_float32():
    with float32_matmuls():
        yield


def make_config(auxiliary_loss: bool) -> DetrConfig:
    return DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, num_queries=NUM_QUERIES, num_labels=NUM_LABELS,
        decoder_layers=DECODER_LAYERS, auxiliary_loss=auxiliary_loss, eos_coefficient=0.1,
        class_cost=1, bbox_cost=5, giou_cost=2, bbox_loss_coefficient=5, giou_loss_coefficient=2,
    )


def make_targets(counts: list[int], generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    targets = []
    for index, count in enumerate(counts):
        centers = torch.rand(count, 2, generator=generator) * 0.6 + 0.2  # (n, 2)
        sizes = torch.rand(count, 2, generator=generator) * 0.3 + 0.05  # (n, 2)
        targets.append({
            "class_labels": torch.randint(0, NUM_LABELS, (count,), generator=generator),  # (n,)
            "boxes": torch.cat([centers, sizes], dim=1),  # (n, 4)
            "image_index": torch.tensor(index),
        })
    return targets


def make_outputs(batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Leaf tensors standing for the model's outputs, drawn on the CPU, on the device under test; the final layer's
    are separate tensors, as in the model."""
    device = device_under_test()
    shape = (DECODER_LAYERS, batch_size, NUM_QUERIES)
    outputs_class = (torch.randn(*shape, NUM_LABELS + 1, generator=generator) * 2).to(device)  # (L, B, Q, C+1)
    outputs_coord = (torch.rand(*shape, 4, generator=generator) * 0.8 + 0.1).to(device)  # (L, B, Q, 4)
    return {
        "logits": outputs_class[-1].clone(), "pred_boxes": outputs_coord[-1].clone(),
        "outputs_class": outputs_class, "outputs_coord": outputs_coord,
    }


def run_loss(criterion, outputs, labels):
    """(loss, loss_dict, gradients by output name) of `criterion` on fresh copies of `outputs`, stacked as the
    label-free forward stacks them: the auxiliary layers, then the final layer's separate tensors."""
    leaves = {name: tensor.clone().requires_grad_() for name, tensor in outputs.items()}
    layer_logits = torch.cat([leaves["outputs_class"][:-1], leaves["logits"][None]])  # (L, B, Q, C+1)
    layer_boxes = torch.cat([leaves["outputs_coord"][:-1], leaves["pred_boxes"][None]])  # (L, B, Q, 4)
    if not criterion.config.auxiliary_loss:
        layer_logits, layer_boxes = leaves["logits"][None], leaves["pred_boxes"][None]  # (1, B, Q, .)
    stacked = DetectionOutput(logits=layer_logits[-1], pred_boxes=layer_boxes[-1], layer_logits=layer_logits,
                              layer_boxes=layer_boxes)
    loss, loss_dict = criterion(stacked, labels)
    loss.backward()
    return loss, loss_dict, {name: leaf.grad for name, leaf in leaves.items()}


class StockModel:
    """What TransformersCriterion reads of a model: its loss function and config."""

    def __init__(self, config: DetrConfig):
        self.loss_function, self.config = ForObjectDetectionLoss, config


def assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("auxiliary_loss", [True, False])
@pytest.mark.parametrize("bucket", BUCKETS)
@pytest.mark.parametrize("counts", OBJECT_COUNTS, ids=str)
def test_padded_loss_equals_stock(counts, bucket, auxiliary_loss):
    generator = torch.Generator().manual_seed(len(counts) * 100 + sum(counts))
    config = make_config(auxiliary_loss)
    targets = make_targets(counts, generator)
    outputs = make_outputs(len(counts), generator)
    size = {"exact": max(counts), "dataset_max": DATASET_MAX_OBJECTS}.get(bucket, bucket)
    padded = on_device(DetectionCollator(bucket_sizes=[size]).targets(targets))
    assert padded["valid"].shape == (len(counts), size)

    loss, loss_dict, grads = run_loss(DetrCriterion(config), outputs, padded)
    stock_loss, stock_dict, stock_grads = run_loss(TransformersCriterion(StockModel(config)), outputs,
                                                   on_device(targets))

    assert list(loss_dict) == list(stock_dict)
    assert ("loss_ce_0" in loss_dict) == auxiliary_loss  # the auxiliary layers' terms are there, or not
    for key in stock_dict:
        assert_close(loss_dict[key], stock_dict[key], key)
    assert_close(loss, stock_loss, "total loss")
    for name in stock_grads:
        if stock_grads[name] is None:  # without auxiliary loss neither reads the stacked layers
            assert grads[name] is None, name
            continue
        assert_close(grads[name], stock_grads[name], f"gradient of {name}")


@pytest.mark.parametrize("counts", OBJECT_COUNTS, ids=str)
def test_matching_equals_stock_per_layer(counts):
    generator = torch.Generator().manual_seed(sum(counts))
    targets = make_targets(counts, generator)
    outputs = make_outputs(len(counts), generator)
    padded = on_device(DetectionCollator(bucket_sizes=[DATASET_MAX_OBJECTS + 4]).targets(targets))
    matched = hungarian_match(outputs["outputs_class"], outputs["outputs_coord"], padded, 1, 5, 2)  # (L, B, Q)
    stock_matcher = HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    for layer in range(DECODER_LAYERS):
        layer_outputs = {"logits": outputs["outputs_class"][layer], "pred_boxes": outputs["outputs_coord"][layer]}
        for image, (queries, target_ids) in enumerate(stock_matcher(layer_outputs, on_device(targets))):
            expected = torch.full((NUM_QUERIES,), UNMATCHED)  # (Q,)
            expected[queries] = target_ids
            assert torch.equal(matched[layer, image].cpu(), expected)


def test_bfloat16_outputs_give_the_float32_loss():
    generator = torch.Generator().manual_seed(0)
    criterion = DetrCriterion(make_config(auxiliary_loss=True))
    padded = on_device(DetectionCollator(bucket_sizes=[8]).targets(make_targets([3, 0, 8], generator)))
    outputs = {name: t.bfloat16() for name, t in make_outputs(3, generator).items()}
    loss, loss_dict, grads = run_loss(criterion, outputs, padded)
    upcast = {name: t.float() for name, t in outputs.items()}
    loss32, loss_dict32, grads32 = run_loss(criterion, upcast, padded)
    assert loss.dtype == torch.float32 and torch.equal(loss, loss32)
    assert all(torch.equal(loss_dict[k], loss_dict32[k]) for k in loss_dict32)
    assert all(grads[k].dtype == torch.bfloat16 and torch.equal(grads[k], grads32[k].bfloat16()) for k in grads32)


def compile_backend() -> str:
    """What compiles the criterion in the test: inductor on an accelerator, as `--torch_compile` compiles it there; on
    the CPU aot_eager, the same graphs without inductor's code generation (which takes minutes on a small CPU)."""
    return "aot_eager" if device_under_test().type == "cpu" else "inductor"


# Measured with inductor on this CPU: loss terms equal to the eager ones, gradients within 2e-8 (absolute, of entries
# up to ~1); aot_eager: equal bit for bit.
COMPILED_RTOL, COMPILED_ATOL = 1e-5, 1e-6


def test_compiled_criterion_equals_the_eager_one():
    """`--torch_compile`'s criterion: its matching costs and loss terms compiled (detr_ft/train/compiled_step.py), one
    graph each for the bucket, both batches; every term and every gradient as the eager criterion's."""
    torch._dynamo.reset()  # what other tests compiled of the same functions
    config = make_config(auxiliary_loss=True)
    backend = CompileCounterWithBackend(compile_backend())
    compiled, eager = DetrCriterion(config, {"backend": backend}), DetrCriterion(config)
    generator = torch.Generator().manual_seed(3)
    for counts in ([3, 0, 8], [5, 1, 2]):
        padded = on_device(DetectionCollator(bucket_sizes=[8]).targets(make_targets(counts, generator)))
        outputs = make_outputs(len(counts), generator)
        loss, loss_dict, grads = run_loss(compiled, outputs, padded)
        expected_loss, expected_dict, expected_grads = run_loss(eager, outputs, padded)
        for key, expected in [("loss", expected_loss), *expected_dict.items()]:
            value = loss if key == "loss" else loss_dict[key]
            torch.testing.assert_close(value, expected, rtol=COMPILED_RTOL, atol=COMPILED_ATOL,
                                       msg=lambda message, key=key: f"{key}: {message}")
        for name, expected in expected_grads.items():
            torch.testing.assert_close(grads[name], expected, rtol=COMPILED_RTOL, atol=COMPILED_ATOL,
                                       msg=lambda message, name=name: f"gradient of {name}: {message}")
    assert backend.frame_count == 2  # the costs and the loss terms, once for the bucket


def test_inputs_are_on_the_device_the_environment_names(monkeypatch):
    """Every test above takes its model outputs from make_outputs and its labels through on_device: both follow
    DETR_FT_TEST_DEVICE, read at each call ("meta" here: a device no test lands on by default)."""
    monkeypatch.setenv(DEVICE_VARIABLE, "meta")
    generator = torch.Generator().manual_seed(0)
    targets = make_targets([2, 0], generator)
    padded = on_device(DetectionCollator(bucket_sizes=[4]).targets(targets))
    stock = on_device(targets)
    tensors = [*make_outputs(2, generator).values(), *padded.values(), *(t for d in stock for t in d.values())]
    assert {tensor.device.type for tensor in tensors} == {"meta"}
    monkeypatch.delenv(DEVICE_VARIABLE)
    assert device_under_test() == torch.device("cpu")
