"""Checkpoints that are complete, or not there at all.

transformers' Trainer writes `checkpoint-N/` file by file (weights, optimizer, RNG, trainer_state.json), so a
crash during a save leaves a folder that looks like a checkpoint. `CheckpointCompleteCallback` runs after the
Trainer's save has returned on every process, flushes the files to disk and only then writes a marker file; resume
and evaluation only trust folders that have it. A run resumed from step N may overwrite checkpoints past N in place,
so it takes their markers away first.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch.distributed as dist
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


def resume_checkpoint(training: TrainingArguments) -> str | None:
    """--resume_from_checkpoint if given, else the output dir's last complete checkpoint: rerunning resumes."""
    if training.resume_from_checkpoint:
        return training.resume_from_checkpoint
    checkpoints = complete_checkpoints(training.output_dir)
    if checkpoints:
        logger.info("resuming from %s (the last complete checkpoint in --output_dir)", checkpoints[-1])
        return str(checkpoints[-1])
    return None
