"""A run folder belongs to one run.

- A lock: `lock_run_folder` takes an exclusive `flock` on `<output_dir>/.run.lock` for the whole run and refuses a
  second process. The OS releases it when the process ends, however it ends (kill -9 included), so a lock file left
  by a dead process is simply taken again: there is no stale-lock logic. A forked child (a DataLoader worker) closes
  its copy of the lock at once: a flock lives while any process holds the file open, and the workers of a killed run
  outlive it by seconds, long enough to refuse its rerun. Under DDP only rank 0 takes it (as torchrun or mpirun
  numbers it: `detr_ft.launcher`); the launcher stops the other ranks when rank 0 exits.
- A folder it can write: an --output_dir that is a file, or that cannot be created or written (a read-only file
  system, no permission), is refused before anything else, naming it.
- The same run: before anything is written, `check_same_run` compares the flags that define the run (data, classes,
  image size, static shapes, model, optimizer settings a checkpoint's optimizer state would silently replace:
  `config.run_defining_flags`) with the folder's run_args.json. The same: rerunning resumes. Different: refused,
  naming the flags, unless --overwrite_output_dir, which removes the earlier run's checkpoints and starts over. A
  run_args.json that cannot be read is refused too (`run_files.read_run_arguments` says what removing it means).
  Other flags (logging, eval batch size, --num_train_epochs to extend a run, the device) may change on resume.
- A finished run stays finished: when the folder's newest complete checkpoint is at the run's last step and its
  final model is whole, a rerun with the same flags does nothing and writes nothing, not even the lock
  (`FinishedRun`). With a final model that is missing or damaged (its save failed) the rerun saves it from that
  checkpoint instead of training further (the entry's `train`).

`claim_run_folder` does all of this, in that order.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import weakref
from pathlib import Path
from typing import IO

from transformers import TrainingArguments

from detr_ft.config import run_defining_flags
from detr_ft.launcher import launched_rank
from detr_ft.run_files import RUN_ARGUMENTS_FILE, RunArgumentsError, read_run_arguments
from detr_ft.train.checkpoints import (
    all_checkpoints,
    checkpoint_state,
    complete_checkpoints,
    final_model_damage,
    last_step,
)

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
# The locks this process holds, closed in every forked child by one handler, registered once: a handler per lock
# would pile up (at-fork handlers cannot be removed) and keep every closed lock file alive.
HELD_LOCKS: weakref.WeakSet[IO] = weakref.WeakSet()


def close_held_locks() -> None:
    """In a forked child: close the parent's lock files, so that the lock ends with the parent, not with the child."""
    for handle in list(HELD_LOCKS):
        handle.close()


os.register_at_fork(after_in_child=close_held_locks)

class FinishedRun(Exception):
    """The folder's run has trained its last step and saved its final model: nothing is left to do."""


class RunFolderError(ValueError):
    """The output dir cannot be written, is in use, or holds another run (or one whose flags cannot be read)."""


def unusable_folder_message(output_dir: str | Path, error: OSError) -> str:
    """Why `output_dir` cannot be created or written, and the fix."""
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        return f"--output_dir {output_dir} is a file, not a folder: choose another --output_dir"
    return (f"--output_dir {output_dir} cannot be written ({error.strerror}: {error.filename}): choose another "
            "--output_dir, or make that one writable")


def lock_run_folder(output_dir: str | Path) -> IO | None:
    """Hold an exclusive lock on `output_dir` until the returned file is closed or the process ends."""
    if launched_rank() != 0:
        return None
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handle = open(Path(output_dir) / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
    except OSError as error:  # an existing file, a read-only file system, no permission
        raise RunFolderError(unusable_folder_message(output_dir, error)) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderError(f"--output_dir {output_dir} is in use by another training run (process {holder}): "
                             "wait for it to end, or choose another --output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    HELD_LOCKS.add(handle)
    return handle


def holds_a_run(output_dir: str | Path) -> bool:
    """Whether the folder holds trained weights of a run (a checkpoint or a final model)."""
    return bool(all_checkpoints(output_dir)) or (Path(output_dir) / "model.safetensors").exists()


def differing_flags(saved: dict, current: dict) -> list[str]:
    """Run-defining flags whose values differ; flags an older run_args.json lacks are not compared, and the hub
    dataset's name only matters without a --dataset_dir."""
    names = [n for n in run_defining_flags() if n in saved and n in current and saved[n] != current[n]]
    if saved.get("dataset_dir") or current.get("dataset_dir"):
        names = [n for n in names if n != "dataset_name"]
    return names


def check_same_run(output_dir: Path, current: dict) -> dict:
    """Refuse to resume another run; the folder's run_args.json ({} when there is none)."""
    if not holds_a_run(output_dir):
        return {}
    try:
        saved = read_run_arguments(output_dir) if (output_dir / RUN_ARGUMENTS_FILE).exists() else {}
    except RunArgumentsError as error:
        raise RunFolderError(str(error)) from None
    differing = differing_flags(saved, current)
    if differing:
        changes = ", ".join(f"--{n} {saved[n]} -> {current[n]}" for n in differing)
        raise RunFolderError(f"--output_dir {output_dir} holds a run with other flags ({changes}); rerunning there "
                             "resumes that run. Rerun with its flags to resume it, choose another --output_dir, or "
                             "add --overwrite_output_dir to start over (its checkpoints are removed)")
    return saved


def finished_run(output_dir: Path, saved: dict, training: TrainingArguments) -> str | None:
    """Why the folder's run has nothing left to do (its last step trained, its final model whole), or None.

    The last step is --max_steps, or --num_train_epochs' worth of the steps per epoch the run counted (its
    checkpoints' interval, save_steps, over --ckpt_store_interval_epochs), so a rerun asking for more epochs goes on."""
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints or final_model_damage(output_dir):
        return None
    state = checkpoint_state(checkpoints[-1])
    end = last_step(training, state["save_steps"] // saved.get("ckpt_store_interval_epochs", 1))
    if state["global_step"] < end:
        return None
    return (f"--output_dir {output_dir} holds this run, finished: {checkpoints[-1].name} is its last step ({end}) "
            "and its final model is saved. Nothing to train: raise --max_steps or --num_train_epochs to train further")


def start_over(output_dir: Path) -> None:
    """--overwrite_output_dir: remove the earlier run's checkpoints."""
    checkpoints = all_checkpoints(output_dir)
    for checkpoint in checkpoints:
        shutil.rmtree(checkpoint)
    if checkpoints:
        logger.warning("--overwrite_output_dir: removed the checkpoints of the earlier run in %s; starting over",
                       output_dir)


def claim_run_folder(output_dir: str | Path, current: dict, training: TrainingArguments) -> IO | None:
    """The run folder for a run with the flags `current` (run_args.json's form), locked (see the module doc): raises
    RunFolderError for another run, a folder in use or one it cannot write, FinishedRun for this run finished."""
    output_dir = Path(output_dir)
    if not training.overwrite_output_dir:
        finished = finished_run(output_dir, check_same_run(output_dir, current), training)
        if finished:
            raise FinishedRun(finished)
    lock = lock_run_folder(output_dir)
    if training.overwrite_output_dir:
        start_over(output_dir)
    return lock
