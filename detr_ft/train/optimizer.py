"""The optimizer: AdamW (Habana's fused AdamW on HPU) over two parameter groups, backbone and the rest."""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainingArguments


def adamw_class(args: TrainingArguments) -> type[torch.optim.Optimizer]:
    """Habana's fused AdamW on HPU (GaudiConfig.use_fused_adam only reaches optimizers the trainer builds)."""
    if getattr(args, "use_habana", False):
        from habana_frameworks.torch.hpex.optimizers import FusedAdamW

        return FusedAdamW
    return torch.optim.AdamW


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
