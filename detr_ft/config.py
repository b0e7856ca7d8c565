"""The command line's one home: every flag of detr-ft, its default, its choices and whether it defines a run.

Our four argument dataclasses sit next to transformers' TrainingArguments and are read by HfArgumentParser, as in
the Hugging Face examples. Choice flags are `Literal` types, so argparse lists the choices and refuses a typo before
anything else runs; every parse error is one line (`FlagError`). A flag marked `defines_run` is one a checkpoint
holds or assumes: a rerun into the same folder with another value is refused (train/run_folder.py), and
`run_defining_flags` derives that list from the marks.

A recipe is a json file of flags given as the first argument; flags after it override it:

    python run_object_detection.py recipes/cppe5-r50.json --output_dir outputs/cppe5 --num_train_epochs 50

This module imports no stage of the package (data, model, train, evaluation): they all import it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from detr_ft.console import on_terminal


def flag(default: Any, help: str, defines_run: bool = False) -> Any:
    """A dataclass field for a flag: its default, its --help text, and whether it defines the run."""
    return field(default=default, metadata={"help": help, "defines_run": defines_run})


@dataclass
class DataArguments:
    dataset_name: str = flag("cppe-5", "Hub dataset (CPPE-5 layout); unused with --dataset_dir.", defines_run=True)
    dataset_dir: str | None = flag(None, "COCO-format folder: images/ and annotations/<split>.json.",
                                   defines_run=True)
    train_split: str = flag("train", "Training split (json file name without .json).", defines_run=True)
    eval_split: str = flag("validation", "Evaluation split; carved from train when it does not exist.",
                           defines_run=True)
    train_val_split: float = flag(0.15, "Fraction of train carved off for evaluation.", defines_run=True)
    train_val_seed: int = flag(1337, "Seed of that carve (1337, as the HF guide).", defines_run=True)
    image_size: int | None = flag(None, "Images are resized to fit image_size x image_size; default: 800, or the "
                                        "preset's.", defines_run=True)
    augment: bool = flag(True, "Flip, colour jitter and bbox-safe crop on train.")
    normalize_on_device: bool = flag(False, "Training images leave the data loader as 8-bit and are normalised on the "
                                            "training device: a quarter of the bytes to collate, pin and copy; the "
                                            "same pixels, bit for bit.")
    max_image_pixels: int | None = flag(None, "Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, default "
                                              "89478485): raise it for trusted images larger than twice that.")
    allow_external_images: bool = flag(False, "Read json file_names that are absolute or leave images/ through ../.")
    on_size_mismatch: Literal["refuse", "repair"] = flag(
        "repair", "An image whose json width x height is not its own: repair it by what its boxes say (json size, "
                  "scale, or leave it out; logged and written to size_repairs.json), or refuse the split.")


@dataclass
class ModelArguments:
    model_name_or_path: str = flag("facebook/detr-resnet-50", "Hub id, local HF directory, or a preset in "
                                   "detr_ft/model/presets (e.g. detr-tiny), of the DETR family: DETR, Conditional "
                                   "DETR, Deformable DETR (single-stage).", defines_run=True)
    model_revision: str | None = flag(None, "Hub revision; facebook/detr-resnet-* default to no_timm (no timm "
                                            "needed).", defines_run=True)
    backbone_lr: float | None = flag(None, "Backbone learning rate: the family's for pretrained models (1e-5; "
                                           "Deformable DETR 2e-5), learning_rate for presets.", defines_run=True)
    freeze_backbone: bool = flag(False, "Train no backbone parameter.", defines_run=True)


@dataclass
class StaticShapeArguments:
    pad_images: bool = flag(False, "Pad every image to image_size x image_size.", defines_run=True)
    image_buckets: int = flag(1, "With --pad_images: K aspect-ratio canvases (H x W, long side image_size) chosen "
                                 "from the training images, each batch on one (with --gradient_accumulation_steps G, "
                                 "each optimizer step's G batches on different canvases); 1 = the image_size x "
                                 "image_size square.", defines_run=True)
    pad_objects: bool = flag(False, "Pad per-image targets to bucket sizes.", defines_run=True)
    num_buckets: int = flag(1, "Target bucket count with --pad_objects; 0 = no padding.", defines_run=True)
    ckpt_store_interval_epochs: int = flag(1, "Save a checkpoint and evaluate mAP every N epochs.")
    deterministic: bool = flag(False, "Full determinism (transformers full_determinism).")
    check_finite_loss: bool = flag(True, "Stop at the step whose loss is NaN/inf, naming its images (one host read "
                                         "per step).")
    skip_nonfinite_batches: bool = flag(False, "With check_finite_loss: skip such a batch's update instead of "
                                               "stopping.")
    audit_host_syncs: bool = flag(False, "Count the host syncs of one training step into run_summary.json "
                                         "(host_syncs_per_step); that step runs about 1.5x slower.")

    @property
    def buckets_on(self) -> bool:
        return self.pad_objects and self.num_buckets > 0


@dataclass
class DeviceArguments:
    device: Literal["auto", "cpu", "cuda", "hpu"] = flag("auto", "Where to train; auto: CUDA when visible, else CPU; "
                                                                 "hpu: the same as --use_habana.")
    use_habana: bool = flag(False, "Train on Gaudi (HPU), with the trainer --trainer names (docs/gaudi.md).")
    trainer: Literal["auto", "hf", "gaudi"] = flag("auto", "auto (on HPU optimum-habana's GaudiTrainer where it is "
                                                           "installed, else transformers' Trainer), hf (transformers' "
                                                           "Trainer, on HPU too), or gaudi (GaudiTrainer anywhere).")
    use_lazy_mode: bool = flag(False, "HPU lazy mode (PT_HPU_LAZY_MODE=1); eager when off (with transformers' "
                                      "Trainer: --torch_compile on Habana's hpu_backend unless turned off).")
    gaudi_config_name: str | None = flag(None, "GaudiTrainer: GaudiConfig hub id or json; default: fused AdamW, "
                                               "fused clip, autocast.")
    use_hpu_graphs_for_training: bool = flag(False, "Cache the training forward in HPU graphs (lazy mode).")
    use_hpu_graphs_for_inference: bool = flag(False, "GaudiTrainer: wrap evaluation in HPU graphs.")
    throughput_warmup_steps: int = flag(0, "GaudiTrainer: steps left out of the throughput.")
    autocast: bool = flag(False, "bf16 autocast; the same as --bf16.")
    cpu_position_embedding: bool = flag(False, "GaudiTrainer, static shapes: keep optimum-habana's DETR position "
                                               "embedding computed on the CPU (huggingface/optimum-habana#1334, a "
                                               "workaround for its HPU execution then): 2 host round-trips per step. "
                                               "Off: computed on the HPU, as transformers does "
                                               "(patches/detr_position_embedding.py).")

    def __post_init__(self) -> None:
        if self.device == "hpu":
            self.use_habana = True


TRAINING_DEFAULTS = {
    "output_dir": "outputs/detr-ft",
    # DETR's and Conditional DETR's; unless the user sets one, a family whose paper uses another gets that instead
    # (train/flag_checks.py `family_defaults`: Deformable DETR 2e-4).
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
    # AUTO_WORKERS: one per CPU of this process's share (data/loader_workers.py); the HF default, 0, loads every
    # batch serially with the step.
    "dataloader_num_workers": -1,
    # DETR uses every trainable parameter in every step. Left unset, both trainers pass True to DDP, which then walks
    # the autograd graph after every forward looking for unused ones (and warns that it found none).
    "ddp_find_unused_parameters": False,
}
AUTO_WORKERS = -1

# TrainingArguments a checkpoint depends on: compared on a rerun like our `defines_run` flags.
RUN_DEFINING_TRAINING_ARGUMENTS = ("learning_rate", "weight_decay", "optim", "per_device_train_batch_size",
                                   "gradient_accumulation_steps")
# TrainingArguments saved into run_args.json: those, and the batch size evaluation and inference default to.
SAVED_TRAINING_ARGUMENTS = (*RUN_DEFINING_TRAINING_ARGUMENTS, "per_device_eval_batch_size")

OUR_ARGUMENTS = (ModelArguments, DataArguments, StaticShapeArguments, DeviceArguments)

# transformers 5 dropped TrainingArguments.overwrite_output_dir; we keep its meaning (start the run folder over).
OVERWRITE_FLAG = "overwrite_output_dir"
TRAINING_HAS_OVERWRITE = OVERWRITE_FLAG in {f.name for f in dataclasses.fields(TrainingArguments)}


class FlagError(ValueError):
    """One or more flags refused; the message has one line per flag."""


@dataclass
class RunArguments:
    """Every flag of a training run, by group, and the names of those the user set (whatever their value)."""

    model: ModelArguments
    data: DataArguments
    shapes: StaticShapeArguments
    device: DeviceArguments
    training: TrainingArguments
    user_set: frozenset[str]

    def saved(self, **values: Any) -> dict:
        """What run_args.json holds: our flags, SAVED_TRAINING_ARGUMENTS (enums as their values) and `values`."""
        ours = {k: v for group in (self.model, self.data, self.shapes, self.device)
                for k, v in dataclasses.asdict(group).items()}
        training = self.training.to_dict()
        return ours | {name: training[name] for name in SAVED_TRAINING_ARGUMENTS} | values


def run_defining_flags() -> tuple[str, ...]:
    """The flags a checkpoint holds or assumes: ours marked `defines_run`, and RUN_DEFINING_TRAINING_ARGUMENTS."""
    ours = [f.name for group in OUR_ARGUMENTS for f in dataclasses.fields(group) if f.metadata.get("defines_run")]
    return (*ours, *RUN_DEFINING_TRAINING_ARGUMENTS)


class FlagParser(HfArgumentParser):
    """HfArgumentParser whose refusals are one line (`FlagError`), not argparse's usage text and exit, and which
    keeps our `defines_run` mark out of argparse (HfArgumentParser hands a field's metadata to `add_argument`)."""

    def error(self, message: str) -> NoReturn:
        raise FlagError(message)

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        if "defines_run" in field.metadata:
            field = copy.copy(field)
            field.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k != "defines_run"})
        HfArgumentParser._parse_dataclass_field(parser, field)


def argument_parser(with_defaults: bool = True) -> FlagParser:
    """Our dataclasses and TrainingArguments; without defaults, parsing yields only the flags given."""
    parser = FlagParser((*OUR_ARGUMENTS, TrainingArguments))
    if not TRAINING_HAS_OVERWRITE:
        parser.add_argument(f"--{OVERWRITE_FLAG}", type=string_to_bool, nargs="?", const=True, default=False,
                            help="Start over in an --output_dir that holds another run (its checkpoints are removed).")
    if with_defaults:
        parser.set_defaults(**TRAINING_DEFAULTS)
    else:
        for action in parser._actions:  # HfArgumentParser gives every field its default explicitly
            action.default = argparse.SUPPRESS
    return parser


def recipe_tokens(path: Path) -> list[str]:
    """A recipe file's flags as command-line tokens, so argparse checks them as it checks typed flags."""
    try:
        recipe = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FlagError(f"recipe {path}: cannot be read as JSON ({error}): a recipe is a JSON object of "
                        "flags, e.g. {\"pad_images\": true}") from error
    if not isinstance(recipe, dict):
        raise FlagError(f"recipe {path}: a JSON object of flags is expected, found a {type(recipe).__name__}")
    tokens = []
    for name, value in recipe.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        tokens += [f"--{name}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return tokens


def command_line(argv: list[str] | None) -> list[str]:
    """The flags as tokens: a recipe file given first expanded in place, the flags after it overriding it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].endswith(".json"):
        return [*recipe_tokens(Path(argv[0])), *argv[1:]]
    return argv


def flag_values(argv: list[str] | None = None) -> dict:
    """{flag: value} of the command line with the defaults. Builds no dataclass: building TrainingArguments sets up
    the device (`device_arguments`)."""
    return vars(argument_parser().parse_args(command_line(argv)))


def device_arguments(argv: list[str] | None = None) -> DeviceArguments:
    """The device flags alone, read without building TrainingArguments. Its `__post_init__` sets up the device, and
    on a Gaudi host accelerate's device lookup imports habana_frameworks, which picks lazy or eager mode from
    PT_HPU_LAZY_MODE there and then, once: `train.devices.check_device_settings` must set that variable first."""
    values = flag_values(argv)
    return DeviceArguments(**{f.name: values[f.name] for f in dataclasses.fields(DeviceArguments)})


def parse_arguments(argv: list[str] | None = None) -> RunArguments:
    """Every flag of the command line (a recipe file first, see the module doc), as dataclasses.

    `--bf16` is read as `--autocast`: TrainingArguments refuses bf16 without a bf16 GPU unless use_cpu is set, and
    use_cpu follows --device later (`train.devices.training_arguments`), which turns bf16 autocast on for every
    device. `training.overwrite_output_dir` exists on every transformers version (an attribute where 5.x lacks the
    field). A value TrainingArguments itself refuses is a FlagError too."""
    values = flag_values(argv)
    overwrite = bool(values.pop(OVERWRITE_FLAG, False)) if not TRAINING_HAS_OVERWRITE else None
    if values.get("bf16"):
        values.update(bf16=False, autocast=True)
    groups = {}
    for group in (*OUR_ARGUMENTS, TrainingArguments):
        names = {f.name for f in dataclasses.fields(group) if f.init}
        try:
            groups[group] = group(**{k: v for k, v in values.items() if k in names})
        except ValueError as error:
            raise FlagError(str(error).strip().splitlines()[0]) from error
    training = groups[TrainingArguments]
    if overwrite is not None:
        training.overwrite_output_dir = overwrite
    return RunArguments(groups[ModelArguments], groups[DataArguments], groups[StaticShapeArguments],
                        groups[DeviceArguments], training, frozenset(user_set_flags(argv)))


def user_set_flags(argv: list[str] | None = None) -> set[str]:
    """Names of the flags the command line (or its recipe) sets, whatever their value: parsed with every default
    suppressed, so `--save_steps 500` counts even though 500 is TrainingArguments' default."""
    return set(vars(argument_parser(with_defaults=False).parse_args(command_line(argv))))
