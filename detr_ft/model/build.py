"""Build the DETR to fine-tune: a hub id, a local HF directory, or a preset config trained from scratch.

Pretrained models keep DETR's fine-tuning recipe: frozen BatchNorm, stem and ResNet stage 0 frozen, stages
1-3 trained at `backbone_lr` (1e-5 in the paper); the stages are set by patches/detr_backbone_stages.py, which
`patches.apply_patches` applies. Presets start from DETR's own initialisation, which a
from-scratch DETR needs to learn at all: xavier-uniform transformer weights, N(0, 1) query embeddings, a
fully trainable backbone with trainable BatchNorm (transformers swaps in a frozen BatchNorm that does
nothing for random weights).
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import DetrConfig, DetrForObjectDetection

from detr_ft.model.presets import is_preset, load_preset, preset_names
from patches.detr_backbone_stages import backbone_network

logger = logging.getLogger(__name__)

HUB_REVISIONS = {"facebook/detr-resnet-50": "no_timm", "facebook/detr-resnet-101": "no_timm"}


def build_model(
    name_or_path: str,
    id2label: dict[int, str],
    revision: str | None = None,
    freeze_backbone: bool = False,
) -> DetrForObjectDetection:
    """DETR with a classification head for `id2label`; see the module docstring for what is trained."""
    label2id = {name: i for i, name in id2label.items()}
    if is_preset(name_or_path):
        config = DetrConfig(**load_preset(name_or_path).config, num_labels=len(id2label), id2label=id2label,
                            label2id=label2id)
        model = DetrForObjectDetection(config)
        init_from_scratch(model)
    else:
        try:
            model = DetrForObjectDetection.from_pretrained(
                name_or_path,
                revision=revision or HUB_REVISIONS.get(name_or_path),
                num_labels=len(id2label),
                id2label=id2label,
                label2id=label2id,
                ignore_mismatched_sizes=True,
                use_safetensors=True,
            )
        except OSError as error:
            raise OSError(f"--model_name_or_path {name_or_path}: not a preset ({', '.join(preset_names())}), nor a "
                          f"local model directory, nor loadable from the hub ({error})") from error
    if freeze_backbone:
        model.model.backbone.requires_grad_(False)
    return model


def init_from_scratch(model: DetrForObjectDetection) -> None:
    """DETR's initialisation (facebookresearch/detr models/transformer.py, detr.py) plus trainable BatchNorm."""
    for module in (model.model.encoder, model.model.decoder):
        for parameter in module.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
    nn.init.normal_(model.model.query_position_embeddings.weight)
    # DETR leaves its heads and input projection at PyTorch's default init; transformers' normal(0.02) shrinks a
    # 3-layer box MLP's signal and gradients about 4x per layer.
    for layer in (model.class_labels_classifier, *model.bbox_predictor.layers, model.model.input_projection):
        layer.reset_parameters()
    backbone = backbone_network(model)
    for name, module in list(backbone.named_modules()):
        if type(module).__name__ == "DetrFrozenBatchNorm2d":
            parent_name, _, child = name.rpartition(".")
            backbone.get_submodule(parent_name)._modules[child] = nn.BatchNorm2d(module.weight.numel())
    backbone.requires_grad_(True)
