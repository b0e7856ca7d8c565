"""The device: its flags checked and the environment set before anything imports habana_frameworks, and the
compiler settings for fixed image shapes.

`check_device_settings` runs first: HPU lazy/eager mode is read from PT_HPU_LAZY_MODE when habana_frameworks is first
imported, so the variable must agree with --use_lazy_mode before that. Even building TrainingArguments imports it on
a Gaudi host, so the check reads the device flags alone (`config.device_arguments`). On HPU two trainers can run a
step (`trainer_stack`): optimum-habana's GaudiTrainer, or transformers' own Trainer with what GaudiTrainer adds to
a step (train/hpu_trainer.py); a flag only the other one reads is refused by `check_device_settings`. The trainer
and its arguments for each device: train/trainer.py and train/training_arguments.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from contextlib import AbstractContextManager
from typing import Literal

import torch
from transformers import TrainingArguments

from detr_ft.config import DeviceArguments

# Device flags only optimum-habana's GaudiTrainer reads: refused with transformers' Trainer, which would ignore them.
GAUDI_TRAINER_ONLY = ("gaudi_config_name", "use_hpu_graphs_for_inference", "throughput_warmup_steps",
                      "cpu_position_embedding")


class DeviceSettingsError(ValueError):
    """Contradictory device flags or environment; raised before any model is built."""


def is_installed(module_name: str) -> bool:
    """Whether `module_name` can be imported, without importing it (habana_frameworks reads PT_HPU_LAZY_MODE then)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # its parent package is missing, e.g. no `optimum` at all
        return False


def trainer_stack(device: DeviceArguments) -> Literal["hf", "gaudi"]:
    """The trainer a run uses: --trainer hf or gaudi as given; auto: optimum-habana's GaudiTrainer on HPU where it is
    installed, transformers' Trainer everywhere else (docs/gaudi.md: which to choose)."""
    if device.trainer != "auto":
        return device.trainer
    return "gaudi" if device.use_habana and is_installed("optimum.habana") else "hf"


def check_device_settings(device: DeviceArguments) -> str:
    """Validate the flags, set what habana_frameworks reads at import to match them (PT_HPU_LAZY_MODE, the autocast
    op lists of --gaudi_config_name), and return the device type to run on."""
    if device.use_habana and device.device in ("cpu", "cuda"):
        raise DeviceSettingsError(f"--use_habana contradicts --device {device.device}: drop one of them")
    stack = trainer_stack(device)
    if stack == "gaudi" and not is_installed("optimum.habana"):
        raise DeviceSettingsError("--trainer gaudi: optimum-habana is not installed in this environment: run in its "
                                  "venv (make venv-gaudi, docs/gaudi.md), or use --trainer hf")
    hpu_only = [name for name in ("use_lazy_mode", "use_hpu_graphs_for_training", "use_hpu_graphs_for_inference")
                if getattr(device, name)]
    if hpu_only and not device.use_habana:
        raise DeviceSettingsError(f"--{' --'.join(hpu_only)} only apply to Gaudi: add --use_habana or drop them")
    if stack == "hf":
        gaudi_only = [name for name in GAUDI_TRAINER_ONLY if getattr(device, name)]
        if gaudi_only:
            raise DeviceSettingsError(f"--{' --'.join(gaudi_only)}: optimum-habana's GaudiTrainer only, and this run "
                                      "trains with transformers' Trainer: drop them, or train with --trainer gaudi "
                                      "(docs/gaudi.md)")
        if device.use_hpu_graphs_for_training and not device.use_lazy_mode:
            raise DeviceSettingsError("--use_hpu_graphs_for_training: HPU graphs capture lazy-mode graphs only: add "
                                      "--use_lazy_mode, or drop it (eager mode compiles the forward with "
                                      "--torch_compile instead)")
    if device.use_habana:
        wanted = "1" if device.use_lazy_mode else "0"
        current = os.environ.get("PT_HPU_LAZY_MODE")
        if current is not None and current != wanted:
            mode = "lazy" if device.use_lazy_mode else "eager"
            fix = f"unset it or set PT_HPU_LAZY_MODE={wanted}"
            fix += "" if device.use_lazy_mode else ", or add --use_lazy_mode"
            raise DeviceSettingsError(f"PT_HPU_LAZY_MODE={current} in the environment contradicts {mode} mode: {fix}")
        if not is_installed("habana_frameworks"):
            raise DeviceSettingsError("--use_habana: habana_frameworks (Intel Gaudi software) is not installed in "
                                      "this environment: train on a Gaudi host, in Intel's PyTorch container "
                                      "(docs/gaudi.md)")
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


def compile_settings(training: TrainingArguments, canvases: list[tuple[int, int]] | None) -> AbstractContextManager:
    """Around training: `compile_each_image_shape_once` with `--torch_compile` on fixed image shapes (`canvases`)."""
    if training.torch_compile and canvases:
        return compile_each_image_shape_once(len(canvases))
    return contextlib.nullcontext()


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
