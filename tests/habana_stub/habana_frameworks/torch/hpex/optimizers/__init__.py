"""Test-only stand-in for `habana_frameworks.torch.hpex.optimizers`."""

import torch


class FusedAdamW(torch.optim.AdamW):
    """Habana's fused AdamW (AdamW's decoupled weight decay, torch AdamW's arguments) answered by torch's fused CPU
    AdamW kernel, the one transformers' default `adamw_torch_fused` steps with on CPU: a stand-in run steps as a CPU
    run does. Habana's kernel and its numerics are for a Gaudi host to show."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
