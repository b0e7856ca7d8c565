"""The json files of a run folder: written atomically, read back by later tools.

`run_args.json` holds our own flags (the Trainer keeps TrainingArguments as a pickle) plus the batch sizes and
optimizer settings: what eval_checkpoints and inference read to rebuild the run's data and shapes, and what a rerun
into the same folder is compared with (train/run_folder.py). It is written once the model is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RUN_ARGUMENTS_FILE = "run_args.json"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write `path`'s content to, renamed over `path` once written: a crash never leaves half a
    file, and a failed write (a full disk) leaves the old file and no temporary one. The temporary file is the
    process's own: processes writing the same file must not rename each other's."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomic(path: Path, payload, indent: int | None = 2) -> None:
    """`payload` as json into `path`, whole or not at all (`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=indent))


def read_json_list(path: Path) -> list:
    """A json list written by `write_json_atomic`; empty when the file does not exist yet."""
    return json.loads(path.read_text()) if path.exists() else []


def flat_run_arguments(*arguments, **values) -> dict:
    """The argument dataclasses `arguments` and `values` as one flat dict: what run_args.json holds."""
    return {k: v for group in arguments for k, v in dataclasses.asdict(group).items()} | values


def save_run_arguments(output_dir: str | Path, flat: dict) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(output_dir) / RUN_ARGUMENTS_FILE, flat)


class RunArgumentsError(ValueError):
    """A run_args.json that cannot be read: the flags of the run it belongs to are unknown."""


def read_run_arguments(path: str | Path) -> dict:
    """The flags of the run that made `path` (its run dir or one of its checkpoints); {} when unknown. A file there
    that cannot be read raises RunArgumentsError naming it: guessing the run's data or flags would be worse."""
    path = Path(path)
    for folder in (path, path.parent):
        file = folder / RUN_ARGUMENTS_FILE
        if not file.exists():
            continue
        try:
            flags = json.loads(file.read_text())
            if not isinstance(flags, dict):
                raise ValueError(f"a json {type(flags).__name__}, not an object of flags")
        except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, UnicodeDecodeError
            raise RunArgumentsError(
                f"{file} cannot be read ({type(error).__name__}: {error}); it records the flags of the run in "
                f"{folder}. Remove it to go on without it: evaluation and inference then need --dataset_dir (and the "
                "run's --split), and a training rerun into the folder writes it again from its own flags, which "
                "nothing then checks against the run's"
            ) from error
        return flags
    return {}
