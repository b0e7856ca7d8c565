"""Resume restores every weight of a checkpoint saved in the original (hub) key format.

Why: transformers 5.x `save_pretrained` writes checkpoints under the original key names (revert_weight_conversion:
DETR's `backbone.conv_encoder.model.*`, `self_attn.out_proj`, `fc1`, ...), but `Trainer._load_from_checkpoint` reads
them back with `model.load_state_dict(state_dict, strict=False)`, without the renaming `from_pretrained` applies: the
renamed weights (DETR's whole backbone and its attention output and MLP projections) silently keep their values from
before the resume. The patched loader renames the keys as `from_pretrained` does and loads strictly: every weight of
the model must be in the checkpoint but tied ones, which `save_pretrained` writes once (Deformable DETR's class and
box heads shared by all decoder layers), and which share their tensor with a weight the checkpoint holds.
transformers 4.x saves under the names it loads: `apply_patches` leaves it out there.
Upstream: huggingface/transformers#43701 and #48805 (fix proposed in PR #48822, not in 5.24). Delete when the pinned
transformers renames on resume; tests/test_resume.py fails without this patch.
"""

import types
from pathlib import Path

from safetensors.torch import load_file
from transformers import Trainer
from transformers.utils import SAFE_WEIGHTS_NAME

TESTED = {"transformers": ("==5.24.*",)}


def patch_trainer(trainer: Trainer) -> int:
    """Make `trainer` load resumed weights through the model's key renaming (transformers 5.x); returns 1."""
    trainer._load_from_checkpoint = types.MethodType(load_renamed_checkpoint, trainer)
    return 1


def load_renamed_checkpoint(trainer: Trainer, resume_from_checkpoint: str, model=None) -> None:
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    model = trainer.model if model is None else model
    weights = Path(resume_from_checkpoint) / SAFE_WEIGHTS_NAME
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    if converters or not weights.is_file():  # tensor conversions, sharded or FSDP checkpoints: not DETR's case
        Trainer._load_from_checkpoint(trainer, resume_from_checkpoint, model)
        return
    saved = load_file(weights, device="cpu")
    renamed = {rename_source_key(key, renamings, converters)[0]: value for key, value in saved.items()}
    state = model.state_dict()
    loaded = {state[key].data_ptr() for key in renamed if key in state}
    untied = [key for key in state.keys() - renamed.keys() if state[key].data_ptr() not in loaded]
    if untied or renamed.keys() - state.keys():
        raise RuntimeError(f"{weights} does not match the model: lacking {sorted(untied)[:5]}, unknown "
                           f"{sorted(renamed.keys() - state.keys())[:5]}")
    model.load_state_dict(renamed, strict=False)
