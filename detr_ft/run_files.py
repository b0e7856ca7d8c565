"""The json files of a run folder: written atomically, read back by later tools.

`run_args.json` holds our own flags (the Trainer keeps TrainingArguments as a pickle) plus the batch sizes and
optimizer settings: what eval_checkpoints and inference read to rebuild the run's data and shapes, and what a rerun
into the same folder is compared with (train/run_folder.py). It is written once the model is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

RUN_ARGUMENTS_FILE = "run_args.json"


def write_json_atomic(path: Path, payload) -> None:
    """Write to a temporary file and rename it over `path`: a crash never leaves half a file. The temporary file is
    the process's own: processes writing the same file must not rename each other's."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


def read_json_list(path: Path) -> list:
    """A json list written by `write_json_atomic`; empty when the file does not exist yet."""
    return json.loads(path.read_text()) if path.exists() else []


def flat_run_arguments(*arguments, **values) -> dict:
    """The argument dataclasses `arguments` and `values` as one flat dict: what run_args.json holds."""
    return {k: v for group in arguments for k, v in dataclasses.asdict(group).items()} | values


def save_run_arguments(output_dir: str | Path, flat: dict) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(output_dir) / RUN_ARGUMENTS_FILE, flat)


def read_run_arguments(path: str | Path) -> dict:
    """The flags of the run that made `path` (its run dir or one of its checkpoints); {} when unknown."""
    path = Path(path)
    for folder in (path, path.parent):
        if (folder / RUN_ARGUMENTS_FILE).exists():
            return json.loads((folder / RUN_ARGUMENTS_FILE).read_text())
    return {}
