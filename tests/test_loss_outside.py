"""The loss the trainer computes, the criterion on a label-free forward (detr_ft/train/trainer.py), equals the loss
the stock model computes inside its forward when given the unpadded labels (transformers' own route): the total,
every loss_dict term and the gradient of every parameter, on the same weights and batch, with auxiliary loss on and
off, without buckets (transformers' own loss through `TransformersCriterion`) and with 1 or 3 target buckets
(`DetrCriterion`). And the forward the trainer calls gets no labels."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from detr_ft.config import DeviceArguments
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.sources import load_coco_folder
from detr_ft.model.build import build_model
from detr_ft.model.families import build_criterion
from detr_ft.train.trainer import build_trainer
from patches import detr_label_free_forward

IMAGE_SIZE, BATCH_SIZE = 64, 8
# Without buckets the same ops on the same tensors in the same order; with them the padded loss sums the same terms in
# another order (tests/test_loss_equivalence.py): float32 rounding, far below a wrong loss's deviation.
TOLERANCE = 1e-6


def batches_and_model(synthetic_dir, num_buckets: int, auxiliary_loss: bool):
    """The same images as the stock route batches them (labels a list of per-image dicts) and as the trainer gets
    them (targets padded to `num_buckets` buckets, or not), and an unpatched model."""
    split = load_coco_folder(synthetic_dir, "train")
    classes = ClassMapping.from_categories(split.coco["categories"])
    dataset = DetectionDataset(split, classes.category_to_label, IMAGE_SIZE)
    buckets = compute_bucket_sizes(dataset.object_counts(), num_buckets) if num_buckets else None
    samples = [dataset[i] for i in range(BATCH_SIZE)]
    stock_batch, batch = DetectionCollator(IMAGE_SIZE)(samples), DetectionCollator(IMAGE_SIZE, buckets)(samples)
    torch.manual_seed(0)
    model = build_model("detr-tiny", classes.id2label)  # dropout 0.0: two forwards give the same outputs
    model.config.auxiliary_loss = auxiliary_loss
    return stock_batch, batch, model.train()


def loss_and_gradients(model, loss_and_dict) -> tuple[torch.Tensor, dict, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, loss_dict = loss_and_dict()
    loss.backward()
    return loss.detach(), {k: v.detach() for k, v in loss_dict.items()}, [p.grad.clone() for p in model.parameters()
                                                                         if p.grad is not None]


@pytest.mark.parametrize("auxiliary_loss", [True, False], ids=["aux", "no_aux"])
@pytest.mark.parametrize("num_buckets", [0, 1, 3])
def test_trainer_loss_equals_the_models_own(synthetic_dir, tmp_path, num_buckets, auxiliary_loss):
    stock_batch, batch, model = batches_and_model(synthetic_dir, num_buckets, auxiliary_loss)

    def inside_the_forward():
        outputs = model(**stock_batch)
        return outputs.loss, outputs.loss_dict

    old_loss, old_dict, old_grads = loss_and_gradients(model, inside_the_forward)

    detr_label_free_forward.patch_model(model)
    criterion, terms = build_criterion(model, padded_targets=num_buckets > 0), {}

    def recording_criterion(outputs, labels):
        loss, loss_dict = criterion(outputs, labels)
        terms.update(loss_dict)
        return loss, loss_dict

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = build_trainer(DeviceArguments(), args, model=model, criterion=recording_criterion)
    forward_calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: forward_calls.append(set(kwargs)), with_kwargs=True)

    def from_the_outputs():
        return trainer.compute_loss(model, batch), terms

    loss, loss_dict, grads = loss_and_gradients(model, from_the_outputs)

    assert forward_calls == [{"pixel_values", "pixel_mask"}]  # no labels: the forward computes no loss
    assert "labels" in batch  # the caller's batch is left as it was
    assert list(loss_dict) == list(old_dict)
    assert ("loss_ce_0" in loss_dict) == auxiliary_loss  # the auxiliary layers' terms are there, or not
    for key, value in [("loss", loss), *loss_dict.items()]:
        expected = old_loss if key == "loss" else old_dict[key]
        assert torch.allclose(value, expected, rtol=TOLERANCE, atol=TOLERANCE), f"{key}: {value} vs {expected}"
    assert len(grads) == len(old_grads) > 0
    scale = max(g.abs().max() for g in old_grads)
    assert max((g - o).abs().max() for g, o in zip(grads, old_grads, strict=True)) <= TOLERANCE * scale
