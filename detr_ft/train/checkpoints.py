"""Checkpoints that are complete, or not there at all.

transformers' Trainer writes `checkpoint-N/` file by file (weights, optimizer, RNG, trainer_state.json), so a
crash during a save leaves a folder that looks like a checkpoint. `CheckpointCompleteCallback` runs after the
Trainer's save has returned on every process, flushes the files to disk and only then writes a marker file; resume
and evaluation only trust folders that have it. A run resumed from step N may overwrite checkpoints past N in place,
so it takes their markers away first.

A checkpoint can still be damaged after its marker was written (a disk error, a copy cut short, a file replaced):
resume checks the files it will read (`checkpoint_damage`) and falls back to the newest checkpoint that passes, naming
the ones it skips. The checks are cheap: safetensors headers, json, zip directories, and for the pickles the Trainer
loads at resume (optimizer, scheduler, scaler, RNG states) torch's weights-only unpickler run as the Trainer runs it,
on a memory map: it reads the pickle and the zip directory, not the tensors, so an optimizer state of any size
costs little more than its pickle. A pickle that unpickler refuses (one that would run code, say) would stop the
resumed run with torch's advice to load it unsafely; resume counts it as a damaged file, like a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from transformers import TrainerCallback, TrainingArguments
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from detr_ft.write_failure import describe_write_failure as describe_failed_write
from detr_ft.write_failure import is_disk_full, one_line

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_PATTERN.match(path.name).group(1))


def all_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every `checkpoint-N` folder of a run, in step order, complete or not."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    folders = [p for p in run_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(folders, key=checkpoint_step)


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints whose save finished, in step order; the others are named in a warning."""
    checkpoints = all_checkpoints(run_dir)
    incomplete = [p.name for p in checkpoints if not (p / COMPLETE_MARKER).exists()]
    if incomplete:
        logger.warning("%s: ignoring incomplete checkpoints (a save was interrupted): %s", run_dir,
                       ", ".join(incomplete))
    return [p for p in checkpoints if (p / COMPLETE_MARKER).exists()]


def fsync_files(folder: Path) -> None:
    """Flush the folder's files and the folder itself to disk: a marker written after them survives no longer."""
    for path in [*(p for p in folder.iterdir() if p.is_file()), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class CheckpointCompleteCallback(TrainerCallback):
    """Marks `checkpoint-<step>` complete once every process's part of the Trainer's save of it has returned."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            for checkpoint in all_checkpoints(args.output_dir):
                if checkpoint_step(checkpoint) > state.global_step:
                    (checkpoint / COMPLETE_MARKER).unlink(missing_ok=True)

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the other processes write their own rng_state_<rank>.pth
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            fsync_files(checkpoint)
            (checkpoint / COMPLETE_MARKER).write_text(f"{state.global_step}\n")
            fsync_files(checkpoint)


# What the Trainer loads with torch.load(weights_only=True) at resume; the RNG states with numpy's types allowed.
RESUMED_PICKLES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")
RNG_STATE = re.compile(r"^rng_state(_\d+)?\.pth$")


def weights_only_refusal(error: pickle.UnpicklingError) -> str:
    """Why torch's weights-only unpickler refused a file, without torch's advice to load it with weights_only=False
    (the first paragraph) or its pointers to documentation and issues."""
    lines = [line.strip() for line in str(error).splitlines()[1:]]
    reasons = [line for line in lines if line and not line.startswith(("Check the documentation", "Please file"))]
    return " ".join(reasons) or "refused"


def load_as_the_trainer_does(path: Path) -> None:
    """torch.load(weights_only=True) of `path`, as the Trainer loads it at resume, on a memory map (no tensor read)."""
    if RNG_STATE.match(path.name):
        from transformers.trainer import safe_globals  # the numpy types of the RNG states; both stacks name it so

        allowed = safe_globals()
    else:
        allowed = contextlib.nullcontext()
    with allowed:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def file_damage(path: Path) -> str | None:
    """Why the checkpoint file `path` cannot be read back, or None: missing; truncated safetensors (their header must
    cover the file); json that does not parse; torch files whose zip directory (at the end of the file) is gone;
    pickles the Trainer loads at resume that torch's weights-only unpickler refuses."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, "pt"):
                pass
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".pt", ".pth", ".bin"):
            zipfile.ZipFile(path).close()
            if RESUMED_PICKLES.match(path.name):
                load_as_the_trainer_does(path)
    except pickle.UnpicklingError as error:
        return (f"{path.name} is damaged (torch's weights-only unpickler, which the Trainer loads it with, refuses it: "
                f"{weights_only_refusal(error)})")
    except Exception as error:  # safetensors, json, zipfile and torch each raise their own types for a damaged file
        return f"{path.name} is damaged ({one_line(error)})"
    return None


def checkpoint_damage(checkpoint: Path) -> str | None:
    """What makes `checkpoint` unloadable at resume (`file_damage` of its files, the first found), or None."""
    return next(filter(None, (file_damage(path) for path in sorted(checkpoint.iterdir()) if path.is_file())), None)


def last_step(training: TrainingArguments, steps_per_epoch: int) -> int:
    """The step a run ends at: --max_steps, else --num_train_epochs' worth of steps (as the Trainer counts them)."""
    return training.max_steps if training.max_steps > 0 else math.ceil(training.num_train_epochs * steps_per_epoch)


def checkpoint_state(checkpoint: str | Path) -> dict:
    """A checkpoint's trainer_state.json: global_step, and save_steps, the run's checkpoint interval in steps."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())


def final_model_damage(output_dir: str | Path) -> str | None:
    """What is wrong with the final model a run saves into its output dir (a save cut short, a full disk), or None."""
    return file_damage(Path(output_dir) / SAFE_WEIGHTS_NAME) or file_damage(Path(output_dir) / CONFIG_NAME)


def resume_checkpoint(training: TrainingArguments) -> str | None:
    """--resume_from_checkpoint if given, else the output dir's newest complete checkpoint that is not damaged:
    rerunning resumes."""
    if training.resume_from_checkpoint:
        return training.resume_from_checkpoint
    for checkpoint in reversed(complete_checkpoints(training.output_dir)):
        damage = checkpoint_damage(checkpoint)
        if damage is None:
            logger.info("resuming from %s (the last complete checkpoint in --output_dir)", checkpoint)
            return str(checkpoint)
        logger.warning("skipping %s (complete when saved): %s", checkpoint, damage)
    return None


def describe_write_failure(error: BaseException, output_dir: str | Path) -> str | None:
    """An error message naming the disk when `error` is a failed write of a full disk (or quota); None otherwise.
    Only a full disk: during training a file that cannot be opened may be one read, not written."""
    if not is_disk_full(error):
        return None
    return describe_failed_write(error, f"--output_dir {output_dir}", output_dir,
                                 "choose another --output_dir; rerunning resumes from the last complete checkpoint")
