"""Changes to third-party behaviour (transformers, optimum-habana), one file each, each saying when it can go.

`apply_patches` (model) and `apply_trainer_patches` are the one place that applies them: they pick those that the
installed stack and the run need, warn (naming the patch) when a package lies outside the versions the patch was
tested with (each module's TESTED), check that the patch reached as many modules as the model has (a patch that
silently matches nothing is the failure this guards against), and log what they applied.

| patch | stack | applied when |
| --- | --- | --- |
| detr_label_free_forward | both | DETR, `label_free_forward`: always in training (the trainer gives no labels) |
| conditional_detr_label_free_forward | both | the same for Conditional DETR |
| deformable_detr_label_free_forward | both | the same for Deformable DETR |
| detr_backbone_stages | both | `train_backbone_stages` (pretrained model, backbone not frozen), HF ResNet backbone |
| detr_loss_num_boxes | both | always (the stock loss, `--num_buckets 0`, under data parallel; a no-op in one process) |
| detr_encoder_sync | transformers 5.x | `static_shapes`: DETR, Conditional DETR |
| detr_mask_sync | transformers 5.x | `static_shapes`: DETR, Conditional DETR |
| deformable_detr_encoder_sync | transformers 5.x | `static_shapes`: Deformable DETR |
| detr_encoder_sync_v4 | transformers 4.x | `static_shapes`: DETR, Conditional DETR |
| deformable_detr_encoder_sync_v4 | transformers 4.x | `static_shapes`: Deformable DETR |
| detr_position_embedding | transformers 4.x | `static_shapes` and not `cpu_position_embedding`: DETR |
| habana_detr_loss | optimum-habana installed | always (the stock loss needs it under use_habana) |
| trainer_resume_weights | transformers 5.x | `apply_trainer_patches` |

The model's family (detr_ft/model/families.py, by its config's model_type) names its label-free forward;
STATIC_SHAPE_PATCHES names its sync patches on each stack.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import types
import warnings
from collections.abc import Callable

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from torch import nn

logger = logging.getLogger(__name__)


class UntestedVersionWarning(UserWarning):
    """A patch is applied to a package version it was not tested with."""


class PatchMismatchError(RuntimeError):
    """A patch reached another number of modules than the model has: upstream changed what it patches."""


def installed_version(package: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(package))
    except importlib.metadata.PackageNotFoundError:
        return None


def warn_if_untested(name: str, tested: dict[str, tuple[str, ...]]) -> None:
    """Warn, naming patch `name`, for each installed package outside every version range it was tested with."""
    for package, ranges in tested.items():
        version = installed_version(package)
        if version is not None and not any(version in SpecifierSet(spec) for spec in ranges):
            warnings.warn(f"patches.{name} was tested with {package} {' or '.join(ranges)}, not {version}: check that "
                          "it still matches the upstream code it replaces", UntestedVersionWarning, stacklevel=3)


def apply_patch(name: str, module: types.ModuleType, patch, expected: int) -> str:
    """Run `patch()` (returns how many modules it patched) after the version check; fail unless it is `expected`."""
    warn_if_untested(name, module.TESTED)
    patched = patch()
    if patched != expected:
        raise PatchMismatchError(f"patches.{name} patched {patched} modules, expected {expected}: the upstream code it "
                                 "targets has changed; update or delete the patch")
    return name


def clamp_overflow_on_device(hidden_states: torch.Tensor) -> torch.Tensor:
    """The encoder layers' overflow guard with its choice made on the device: `hidden_states` (B, S, d) clamped to the
    dtype's range less 1000 where any value is not finite, else as it is. Upstream decides with an `if` that reads the
    host; the values and gradients are the same (the encoder sync patches' tests check each)."""
    clamp_value = torch.finfo(hidden_states.dtype).max - 1000
    clamped = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)  # (B, S, d)
    return torch.where(torch.isfinite(hidden_states).all(), hidden_states, clamped)  # (B, S, d)


def swap_forward(model: nn.Module, module_type: type[nn.Module], forward: Callable) -> int:
    """Bind `forward` as the forward of every `module_type` instance in `model` (idempotent); returns how many."""
    modules = [module for module in model.modules() if isinstance(module, module_type)]
    for module in modules:
        module.forward = types.MethodType(forward, module)
    return len(modules)


# The host-sync patches each family needs with static shapes, per transformers major version: (patch, how many
# modules it must reach: a number, or the config field that holds it).
STATIC_SHAPE_PATCHES: dict[tuple[str, int], tuple[tuple[str, int | str], ...]] = {
    ("detr", 5): (("detr_encoder_sync", "encoder_layers"), ("detr_mask_sync", 2)),
    ("conditional_detr", 5): (("detr_encoder_sync", "encoder_layers"), ("detr_mask_sync", 2)),
    ("deformable_detr", 5): (("deformable_detr_encoder_sync", "encoder_layers"),),
    ("detr", 4): (("detr_encoder_sync_v4", "encoder_layers"), ("detr_position_embedding", 1)),
    ("conditional_detr", 4): (("detr_encoder_sync_v4", "encoder_layers"),),
    ("deformable_detr", 4): (("deformable_detr_encoder_sync_v4", "encoder_layers"),),
}


def apply_patches(
    model: nn.Module,
    *,
    static_shapes: bool,
    train_backbone_stages: bool = False,
    cpu_position_embedding: bool = False,
    label_free_forward: bool = True,
) -> list[str]:
    """Apply the model patches this stack, run and model family need (see the module table); returns their names.

    Call after the model is on its device (on Gaudi, the device set-up runs `adapt_transformers_to_gaudi()`, whose
    class-level replacements the per-instance patches must come after) and before the optimizer is built (the
    backbone-stage patch decides which parameters train).
    """
    from transformers import ResNetBackbone

    from detr_ft.model.build import backbone_network
    from detr_ft.model.families import family_of
    from patches import detr_backbone_stages

    config = model.config
    applied = []
    if label_free_forward:
        name = family_of(config).label_free_forward
        module = importlib.import_module(f"patches.{name}")
        applied.append(apply_patch(name, module, functools.partial(module.patch_model, model), 1))
    if train_backbone_stages and isinstance(backbone_network(model), ResNetBackbone):
        applied.append(apply_patch("detr_backbone_stages", detr_backbone_stages,
                                   lambda: detr_backbone_stages.patch_model(model), 1))
    if static_shapes:
        # imported only here: each imports names that the other transformers major version lacks
        for name, count in STATIC_SHAPE_PATCHES[config.model_type, installed_version("transformers").major]:
            if name == "detr_position_embedding" and cpu_position_embedding:
                continue
            module = importlib.import_module(f"patches.{name}")
            expected = getattr(config, count) if isinstance(count, str) else count
            applied.append(apply_patch(name, module, functools.partial(module.patch_model, model), expected))
    from patches import detr_loss_num_boxes

    applied.append(apply_patch("detr_loss_num_boxes", detr_loss_num_boxes, detr_loss_num_boxes.patch_loss_modules,
                               len(detr_loss_num_boxes.loss_modules())))
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("optimum.habana"):
        from patches import habana_detr_loss

        applied.append(apply_patch("habana_detr_loss", habana_detr_loss, habana_detr_loss.patch_loss, 1))
    logger.info("model patches applied: %s", ", ".join(applied) or "none")
    return applied


def apply_trainer_patches(trainer) -> list[str]:
    """Apply the trainer patches this stack needs (see the module table); returns their names."""
    applied = []
    if installed_version("transformers").major >= 5:
        from patches import trainer_resume_weights

        applied.append(apply_patch("trainer_resume_weights", trainer_resume_weights,
                                   lambda: trainer_resume_weights.patch_trainer(trainer), 1))
    logger.info("trainer patches applied: %s", ", ".join(applied) or "none")
    return applied
