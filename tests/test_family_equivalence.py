"""Conditional DETR and Deformable DETR (plain, with box refinement, two-stage) trained our way equal transformers'
own training step: the label-free forward patches give the stock forward's predictions, and stack every layer's as
the stock forward hands them to its loss; on the same weights, at every step of a short training, our criterion on
the label-free forward's outputs and padded targets equals the stock forward's loss on the unpadded targets, in
the total, every loss_dict term and the gradient of every parameter. With `--num_buckets 0` (stock targets),
transformers' loss called on the label-free outputs is the stock forward's loss, to the bit.

The images are non-square ones on a square canvas, so pixel padding (the masks, Deformable DETR's valid ratios and
its two-stage proposals' padding) is part of every step.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from transformers import CONFIG_MAPPING, AutoModelForObjectDetection

from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.sources import load_coco_folder
from detr_ft.model.focal_criterion import FocalCriterion
from detr_ft.model.presets import load_preset
from detr_ft.model.scratch_init import init_conditional_detr, init_deformable_detr
from patches import conditional_detr_label_free_forward, deformable_detr_label_free_forward

IMAGE_SIZE, BATCH_SIZE, STEPS, LEARNING_RATE = 32, 4, 2, 3e-4
TWO_STAGE = {"with_box_refine": True, "two_stage": True, "two_stage_num_proposals": 16}
VARIANTS = {  # name: (preset, config overrides)
    "conditional": ("conditional-detr-tiny", {}),
    "conditional-no-aux": ("conditional-detr-tiny", {"auxiliary_loss": False}),
    "deformable": ("deformable-detr-tiny", {}),
    "deformable-no-aux": ("deformable-detr-tiny", {"auxiliary_loss": False}),
    "deformable-box-refine": ("deformable-detr-tiny", {"with_box_refine": True}),
    "deformable-two-stage": ("deformable-detr-tiny", TWO_STAGE),
}
PATCHES = {"conditional_detr": (conditional_detr_label_free_forward, init_conditional_detr),
           "deformable_detr": (deformable_detr_label_free_forward, init_deformable_detr)}
# Worst deviations measured over the steps of all variants and buckets (OMP_NUM_THREADS=1 / 2): loss terms
# 1.9e-7 / 1.9e-7 relative (1-2 float32 ulps: the same terms summed in another order); gradients 0 (a sum's
# gradient does not depend on the order of its terms).
LOSS_RTOL, GRAD_TOL = 1e-6, 1e-6


def build(variant: str, num_labels: int) -> nn.Module:
    """The variant's preset with its family's from-scratch initialisation and the label-free forward, all of the
    backbone trainable, in training mode."""
    preset_name, overrides = VARIANTS[variant]
    preset = load_preset(preset_name)
    torch.manual_seed(0)
    config = CONFIG_MAPPING[preset.model_type](**{**preset.config, **overrides}, num_labels=num_labels)
    model = AutoModelForObjectDetection.from_config(config)
    patch, init = PATCHES[preset.model_type]
    init(model)
    model.model.backbone.requires_grad_(True)
    assert patch.patch_model(model) == 1
    return model.train()


def stock_forward(model: nn.Module, batch: dict, labels: list[dict] | None = None):
    """transformers' own forward of the model's class, the patched instance's weights."""
    return type(model).forward(model, pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"],
                               labels=labels)


def label_free(model: nn.Module, batch: dict):
    return model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])


def stock_loss_on(model: nn.Module, outputs, labels: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
    """transformers' loss (`model.loss_function`) on a label-free forward's outputs, called as the stock forward
    calls it: what the trainer does with stock targets (`--num_buckets 0`)."""
    loss, loss_dict, _ = model.loss_function(outputs.logits, labels, model.device, outputs.pred_boxes, model.config,
                                             outputs.layer_logits, outputs.layer_boxes)
    return loss, loss_dict


@pytest.fixture(scope="module")
def padded_images(aspect_ratio_dir) -> tuple[DetectionDataset, list[int]]:
    """The dataset of non-square images fitted to one square canvas, and a shuffled order of it."""
    split = load_coco_folder(aspect_ratio_dir, "train")
    classes = ClassMapping.from_categories(split.coco["categories"])
    dataset = DetectionDataset(split, classes.category_to_label, IMAGE_SIZE)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    return dataset, order


def batches(padded_images, bucket_sizes: list[int] | None, steps: int):
    """(stock batch, our batch) for each step: the same images, stock targets and padded ones (or stock ones)."""
    dataset, order = padded_images
    stock_collator = DetectionCollator(image_size=IMAGE_SIZE)
    collator = DetectionCollator(image_size=IMAGE_SIZE, bucket_sizes=bucket_sizes)
    for step in range(steps):
        samples = [dataset[i] for i in order[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]]
        yield stock_collator(samples), collator(samples)


@pytest.mark.parametrize("variant", VARIANTS)
def test_label_free_forward_gives_the_stock_predictions(variant, padded_images):
    model = build(variant, num_labels=len(padded_images[0].split.coco["categories"]))
    stock_batch, _ = next(batches(padded_images, None, 1))
    assert not stock_batch["pixel_mask"].all(), "no pixel padding: the masks went untested"
    captured = {}

    def capture(logits, labels, device, pred_boxes, config, outputs_class=None, outputs_coord=None, **kwargs):
        captured.update(logits=logits, pred_boxes=pred_boxes, outputs_class=outputs_class, outputs_coord=outputs_coord)
        return torch.zeros(()), {}, None

    ours = label_free(model, stock_batch)
    without_labels = stock_forward(model, stock_batch)
    assert torch.equal(ours.logits, without_labels.logits) and torch.equal(ours.pred_boxes, without_labels.pred_boxes)

    model.loss_function = capture
    stock_forward(model, stock_batch, stock_batch["labels"])
    layers = model.config.decoder_layers if model.config.auxiliary_loss else 1
    assert ours.layer_logits.shape[0] == ours.layer_boxes.shape[0] == layers
    assert torch.equal(ours.layer_logits[-1], captured["logits"]) and torch.equal(ours.logits, captured["logits"])
    assert torch.equal(ours.layer_boxes[-1], captured["pred_boxes"])
    if model.config.auxiliary_loss:  # the auxiliary layers the stock loss reads: all but the last of its stack
        assert torch.equal(ours.layer_logits[:-1], captured["outputs_class"][:-1])
        assert torch.equal(ours.layer_boxes[:-1], captured["outputs_coord"][:-1])


def deviation(actual: Tensor, expected: Tensor, scale: Tensor) -> float:
    return float((actual.detach() - expected.detach()).abs().max() / scale)


@pytest.mark.parametrize("num_buckets", [0, 1, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_criterion_on_label_free_outputs_equals_stock_training_step(variant, num_buckets, padded_images):
    dataset, _ = padded_images
    model = build(variant, num_labels=len(dataset.split.coco["categories"]))
    names, parameters = zip(*[(name, p) for name, p in model.named_parameters() if p.requires_grad], strict=True)
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.0)
    criterion = FocalCriterion(model.config)
    bucket_sizes = compute_bucket_sizes(dataset.object_counts(), num_buckets) if num_buckets else None
    padded_batches = 0
    steps = STEPS if num_buckets else 1  # stock targets: one step shows the call is the stock forward's own
    for step, (stock_batch, batch) in enumerate(batches(padded_images, bucket_sizes, steps)):
        stock = stock_forward(model, stock_batch, stock_batch["labels"])
        outputs = label_free(model, batch)
        if num_buckets:
            padded_batches += int(not batch["labels"]["valid"].all())
            loss, loss_dict = criterion(outputs, batch["labels"])
        else:
            loss, loss_dict = stock_loss_on(model, outputs, batch["labels"])
        # allow_unused: two-stage proposal heads get no gradient from transformers' loss (it has no encoder term)
        stock_grads = torch.autograd.grad(stock.loss, parameters, allow_unused=True, materialize_grads=True)
        grads = torch.autograd.grad(loss, parameters, allow_unused=True, materialize_grads=True)

        assert list(loss_dict) == list(stock.loss_dict)
        if not num_buckets:  # the same arithmetic on the same predictions
            assert torch.equal(loss, stock.loss) and all(torch.equal(g, s) for g, s in zip(grads, stock_grads,
                                                                                          strict=True))
        for key, expected in [("loss", stock.loss), *stock.loss_dict.items()]:
            value = loss if key == "loss" else loss_dict[key]  # ()
            relative = deviation(value, expected, expected.detach().abs().clamp(min=1e-6))
            assert relative <= LOSS_RTOL, f"step {step}, {key}: {float(value)} vs stock {float(expected)}"
        # Relative to the largest gradient entry, as in test_buckets_equivalence.py.
        scale = torch.stack([g.abs().max() for g in stock_grads]).max()  # ()
        for name, grad, stock_grad in zip(names, grads, stock_grads, strict=True):
            relative = deviation(grad, stock_grad, scale)
            assert relative <= GRAD_TOL, f"step {step}, gradient of {name}: off by {relative:.1e} of the largest"

        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = grad
        optimizer.step()
        optimizer.zero_grad()
    assert padded_batches > 0 or not num_buckets, "no batch had padding rows: the loss's padding mask went untested"
