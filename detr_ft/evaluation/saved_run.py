"""A saved model and the data of the run that trained it, as eval_checkpoints and inference need them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import transformers
from transformers import PreTrainedModel

from detr_ft.config import TRAINING_DEFAULTS, DataArguments
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.images import Preprocessing
from detr_ft.data.labels import ClassMapping
from detr_ft.data.prepare import validated_splits
from detr_ft.data.sources import CocoSplit
from detr_ft.evaluation.loop import predict_rows
from detr_ft.launcher import launched_processes
from detr_ft.model.families import UnsupportedModelError, model_family
from detr_ft.run_files import RUN_ARGUMENTS_FILE
from detr_ft.train.checkpoints import file_damage
from detr_ft.write_failure import one_line


def several_processes_error(command: str) -> str | None:
    """Why `command` does not run under a multi-process launcher (every process would write the same files while
    evaluating a share of the images), or None in a single process."""
    processes = launched_processes()
    if processes == 1:
        return None
    return (f"{command} evaluates in one process, but was launched as {processes} processes (torchrun, gaudi_spawn "
            f"or mpirun): run it with plain python")


# What from_pretrained and the saved processor read: each must be there and readable.
MODEL_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")


class DamagedModelError(ValueError):
    """A saved model folder with a file missing or unreadable; the message names the folder and the file."""


@dataclass(frozen=True)
class SavedModel:
    model: PreTrainedModel  # its family's class
    preprocessing: Preprocessing  # as it was trained: image size, padding, canvases


def load_saved_model(path: str | Path, also_required: tuple[str, ...] = ()) -> SavedModel:
    """The model saved at `path`, as the class of the family its config names (in eval mode), and its preprocessing.
    A file of MODEL_FILES or `also_required` that is missing or damaged (truncated weights, json that does not
    parse), weights missing or misshapen, or a model of no supported family raise DamagedModelError naming it."""
    damage = next(filter(None, (file_damage(Path(path) / name) for name in (*MODEL_FILES, *also_required))), None)
    if damage:
        raise DamagedModelError(f"{path} cannot be loaded: {damage}")
    try:
        family = model_family(str(path))
    except UnsupportedModelError as error:
        raise DamagedModelError(f"{path} cannot be loaded: {error}") from error
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its loading report lists unexpected keys too; judged below
    try:
        model, loading = family.model_class.from_pretrained(path, use_safetensors=True, output_loading_info=True)
        preprocessing = Preprocessing.from_saved(path)
    except Exception as error:  # parseable files that still do not make a model: transformers raises many types
        raise DamagedModelError(f"{path} cannot be loaded: {one_line(error)}") from error
    finally:
        transformers.logging.set_verbosity(verbosity)
    # Unexpected keys are fine (BatchNorm's num_batches_tracked of presets); absent or misshapen ones are not.
    damaged = loading["missing_keys"] or loading["mismatched_keys"]
    if damaged:
        raise DamagedModelError(f"{path} cannot be loaded: model.safetensors has weights missing or misshapen: "
                                f"{sorted(damaged)[:5]}")
    return SavedModel(model.eval(), preprocessing)


def eval_batch_size(settings: dict, requested: int | None) -> int:
    """The batch size asked for, else the run's (without padded images it changes the padding, hence the boxes)."""
    return requested or settings.get("per_device_eval_batch_size") or TRAINING_DEFAULTS["per_device_eval_batch_size"]


def load_split(settings: dict, split: str) -> CocoSplit:
    """`split` of the run's dataset as training saw it (`prepare.validated_splits`); only the run's own eval
    split may be carved from train."""
    if not (settings.get("dataset_dir") or settings.get("dataset_name")):
        raise ValueError(f"no {RUN_ARGUMENTS_FILE} beside the model to name its dataset: pass --dataset_dir")
    names = {f.name for f in dataclasses.fields(DataArguments)}
    data = DataArguments(**{k: v for k, v in settings.items() if k in names} | {"eval_split": split})
    return validated_splits(data, carve_missing_eval=split == settings.get("eval_split"))[1]


def split_rows(saved: SavedModel, split: CocoSplit, classes: ClassMapping, batch_size: int,
               image_size: int | None = None, pad_images: bool = False, show_progress: bool = True) -> np.ndarray:
    """Rows (N, K, 7) of `predict_rows` on `split`, preprocessed as the model was trained (its saved processor:
    fit into image_size, padded to image_size x image_size, to its aspect-ratio canvases or not) unless overridden
    (another image_size drops the canvases, which were chosen for the trained one)."""
    trained = saved.preprocessing
    same_size = image_size in (None, trained.image_size)
    preprocessing = Preprocessing(image_size or trained.image_size, pad_images or trained.pad_images,
                                  trained.image_canvases if same_size else ())
    dataset = DetectionDataset(split, classes.category_to_label, preprocessing.image_size,
                               canvases=preprocessing.canvases)
    return predict_rows(saved.model, dataset, preprocessing.canvases, batch_size, show_progress)
