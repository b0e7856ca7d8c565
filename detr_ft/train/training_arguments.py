"""The TrainingArguments a run trains with: the user's, with what the project derives from its own flags, its data
and its device.

The project sets PROJECT_SETS (a user value other than these is refused: train/flag_checks.py), evaluates mAP and
saves a checkpoint together every --ckpt_store_interval_epochs epochs (`save_steps` and `eval_steps` from
`steps_per_epoch`), chooses the data loader workers (data/loader_workers.py), the device (`use_cpu` follows
--device) and the trainer's arguments: TrainingArguments for transformers' Trainer (CPU, CUDA, and HPU with
`--trainer hf`), GaudiTrainingArguments for optimum-habana's GaudiTrainer (`devices.trainer_stack`; off Gaudi too
with `--trainer gaudi`, use_habana=False: that is how CI exercises the GaudiTrainer path).
"""

from __future__ import annotations

import dataclasses
import math

from transformers import TrainingArguments

from detr_ft.config import RunArguments
from detr_ft.data.loader_workers import loader_workers
from detr_ft.train.devices import trainer_stack

# Flags the project sets, the value it sets and why.
PROJECT_SETS = {
    "eval_strategy": ("steps", "mAP is evaluated at every checkpoint, into eval_history.json"),
    "save_strategy": ("steps", "a checkpoint is saved every --ckpt_store_interval_epochs epochs"),
    "dataloader_drop_last": (True, "the last partial batch is dropped to keep batch shapes constant"),
    "batch_eval_metrics": (True, "mAP is computed batch by batch"),
    "remove_unused_columns": (False, "the collator needs every column"),
}


def global_batch_size(training: TrainingArguments) -> int:
    """Images per optimizer step, over all processes and accumulation steps."""
    return training.per_device_train_batch_size * training.world_size * training.gradient_accumulation_steps


def steps_per_epoch(images_per_canvas: list[int], training: TrainingArguments) -> int:
    """Optimizer steps in one epoch: each canvas's last partial batch (over all processes) is dropped (constant
    shapes); one canvas: the last partial batch. Both trainers end an epoch with a step of the micro-batches left
    over by gradient accumulation. ValueError when the training set holds less than one global batch."""
    batch = training.per_device_train_batch_size * training.world_size
    batches = sum(images // batch for images in images_per_canvas)
    if batches < training.gradient_accumulation_steps:
        per_canvas = f" ({images_per_canvas} per image canvas)" if len(images_per_canvas) > 1 else ""
        raise ValueError(f"the training set has {sum(images_per_canvas)} images{per_canvas}, fewer than one batch "
                         f"({global_batch_size(training)}): lower --per_device_train_batch_size")
    return math.ceil(batches / training.gradient_accumulation_steps)


def training_arguments(device_type: str, args: RunArguments, images_per_canvas: list[int]) -> TrainingArguments:
    """The run's TrainingArguments (see the module doc) for `device_type` ("cpu", "cuda" or "hpu")."""
    training, device = args.training, args.device
    interval = args.shapes.ckpt_store_interval_epochs * steps_per_epoch(images_per_canvas, training)
    derived = {
        **{name: value for name, (value, _) in PROJECT_SETS.items()},
        "eval_steps": interval,
        "save_steps": interval,
        "full_determinism": training.full_determinism or args.shapes.deterministic,
        **loader_workers(training),
        "use_cpu": device_type == "cpu",
        "bf16": training.bf16 or device.autocast,
        # Pinned host memory speeds up copies to an accelerator; on CPU there is no copy to speed up.
        "dataloader_pin_memory": training.dataloader_pin_memory and device_type != "cpu",
    }
    if device_type == "cuda" and derived["dataloader_pin_memory"]:
        # From pinned memory a batch's copy to the GPU need not wait for the GPU's queue to drain first.
        derived["accelerator_config"] = dataclasses.replace(training.accelerator_config, non_blocking=True)
    if trainer_stack(device) == "hf":
        return dataclasses.replace(training, **derived)
    from optimum.habana import GaudiTrainingArguments

    on_hpu = device_type == "hpu"
    gaudi_fields = {f.name for f in dataclasses.fields(GaudiTrainingArguments) if f.init}
    values = {f.name: getattr(training, f.name) for f in dataclasses.fields(training)
              if f.init and f.name in gaudi_fields}
    return GaudiTrainingArguments(**{
        **values,
        **derived,
        "use_habana": on_hpu,
        "use_lazy_mode": on_hpu and device.use_lazy_mode,
        "use_hpu_graphs_for_training": device.use_hpu_graphs_for_training,
        "use_hpu_graphs_for_inference": device.use_hpu_graphs_for_inference,
        "throughput_warmup_steps": device.throughput_warmup_steps,
        # Gaudi's autocast is HPU-only; bf16 elsewhere goes through torch's CPU autocast.
        "half_precision_backend": "hpu_amp" if on_hpu else "cpu_amp",
    })
