"""transformers' own DETR loss (the stock path, `--num_buckets 0`) under optimum-habana's
`adapt_transformers_to_gaudi()` (conftest.py applies it): broken by optimum-habana 1.21.2, working with
patches/habana_detr_loss.py, equal to transformers' own.

Run in the Gaudi venv: `.venv-gaudi/bin/python -m pytest tests/gaudi -q`; skipped where optimum-habana is absent.
"""

import pytest
import torch

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

from test_sync_patches_v4 import make_batch, tiny_detr  # noqa: E402
from transformers.loss.loss_for_object_detection import ImageLoss  # noqa: E402

from patches import habana_detr_loss  # noqa: E402

WEIGHTED_TERMS = ("loss_ce", "loss_bbox", "loss_giou")  # cardinality_error is logged, not weighted


def stock_loss(model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and loss terms of `model`'s stock loss on `batch`, dropout masks fixed."""
    torch.manual_seed(1)
    outputs = model(**batch)
    return outputs.loss, outputs.loss_dict


def test_optimum_habana_leaves_the_stock_loss_unbound(monkeypatch):
    """The upstream bug the patch fixes: if this fails, optimum-habana binds the method and the patch can go."""
    monkeypatch.delattr(ImageLoss, habana_detr_loss.METHOD, raising=False)

    with pytest.raises(AttributeError, match=habana_detr_loss.METHOD):
        stock_loss(tiny_detr(), make_batch())


def test_stock_loss_under_gaudi_adaptation_equals_transformers_own(request):
    assert habana_detr_loss.patch_loss() == 1
    habana_loss, habana_terms = stock_loss(tiny_detr(), make_batch())
    assert ImageLoss.forward.__name__ == "gaudi_DetrLoss_forward"  # Habana's loss did run

    request.getfixturevalue("stock_transformers_detr")  # transformers' own DETR code from here on
    own_loss, own_terms = stock_loss(tiny_detr(), make_batch())

    assert ImageLoss.forward.__name__ == "forward"
    torch.testing.assert_close(habana_loss, own_loss, rtol=0, atol=0)
    terms = [name for name in own_terms if name.rsplit("_", 1)[0] in WEIGHTED_TERMS or name in WEIGHTED_TERMS]
    assert len(terms) == len(WEIGHTED_TERMS) * 2  # final layer and one auxiliary layer
    for name in terms:
        torch.testing.assert_close(habana_terms[name], own_terms[name], rtol=0, atol=0, msg=name)
