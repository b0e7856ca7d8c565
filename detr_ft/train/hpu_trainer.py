"""transformers' own Trainer on Intel Gaudi (`--use_habana --trainer hf`, and `--use_habana` where optimum-habana is
not installed): what optimum-habana's GaudiTrainer adds to a DETR training step, as methods of one trainer class,
each a direct call into Habana's `habana_frameworks`.

transformers 5 and accelerate already put the run on the HPU: TrainingArguments picks the `hpu` device where
`torch.hpu.is_available()`, `--bf16` is accelerate's `torch.autocast("hpu", bfloat16)` around the forward (Habana's
default op lists), and under torchrun accelerate sets up the process group on Habana's `hccl`. The class adds:

- lazy mode (`--use_lazy_mode`): `htcore.mark_step()` after the backward (`training_step`), after the optimizer
  step (`MarkStepAtStepEnd`) and after each evaluation batch (`prediction_step`), where GaudiTrainer places them.
  Each ends the graph lazy mode has accumulated since the last one, so that every step runs the same graphs.
- Habana's fused gradient clipping, `FusedClipNorm` (`_clip_grad_norm`); Habana's fused AdamW is the optimizer the
  entry builds for AdamW on HPU (train/optimizer.py).
- HPU graphs (`--use_hpu_graphs_for_training`, lazy mode only): Habana's `ModuleCacher`, which GaudiTrainer applies
  to the whole model, caches the DETR network `model.model` (backbone, encoder, decoder), once. Not the whole model:
  with `--bf16` accelerate wraps the model's forward in autocast by rebinding `forward.__func__` to the model, which
  would turn ModuleCacher's own method into one of the model. The heads (a few Linear layers) run outside the cached
  graph, inside lazy mode's.
- eager mode: `--torch_compile` on Habana's `hpu_backend` unless turned off (`flag_checks.hpu_compile_default`);
  what it compiles is the label-free forward, as with every trainer of the project.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from detr_ft.train.trainer import DetectionTrainerMixin


class MarkStepAtStepEnd(TrainerCallback):
    """Lazy mode: ends the graph of the optimizer step. The Trainer's loop runs no method of its own between the
    optimizer step and the step's end; its `on_step_end` event is that place, after the gradients are zeroed, where
    GaudiTrainer marks the step too. Held before the project's other callbacks."""

    def on_step_end(self, args, state, control, **kwargs):
        import habana_frameworks.torch.core as htcore

        htcore.mark_step()


class DetectionHpuTrainer(DetectionTrainerMixin, Trainer):
    """transformers' Trainer on HPU with the detection step (`DetectionTrainerMixin`) and Habana's (module doc).

    lazy_mode: HPU lazy mode (PT_HPU_LAZY_MODE=1, set by `devices.check_device_settings`): mark the steps.
    hpu_graphs_for_training: cache the DETR network in HPU graphs (lazy mode only).
    """

    def __init__(self, *args, lazy_mode: bool = False, hpu_graphs_for_training: bool = False,
                 callbacks: list[TrainerCallback] | None = None, **kwargs):
        import habana_frameworks.torch.core as htcore
        from habana_frameworks.torch.hpex.normalization import FusedClipNorm

        self.lazy_mode = lazy_mode
        self.htcore = htcore
        step_end = [MarkStepAtStepEnd()] if lazy_mode else []
        super().__init__(*args, callbacks=[*step_end, *(callbacks or [])], **kwargs)
        self.fused_clip_norm = FusedClipNorm(self.model.parameters(), self.args.max_grad_norm)
        if hpu_graphs_for_training:
            from habana_frameworks.torch.hpu import ModuleCacher

            ModuleCacher()(model=self.model.model, inplace=True)

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Tensor | int | None = None) -> Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)  # forward, criterion and backward
        if self.lazy_mode:
            self.htcore.mark_step()
        return loss

    def _clip_grad_norm(self, model: nn.Module) -> Tensor:
        """The gradients' total norm before clipping, as the Trainer's does; clipped by Habana's fused kernel."""
        return self.fused_clip_norm.clip_norm(model.parameters())

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Tensor | None, Any, Tensor | None]:
        outputs = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if self.lazy_mode:
            self.htcore.mark_step()
        return outputs
