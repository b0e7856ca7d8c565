"""Guard Deformable DETR's encoder against overflow without a host sync: the transformers 4.55 version (the Gaudi
stack).

Why: as patches/detr_encoder_sync_v4.py for DETR. In training, transformers 4.55's `DeformableDetrEncoderLayer.forward`
ends with `if torch.isinf(hidden_states).any() or torch.isnan(hidden_states).any(): hidden_states = torch.clamp(...)`:
two host reads per encoder layer and step, each cutting the HPU lazy-mode graph. The patched forward picks the
clamped or the unclamped tensor on the device, `torch.where(all finite, h, clamp(h))`, so values and gradients are
those of the original, bit for bit (tests/gaudi/test_sync_patches_v4.py).
Upstream: not reported as of transformers 4.55.4 (5.x has the same check with one read: deformable_detr_encoder_sync).
Delete with the Gaudi stack's move to transformers 5.x; the rest of the forward is 4.55.4's, keep it in step.
"""

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrEncoderLayer

from patches import clamp_overflow_on_device, swap_forward

TESTED = {"transformers": ("==4.55.*",)}


def patch_model(model: nn.Module) -> int:
    """Swap the forward of every DeformableDetrEncoderLayer in `model` (idempotent); returns how many it patched."""
    return swap_forward(model, DeformableDetrEncoderLayer, forward_without_sync)


def forward_without_sync(
    self: DeformableDetrEncoderLayer,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    position_embeddings: torch.Tensor | None = None,
    reference_points: torch.Tensor | None = None,
    spatial_shapes: torch.Tensor | None = None,
    spatial_shapes_list: list[tuple[int, int]] | None = None,
    level_start_index: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, ...]:
    """`DeformableDetrEncoderLayer.forward` of transformers 4.55.4 with the overflow clamp chosen on the device."""
    residual = hidden_states
    hidden_states, attn_weights = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        encoder_hidden_states=hidden_states,
        encoder_attention_mask=attention_mask,
        position_embeddings=position_embeddings,
        reference_points=reference_points,
        spatial_shapes=spatial_shapes,
        spatial_shapes_list=spatial_shapes_list,
        level_start_index=level_start_index,
        output_attentions=output_attentions,
    )
    hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
    hidden_states = self.self_attn_layer_norm(residual + hidden_states)  # (B, S, d)

    residual = hidden_states
    hidden_states = self.activation_fn(self.fc1(hidden_states))  # (B, S, ffn)
    hidden_states = nn.functional.dropout(hidden_states, p=self.activation_dropout, training=self.training)
    hidden_states = self.fc2(hidden_states)  # (B, S, d)
    hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
    hidden_states = self.final_layer_norm(residual + hidden_states)  # (B, S, d)

    if self.training:
        hidden_states = clamp_overflow_on_device(hidden_states)  # (B, S, d)

    outputs = (hidden_states,)
    if output_attentions:
        outputs += (attn_weights,)
    return outputs
