"""Conditional DETR and Deformable DETR on the Gaudi stack (transformers 4.55.4, optimum-habana 1.21.2,
`adapt_transformers_to_gaudi()` applied by conftest.py), which optimum-habana does not patch for these models: the
label-free forward patches give the stock forward's predictions, every layer as it hands them to its loss; our
criterion equals transformers' own loss in every weighted term and every parameter's gradient. Not in
`cardinality_error` (logged, not weighted): 4.55 counts these sigmoid models' objects as DETR's softmax ones
(argmax not the last class), 5.24 as sigmoid scores above 0.5, which ours follows. The 4.55 encoder-sync patches
(Conditional DETR's layer shares DETR's, Deformable DETR's has its own) are bit-equal to stock, clamp overflow alike,
and leave one host read per training step, the matcher's.

Run in the Gaudi venv: `.venv-gaudi/bin/python -m pytest tests/gaudi -q`; skipped where optimum-habana is absent.
"""

import pytest
import torch

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

import test_family_equivalence as equivalence  # noqa: E402
from transformers import CONFIG_MAPPING, AutoModelForObjectDetection  # noqa: E402
from transformers.loss.loss_utils import LOSS_MAPPING  # noqa: E402

from detr_ft.data.dataset import DetectionDataset  # noqa: E402
from detr_ft.data.labels import ClassMapping  # noqa: E402
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes  # noqa: E402
from detr_ft.data.sources import load_coco_folder  # noqa: E402
from detr_ft.model.families import FAMILIES  # noqa: E402
from detr_ft.model.focal_criterion import FocalCriterion  # noqa: E402
from detr_ft.model.presets import load_preset  # noqa: E402
from detr_ft.train.sync_audit import HostSyncCounter  # noqa: E402
from patches import apply_patches, deformable_detr_encoder_sync_v4, detr_encoder_sync_v4  # noqa: E402


@pytest.fixture(scope="module")
def padded_images(aspect_ratio_dir):
    split = load_coco_folder(aspect_ratio_dir, "train")
    classes = ClassMapping.from_categories(split.coco["categories"])
    dataset = DetectionDataset(split, classes.category_to_label, equivalence.IMAGE_SIZE)
    return dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.mark.parametrize("variant", equivalence.VARIANTS)
def test_label_free_forward_gives_the_stock_predictions(variant, padded_images):
    equivalence.test_label_free_forward_gives_the_stock_predictions(variant, padded_images)


@pytest.mark.parametrize("variant", equivalence.VARIANTS)
def test_criterion_equals_stock_loss_but_its_cardinality_log(variant, padded_images, stock_transformers_detr):
    """One step: the stock loss on transformers' own code (Habana's replaces its forward and box terms)."""
    dataset, _ = padded_images
    model = equivalence.build(variant, num_labels=len(dataset.split.coco["categories"]))
    parameters = [p for p in model.parameters() if p.requires_grad]
    bucket_sizes = compute_bucket_sizes(dataset.object_counts(), 3)
    stock_batch, batch = next(equivalence.batches(padded_images, bucket_sizes, 1))
    outputs = equivalence.label_free(model, batch)
    loss, loss_dict = FocalCriterion(model.config)(outputs, batch["labels"])
    stock_loss, stock_dict, _ = LOSS_MAPPING[type(model).__name__](
        outputs.logits, stock_batch["labels"], model.device, outputs.pred_boxes, model.config, outputs.layer_logits,
        outputs.layer_boxes)
    assert list(loss_dict) == list(stock_dict)
    for key in [key for key in stock_dict if not key.startswith("cardinality_error")]:
        torch.testing.assert_close(loss_dict[key], stock_dict[key], rtol=1e-6, atol=1e-7, msg=key)
    torch.testing.assert_close(loss, stock_loss, rtol=1e-6, atol=1e-7)
    grads = torch.autograd.grad(loss, parameters, allow_unused=True, materialize_grads=True, retain_graph=True)
    stock_grads = torch.autograd.grad(stock_loss, parameters, allow_unused=True, materialize_grads=True)
    assert all(torch.equal(g, s) for g, s in zip(grads, stock_grads, strict=True))


def dropout_model(variant: str, seed: int = 0) -> torch.nn.Module:
    """The variant's preset with dropout on (the encoder patch must draw the same masks), label-free, training."""
    preset_name, overrides = equivalence.VARIANTS[variant]
    preset = load_preset(preset_name)
    torch.manual_seed(seed)
    dropout = {"dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1}
    config = CONFIG_MAPPING[preset.model_type](**{**preset.config, **overrides, **dropout}, num_labels=4)
    model = AutoModelForObjectDetection.from_config(config)
    FAMILIES[preset.model_type].scratch_init(model)
    return model.train()


def padded_batch() -> dict:
    """Two 64 px images, the second one padded right of 40 px, with 2 and 1 objects, targets padded to 4."""
    generator = torch.Generator().manual_seed(0)
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)  # (B, H, W)
    pixel_mask[1, :, 40:] = 0
    labels = [
        {"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]]),
         "image_index": torch.tensor(0)},
        {"class_labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]]),
         "image_index": torch.tensor(1)},
    ]
    return {"pixel_values": torch.rand(2, 3, 64, 64, generator=generator), "pixel_mask": pixel_mask,
            "labels": DetectionCollator(bucket_sizes=[4]).targets(labels)}


def step_results(model: torch.nn.Module, batch: dict) -> list[torch.Tensor]:
    """Forward, criterion and backward with fixed dropout masks: predictions, loss and every gradient."""
    torch.manual_seed(1)
    outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    loss, _ = FocalCriterion(model.config)(outputs, batch["labels"])
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return [outputs.layer_logits, outputs.layer_boxes, loss, *grads]


ENCODER_SYNC_PATCHES = {"conditional": detr_encoder_sync_v4, "deformable": deformable_detr_encoder_sync_v4}


@pytest.mark.parametrize("variant", ENCODER_SYNC_PATCHES)
def test_encoder_sync_patch_is_bit_equal_to_stock(variant):
    stock, ours = dropout_model(variant), dropout_model(variant)
    assert ENCODER_SYNC_PATCHES[variant].patch_model(ours) == ours.config.encoder_layers
    for model in (stock, ours):
        equivalence.PATCHES[model.config.model_type][0].patch_model(model)

    stock_results, our_results = step_results(stock, padded_batch()), step_results(ours, padded_batch())

    assert len(our_results) == len(stock_results) > 4
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(our_results, stock_results, strict=True))


def first_encoder_layer_output(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    hidden = []
    hook = model.model.encoder.layers[0].register_forward_hook(lambda module, args, output: hidden.append(output[0]))
    torch.manual_seed(1)
    model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    hook.remove()
    return hidden[0]  # (B, S, d)


@pytest.mark.parametrize("variant", ENCODER_SYNC_PATCHES)
def test_encoder_sync_patch_clamps_overflow_like_stock(variant):
    stock, ours = dropout_model(variant), dropout_model(variant)
    ENCODER_SYNC_PATCHES[variant].patch_model(ours)
    for model in (stock, ours):
        with torch.no_grad():
            model.model.encoder.layers[0].final_layer_norm.bias[0] = float("inf")

    stock_hidden, our_hidden = (first_encoder_layer_output(model, padded_batch()) for model in (stock, ours))

    assert torch.isfinite(stock_hidden).all() and torch.equal(our_hidden, stock_hidden)


@pytest.mark.parametrize(("variant", "sync_patch"), [("conditional", "detr_encoder_sync_v4"),
                                                     ("deformable", "deformable_detr_encoder_sync_v4")])
def test_our_training_step_reads_the_host_once(variant, sync_patch):
    model = dropout_model(variant)
    applied = apply_patches(model, static_shapes=True)
    batch = padded_batch()  # outside the counter: the data loader's tensors, moved to the device

    with HostSyncCounter() as counter:
        step_results(model, batch)

    assert applied == [FAMILIES[model.config.model_type].label_free_forward, sync_patch, "detr_loss_num_boxes",
                       "habana_detr_loss"]
    assert dict(counter.by_op) == {"Tensor.cpu": 1}  # the matcher's cost copy
