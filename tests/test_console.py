"""What a person reads when the entry's output goes to a pipe (a file, a CI log): a line per logging step and the mAP
table, no progress-bar redraws, no repeated library noise."""

import subprocess

import pytest
from entry_runs import entry_argv, entry_command

from detr_ft.evaluation.report import format_map_table
from detr_ft.train.map_history import read_history

pytestmark = pytest.mark.slow  # an entry run


def test_piped_entry_prints_log_lines_and_the_map_table_without_redraws_or_noise(tiny_coco, tmp_path):
    # Bytes, not text: text mode would turn the carriage returns of progress-bar redraws into newlines.
    finished = subprocess.run(entry_command(entry_argv(tiny_coco, tmp_path)), capture_output=True, timeout=600)
    stdout, stderr = finished.stdout.decode(), finished.stderr.decode()
    assert finished.returncode == 0, stderr[-3000:]

    assert "\r" not in stdout + stderr  # a progress bar redraws its line with carriage returns
    assert "The used dataset had no length" not in stdout + stderr  # accelerate, at INFO, once per evaluation batch
    assert format_map_table(read_history(tmp_path)) in stdout
    assert sum(line.startswith("{'loss'") for line in stdout.splitlines()) == 4  # 4 steps, logged each
