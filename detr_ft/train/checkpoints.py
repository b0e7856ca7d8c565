"""Checkpoints that are complete, or not there at all.

transformers' Trainer writes `checkpoint-N/` file by file (weights, optimizer, RNG, trainer_state.json), so a
crash during a save leaves a folder that looks like a checkpoint. `CheckpointCompleteCallback` runs after the
Trainer's save has returned on every process, flushes the files to disk and only then writes a marker file; resume
and evaluation only trust folders that have it. A run resumed from step N may overwrite checkpoints past N in place,
so it takes their markers away first.

A checkpoint can still be damaged after its marker was written (a disk error, a copy cut short): resume checks the
files it will read (`checkpoint_damage`, cheap: headers and zip directories) and falls back to the newest checkpoint
that passes, naming the ones it skips.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch.distributed as dist
from safetensors import safe_open
from transformers import TrainerCallback, TrainingArguments

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


def checkpoint_damage(checkpoint: Path) -> str | None:
    """What makes `checkpoint` unloadable, or None: truncated safetensors (their header must cover the file),
    torch files whose zip directory (at the end of the file) is gone, unreadable trainer_state.json."""
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(path, "pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin"):
                zipfile.ZipFile(path).close()
            elif path.name == "trainer_state.json":
                json.loads(path.read_text())
        except Exception as error:  # safetensors, zipfile and json each raise their own types for a damaged file
            return f"{path.name}: {type(error).__name__}: {error}"
    return None


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
        logger.warning("skipping %s: complete when saved, damaged since (%s)", checkpoint, damage)
    return None


# torch.save's C++ writer reports a failed write (a full disk most often) without the OS error.
WRITE_FAILURE_MESSAGES = ("iostream error", "file write failed", "No space left on device")


def describe_write_failure(error: BaseException, output_dir: str | Path) -> str | None:
    """An error message naming the disk when `error` is a failed write (a full disk, a quota); None otherwise."""
    disk_full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not (disk_full or any(text in str(error) for text in WRITE_FAILURE_MESSAGES)):
        return None
    free_mb = shutil.disk_usage(output_dir).free / 2**20 if Path(output_dir).exists() else float("nan")
    return (f"writing to --output_dir {output_dir} failed, most likely the disk is full ({free_mb:.0f} MiB free "
            f"there): {type(error).__name__}: {error}. Free space or choose another --output_dir; rerunning resumes "
            "from the last complete checkpoint")
