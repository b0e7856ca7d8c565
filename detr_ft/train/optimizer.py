"""The optimizer `--optim` names (transformers' default: torch's fused AdamW; Habana's fused AdamW on HPU) over the
parameter groups of the model family's recipe (model/families.py): the backbone, the rest, and the parameters the
recipe trains slower (Deformable DETR's sampling-offset and reference-point projections)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from detr_ft.config import ModelArguments
from detr_ft.model.families import Recipe, family_of

logger = logging.getLogger(__name__)

# --optim values that are AdamW: Habana's fused AdamW on HPU, as GaudiTrainer builds it with use_fused_adam.
ADAMW_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")


def library_optimizer(args: TrainingArguments) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class `--optim` names and its keyword arguments as the trainer would build it (transformers'
    `Trainer.get_optimizer_cls_and_kwargs`: betas, eps, fused, --optim_args), less the learning rate, which each
    parameter group sets. Raises ValueError or ImportError where transformers cannot build it (a package missing)."""
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    kwargs.pop("lr", None)
    return optimizer_class, kwargs


def optimizer_class_and_kwargs(args: TrainingArguments,
                               on_hpu: bool = False) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """`library_optimizer`, but Habana's fused AdamW for AdamW `on_hpu`, with either trainer (GaudiConfig's
    use_fused_adam only reaches optimizers GaudiTrainer builds, and torch's fused AdamW has no HPU kernel)."""
    if on_hpu and args.optim in ADAMW_OPTIMIZERS:
        from habana_frameworks.torch.hpex.optimizers import FusedAdamW

        return FusedAdamW, {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    return library_optimizer(args)


def describe_optimizer(optimizer_class: type[torch.optim.Optimizer], kwargs: dict[str, Any]) -> str:
    """`AdamW(betas=(0.9, 0.999), eps=1e-08, fused=True)`: the class and the arguments `--optim` gave it."""
    return f"{optimizer_class.__name__}({', '.join(f'{key}={value!r}' for key, value in kwargs.items())})"


def optimizer_param_groups(model: nn.Module, learning_rate: float, backbone_lr: float, weight_decay: float,
                           slow_parameters: tuple[str, ...] = (), slow_factor: float = 1.0) -> list[dict]:
    """Trainable parameters in three groups: the rest at `learning_rate`, the backbone at `backbone_lr`, and those
    outside the backbone whose names hold a part of `slow_parameters` at learning_rate * slow_factor."""
    rest, backbone, slow = [], [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if in_backbone(name) else slow if is_slow(name, slow_parameters) else rest).append(parameter)
    return [
        {"params": rest, "lr": learning_rate, "weight_decay": weight_decay},
        {"params": backbone, "lr": backbone_lr, "weight_decay": weight_decay},
        {"params": slow, "lr": learning_rate * slow_factor, "weight_decay": weight_decay},
    ]


def in_backbone(name: str) -> bool:
    return ".backbone." in f".{name}"


def is_slow(name: str, slow_parameters: tuple[str, ...]) -> bool:
    return not in_backbone(name) and any(part in name for part in slow_parameters)


def build_optimizer(model: nn.Module, learning_rate: float, backbone_lr: float, weight_decay: float,
                    optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
                    optimizer_kwargs: dict[str, Any] | None = None, recipe: Recipe | None = None
                    ) -> torch.optim.Optimizer:
    """Build it after the model is on its device: moving to HPU may replace the parameter objects. `recipe`: the
    family's slower parameters, if any."""
    slow = (recipe.slow_parameters, recipe.slow_factor) if recipe else ()
    groups = [g for g in optimizer_param_groups(model, learning_rate, backbone_lr, weight_decay, *slow) if g["params"]]
    return optimizer_class(groups, lr=learning_rate, **(optimizer_kwargs or {}))


def run_optimizer(model: nn.Module, model_args: ModelArguments, training: TrainingArguments,
                  from_scratch: bool, on_hpu: bool = False) -> torch.optim.Optimizer:
    """The run's optimizer: `--optim` over the groups of the family's recipe (the backbone at --backbone_lr: the
    recipe's for a pretrained model, --learning_rate from scratch), Habana's for AdamW `on_hpu`; what trains at which
    rate is logged."""
    recipe = family_of(model.config).recipe
    backbone_lr = model_args.backbone_lr
    if backbone_lr is None:
        backbone_lr = training.learning_rate if from_scratch else recipe.pretrained_backbone_lr
    optimizer_class, optimizer_kwargs = optimizer_class_and_kwargs(training, on_hpu)
    optimizer = build_optimizer(model, training.learning_rate, backbone_lr, training.weight_decay, optimizer_class,
                                optimizer_kwargs, recipe)
    logger.info("what trains, stepped by %s:\n  %s", describe_optimizer(optimizer_class, optimizer_kwargs),
                "\n  ".join(describe_training(model, optimizer, recipe.slow_parameters)))
    return optimizer


def parameter_group_name(name: str, slow_parameters: tuple[str, ...] = ()) -> str:
    """The part of the model a parameter (or a frozen BatchNorm's buffer) belongs to, as `describe_training` reports."""
    if in_backbone(name):
        if "normalization." in name or ".bn" in name:
            return "backbone BatchNorm"
        for marker, first in ((".stages.", 0), (".layer", 1)):  # HF ResNet stages.0-3, timm layer1-4
            stage = name.split(marker, 1)[1].split(".", 1)[0] if marker in name else ""
            if stage.isdigit():
                return f"backbone stage {int(stage) - first}"
        return "backbone stem"
    if name.startswith(("class_labels_classifier.", "bbox_predictor.", "class_embed.", "bbox_embed.")):
        return "heads"
    if is_slow(name, slow_parameters):  # e.g. "sampling offsets": its rate differs from the transformer's
        return next(part for part in slow_parameters if part in name).replace("_", " ")
    return "transformer"


def describe_training(model: nn.Module, optimizer: torch.optim.Optimizer,
                      slow_parameters: tuple[str, ...] = ()) -> list[str]:
    """One line per parameter group: trainable and frozen parameter counts and the learning rate(s), so that a
    surprising freeze is visible. Frozen BatchNorm (transformers' *FrozenBatchNorm2d) holds its affine weights
    as buffers: they count as frozen."""
    learning_rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    counts: dict[str, list] = {}  # name -> [trainable, frozen, learning rates]
    for name, parameter in model.named_parameters():
        entry = counts.setdefault(parameter_group_name(name, slow_parameters), [0, 0, set()])
        if parameter.requires_grad and id(parameter) in learning_rates:
            entry[0] += parameter.numel()
            entry[2].add(learning_rates[id(parameter)])
        else:
            entry[1] += parameter.numel()
    for name, buffer in model.named_buffers():
        if name.endswith((".weight", ".bias")):  # a frozen BatchNorm's affine part
            counts.setdefault(parameter_group_name(name), [0, 0, set()])[1] += buffer.numel()
    return [f"{group:<20} trainable {trainable:>11,}  frozen {frozen:>11,}  lr "
            f"{', '.join(f'{lr:g}' for lr in sorted(rates)) or '-'}"
            for group, (trainable, frozen, rates) in counts.items()]
