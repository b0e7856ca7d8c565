"""Switch a DETR to the static-shape training path's loss: padded targets, one host sync (the matcher's copy)."""

from transformers import DetrForObjectDetection

from detr_ft.model.loss import padded_detr_loss


def use_static_shape_loss(model: DetrForObjectDetection) -> None:
    """Install the loss per instance (transformers 4.55 and 5.x both call `self.loss_function`).

    The forward's host syncs go with `patches.apply_patches(model, static_shapes=True)`.
    """
    model.loss_function = padded_detr_loss
