"""Switch a DETR to the static-shape training path: our padded-target loss, and no host sync in its forward."""

import logging
from collections.abc import Callable
from functools import partial

import transformers
from transformers import DetrForObjectDetection

from detr_ft.model.loss import padded_detr_loss
from detr_ft.model.matcher import hungarian_match

logger = logging.getLogger(__name__)


def use_static_shape_loss(model: DetrForObjectDetection, match: Callable = hungarian_match) -> None:
    """Install the loss per instance (transformers 4.55 and 5.x both call `self.loss_function`), matching with
    `match` (`hungarian_match`, or detr_ft.model.device_matcher's `choose_matcher`).

    The sync patches follow transformers 5.x's DETR code; on 4.55 (the Gaudi stack) they are left out.
    """
    model.loss_function = padded_detr_loss if match is hungarian_match else partial(padded_detr_loss, match=match)
    if int(transformers.__version__.split(".")[0]) >= 5:
        from patches import detr_encoder_sync, detr_mask_sync  # they import names transformers 4.55 lacks

        detr_encoder_sync.patch_model(model)
        detr_mask_sync.patch_model(model)
    else:
        logger.info("transformers %s: DETR forward left unpatched (the sync patches target 5.x)",
                    transformers.__version__)
