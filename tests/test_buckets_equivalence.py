"""Buckets do not change the loss: on the same weights, at every step of a short real training, our padded-target
criterion and transformers' stock loss agree in the total, every loss_dict term and the gradient of every parameter.

Why per step and not only end to end: two training runs whose losses differ by float rounding (~1e-7, the same terms
summed in another order) drift apart with every optimizer step, by an amount that depends on the thread count and the
CPU's kernels (10 steps: 1.4e-5 relative with 2 threads). One model, one (label-free) forward and both losses on its
outputs give a tight, deterministic comparison; the optimizer then steps with our loss's gradients, so later steps
check realistic training states, not only the initialisation. tests/test_train.py keeps a short end-to-end run
through the entry. With three aspect-ratio canvases (`--image_buckets 3`) the batches come from the canvas sampler
and change shape from step to step: the equivalence holds on every canvas. The model trains on the device
DETR_FT_TEST_DEVICE names (tests/device_under_test.py); the batches are collated on the CPU and moved there.
"""

from __future__ import annotations

import pytest
import torch
from device_under_test import DEVICE_VARIABLE, device_under_test, float32_matmuls, on_device
from torch import Tensor

from detr_ft.data.canvases import CanvasGroupedSampler, choose_canvases
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.sources import load_coco_folder
from detr_ft.model.build import build_model
from detr_ft.model.criterion import DetrCriterion, TransformersCriterion
from detr_ft.train.optimizer import build_optimizer
from patches import detr_label_free_forward

IMAGE_SIZE, BATCH_SIZE, STEPS, LEARNING_RATE = 64, 8, 10, 3e-4  # test_train.py's run: 10 of its 12 steps an epoch
# Worst deviations measured over the 10 steps (OMP_NUM_THREADS=1 / 2): loss terms 3.5e-7 / 2.6e-7 relative (2-3
# float32 ulps), gradients 5.2e-7 / 5.5e-7 of the largest gradient entry. ~15x margin; a wrong loss is far off (eos
# weight 0.1 -> 0.11: 1.7e-3 in the total; padding rows counted as targets: 2.4e-2; our auxiliary logits detached:
# gradients 6e-3).
LOSS_RTOL, GRAD_TOL = 5e-6, 1e-5


def assert_step_agrees(step: int, actual: tuple, expected: tuple, names: tuple[str, ...], loss_rtol: float,
                       grad_tol: float) -> None:
    """(loss, loss_dict, gradients) of one step against the expected ones: every term relative to itself, every
    gradient relative to the largest expected gradient entry. The backward's rounding scales with the values flowing
    through it, and some gradients are 0 in exact arithmetic (attention ignores a key bias), so their computed ~1e-9
    is rounding that no per-tensor relative tolerance bounds."""
    (loss, loss_dict, grads), (expected_loss, expected_dict, expected_grads) = actual, expected
    for key, wanted in [("loss", expected_loss), *expected_dict.items()]:
        value, wanted = (loss if key == "loss" else loss_dict[key]).detach(), wanted.detach()  # () each
        relative = deviation(value, wanted, wanted.abs().clamp(min=1e-6))
        assert relative <= loss_rtol, f"step {step}, {key}: {float(value)}, expected {float(wanted)}"
    scale = torch.stack([g.abs().max() for g in expected_grads]).max()  # ()
    for name, grad, wanted in zip(names, grads, expected_grads, strict=True):
        relative = deviation(grad, wanted, scale)
        assert relative <= grad_tol, f"step {step}, gradient of {name}: off by {relative:.1e} of the largest"


def deviation(actual: Tensor, expected: Tensor, scale: Tensor) -> float:
    return float((actual.detach() - expected.detach()).abs().max() / scale)


class Training:
    """The model (detr-tiny with the label-free forward, in training mode), its optimizer and both criteria on the
    device under test, and the first STEPS batches of the training order, as the stock and the padded collator make
    them, each on the device."""

    def __init__(self, data_dir, image_buckets: int):
        torch.manual_seed(0)
        split = load_coco_folder(data_dir, "train")
        classes = ClassMapping.from_categories(split.coco["categories"])
        self.canvases = choose_canvases(split.image_sizes(), IMAGE_SIZE, image_buckets)
        assert len(self.canvases) == image_buckets
        # no augmentation: batches are what they say
        dataset = DetectionDataset(split, classes.category_to_label, IMAGE_SIZE, canvases=self.canvases)
        # labels: a list of per-image dicts, as --num_buckets 0
        stock_collator = DetectionCollator(canvases=self.canvases)
        padded_collator = DetectionCollator(bucket_sizes=compute_bucket_sizes(dataset.object_counts(), 1),
                                            canvases=self.canvases)
        self.model = build_model("detr-tiny", classes.id2label).to(device_under_test())  # dropout 0.0: deterministic
        self.names, self.parameters = zip(*[(name, p) for name, p in self.model.named_parameters()
                                            if p.requires_grad], strict=True)
        self.optimizer = build_optimizer(self.model, LEARNING_RATE, LEARNING_RATE, weight_decay=0.0)
        detr_label_free_forward.patch_model(self.model)
        self.criterion, self.stock_criterion = DetrCriterion(self.model.config), TransformersCriterion(self.model)
        self.model.train()
        if image_buckets > 1:
            order = list(CanvasGroupedSampler(dataset.canvas_of, BATCH_SIZE, seed=0))
        else:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
        samples = [[dataset[i] for i in order[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]] for step in range(STEPS)]
        self.batches = [(on_device(stock_collator(batch)), on_device(padded_collator(batch))) for batch in samples]


@pytest.mark.parametrize("image_buckets", [1, 3])
def test_padded_loss_and_gradients_equal_stock_at_every_training_step(request, image_buckets):
    training = Training(request.getfixturevalue("synthetic_dir" if image_buckets == 1 else "aspect_ratio_dir"),
                        image_buckets)
    model, parameters, optimizer = training.model, training.parameters, training.optimizer
    padded_batches, shapes = 0, set()
    with float32_matmuls():
        for step, (stock_batch, padded_batch) in enumerate(training.batches):
            padded_batches += int(not padded_batch["labels"]["valid"].all())
            shapes.add(tuple(padded_batch["pixel_values"].shape[2:]))

            outputs = model(pixel_values=padded_batch["pixel_values"], pixel_mask=padded_batch["pixel_mask"])
            stock_loss, stock_dict = training.stock_criterion(outputs, stock_batch["labels"])
            loss, loss_dict = training.criterion(outputs, padded_batch["labels"])
            stock_grads = torch.autograd.grad(stock_loss, parameters, retain_graph=True)
            grads = torch.autograd.grad(loss, parameters)

            assert list(loss_dict) == list(stock_dict)
            assert_step_agrees(step, (loss, loss_dict, grads), (stock_loss, stock_dict, stock_grads), training.names,
                               LOSS_RTOL, GRAD_TOL)

            for parameter, grad in zip(parameters, grads, strict=True):
                parameter.grad = grad
            optimizer.step()
            optimizer.zero_grad()
    assert padded_batches > 0, "no batch had padding rows: the loss's padding mask went untested"
    assert shapes == set(training.canvases), "not every canvas was trained on"


def test_training_runs_on_the_device_the_environment_names(monkeypatch, aspect_ratio_dir):
    """The test above trains the model and batches `Training` builds: they follow DETR_FT_TEST_DEVICE ("meta" here,
    a device no test lands on by default)."""
    monkeypatch.setenv(DEVICE_VARIABLE, "meta")
    training = Training(aspect_ratio_dir, image_buckets=3)
    tensors = [*training.model.parameters(), *training.model.buffers()]
    for stock_batch, padded_batch in training.batches:
        tensors += [padded_batch["pixel_values"], padded_batch["pixel_mask"], *padded_batch["labels"].values(),
                    stock_batch["pixel_values"], *(t for target in stock_batch["labels"] for t in target.values())]
    assert {tensor.device.type for tensor in tensors} == {"meta"}
