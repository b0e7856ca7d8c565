"""Build the model to fine-tune: a hub id, a local HF directory, or a preset config trained from scratch, as the
class of its family (model/families.py), which is read from its config before any weights are loaded: a checkpoint
of another family is refused, never loaded into a class that is not its own.

Pretrained models keep their family's fine-tuning recipe: frozen BatchNorm, stem and ResNet stage 0 frozen, stages
1-3 trained at the family's backbone learning rate; the stages are set by patches/detr_backbone_stages.py, which
`patches.apply_patches` applies. Presets start from their family's own initialisation (model/scratch_init.py), which
a model trained from scratch needs to learn at all, with a fully trainable backbone and trainable BatchNorm
(transformers swaps in a frozen BatchNorm that does nothing for random weights). A local folder saved by a detr-ft
run that trained from scratch (its run_args.json names a preset, or says `from_scratch`) keeps that regime:
trainable BatchNorm with its learned statistics, the whole backbone trained (`trained_from_scratch`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel

from detr_ft.model.families import Family, UnsupportedModelError, model_family
from detr_ft.model.presets import is_preset, load_preset, preset_names
from detr_ft.run_files import read_run_arguments

logger = logging.getLogger(__name__)

HUB_REVISIONS = {"facebook/detr-resnet-50": "no_timm", "facebook/detr-resnet-101": "no_timm"}


def hub_revision(name_or_path: str, revision: str | None) -> str | None:
    """--model_revision, else the revision the project loads a known hub model at (no timm needed), else None."""
    return revision or HUB_REVISIONS.get(name_or_path)


def build_model(
    name_or_path: str,
    id2label: dict[int, str],
    revision: str | None = None,
    freeze_backbone: bool = False,
) -> PreTrainedModel:
    """The model of `name_or_path`'s family with a classification head for `id2label`; see the module docstring
    for what is trained. UnsupportedModelError for a checkpoint of no supported family (before any weight is read),
    OSError for one that cannot be loaded."""
    label2id = {name: i for i, name in id2label.items()}
    revision = hub_revision(name_or_path, revision)
    try:
        family = model_family(name_or_path, revision)
        if is_preset(name_or_path):
            config = family.config_class(**load_preset(name_or_path).config, num_labels=len(id2label),
                                         id2label=id2label, label2id=label2id)
            model = family.model_class(config)
            family.scratch_init(model)
        else:
            model = family.model_class.from_pretrained(
                name_or_path, revision=revision, num_labels=len(id2label), id2label=id2label, label2id=label2id,
                ignore_mismatched_sizes=True, use_safetensors=True,
            )
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f"--model_name_or_path {name_or_path}: {error}") from error
    except OSError as error:
        raise OSError(f"--model_name_or_path {name_or_path}: not a preset ({', '.join(preset_names())}), nor a "
                      f"local model directory, nor loadable from the hub ({error}). Give a local model folder or "
                      "a preset; offline, set HF_HUB_OFFLINE=1 so the hub is not retried") from error
    if trained_from_scratch(name_or_path):
        if not is_preset(name_or_path):
            logger.info("%s was trained from scratch by detr-ft: BatchNorm and the whole backbone keep training",
                        name_or_path)
        train_whole_backbone(model, family)
    if freeze_backbone:
        model.model.backbone.requires_grad_(False)
    return model


def backbone_network(model: nn.Module) -> nn.Module:
    """The CNN inside the family's conv encoder, which transformers 4.55 wraps in a *ConvModel."""
    conv_encoder = model.model.backbone
    return getattr(conv_encoder, "conv_encoder", conv_encoder).model


def trained_from_scratch(name_or_path: str) -> bool:
    """A preset, or a local folder (run dir or checkpoint) whose detr-ft run trained from scratch."""
    if is_preset(name_or_path):
        return True
    saved = read_run_arguments(name_or_path)
    return bool(saved.get("from_scratch") or is_preset(saved.get("model_name_or_path", "")))


def train_whole_backbone(model: PreTrainedModel, family: Family) -> None:
    """Trainable BatchNorm and every backbone parameter trained: the regime of a model trained from scratch."""
    backbone = backbone_network(model)
    trainable_batch_norm(backbone, family.frozen_batch_norm)
    backbone.requires_grad_(True)


def trainable_batch_norm(backbone: nn.Module, frozen_batch_norm: type[nn.Module]) -> None:
    """Swap the family's frozen BatchNorm (transformers' *FrozenBatchNorm2d: buffers only) for nn.BatchNorm2d holding
    the same values (for a fresh model those are BatchNorm's own defaults)."""
    for name, module in list(backbone.named_modules()):
        if isinstance(module, frozen_batch_norm):
            parent_name, _, child = name.rpartition(".")
            batch_norm = nn.BatchNorm2d(module.weight.numel()).to(module.weight.device)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(batch_norm, key).copy_(getattr(module, key))
            backbone.get_submodule(parent_name)._modules[child] = batch_norm
