"""Changes to third-party behaviour (transformers, optimum-habana), one file each, each saying when it can go.

`apply_patches` (model) and `apply_trainer_patches` are the one place that applies them: they pick those that the
installed stack and the run need, warn (naming the patch) when a package lies outside the versions the patch was
tested with (each module's TESTED), check that the patch reached as many modules as the model has (a patch that
silently matches nothing is the failure this guards against), and log what they applied.

| patch | stack | applied when |
| --- | --- | --- |
| detr_label_free_forward | both | `label_free_forward`: always in training (the trainer calls it without labels) |
| detr_backbone_stages | both | `train_backbone_stages` (pretrained model, backbone not frozen), HF ResNet backbone |
| detr_loss_num_boxes | both | always (the stock loss, `--num_buckets 0`, under data parallel; a no-op in one process) |
| detr_encoder_sync | transformers 5.x | `static_shapes` |
| detr_mask_sync | transformers 5.x | `static_shapes` |
| detr_encoder_sync_v4 | transformers 4.x | `static_shapes` |
| detr_position_embedding | transformers 4.x | `static_shapes` and not `cpu_position_embedding` |
| habana_detr_loss | optimum-habana installed | always (the stock loss needs it under use_habana) |
| trainer_resume_weights | transformers 5.x | `apply_trainer_patches` |
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import types
import warnings
from collections.abc import Callable

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


def swap_forward(model: nn.Module, module_type: type[nn.Module], forward: Callable) -> int:
    """Bind `forward` as the forward of every `module_type` instance in `model` (idempotent); returns how many."""
    modules = [module for module in model.modules() if isinstance(module, module_type)]
    for module in modules:
        module.forward = types.MethodType(forward, module)
    return len(modules)


def apply_patches(
    model: nn.Module,
    *,
    static_shapes: bool,
    train_backbone_stages: bool = False,
    cpu_position_embedding: bool = False,
    label_free_forward: bool = True,
) -> list[str]:
    """Apply the model patches this stack and run need (see the module table); returns their names.

    Call after the model is on its device (on Gaudi, the device set-up runs `adapt_transformers_to_gaudi()`, whose
    class-level replacements the per-instance patches must come after) and before the optimizer is built (the
    backbone-stage patch decides which parameters train).
    """
    from transformers import ResNetBackbone

    from detr_ft.model.build import backbone_network
    from patches import detr_backbone_stages, detr_label_free_forward

    transformers_5 = installed_version("transformers").major >= 5
    config = model.config
    applied = []
    if label_free_forward:
        applied.append(apply_patch("detr_label_free_forward", detr_label_free_forward,
                                   lambda: detr_label_free_forward.patch_model(model), 1))
    if train_backbone_stages and isinstance(backbone_network(model), ResNetBackbone):
        applied.append(apply_patch("detr_backbone_stages", detr_backbone_stages,
                                   lambda: detr_backbone_stages.patch_model(model), 1))
    if static_shapes and transformers_5:
        from patches import detr_encoder_sync, detr_mask_sync  # they import names transformers 4.55 lacks

        applied.append(apply_patch("detr_encoder_sync", detr_encoder_sync,
                                   lambda: detr_encoder_sync.patch_model(model), config.encoder_layers))
        applied.append(apply_patch("detr_mask_sync", detr_mask_sync, lambda: detr_mask_sync.patch_model(model), 2))
    elif static_shapes:
        from patches import detr_encoder_sync_v4, detr_position_embedding

        applied.append(apply_patch("detr_encoder_sync_v4", detr_encoder_sync_v4,
                                   lambda: detr_encoder_sync_v4.patch_model(model), config.encoder_layers))
        if not cpu_position_embedding:
            applied.append(apply_patch("detr_position_embedding", detr_position_embedding,
                                       lambda: detr_position_embedding.patch_model(model), 1))
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
