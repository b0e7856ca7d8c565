"""The model families detr-ft trains, keyed by the checkpoint's `model_type`, which is read from its config before
any weights are loaded (`model_family`): a preset's json, a local folder's config.json, a hub id's config.json.

| model_type | family | class term and matching cost | post-processing | lr, pretrained backbone lr |
| --- | --- | --- | --- | --- |
| detr | DETR | softmax with a no-object class | softmax per query | 1e-4, 1e-5 |
| conditional_detr | Conditional DETR | sigmoid focal, no no-object | sigmoid, top 100 (query, class) | 1e-4, 1e-5 |
| deformable_detr | Deformable DETR | sigmoid focal, no no-object | sigmoid, top 100 (query, class) | 2e-4, 2e-5 |

Each family names its transformers config and model class, its backbone's frozen BatchNorm class (swapped for a
trainable one from scratch), its criterion for padded targets, its from-scratch initialisation, its label-free
forward (a module of patches/, applied by `patches.apply_patches` with the family's sync patches), its post-processing
(what `pipeline("object-detection")` gets from the saved image processor of the same family) and its recipe, from
its paper: AdamW with weight decay 1e-4 and gradient clipping 0.1, frozen BatchNorm, stem and ResNet stage 0 frozen
(patches/detr_backbone_stages.py), stages 1-3 at the backbone learning rate; Deformable DETR trains the linear
projections that predict its sampling offsets and reference points at a tenth of the learning rate
(fundamentalvision/Deformable-DETR main.py, lr_linear_proj_mult 0.1), from scratch too.

Refused, each in one line naming the supported families: any other model_type (YOLOS, RT-DETR, DAB-DETR, a BERT
folder...), and a two-stage Deformable DETR, whose proposal head transformers never trains (its loss has no encoder
term, and the proposals are detached: the head would stay as initialised).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import (
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.conditional_detr.modeling_conditional_detr import ConditionalDetrFrozenBatchNorm2d
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrFrozenBatchNorm2d
from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

from detr_ft.model.criterion import Criterion, DetrCriterion, TransformersCriterion
from detr_ft.model.focal_criterion import FocalCriterion
from detr_ft.model.postprocess import sigmoid_top_k_detections, softmax_detections
from detr_ft.model.presets import is_preset, load_preset, preset_names
from detr_ft.model.scratch_init import init_conditional_detr, init_deformable_detr, init_detr


@dataclass(frozen=True)
class Recipe:
    """The family's optimisation recipe: AdamW's learning rate, the backbone's for a pretrained model, and the
    parameters (by a part of their name) trained at learning_rate * slow_factor."""

    learning_rate: float
    pretrained_backbone_lr: float
    slow_parameters: tuple[str, ...] = ()
    slow_factor: float = 1.0


@dataclass(frozen=True)
class Family:
    model_type: str
    name: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    frozen_batch_norm: type[nn.Module]
    criterion: Callable[[PretrainedConfig], Criterion]  # for padded targets
    scratch_init: Callable[[PreTrainedModel], None]
    label_free_forward: str  # the module of patches/ that makes the forward label-free
    postprocess: Callable[[Tensor, Tensor], Tensor]  # final logits (B, Q, C'), boxes (B, Q, 4) -> rows (B, K, 6)
    image_processor: str  # transformers' image processor class (its PIL variant where transformers has one)
    recipe: Recipe


FAMILIES = {family.model_type: family for family in (
    Family("detr", "DETR", DetrConfig, DetrForObjectDetection, DetrFrozenBatchNorm2d, DetrCriterion, init_detr,
           "detr_label_free_forward", softmax_detections, "DetrImageProcessor", Recipe(1e-4, 1e-5)),
    Family("conditional_detr", "Conditional DETR", ConditionalDetrConfig, ConditionalDetrForObjectDetection,
           ConditionalDetrFrozenBatchNorm2d, FocalCriterion, init_conditional_detr,
           "conditional_detr_label_free_forward", sigmoid_top_k_detections, "ConditionalDetrImageProcessor",
           Recipe(1e-4, 1e-5)),
    Family("deformable_detr", "Deformable DETR", DeformableDetrConfig, DeformableDetrForObjectDetection,
           DeformableDetrFrozenBatchNorm2d, FocalCriterion, init_deformable_detr,
           "deformable_detr_label_free_forward", sigmoid_top_k_detections, "DeformableDetrImageProcessor",
           Recipe(2e-4, 2e-5, slow_parameters=("sampling_offsets", "reference_points"), slow_factor=0.1)),
)}
SUPPORTED = ", ".join(f"{family.name} ({model_type})" for model_type, family in FAMILIES.items())


class UnsupportedModelError(ValueError):
    """A checkpoint of no supported family, or of a configuration the project refuses; the message is one line."""


def family_of(config: PretrainedConfig) -> Family:
    """The family of a built or loaded model's config."""
    return FAMILIES[config.model_type]


def model_config_dict(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """The config fields of a preset, a local folder (its config.json) or a hub id (its config.json from the hub or
    its cache: OSError when neither has it), with its model_type; no weights are read."""
    if is_preset(name_or_path):
        preset = load_preset(name_or_path)
        return {**preset.config, "model_type": preset.model_type}
    config_file = Path(name_or_path).expanduser() / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UnsupportedModelError(f"{config_file} cannot be read as JSON ({error}): give a model folder saved "
                                        "by transformers") from error
        return config if isinstance(config, dict) else {}
    config, _ = PretrainedConfig.get_config_dict(name_or_path, revision=revision)
    return config


def model_family(name_or_path: str, revision: str | None = None) -> Family:
    """The family of the checkpoint at `name_or_path` (see `model_config_dict`). UnsupportedModelError, its message
    the reason without the checkpoint's name, for another model_type or a refused configuration."""
    config = model_config_dict(name_or_path, revision)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        found = f"model_type {model_type!r}" if model_type else "no model_type in its config.json"
        raise UnsupportedModelError(f"{found}: detr-ft trains the DETR family only: {SUPPORTED}, or a preset "
                                    f"({', '.join(preset_names())})")
    if config.get("two_stage"):
        raise UnsupportedModelError(
            "a two-stage Deformable DETR (two_stage true): transformers' loss has no term for its encoder proposals, "
            "so their head would never train; give a single-stage Deformable DETR (e.g. SenseTime/deformable-detr or "
            "SenseTime/deformable-detr-with-box-refine)")
    return FAMILIES[model_type]


def build_criterion(model: PreTrainedModel, padded_targets: bool,
                    compile_options: dict[str, Any] | None = None) -> Criterion:
    """The family's criterion for padded targets (`--pad_objects --num_buckets N`), transformers' own loss for
    unpadded ones (its `loss_function`: the same for each family's model as its own forward calls; its shapes change
    with every batch: never compiled). `compile_options` compiles DETR's criterion's device parts (the focal
    criterion of the other families runs eager)."""
    if not padded_targets:
        return TransformersCriterion(model)
    if compile_options is not None and family_of(model.config).criterion is DetrCriterion:
        return DetrCriterion(model.config, compile_options)
    return family_of(model.config).criterion(model.config)
