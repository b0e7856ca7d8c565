"""Every flag checked in one place, before data is read or a model is built; each refusal names the flag and a
valid value, all refusals in one message (one line for one refused flag).

    check_flags           values out of range; flags that have no effect with the others or contradict them (HPU
                          lazy mode and --torch_compile); flags the project sets itself, when the user set them
                          otherwise; Trainer flags that do not apply to DETR; an --optim transformers cannot build
                          here; CUDA graphs where they are not supported (train/compiled_step.py); a
                          --model_name_or_path that cannot load (offline: at once, not after the hub's
                          retries)
    hpu_compile_default   transformers' Trainer on HPU in eager mode: --torch_compile on hpu_backend unless turned off
                          (before check_flags, which reads whether a graph compiler pads the images)
    check_model_family    the model's family, read from its config (a hub id's from the hub): a model of no
                          supported family or a refused configuration (model/families.py), and the flags its family
                          cannot run with
    static_shape_defaults on a graph-compiling device: image padding on unless turned off, the cost of what is off
    family_defaults       the family's learning rate, unless the user set one
    check_batch_fits      the batch against the training set (once the data is read, still before the model)

"Set by the user" means given on the command line (or in its recipe), whatever its value: `config.user_set_flags`.
Choices and types are checked earlier still, by the parser (`config.FlagParser`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainingArguments

from detr_ft.config import AUTO_WORKERS, DeviceArguments, FlagError, RunArguments, StaticShapeArguments
from detr_ft.launcher import launched_processes
from detr_ft.model.build import hub_revision
from detr_ft.model.families import FAMILIES, Family, UnsupportedModelError, model_family
from detr_ft.model.presets import is_preset, preset_names
from detr_ft.train.compiled_step import cuda_graph_problems
from detr_ft.train.devices import trainer_stack
from detr_ft.train.optimizer import library_optimizer
from detr_ft.train.training_arguments import PROJECT_SETS, steps_per_epoch
from detr_ft.write_failure import one_line

logger = logging.getLogger(__name__)

# The backbone's stride: a smaller image leaves no feature map.
MIN_IMAGE_SIZE = 32

# Trainer flags that do not apply to DETR, their inert value and why: any other value is refused (the stock Trainer
# crashes on them with DETR's labels; ours would skip them without a word).
NOT_FOR_DETR = {
    "label_smoothing_factor": (0.0, "DETR's class loss down-weights the no-object class instead (the model config's "
                                    "eos_coefficient)"),
}
# Habana's torch.compile backend (registered when habana_frameworks.torch is imported).
HPU_COMPILE_BACKEND = "hpu_backend"
# Flags derived from --ckpt_store_interval_epochs: any user value is refused.
DERIVED_FROM_INTERVAL = ("save_steps", "eval_steps")


def check_flags(args: RunArguments) -> None:
    """Raise FlagError naming every flag that is out of range, has no effect, or that the project would silently
    replace."""
    model, data, shapes, device, training, user_set = (args.model, args.data, args.shapes, args.device, args.training,
                                                       args.user_set)
    problems = []
    if data.image_size is not None and data.image_size < MIN_IMAGE_SIZE:
        problems.append(f"--image_size {data.image_size}: must be at least {MIN_IMAGE_SIZE} (e.g. 800, DETR's); "
                        "leave it out for the model's default")
    if shapes.num_buckets < 0:
        problems.append(f"--num_buckets {shapes.num_buckets}: must be >= 1 with --pad_objects (e.g. 1), or 0 for no "
                        "target padding")
    elif "num_buckets" in user_set and shapes.num_buckets > 0 and not shapes.pad_objects:
        problems.append(f"--num_buckets {shapes.num_buckets}: has no effect without --pad_objects (targets stay "
                        "unpadded): add --pad_objects, or drop --num_buckets")
    if shapes.image_buckets < 1:
        problems.append(f"--image_buckets {shapes.image_buckets}: must be >= 1 (e.g. 2 for CPPE-5; 1 = the "
                        "image_size x image_size square)")
    elif shapes.image_buckets > 1 and not pads_images(shapes, device, training, user_set):
        problems.append(f"--image_buckets {shapes.image_buckets}: needs --pad_images (without it a batch is padded to "
                        "its largest image): add --pad_images, or drop --image_buckets")
    if shapes.skip_nonfinite_batches and not shapes.check_finite_loss:
        problems.append("--skip_nonfinite_batches: has no effect with --check_finite_loss false (nothing reads the "
                        "loss): drop one of them")
    if training.dataloader_num_workers < AUTO_WORKERS:
        problems.append(f"--dataloader_num_workers {training.dataloader_num_workers}: must be >= 0 (e.g. 4); leave "
                        "it out for one per CPU of this process's share, minus one")
    if shapes.ckpt_store_interval_epochs < 1:
        problems.append(f"--ckpt_store_interval_epochs {shapes.ckpt_store_interval_epochs}: must be >= 1 (e.g. 1: a "
                        "checkpoint and mAP every epoch)")
    if not 0 < data.train_val_split < 1:
        problems.append(f"--train_val_split {data.train_val_split}: must be between 0 and 1, exclusive (e.g. 0.15); "
                        "give an eval split with --eval_split to carve nothing")
    if model.backbone_lr is not None and model.backbone_lr < 0:
        problems.append(f"--backbone_lr {model.backbone_lr}: must be >= 0 (e.g. 1e-5; --freeze_backbone trains no "
                        "backbone parameter)")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(training, name) < 1:
            problems.append(f"--{name} {getattr(training, name)}: must be >= 1 (e.g. 8)")
    for name, (value, why) in PROJECT_SETS.items():
        given = getattr(training, name)
        if name in user_set and given != value:
            problems.append(f"--{name} {getattr(given, 'value', given)}: the project sets {value} ({why}): drop the "
                            "flag")
    for name, (inert, why) in NOT_FOR_DETR.items():
        if getattr(training, name) != inert:
            problems.append(f"--{name} {getattr(training, name)}: does not apply to DETR ({why}): drop the flag")
    for name in DERIVED_FROM_INTERVAL:
        if name in user_set:
            problems.append(f"--{name}: checkpoints and mAP evaluations go together, every "
                            "--ckpt_store_interval_epochs epochs: drop the flag and set --ckpt_store_interval_epochs N")
    if device.use_habana and device.use_lazy_mode and training.torch_compile:
        problems.append("--torch_compile: HPU lazy mode builds its own graphs, and Habana's torch.compile backend runs "
                        "in eager mode only: drop --use_lazy_mode (eager mode), or drop --torch_compile")
    if "use_cpu" in user_set and training.use_cpu and device.device != "cpu":
        problems.append("--use_cpu: the device follows --device: use --device cpu instead")
    try:  # the library's part only: HPU lazy/eager mode is fixed when habana_frameworks is first imported
        library_optimizer(training)
    except (ValueError, ImportError) as error:
        problems.append(f"--optim {getattr(training.optim, 'value', training.optim)}: {error}")
    problems += cuda_graph_problems(training, launched_processes())
    problems += model_source_problems(model.model_name_or_path, model.model_revision)
    if len(problems) == 1:
        raise FlagError(problems[0])
    if problems:
        raise FlagError("refused flags:\n  " + "\n  ".join(problems))


def model_sources() -> str:
    return f"a local model folder (a run's --output_dir or checkpoint-N), a preset ({', '.join(preset_names())})"


def model_source_problems(name_or_path: str, revision: str | None) -> list[str]:
    """A preset, a local model folder, or a hub id: what is wrong with it that can be told without the network."""
    from huggingface_hub import constants, try_to_load_from_cache

    ways = model_sources()
    path = Path(name_or_path).expanduser()
    if is_preset(name_or_path):
        return []
    if path.is_dir():
        if not (path / "config.json").is_file():
            return [f"--model_name_or_path {name_or_path}: the folder holds no config.json: give {ways}"]
        return []
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        return [f"--model_name_or_path {name_or_path}: no such folder: give {ways}, or a hub id (org/name)"]
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name_or_path, "config.json",
                                                                          revision=revision), str):
        return [f"--model_name_or_path {name_or_path}: HF_HUB_OFFLINE is set and the hub cache has no copy: give "
                f"{ways}, or download it once with the hub reachable"]
    return []


def hpu_compile_default(args: RunArguments) -> None:
    """transformers' Trainer on HPU in eager mode compiles the forward with `torch.compile` on Habana's `hpu_backend`
    (Intel's recommended mode) unless `--torch_compile` is given; a compile backend the user did not name is
    `hpu_backend`, whether or not transformers found an HPU to choose it by itself."""
    device, training, user_set = args.device, args.training, args.user_set
    if not device.use_habana or device.use_lazy_mode or trainer_stack(device) != "hf":
        return
    if not user_set & {"torch_compile", "torch_compile_backend", "torch_compile_mode"}:
        training.torch_compile = True
        logger.info("HPU eager mode: --torch_compile is on (backend %s); --torch_compile false turns it off",
                    HPU_COMPILE_BACKEND)
    if training.torch_compile and "torch_compile_backend" not in user_set:
        training.torch_compile_backend = HPU_COMPILE_BACKEND


def check_model_family(args: RunArguments) -> Family:
    """The family of --model_name_or_path (model/families.py), read from its config before any data or weights are
    read (a hub id's from the hub, or its cache; call after `check_flags`, which refuses what can be told offline).
    FlagError for a model of no supported family, a refused configuration, or flags the family cannot run with."""
    model, shapes, device = args.model, args.shapes, args.device
    name = model.model_name_or_path
    try:
        family = model_family(name, hub_revision(name, model.model_revision))
    except UnsupportedModelError as error:
        raise FlagError(f"--model_name_or_path {name}: {error}") from error
    except OSError as error:
        raise FlagError(f"--model_name_or_path {name}: its config.json cannot be read ({one_line(error)}): give "
                        f"{model_sources()}, or a hub id the hub or its cache has") from error
    problems = []
    if family is not FAMILIES["detr"]:
        if (device.use_habana or device.trainer == "gaudi") and not shapes.buckets_on:
            problems.append(f"--num_buckets 0 (or no --pad_objects) with optimum-habana's GaudiTrainer: "
                            f"{family.name}'s own loss would run through optimum-habana's replacement of DETR's, "
                            "untested for it: add --pad_objects --num_buckets 1 (the project's criterion)")
        if device.cpu_position_embedding:
            problems.append(f"--cpu_position_embedding: has no effect on {family.name} (optimum-habana moves only "
                            "DETR's position embedding to the CPU): drop the flag")
    if len(problems) == 1:
        raise FlagError(problems[0])
    if problems:
        raise FlagError("refused flags:\n  " + "\n  ".join(problems))
    return family


def graph_compiler(device: DeviceArguments, training: TrainingArguments) -> str | None:
    """What compiles one graph per input shape on this run, if anything."""
    if device.use_habana and device.use_lazy_mode:
        return "HPU lazy mode"
    if training.torch_compile:
        return "--torch_compile"
    return None


def pads_images(shapes: StaticShapeArguments, device: DeviceArguments, training: TrainingArguments,
                user_set: set[str]) -> bool:
    """Whether images are padded to fixed canvases once `static_shape_defaults` has run."""
    return shapes.pad_images or ("pad_images" not in user_set and graph_compiler(device, training) is not None)


def static_shape_defaults(args: RunArguments) -> None:
    """On a graph-compiling device image padding is on unless the user turned it off; every static-shape flag left
    off is named in a warning with its cost."""
    shapes, user_set = args.shapes, args.user_set
    compiler = graph_compiler(args.device, args.training)
    if compiler is None:
        return
    if "pad_images" not in user_set:
        shapes.pad_images = True
        logger.info("%s: --pad_images is on (one image shape, one graph); --pad_images false turns it off", compiler)
    elif not shapes.pad_images:
        logger.warning("%s with --pad_images false: every new batch image shape compiles a new graph (minutes each "
                       "on HPU)", compiler)
    if not shapes.buckets_on:
        logger.warning("%s without --pad_objects --num_buckets N: every new per-image object count compiles a new "
                       "graph, and transformers' matcher syncs with the host several times per step", compiler)


def family_defaults(args: RunArguments, family: Family) -> None:
    """The family's learning rate (its paper's: model/families.py) where the user set none; logged when it differs
    from the project's default, DETR's."""
    learning_rate = family.recipe.learning_rate
    if "learning_rate" not in args.user_set and args.training.learning_rate != learning_rate:
        logger.info("%s: --learning_rate %g (its paper's); --learning_rate sets another", family.name, learning_rate)
        args.training.learning_rate = learning_rate


def check_batch_fits(images_per_canvas: list[int], training: TrainingArguments) -> None:
    """The training set holds at least one global batch (each canvas's last partial batch is dropped)."""
    try:
        steps_per_epoch(images_per_canvas, training)
    except ValueError as error:
        raise FlagError(str(error)) from error
