"""Bind the method optimum-habana's DETR loss calls but never binds, so the stock loss runs under --use_habana.

Why: `adapt_transformers_to_gaudi()` of optimum-habana 1.21.2 sets `ImageLoss.forward = gaudi_DetrLoss_forward`,
which calls `self.gaudi_DetrLoss_get_targets_without_no_objects(targets)`. That function is defined next to it in
optimum/habana/transformers/models/detr/modeling_detr.py but bound to `ImageLoss` nowhere (the binding was lost in
their transformers 4.49 upgrade), so transformers' own loss (`--num_buckets 0`, no `--pad_objects`) raises
AttributeError on Gaudi. This binds optimum-habana's own function under the name its forward uses: per image it
keeps the targets whose class is not the no-object class (all of them for unpadded targets) and moves them to the
CPU, where Habana's matcher and class loss run. The loss then equals transformers' own
(tests/gaudi/test_habana_adaptation.py); its logged `cardinality_error` does not: Habana's `loss_cardinality`
counts `len(target)`, the keys of each target dict (not weighted into the loss).
Upstream: still unbound at optimum-habana's main as of 1.21.2. Delete when `adapt_transformers_to_gaudi` binds it.
"""

from transformers.loss.loss_for_object_detection import ImageLoss

TESTED = {"transformers": ("==4.55.*",), "optimum-habana": ("==1.21.*",)}
METHOD = "gaudi_DetrLoss_get_targets_without_no_objects"


def patch_loss() -> int:
    """Bind the method on `ImageLoss` (idempotent); returns 1."""
    from optimum.habana.transformers.models.detr import modeling_detr

    setattr(ImageLoss, METHOD, getattr(modeling_detr, METHOD))
    return 1
