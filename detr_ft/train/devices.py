"""One place picks the device and the trainer: optimum-habana's GaudiTrainer on HPU, transformers' Trainer else.

`check_device_settings` runs first, before anything imports habana_frameworks: HPU lazy/eager mode is read
from PT_HPU_LAZY_MODE at import time, so the variable must agree with --use_lazy_mode before that. Even building
TrainingArguments imports it on a Gaudi host, so the check reads the device flags alone (`arguments.device_arguments`).
`--trainer gaudi` runs GaudiTrainer off Gaudi too (use_habana=False): that is how CI exercises the Gaudi path.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import AbstractContextManager

import torch
from transformers import Trainer, TrainingArguments

from detr_ft.train.arguments import DeviceArguments
from detr_ft.train.trainer_loss import LossFromOutputs


class DeviceSettingsError(ValueError):
    """Contradictory device flags or environment; raised before any model is built."""


def check_device_settings(device: DeviceArguments) -> str:
    """Validate the flags, set what habana_frameworks reads at import to match them (PT_HPU_LAZY_MODE, the autocast
    op lists of --gaudi_config_name), and return the device type to run on."""
    if device.device not in ("auto", "cpu", "cuda", "hpu"):
        raise DeviceSettingsError(f"--device {device.device}: choose auto, cpu, cuda or hpu")
    if device.trainer not in ("auto", "hf", "gaudi"):
        raise DeviceSettingsError(f"--trainer {device.trainer}: choose auto, hf or gaudi")
    if device.device == "hpu" and not device.use_habana:
        raise DeviceSettingsError("--device hpu needs --use_habana (the Gaudi path runs through optimum-habana)")
    if device.use_habana and device.device in ("cpu", "cuda"):
        raise DeviceSettingsError(f"--use_habana contradicts --device {device.device}: drop one of them")
    if device.use_habana and device.trainer == "hf":
        raise DeviceSettingsError("--use_habana needs optimum-habana's GaudiTrainer: drop --trainer hf")
    hpu_only = [name for name in ("use_lazy_mode", "use_hpu_graphs_for_training", "use_hpu_graphs_for_inference")
                if getattr(device, name)]
    if hpu_only and not device.use_habana:
        raise DeviceSettingsError(f"--{' --'.join(hpu_only)} only apply to Gaudi: add --use_habana or drop them")
    if device.use_habana:
        wanted = "1" if device.use_lazy_mode else "0"
        current = os.environ.get("PT_HPU_LAZY_MODE")
        if current is not None and current != wanted:
            mode = "lazy" if device.use_lazy_mode else "eager"
            fix = f"unset it or set PT_HPU_LAZY_MODE={wanted}"
            fix += "" if device.use_lazy_mode else ", or add --use_lazy_mode"
            raise DeviceSettingsError(f"PT_HPU_LAZY_MODE={current} in the environment contradicts {mode} mode: {fix}")
        os.environ["PT_HPU_LAZY_MODE"] = wanted
        if device.gaudi_config_name:
            declare_autocast_op_lists(device.gaudi_config_name)
        return "hpu"
    if device.device == "cuda" and not torch.cuda.is_available():
        raise DeviceSettingsError("--device cuda: no CUDA device is visible (check CUDA_VISIBLE_DEVICES)")
    if device.device == "cpu" or (device.device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return "cuda"


def declare_autocast_op_lists(gaudi_config_name: str) -> None:
    """Declare the GaudiConfig's autocast op lists, if it has them: files named by environment variables that Habana's
    autocast reads when habana_frameworks is imported. GaudiTrainingArguments and GaudiTrainer would declare them
    later, when it is already imported (building TrainingArguments imports it), and GaudiConfig refuses that."""
    from optimum.habana import GaudiConfig

    try:
        config = GaudiConfig.from_pretrained(gaudi_config_name)
    except OSError as error:
        raise DeviceSettingsError(f"--gaudi_config_name {gaudi_config_name}: {error}") from error
    config.declare_autocast_bf16_fp32_ops()


def training_arguments(device_type: str, device: DeviceArguments, training: TrainingArguments) -> TrainingArguments:
    """TrainingArguments for CPU/CUDA, GaudiTrainingArguments for HPU or `--trainer gaudi`."""
    # Pinned host memory speeds up copies to an accelerator; on CPU there is no copy to speed up.
    common = {"use_cpu": device_type == "cpu", "bf16": training.bf16 or device.autocast,
              "dataloader_pin_memory": training.dataloader_pin_memory and device_type != "cpu"}
    if device_type != "hpu" and device.trainer != "gaudi":
        return dataclasses.replace(training, **common)
    from optimum.habana import GaudiTrainingArguments

    on_hpu = device_type == "hpu"
    gaudi_fields = {f.name for f in dataclasses.fields(GaudiTrainingArguments) if f.init}
    values = {f.name: getattr(training, f.name) for f in dataclasses.fields(training)
              if f.init and f.name in gaudi_fields}
    return GaudiTrainingArguments(**{
        **values,
        **common,
        "use_habana": on_hpu,
        "use_lazy_mode": on_hpu and device.use_lazy_mode,
        "use_hpu_graphs_for_training": device.use_hpu_graphs_for_training,
        "use_hpu_graphs_for_inference": device.use_hpu_graphs_for_inference,
        "throughput_warmup_steps": device.throughput_warmup_steps,
        # Gaudi's autocast is HPU-only; bf16 elsewhere goes through torch's CPU autocast.
        "half_precision_backend": "hpu_amp" if on_hpu else "cpu_amp",
    })


def compile_each_image_shape_once(image_shapes: int) -> AbstractContextManager:
    """`--torch_compile` on fixed image shapes (the square or K canvases): a static graph per shape.

    The trainers compile with dynamic=None, under which dynamo makes the image sides symbolic at the second shape it
    meets: canvases 2..K shared a dynamic-shape graph, whose kernels inductor cannot specialise (and on torch 2.13 CPU
    fails to lower: bench/compile_warmup.py). Dynamo's recompile limit (8 by default) must hold a graph per shape, and
    another per shape wherever evaluation runs the compiled forward too (no grad, BatchNorm in eval mode; transformers'
    evaluation during training runs the uncompiled model). A context: dynamo's settings are the process's.
    """
    return torch._dynamo.config.patch(automatic_dynamic_shapes=False,
                                      recompile_limit=max(torch._dynamo.config.recompile_limit, 2 * image_shapes))


class DetrTrainer(LossFromOutputs, Trainer):
    """transformers' Trainer computing the loss from a label-free forward (detr_ft/train/trainer_loss.py)."""


def build_trainer(device: DeviceArguments, args: TrainingArguments,
                  train_sampler: torch.utils.data.Sampler | None = None, **trainer_kwargs) -> Trainer:
    """The trainer that goes with `args`; `trainer_kwargs` are the usual Trainer arguments (model, datasets, ...).
    Both compute the loss outside the model's forward (`LossFromOutputs`).

    `train_sampler` replaces the trainer's random one (`canvases.CanvasGroupedSampler`); both trainers build their
    training DataLoader from `_get_train_sampler()` with the per-device batch size and drop_last, and accelerate
    passes a custom sampler on (sharding its batches over processes) and calls its `set_epoch`."""
    if type(args) is TrainingArguments:
        trainer = DetrTrainer(args=args, **trainer_kwargs)
    else:
        from optimum.habana import GaudiConfig, GaudiTrainer

        class DetrGaudiTrainer(LossFromOutputs, GaudiTrainer):
            """optimum-habana's GaudiTrainer computing the loss from a label-free forward."""

        # GaudiTrainer calls GaudiConfig.from_pretrained(None) unless it gets an object: always pass one.
        on_hpu = args.use_habana
        gaudi_config = (GaudiConfig.from_pretrained(device.gaudi_config_name) if device.gaudi_config_name
                        else GaudiConfig(use_fused_adam=on_hpu, use_fused_clip_norm=on_hpu,
                                         use_torch_autocast=args.bf16))
        trainer = DetrGaudiTrainer(gaudi_config=gaudi_config, args=args, **trainer_kwargs)
    if train_sampler is not None:
        trainer._get_train_sampler = lambda *_: train_sampler
    return trainer
