"""Switch a DETR to the static-shape training path: our padded-target loss, and no host sync in its forward."""

from transformers import DetrForObjectDetection

from detr_ft.loss import padded_detr_loss


def use_static_shape_loss(model: DetrForObjectDetection) -> None:
    """Install per instance (transformers 4.55 and 5.x both call `self.loss_function`)."""
    model.loss_function = padded_detr_loss
