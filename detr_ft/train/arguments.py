"""Command-line arguments: our dataclasses next to transformers' TrainingArguments, read by HfArgumentParser."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from detr_ft.console import on_terminal


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="cppe-5", metadata={"help": "Hub dataset (CPPE-5 layout); unused with --dataset_dir."}
    )
    dataset_dir: str | None = field(
        default=None, metadata={"help": "COCO-format folder: images/ and annotations/<split>.json."}
    )
    train_split: str = field(default="train", metadata={"help": "Training split (json file name without .json)."})
    eval_split: str = field(
        default="validation", metadata={"help": "Evaluation split; carved from train when it does not exist."}
    )
    train_val_split: float = field(default=0.15, metadata={"help": "Fraction of train carved off for evaluation."})
    train_val_seed: int = field(default=1337, metadata={"help": "Seed of that carve (1337, as the HF guide)."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Images are resized to fit image_size x image_size; default: 800, or the preset's."},
    )
    augment: bool = field(default=True, metadata={"help": "Flip, colour jitter and bbox-safe crop on train."})
    max_image_pixels: int | None = field(
        default=None,
        metadata={"help": "Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, default 89478485): raise it "
                          "for trusted images larger than twice that."},
    )
    allow_external_images: bool = field(
        default=False, metadata={"help": "Read json file_names that are absolute or leave images/ through ../."}
    )
    on_size_mismatch: Literal["refuse", "repair"] = field(
        default="repair",
        metadata={"help": "An image whose json width x height is not its own: repair it by what its boxes say (json "
                          "size, scale, or leave it out; logged and written to size_repairs.json), or refuse the "
                          "split."},
    )


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="facebook/detr-resnet-50",
        metadata={"help": "Hub id, local HF directory, or a preset in detr_ft/model/presets (e.g. detr-tiny)."},
    )
    model_revision: str | None = field(
        default=None, metadata={"help": "Hub revision; facebook/detr-resnet-* default to no_timm (no timm needed)."}
    )
    backbone_lr: float | None = field(
        default=None,
        metadata={"help": "Backbone learning rate: 1e-5 for pretrained models, learning_rate for presets."},
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "Train no backbone parameter."})


@dataclass
class StaticShapeArguments:
    pad_images: bool = field(default=False, metadata={"help": "Pad every image to image_size x image_size."})
    image_buckets: int = field(
        default=1,
        metadata={"help": "With --pad_images: K aspect-ratio canvases (H x W, long side image_size) chosen from the "
                          "training images, each batch on one (with --gradient_accumulation_steps G, each "
                          "optimizer step's G batches on different canvases); 1 = the image_size x image_size "
                          "square."},
    )
    pad_objects: bool = field(default=False, metadata={"help": "Pad per-image targets to bucket sizes."})
    num_buckets: int = field(default=1, metadata={"help": "Target bucket count with --pad_objects; 0 = no padding."})
    ckpt_store_interval_epochs: int = field(
        default=1, metadata={"help": "Save a checkpoint and evaluate mAP every N epochs."}
    )
    deterministic: bool = field(default=False, metadata={"help": "Full determinism (transformers full_determinism)."})
    check_finite_loss: bool = field(
        default=True,
        metadata={"help": "Stop at the step whose loss is NaN/inf, naming its images (one host read per step)."},
    )
    skip_nonfinite_batches: bool = field(
        default=False, metadata={"help": "With check_finite_loss: skip such a batch's update instead of stopping."}
    )
    matcher: str = field(
        default="auto",
        metadata={"help": "host (scipy, one device->host copy per step), device (exact, on the device, no host read), "
                          "or auto (per device, as measured: README)."},
    )
    matcher_steps: int = field(
        default=0,
        metadata={"help": "--matcher device: search steps per step; 0 = enough for every problem, no host read. "
                          "Fewer: the 'unfinished' flag rides on the finite-loss guard's one read, and a step with "
                          "an unfinished problem is redone with the host matcher; with --check_finite_loss false, "
                          "one read of its own per micro-batch instead, and a host solve of the unfinished problems."},
    )

    @property
    def buckets_on(self) -> bool:
        return self.pad_objects and self.num_buckets > 0


@dataclass
class DeviceArguments:
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or hpu."})
    use_habana: bool = field(default=False, metadata={"help": "Train on Gaudi (HPU) with optimum-habana."})
    trainer: str = field(
        default="auto",
        metadata={"help": "auto (GaudiTrainer on HPU, Trainer else), hf, or gaudi (GaudiTrainer anywhere)."},
    )
    use_lazy_mode: bool = field(default=False, metadata={"help": "HPU lazy mode (PT_HPU_LAZY_MODE=1); eager when off."})
    gaudi_config_name: str | None = field(
        default=None, metadata={"help": "GaudiConfig hub id or json; default: fused AdamW, fused clip, autocast."}
    )
    use_hpu_graphs_for_training: bool = field(default=False, metadata={"help": "Wrap training in HPU graphs."})
    use_hpu_graphs_for_inference: bool = field(default=False, metadata={"help": "Wrap evaluation in HPU graphs."})
    throughput_warmup_steps: int = field(default=0, metadata={"help": "Steps left out of the throughput (HPU)."})
    autocast: bool = field(default=False, metadata={"help": "bf16 autocast (the seed's --autocast); same as --bf16."})
    cpu_position_embedding: bool = field(
        default=False,
        metadata={"help": "Gaudi, static shapes: keep optimum-habana's DETR position embedding computed on the CPU "
                  "(huggingface/optimum-habana#1334, a workaround for its HPU execution then): 2 host round-trips per "
                  "step. Off: computed on the HPU, as transformers does (patches/detr_position_embedding.py)."},
    )


TRAINING_DEFAULTS = {
    "output_dir": "outputs/detr-ft",
    "learning_rate": 1e-4,
    "weight_decay": 1e-4,
    "max_grad_norm": 0.1,
    "num_train_epochs": 50,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "logging_steps": 10,
    "report_to": ["tensorboard"],
    # Progress bars on a terminal; in a pipe the Trainer prints one log line per logging step instead.
    "disable_tqdm": not on_terminal(),
    # A finite-loss filter reads the loss on the host every step: it would cut the HPU graph.
    "logging_nan_inf_filter": False,
    # AUTO_WORKERS: `default_dataloader_workers` (the HF default, 0, loads every batch serially with the step).
    "dataloader_num_workers": -1,
    # DETR uses every trainable parameter in every step. Left unset, both trainers pass True to DDP, which then walks
    # the autograd graph after every forward looking for unused ones (and warns that it found none).
    "ddp_find_unused_parameters": False,
}
AUTO_WORKERS = -1
MAX_AUTO_WORKERS = 8
# What a data loader worker unpickles besides our modules: the Trainer's worker seeding (`preload_worker_modules`).
WORKER_MODULES = ("transformers.trainer_utils",)

ALL_ARGUMENTS = (ModelArguments, DataArguments, StaticShapeArguments, DeviceArguments, TrainingArguments)


# transformers 5 dropped TrainingArguments.overwrite_output_dir; we keep its meaning (start the run folder over).
OVERWRITE_FLAG = "overwrite_output_dir"
TRAINING_HAS_OVERWRITE = OVERWRITE_FLAG in {f.name for f in dataclasses.fields(TrainingArguments)}


def argument_parser(with_defaults: bool = True) -> HfArgumentParser:
    """Our dataclasses and TrainingArguments; without defaults, parsing yields only the flags given."""
    parser = HfArgumentParser(ALL_ARGUMENTS)
    if not TRAINING_HAS_OVERWRITE:
        parser.add_argument(f"--{OVERWRITE_FLAG}", type=string_to_bool, nargs="?", const=True, default=False,
                            help="Start over in an --output_dir that holds another run (its checkpoints are removed).")
    if with_defaults:
        parser.set_defaults(**TRAINING_DEFAULTS)
    else:
        for action in parser._actions:  # HfArgumentParser gives every field its default explicitly
            action.default = argparse.SUPPRESS
    return parser


def is_json_file_argv(argv: list[str]) -> bool:
    return len(argv) == 1 and argv[0].endswith(".json")


def flag_values(argv: list[str]) -> dict:
    """The command line, or a single JSON file given as the only argument, as {flag: value} with the defaults.
    Builds no dataclass: building TrainingArguments sets up the device (`device_arguments`)."""
    if is_json_file_argv(argv):
        return {**TRAINING_DEFAULTS, **json.loads(Path(argv[0]).read_text())}
    return vars(argument_parser().parse_args(argv))


def device_arguments(argv: list[str] | None = None) -> DeviceArguments:
    """The device flags alone, read without building TrainingArguments. Its `__post_init__` sets up the device, and
    on a Gaudi host accelerate's device lookup imports habana_frameworks, which picks lazy or eager mode from
    PT_HPU_LAZY_MODE there and then, once: `check_device_settings` must set that variable first."""
    values = flag_values(sys.argv[1:] if argv is None else argv)
    return DeviceArguments(**{f.name: values[f.name] for f in dataclasses.fields(DeviceArguments) if f.name in values})


def parse_arguments(argv: list[str] | None = None) -> tuple:
    """Parse the command line, or a single JSON file given as the only argument.

    `--bf16` is read as `--autocast`: TrainingArguments refuses bf16 without a bf16 GPU unless use_cpu is set, and
    use_cpu follows --device later (`devices.training_arguments`), which turns bf16 autocast on for every device.
    `training.overwrite_output_dir` exists on every transformers version (an attribute where 5.x lacks the field).
    """
    values = flag_values(sys.argv[1:] if argv is None else argv)
    overwrite = bool(values.get(OVERWRITE_FLAG, False))
    if not TRAINING_HAS_OVERWRITE:
        values.pop(OVERWRITE_FLAG, None)
    if values.get("bf16"):
        values.update(bf16=False, autocast=True)
    *arguments, training = argument_parser().parse_dict(values)
    training.overwrite_output_dir = overwrite
    return (*arguments, training)


def user_set_flags(argv: list[str] | None = None) -> set[str]:
    """Names of the flags the command line (or the JSON file) sets, whatever their value: parsed with every
    default suppressed, so `--save_steps 500` counts even though 500 is TrainingArguments' default."""
    argv = sys.argv[1:] if argv is None else argv
    if is_json_file_argv(argv):
        return set(json.loads(Path(argv[0]).read_text()))
    return set(vars(argument_parser(with_defaults=False).parse_args(argv)))


def global_batch_size(training: TrainingArguments) -> int:
    """Images per optimizer step, over all processes and accumulation steps."""
    return training.per_device_train_batch_size * training.world_size * training.gradient_accumulation_steps


def steps_per_epoch(images_per_canvas: list[int], training: TrainingArguments) -> int:
    """Optimizer steps in one epoch: each canvas's last partial batch (over all processes) is dropped (constant
    shapes); one canvas: the last partial batch. Both trainers end an epoch with a step of the micro-batches left
    over by gradient accumulation."""
    batch = training.per_device_train_batch_size * training.world_size
    batches = sum(images // batch for images in images_per_canvas)
    steps = math.ceil(batches / training.gradient_accumulation_steps)
    if batches < training.gradient_accumulation_steps:
        per_canvas = f" ({images_per_canvas} per image canvas)" if len(images_per_canvas) > 1 else ""
        raise ValueError(f"the training set has {sum(images_per_canvas)} images{per_canvas}, fewer than one batch "
                         f"({global_batch_size(training)}): lower --per_device_train_batch_size")
    return steps


def default_dataloader_workers() -> int:
    """DataLoader worker processes when the user sets none: the CPUs this process may use, shared by the processes
    of this machine, one left for the training loop itself (at least 1, at most MAX_AUTO_WORKERS). Reading,
    augmenting and resizing a CPPE-5 photo takes ~25 ms a core: with 0 workers a device waits for every batch."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(MAX_AUTO_WORKERS, cpus // local_processes - 1))


def worker_start_method(training: TrainingArguments, workers: int) -> dict[str, str]:
    """`dataloader_multiprocessing_context="forkserver"` when there are workers and the user chose no other start
    method (transformers 4.55, the Gaudi stack, has no such argument: its workers fork).

    Forking the training process, which runs other threads, can leave the worker deadlocked before it runs a line:
    CPython before 3.12 (3.11.7 here) takes in the child a lock that another thread may have held at the fork
    (python/cpython#112275). It hung a 2-process CI run: each epoch forks fresh workers while the previous epoch's
    worker-queue thread is still ending. A forkserver is a single-threaded process, started once, that forks the
    workers from itself. It imports what they need once (`preload_worker_modules`), so a worker still starts in
    milliseconds, and every epoch still gets fresh workers seeded as with fork (resume stays bit-exact)."""
    chosen = getattr(training, "dataloader_multiprocessing_context", "no such argument")
    if workers == 0 or chosen not in (None, "forkserver"):
        return {}
    preload_worker_modules()
    return {"dataloader_multiprocessing_context": "forkserver"}


def preload_worker_modules() -> None:
    """Have the forkserver import this package's modules imported so far and WORKER_MODULES before it forks a
    worker. A worker imports the entry script again as `__mp_main__` (multiprocessing's forkserver does not preload
    `__main__` as documented), then unpickles the dataset, the collator and the Trainer's worker seeding: without
    the preload every worker of every epoch imports transformers, datasets and albumentations anew (~0.7 s)."""
    package = __name__.split(".")[0]
    imported = sorted(name for name in sys.modules if name.split(".")[0] == package)
    multiprocessing.set_forkserver_preload([*imported, *WORKER_MODULES])


def finalize_training_arguments(training: TrainingArguments, shapes: StaticShapeArguments,
                                images_per_canvas: list[int]) -> TrainingArguments:
    """Evaluate and save every `ckpt_store_interval_epochs` epochs; constant batch shapes; determinism; data loader
    workers from the CPU count unless set (they prefetch 2 batches each; the Trainer pins memory by default),
    started from a forkserver (`worker_start_method`)."""
    interval = shapes.ckpt_store_interval_epochs * steps_per_epoch(images_per_canvas, training)
    workers = training.dataloader_num_workers
    workers = default_dataloader_workers() if workers == AUTO_WORKERS else workers
    return dataclasses.replace(
        training,
        eval_strategy="steps",
        eval_steps=interval,
        save_strategy="steps",
        save_steps=interval,
        dataloader_drop_last=True,
        # mAP streams batch by batch: no concatenation of outputs (GaudiTrainer cannot skip it otherwise).
        batch_eval_metrics=True,
        remove_unused_columns=False,
        full_determinism=training.full_determinism or shapes.deterministic,
        dataloader_num_workers=workers,
        **worker_start_method(training, workers),
    )
