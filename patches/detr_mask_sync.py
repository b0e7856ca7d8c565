"""Build DETR's attention masks without reading them on the host.

Why: `DetrEncoder` and `DetrDecoder` (transformers 5.x) expand the 2D pixel mask with `create_bidirectional_mask`,
which for sdpa first evaluates `padding_mask.all()` to return no mask when nothing is padded
(masking_utils._ignore_bidirectional_mask_sdpa): a host sync per call, two per forward (encoder self-attention,
decoder cross-attention). Pre-hooks on both modules build the same 4D masks with `allow_is_bidirectional_skip=False`
and pass them on; the modules use a 4D mask as it is. Padded batches get the very same mask; a batch without padding
gets an all-True mask instead of None (same attention, maybe another sdpa kernel).
Conditional DETR's encoder and decoder build their masks alike: hooked alike.
Upstream: not reported as of transformers 5.24 (torch.compile tracing already skips the check, HPU lazy mode and
eager CUDA do not). Delete when DETR passes `allow_is_bidirectional_skip=False` or the check leaves the host.
"""

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.conditional_detr.modeling_conditional_detr import (
    ConditionalDetrDecoder,
    ConditionalDetrEncoder,
)
from transformers.models.detr.modeling_detr import DetrDecoder, DetrEncoder

TESTED = {"transformers": ("==5.24.*",)}


def patch_model(model: nn.Module) -> int:
    """Hook every (Conditional)DetrEncoder / (Conditional)DetrDecoder in `model` (idempotent); returns how many
    modules are hooked."""
    hooked = DetrEncoder | DetrDecoder | ConditionalDetrEncoder | ConditionalDetrDecoder
    modules = [module for module in model.modules() if isinstance(module, hooked)]
    for module in modules:
        if materialize_masks not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(materialize_masks, with_kwargs=True)
    return len(modules)


def materialize_masks(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: 2D `attention_mask` / `encoder_attention_mask` -> the 4D masks the module would build."""
    key_value_states = {"attention_mask": None, "encoder_attention_mask": kwargs.get("encoder_hidden_states")}
    for name, encoder_hidden_states in key_value_states.items():
        mask = kwargs.get(name)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            kwargs[name] = create_bidirectional_mask(
                config=module.config, inputs_embeds=kwargs["inputs_embeds"], attention_mask=mask,
                encoder_hidden_states=encoder_hidden_states, allow_is_bidirectional_skip=False,
            )  # (B, 1, q, kv)
    return args, kwargs
