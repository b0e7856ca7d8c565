"""Conditional DETR and Deformable DETR on the Gaudi stack (transformers 4.55.4, optimum-habana 1.21.2,
`adapt_transformers_to_gaudi()` applied by conftest.py), which optimum-habana does not patch for these models: the
label-free forward patches give the stock forward's predictions, every layer as it hands them to its loss; our
criterion equals transformers' own loss in every weighted term and every parameter's gradient. Not in
`cardinality_error` (logged, not weighted): 4.55 counts these sigmoid models' objects as DETR's softmax ones
(argmax not the last class), 5.24 as sigmoid scores above 0.5, which ours follows.

Run in the Gaudi venv: `.venv-gaudi/bin/python -m pytest tests/gaudi -q`; skipped where optimum-habana is absent.
"""

import pytest
import torch

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

import test_family_equivalence as equivalence  # noqa: E402
from transformers.loss.loss_utils import LOSS_MAPPING  # noqa: E402

from detr_ft.data.dataset import DetectionDataset  # noqa: E402
from detr_ft.data.labels import ClassMapping  # noqa: E402
from detr_ft.data.padding import compute_bucket_sizes  # noqa: E402
from detr_ft.data.sources import load_coco_folder  # noqa: E402
from detr_ft.model.focal_criterion import FocalCriterion  # noqa: E402


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
