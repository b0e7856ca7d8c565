"""The loss computed by the trainer from a label-free forward (detr_ft/train/trainer_loss.py) equals the loss the
model computes inside its forward when given labels (the old route): the total, every loss_dict term and the gradient
of every parameter, on the same weights and batch, with auxiliary loss on and off, without buckets (transformers' own
loss) and with 1 or 3 target buckets (ours). And the forward the trainer calls gets no labels."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.sources import load_coco_folder
from detr_ft.model.build import build_model
from detr_ft.model.static_shapes import use_static_shape_loss
from detr_ft.train.arguments import DeviceArguments
from detr_ft.train.devices import build_trainer

IMAGE_SIZE, BATCH_SIZE = 64, 8
# The same ops on the same tensors in the same order: measured equal to the last bit (OMP_NUM_THREADS=1 and 2); the
# tolerance only allows for kernels that split a reduction differently when the stacked layers are sliced.
TOLERANCE = 1e-6


def batch_and_model(synthetic_dir, num_buckets: int, auxiliary_loss: bool):
    split = load_coco_folder(synthetic_dir, "train")
    classes = ClassMapping.from_categories(split.coco["categories"])
    dataset = DetectionDataset(split, classes.category_to_label, IMAGE_SIZE)
    buckets = compute_bucket_sizes(dataset.object_counts(), num_buckets) if num_buckets else None
    batch = DetectionCollator(IMAGE_SIZE, buckets)([dataset[i] for i in range(BATCH_SIZE)])
    torch.manual_seed(0)
    model = build_model("detr-tiny", classes.id2label)  # dropout 0.0: two forwards give the same outputs
    model.config.auxiliary_loss = auxiliary_loss
    if buckets:
        use_static_shape_loss(model)
    return batch, model.train()


def loss_and_gradients(model, loss_and_dict) -> tuple[torch.Tensor, dict, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, loss_dict = loss_and_dict()
    loss.backward()
    return loss.detach(), {k: v.detach() for k, v in loss_dict.items()}, [p.grad.clone() for p in model.parameters()
                                                                         if p.grad is not None]


@pytest.mark.parametrize("auxiliary_loss", [True, False], ids=["aux", "no_aux"])
@pytest.mark.parametrize("num_buckets", [0, 1, 3])
def test_trainer_loss_equals_the_models_own(synthetic_dir, tmp_path, num_buckets, auxiliary_loss):
    batch, model = batch_and_model(synthetic_dir, num_buckets, auxiliary_loss)

    def inside_the_forward():
        outputs = model(**batch)
        return outputs.loss, outputs.loss_dict

    old_loss, old_dict, old_grads = loss_and_gradients(model, inside_the_forward)

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = build_trainer(DeviceArguments(), args, model=model)
    forward_calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: forward_calls.append(set(kwargs)), with_kwargs=True)

    def from_the_outputs():
        loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
        return loss, outputs.loss_dict

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
