"""Test-only stand-in for `habana_frameworks.torch.hpex.normalization`."""

import torch

CLIP_NORM_CALLS: list[float] = []  # the max_norm of each clip_norm() of this process


class FusedClipNorm:
    """Habana's fused gradient clipping: `clip_norm(parameters)` clips the gradients to a total 2-norm of `max_norm`
    and returns their norm before clipping, answered by `torch.nn.utils.clip_grad_norm_`, which transformers' Trainer
    clips with on CPU."""

    def __init__(self, parameters, max_norm: float):
        self.max_norm = max_norm

    def clip_norm(self, parameters) -> torch.Tensor:
        CLIP_NORM_CALLS.append(self.max_norm)
        return torch.nn.utils.clip_grad_norm_(parameters, self.max_norm)
