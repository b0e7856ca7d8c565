"""Guard Deformable DETR's encoder against overflow without a host sync.

Why: as patches/detr_encoder_sync.py for DETR. In training, `DeformableDetrEncoderLayer.forward` (transformers 5.24)
ends with `if not torch.isfinite(hidden_states).all(): hidden_states = torch.clamp(...)`: one host read per encoder
layer and step. The patched forward picks the clamped or the unclamped tensor on the device,
`torch.where(all finite, h, clamp(h))`, so values and gradients are those of the original for every dtype.
(Conditional DETR's encoder layer is DETR's, op for op: detr_encoder_sync's forward serves it as it is.)
Upstream: not reported as of transformers 5.24 (the check comes from BART's encoder layer). Delete when
`DeformableDetrEncoderLayer.forward` has no data-dependent `if`; the rest of the forward is upstream's, keep it in
step.
"""

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrEncoderLayer

from patches import clamp_overflow_on_device, swap_forward

TESTED = {"transformers": ("==5.24.*",)}


def patch_model(model: nn.Module) -> int:
    """Swap the forward of every DeformableDetrEncoderLayer in `model` (idempotent); returns how many it patched."""
    return swap_forward(model, DeformableDetrEncoderLayer, forward_without_sync)


def forward_without_sync(
    self: DeformableDetrEncoderLayer,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    spatial_position_embeddings: torch.Tensor | None = None,
    reference_points: torch.Tensor | None = None,
    spatial_shapes: torch.Tensor | None = None,
    spatial_shapes_list: list[tuple[int, int]] | None = None,
    level_start_index: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """`DeformableDetrEncoderLayer.forward` of transformers 5.24 with the overflow clamp chosen on the device."""
    residual = hidden_states
    hidden_states, _ = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        encoder_hidden_states=hidden_states,
        encoder_attention_mask=attention_mask,
        position_embeddings=spatial_position_embeddings,
        reference_points=reference_points,
        spatial_shapes=spatial_shapes,
        spatial_shapes_list=spatial_shapes_list,
        level_start_index=level_start_index,
    )
    hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
    hidden_states = self.self_attn_layer_norm(residual + hidden_states)

    residual = hidden_states
    hidden_states = self.final_layer_norm(residual + self.mlp(hidden_states))

    if self.training:
        hidden_states = clamp_overflow_on_device(hidden_states)  # (B, S, d)
    return hidden_states
