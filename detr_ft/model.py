"""Build the DETR to fine-tune: a hub id, a local HF directory, or a preset config trained from scratch.

Pretrained models keep DETR's fine-tuning recipe: frozen BatchNorm, stem and ResNet stage 0 frozen, stages
1-3 trained at `backbone_lr` (1e-5 in the paper); the stages are set by patches/detr_backbone_stages.py, which
`patches.apply_patches` applies. Presets start from DETR's own initialisation, which a
from-scratch DETR needs to learn at all: xavier-uniform transformer weights, N(0, 1) query embeddings, a
fully trainable backbone with trainable BatchNorm (transformers swaps in a frozen BatchNorm that does
nothing for random weights).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import DetrConfig, DetrForObjectDetection

from patches.detr_backbone_stages import backbone_network

logger = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).parent / "presets"
HUB_REVISIONS = {"facebook/detr-resnet-50": "no_timm", "facebook/detr-resnet-101": "no_timm"}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def is_preset(name: str) -> bool:
    return (PRESETS_DIR / f"{name}.json").exists()


def preset_settings(name: str) -> dict:
    settings = json.loads((PRESETS_DIR / f"{name}.json").read_text())
    settings.pop("_comment", None)
    return settings


def default_image_size(name_or_path: str) -> int:
    """The preset's own image size; 800 (DETR's shortest edge) for pretrained models."""
    return preset_settings(name_or_path)["image_size"] if is_preset(name_or_path) else 800


def build_model(
    name_or_path: str,
    id2label: dict[int, str],
    revision: str | None = None,
    freeze_backbone: bool = False,
) -> DetrForObjectDetection:
    """DETR with a classification head for `id2label`; see the module docstring for what is trained."""
    label2id = {name: i for i, name in id2label.items()}
    if is_preset(name_or_path):
        settings = preset_settings(name_or_path)
        settings.pop("image_size")
        config = DetrConfig(**settings, num_labels=len(id2label), id2label=id2label, label2id=label2id)
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


def optimizer_param_groups(model: nn.Module, learning_rate: float, backbone_lr: float,
                           weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: the backbone at `backbone_lr`, the rest at `learning_rate`."""
    backbone, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if ".backbone." in f".{name}" else rest).append(parameter)
    return [
        {"params": rest, "lr": learning_rate, "weight_decay": weight_decay},
        {"params": backbone, "lr": backbone_lr, "weight_decay": weight_decay},
    ]


def build_optimizer(model: nn.Module, learning_rate: float, backbone_lr: float, weight_decay: float,
                    optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW) -> torch.optim.Optimizer:
    """Build it after the model is on its device: moving to HPU may replace the parameter objects."""
    groups = [g for g in optimizer_param_groups(model, learning_rate, backbone_lr, weight_decay) if g["params"]]
    return optimizer_class(groups, lr=learning_rate, weight_decay=weight_decay)
