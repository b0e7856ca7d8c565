"""One trainer owns the step: the label-free forward, the criterion, the finite-loss guard, the canvas sampler and
evaluation's labels, as methods of one mixin shared by transformers' Trainer (on HPU with Habana's step:
train/hpu_trainer.py) and optimum-habana's GaudiTrainer.

    outputs = model(pixel_values=..., pixel_mask=...)   # patches/detr_label_free_forward.py: images in, predictions out
    loss, loss_dict = criterion(outputs, labels)        # detr_ft/model/criterion.py: matcher and loss

What `--torch_compile`, CUDA graphs or HPU graphs (`--use_hpu_graphs_for_training`) capture is that forward alone,
without the matcher (`--torch_compile` compiles the criterion's device parts apart: train/compiled_step.py). 8-bit
pixel_values (`--normalize_on_device`) are normalised here, on the device, before the forward. The loss is a
per-batch mean, as the model's own was: the Trainer divides it by the gradient accumulation steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from detr_ft.config import DeviceArguments
from detr_ft.data.images import model_pixels
from detr_ft.data.padding import batch_image_index
from detr_ft.model.criterion import Criterion
from detr_ft.train.nonfinite_guard import NonFiniteLossGuard


class DetectionTrainerMixin:
    """Goes before Trainer or GaudiTrainer in the bases. Takes, besides the usual Trainer arguments:

    criterion: loss and loss terms from the outputs and labels; None scores predictions only (a saved model), loss 0.
    train_sampler: replaces the trainer's random sampler (`canvases.CanvasGroupedSampler`); both trainers build their
        training DataLoader from `_get_train_sampler()` with the per-device batch size and drop_last, and accelerate
        passes a custom sampler on (sharding its batches over processes) and calls its `set_epoch`.
    finite_guard: sees every training loss; held as the first callback, so that the run summary's host-sync audit,
        which ends in a later callback of the same hook, counts its read.
    """

    def __init__(self, *args, criterion: Criterion | None = None,
                 train_sampler: torch.utils.data.Sampler | None = None,
                 finite_guard: NonFiniteLossGuard | None = None,
                 callbacks: list[TrainerCallback] | None = None, **kwargs):
        self.criterion = criterion
        self.train_sampler = train_sampler
        self.finite_guard = finite_guard
        super().__init__(*args, callbacks=[*([finite_guard] if finite_guard else []), *(callbacks or [])], **kwargs)
        # compute_loss returns a per-batch mean and ignores num_items_in_batch: the Trainer is to divide it by the
        # accumulation steps, whatever the model's forward signature lets it guess.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        labels = inputs["labels"]
        pixel_values = model_pixels(inputs["pixel_values"], inputs["pixel_mask"])  # 8-bit ones normalised here
        outputs = model(pixel_values=pixel_values, pixel_mask=inputs["pixel_mask"])
        if self.criterion is None:
            loss = outputs.logits.new_zeros(())  # ()
        else:
            loss, _ = self.criterion(outputs, labels)  # ()
        if self.finite_guard is not None and torch.is_grad_enabled():  # a training micro-batch (evaluation: no grad)
            loss = self.finite_guard.record(loss, labels)
        if not return_outputs:
            return loss
        return loss, {"logits": outputs.logits, "pred_boxes": outputs.pred_boxes}  # what evaluation scores

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Tensor | None, Any, Tensor | None]:
        """The loop's step, returning the batch's image index (B,) as its labels. Under several processes the loop
        gathers the labels per batch, and DETR's differ in shape between processes (a target bucket per batch, or a
        list of per-image tensors), which all_gather cannot take: the metric needs nothing but the index."""
        loss, predictions, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        return loss, predictions, None if labels is None else batch_image_index(labels)

    def _get_train_sampler(self, *args, **kwargs) -> torch.utils.data.Sampler | None:
        return self.train_sampler or super()._get_train_sampler(*args, **kwargs)


class DetectionTrainer(DetectionTrainerMixin, Trainer):
    """transformers' Trainer with the detection step (`DetectionTrainerMixin`)."""


def build_trainer(device: DeviceArguments, args: TrainingArguments, **trainer_kwargs) -> Trainer:
    """The trainer that goes with `args` (TrainingArguments, on HPU with `device.use_habana`, or
    GaudiTrainingArguments); `trainer_kwargs` are the usual Trainer arguments and the mixin's."""
    if type(args) is TrainingArguments and device.use_habana:
        from detr_ft.train.hpu_trainer import DetectionHpuTrainer

        return DetectionHpuTrainer(args=args, lazy_mode=device.use_lazy_mode,
                                   hpu_graphs_for_training=device.use_hpu_graphs_for_training, **trainer_kwargs)
    if type(args) is TrainingArguments:
        return DetectionTrainer(args=args, **trainer_kwargs)
    from optimum.habana import GaudiConfig, GaudiTrainer

    class DetectionGaudiTrainer(DetectionTrainerMixin, GaudiTrainer):
        """optimum-habana's GaudiTrainer with the detection step (`DetectionTrainerMixin`)."""

    # GaudiTrainer calls GaudiConfig.from_pretrained(None) unless it gets an object: always pass one.
    on_hpu = args.use_habana
    gaudi_config = (GaudiConfig.from_pretrained(device.gaudi_config_name) if device.gaudi_config_name
                    else GaudiConfig(use_fused_adam=on_hpu, use_fused_clip_norm=on_hpu, use_torch_autocast=args.bf16))
    return DetectionGaudiTrainer(gaudi_config=gaudi_config, args=args, **trainer_kwargs)
