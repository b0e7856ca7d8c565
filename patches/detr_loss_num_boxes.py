"""Count the objects of all processes once in the stock DETR loss, so that data parallel does not multiply the box
losses by the number of processes.

Why: transformers' `ImageLoss.forward` (4.55 and 5.24; optimum-habana 1.21's `gaudi_DetrLoss_forward` is a copy of
it) normalises the box losses by

    num_boxes = reduce(num_boxes)                         # accelerate.utils.reduce, reduction "mean": / world_size
    num_boxes = torch.clamp(num_boxes / world_size, min=1)  # and / world_size once more

facebookresearch/detr all-reduces a sum before that division, so each process divides by the mean object count per
process, and DDP's gradient average then equals one process training on the global batch. Divided twice, with P
processes the L1 and GIoU terms (main and auxiliary) weigh P times what they weigh in one process, while the class
term does not change: the loss weights the user chose silently differ with the process count. This patch makes the
`reduce` those modules call sum (the division that follows then gives the mean), and leaves one-process runs
untouched (accelerate's reduce returns the tensor as it is there). It matters only for the stock loss
(`--num_buckets 0`); ours (detr_ft/model/box_terms.py `average_num_boxes`) averages the count itself.
Upstream: no issue found in transformers' or optimum-habana's trackers (as of transformers 5.24, optimum-habana
1.21.2); to be reported.
Checked: the module must still hold the double division (`SOURCE_MARKS`), or the patch refuses (a fixed upstream
would otherwise get a P-times-too-large count). Delete when upstream reduces with "sum" or drops the division.
"""

from __future__ import annotations

import inspect
import types

import torch

TESTED = {"transformers": ("==4.55.*", "==5.24.*"), "optimum-habana": ("==1.21.*",)}
SOURCE_MARKS = ("num_boxes = reduce(num_boxes)", "num_boxes / world_size")


def reduce_sum(tensor: torch.Tensor, reduction: str = "mean", scale: float = 1.0) -> torch.Tensor:
    """accelerate's `reduce` with reduction "sum", whatever the caller asked for (the callers ask for the mean)."""
    from accelerate.utils import reduce

    return reduce(tensor, reduction="sum", scale=scale)


def loss_modules() -> list[types.ModuleType]:
    """The modules whose DETR loss forward divides the reduced count by world_size: transformers' loss module, and
    optimum-habana's DETR module where it is installed (its forward replaces transformers' under use_habana)."""
    import importlib.util

    from transformers.loss import loss_for_object_detection

    modules = [loss_for_object_detection]
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("optimum.habana"):
        from optimum.habana.transformers.models.detr import modeling_detr

        modules.append(modeling_detr)
    return modules


def patch_loss_modules() -> int:
    """Point `reduce` of each loss module that still divides twice at `reduce_sum` (idempotent); returns how many."""
    patched = 0
    for module in loss_modules():
        try:
            source = inspect.getsource(module)
        except OSError:  # installed without its sources: nothing to check against, so leave it (and fail the count)
            continue
        if hasattr(module, "reduce") and all(mark in source for mark in SOURCE_MARKS):
            module.reduce = reduce_sum
            patched += 1
    return patched
