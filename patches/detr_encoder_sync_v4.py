"""Guard DETR's encoder against overflow without a host sync: the transformers 4.55 version (the Gaudi stack).

Why: as patches/detr_encoder_sync.py for 5.x. In training, transformers 4.55's `DetrEncoderLayer.forward` ends with
`if torch.isinf(hidden_states).any() or torch.isnan(hidden_states).any(): hidden_states = torch.clamp(...)`: two host
reads per encoder layer and step, each cutting the HPU lazy-mode graph. The patched forward picks the clamped or the
unclamped tensor on the device, `torch.where(all finite, h, clamp(h))` ("not (any inf or any nan)" is "all finite"),
so values and gradients are those of the original, bit for bit (tests/gaudi/test_sync_patches_v4.py).
Conditional DETR's 4.55 encoder layer has the very same forward (`ConditionalDetrEncoderLayer`): patched alike.
Upstream: not reported as of transformers 4.55.4 (the check comes from BART's encoder layer). Delete with the Gaudi
stack's move to transformers 5.x; the rest of the forward is 4.55.4's, keep it in step.
"""

import torch
from torch import nn
from transformers.models.conditional_detr.modeling_conditional_detr import ConditionalDetrEncoderLayer
from transformers.models.detr.modeling_detr import DetrEncoderLayer

from patches import clamp_overflow_on_device, swap_forward

TESTED = {"transformers": ("==4.55.*",)}


def patch_model(model: nn.Module) -> int:
    """Swap the forward of every DetrEncoderLayer and ConditionalDetrEncoderLayer in `model` (idempotent); returns
    how many layers it patched."""
    return sum(swap_forward(model, layer_type, forward_without_sync)
               for layer_type in (DetrEncoderLayer, ConditionalDetrEncoderLayer))


def forward_without_sync(
    self: DetrEncoderLayer,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    object_queries: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, ...]:
    """`DetrEncoderLayer.forward` of transformers 4.55.4 with the overflow clamp chosen on the device."""
    residual = hidden_states
    hidden_states, attn_weights = self.self_attn(
        hidden_states=hidden_states,
        attention_mask=attention_mask,
        object_queries=object_queries,
        output_attentions=output_attentions,
    )
    hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
    hidden_states = self.self_attn_layer_norm(residual + hidden_states)  # (B, HW, d)

    residual = hidden_states
    hidden_states = self.activation_fn(self.fc1(hidden_states))  # (B, HW, ffn)
    hidden_states = nn.functional.dropout(hidden_states, p=self.activation_dropout, training=self.training)
    hidden_states = self.fc2(hidden_states)  # (B, HW, d)
    hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
    hidden_states = self.final_layer_norm(residual + hidden_states)  # (B, HW, d)

    if self.training:
        hidden_states = clamp_overflow_on_device(hidden_states)  # (B, S, d)

    outputs = (hidden_states,)
    if output_attentions:
        outputs += (attn_weights,)
    return outputs
