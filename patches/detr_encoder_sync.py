"""Guard DETR's encoder against overflow without a host sync.

Why: in training, `DetrEncoderLayer.forward` (transformers 5.24, and 4.x before it) ends with
`if not torch.isfinite(hidden_states).all(): hidden_states = torch.clamp(...)`. The `if` reads a device value on the
host: one sync per encoder layer and step, which stalls the CUDA stream and cuts HPU lazy-mode graphs. The patched
forward picks the clamped or the unclamped tensor on the device, `torch.where(all finite, h, clamp(h))`, so values
and gradients are those of the original for every dtype (a plain unconditional clamp would differ in float16, whose
clamp bound max - 1000 lies below its largest finite value).
Conditional DETR's encoder layer has the very same forward (`ConditionalDetrEncoderLayer`): patched alike.
Upstream: not reported as of transformers 5.24 (the check comes from BART's encoder layer). Delete when
`DetrEncoderLayer.forward` has no data-dependent `if`; the rest of the forward is upstream's, keep it in step.
"""

import torch
from torch import nn
from transformers.models.conditional_detr.modeling_conditional_detr import ConditionalDetrEncoderLayer
from transformers.models.detr.modeling_detr import DetrEncoderLayer

from patches import clamp_overflow_on_device, swap_forward

TESTED = {"transformers": ("==5.24.*",)}


def patch_model(model: nn.Module) -> int:
    """Swap the forward of every DetrEncoderLayer and ConditionalDetrEncoderLayer in `model` (idempotent); returns
    how many layers it patched."""
    return sum(swap_forward(model, layer_type, forward_without_sync)
               for layer_type in (DetrEncoderLayer, ConditionalDetrEncoderLayer))


def forward_without_sync(
    self: DetrEncoderLayer,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    spatial_position_embeddings: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """`DetrEncoderLayer.forward` of transformers 5.24 with the overflow clamp chosen on the device."""
    residual = hidden_states
    hidden_states, _ = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        position_embeddings=spatial_position_embeddings,
        **kwargs,
    )
    hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
    hidden_states = self.self_attn_layer_norm(residual + hidden_states)

    residual = hidden_states
    hidden_states = self.final_layer_norm(residual + self.mlp(hidden_states))

    if self.training:
        hidden_states = clamp_overflow_on_device(hidden_states)  # (B, S, d)
    return hidden_states
