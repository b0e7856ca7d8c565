"""What a person reads when the entry's output goes to a pipe (a file, a CI log): a line per logging step and the mAP
table, no progress-bar redraws, no repeated library noise."""

import subprocess

import pytest
from entry_runs import entry_argv, entry_command

from detr_ft.evaluation.report import format_map_table
from detr_ft.train.map_history import read_history

pytestmark = pytest.mark.slow  # an entry run


def test_piped_entry_prints_log_lines_and_the_map_table_without_redraws_or_noise(tiny_coco, tmp_path):
    finished = subprocess.run(entry_command(entry_argv(tiny_coco, tmp_path)), capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    printed = finished.stdout + finished.stderr

    assert "\r" not in printed  # a progress bar redraws its line with carriage returns
    assert "The used dataset had no length" not in printed  # accelerate, at INFO, once per evaluation batch
    assert format_map_table(read_history(tmp_path)) in finished.stdout
    assert sum(line.startswith("{'loss'") for line in finished.stdout.splitlines()) == 4  # 4 steps, logged each
