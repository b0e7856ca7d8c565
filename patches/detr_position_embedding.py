"""Compute DETR's sine position embedding on the device again under optimum-habana (transformers 4.55).

Why: optimum-habana's `adapt_transformers_to_gaudi()` (run by `GaudiTrainingArguments` when use_habana is on)
replaces the class method `DetrConvModel.forward` by `gaudi_DetrConvModel_forward`, which moves the feature map and
its mask to the CPU, computes the embedding there and copies it back to "hpu": two device->host round-trips per step.
It came with huggingface/optimum-habana#1334 as a workaround for the embedding's HPU execution at the time. The
embedding is a few cumsums and sin/cos without any data-dependent shape, so this sets transformers' own forward on
each `DetrConvModel` instance again (an instance attribute wins over the class method, whenever adapt runs).
`--cpu_position_embedding` keeps Habana's version, for a SynapseAI where the device computation misbehaves.
Upstream: optimum-habana 1.21.2 still carries the workaround. Delete when it does not, or with the move to
transformers 5.x (no DetrConvModel there).
"""

import torch
from torch import nn
from transformers.models.detr.modeling_detr import DetrConvModel

from patches import swap_forward

TESTED = {"transformers": ("==4.55.*",), "optimum-habana": ("==1.21.*",)}


def patch_model(model: nn.Module) -> int:
    """Give every DetrConvModel in `model` transformers' forward (idempotent); returns how many it patched."""
    return swap_forward(model, DetrConvModel, forward_on_device)


def forward_on_device(
    self: DetrConvModel, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
    """`DetrConvModel.forward` of transformers 4.55.4: (feature map, mask) pairs and their position embeddings."""
    out = self.conv_encoder(pixel_values, pixel_mask)  # [((B, C, h, w), (B, h, w))]
    pos = [self.position_embedding(feature_map, mask).to(feature_map.dtype) for feature_map, mask in out]
    return out, pos  # pos: [(B, d, h, w)]
