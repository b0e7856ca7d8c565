"""The run folder's json files are written whole, also while another process writes the same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from entry_runs import REPO

from detr_ft import run_files
from detr_ft.run_files import write_json_atomic


def write_in_another_process(path, payload: dict) -> None:
    code = "import json, sys; from pathlib import Path; from detr_ft.run_files import write_json_atomic; " \
           "write_json_atomic(Path(sys.argv[1]), json.loads(sys.argv[2]))"
    subprocess.run([sys.executable, "-c", code, str(path), json.dumps(payload)], cwd=REPO, check=True)


def test_a_write_finished_by_another_process_in_between_still_lands(tmp_path, monkeypatch):
    """Every process of a torchrun launch wrote run_args.json through one temporary file name: one process's rename
    moved the other's temporary away, whose own rename then failed (FileNotFoundError) and ended that process.
    Here another process writes the file whole between this one's temporary file and its rename."""
    path = tmp_path / "run_args.json"
    rename = os.replace
    interleaved = []

    def rename_after_another_writer(source, destination):
        if not interleaved:
            interleaved.append(source)
            write_in_another_process(path, {"writer": 2})
        rename(source, destination)

    monkeypatch.setattr(run_files.os, "replace", rename_after_another_writer)
    write_json_atomic(path, {"writer": 1})

    assert interleaved
    assert json.loads(path.read_text()) == {"writer": 1}  # the last rename wins
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
