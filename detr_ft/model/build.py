"""Build the DETR to fine-tune: a hub id, a local HF directory, or a preset config trained from scratch.

Pretrained models keep DETR's fine-tuning recipe: frozen BatchNorm, stem and ResNet stage 0 frozen, stages
1-3 trained at `backbone_lr` (1e-5 in the paper); the stages are set by patches/detr_backbone_stages.py, which
`patches.apply_patches` applies. Presets start from DETR's own initialisation, which a
from-scratch DETR needs to learn at all: xavier-uniform transformer weights, N(0, 1) query embeddings, a
fully trainable backbone with trainable BatchNorm (transformers swaps in a frozen BatchNorm that does
nothing for random weights). A local folder saved by a detr-ft run that trained from scratch (its run_args.json
names a preset, or says `from_scratch`) keeps that regime: trainable BatchNorm with its learned statistics, the
whole backbone trained (`trained_from_scratch`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import DetrConfig, DetrForObjectDetection

from detr_ft.model.presets import is_preset, load_preset, preset_names
from detr_ft.run_files import read_run_arguments

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
                          f"local model directory, nor loadable from the hub ({error}). Give a local model folder or "
                          "a preset; offline, set HF_HUB_OFFLINE=1 so the hub is not retried") from error
        if trained_from_scratch(name_or_path):
            logger.info("%s was trained from scratch by detr-ft: BatchNorm and the whole backbone keep training",
                        name_or_path)
            trainable_batch_norm(backbone_network(model))
            backbone_network(model).requires_grad_(True)
    if freeze_backbone:
        model.model.backbone.requires_grad_(False)
    return model


def backbone_network(model: nn.Module) -> nn.Module:
    """The CNN inside DETR's DetrConvEncoder, which transformers 4.55 wraps in a DetrConvModel."""
    conv_encoder = model.model.backbone
    return getattr(conv_encoder, "conv_encoder", conv_encoder).model


def trained_from_scratch(name_or_path: str) -> bool:
    """A preset, or a local folder (run dir or checkpoint) whose detr-ft run trained from scratch."""
    if is_preset(name_or_path):
        return True
    saved = read_run_arguments(name_or_path)
    return bool(saved.get("from_scratch") or is_preset(saved.get("model_name_or_path", "")))


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
    trainable_batch_norm(backbone)
    backbone.requires_grad_(True)


def trainable_batch_norm(backbone: nn.Module) -> None:
    """Swap transformers' DetrFrozenBatchNorm2d (buffers only) for nn.BatchNorm2d holding the same values (for a
    fresh model those are BatchNorm's own defaults)."""
    for name, module in list(backbone.named_modules()):
        if type(module).__name__ == "DetrFrozenBatchNorm2d":
            parent_name, _, child = name.rpartition(".")
            batch_norm = nn.BatchNorm2d(module.weight.numel()).to(module.weight.device)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(batch_norm, key).copy_(getattr(module, key))
            backbone.get_submodule(parent_name)._modules[child] = batch_norm
