"""Switch a DETR to the static-shape training path's loss: padded targets, one host sync (the matcher's copy)."""

from collections.abc import Callable
from functools import partial

from transformers import DetrForObjectDetection

from detr_ft.model.loss import padded_detr_loss
from detr_ft.model.matcher import hungarian_match


def use_static_shape_loss(model: DetrForObjectDetection, match: Callable = hungarian_match) -> None:
    """Install the loss per instance (transformers 4.55 and 5.x both call `self.loss_function`), matching with
    `match` (`hungarian_match`, or detr_ft.model.device_matcher's `choose_matcher`).

    The forward's host syncs go with `patches.apply_patches(model, static_shapes=True)`.
    """
    model.loss_function = padded_detr_loss if match is hungarian_match else partial(padded_detr_loss, match=match)
