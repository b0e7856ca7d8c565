"""patches/detr_backbone_stages.py on both paths (built directly, from_pretrained) and both stacks: this module runs in
the main venv (transformers 5.24), tests/gaudi/test_backbone_stages_gaudi.py runs it again in the Gaudi venv (4.55)."""

import pytest
import transformers
from packaging.version import Version
from test_model import saved_resnet_detr
from torch import nn
from transformers import DetrForObjectDetection

from patches import apply_patches
from patches.detr_backbone_stages import TRAINABLE_STAGES, backbone_network

# What transformers itself leaves trainable in an HF-ResNet backbone (the patch's docstring table).
STOCK_TRAINABLE = {
    (4, "direct"): "none", (4, "from_pretrained"): "none",
    (5, "direct"): "none", (5, "from_pretrained"): "all",
}


def load(path, how: str) -> DetrForObjectDetection:
    if how == "direct":
        return DetrForObjectDetection(DetrForObjectDetection.from_pretrained(path).config)
    return DetrForObjectDetection.from_pretrained(path)


def trainable(backbone: nn.Module) -> str:
    flags = {name: parameter.requires_grad for name, parameter in backbone.named_parameters()}
    detr_stages = {name: any(stage in name for stage in TRAINABLE_STAGES) for name in flags}
    if flags == detr_stages:
        return "stages 1-3"
    return {frozenset({True}): "all", frozenset({False}): "none"}.get(frozenset(flags.values()), "other")


@pytest.mark.parametrize("how", ["direct", "from_pretrained"])
def test_stock_transformers_does_not_train_detr_stages(tmp_path, how):
    """The bug the patch fixes, as the docstring states it per stack; if this fails, update the table or drop the
    patch."""
    model = load(saved_resnet_detr(tmp_path), how)

    assert trainable(backbone_network(model)) == STOCK_TRAINABLE[Version(transformers.__version__).major, how]


@pytest.mark.parametrize("how", ["direct", "from_pretrained"])
def test_patch_trains_stages_1_to_3_only(tmp_path, how):
    model = load(saved_resnet_detr(tmp_path), how)

    applied = apply_patches(model, static_shapes=False, train_backbone_stages=True)

    assert "detr_backbone_stages" in applied
    assert trainable(backbone_network(model)) == "stages 1-3"
