"""What a person reads: one logging set-up for every command, progress bars only where a terminal shows them.

Our messages at INFO, libraries' at WARNING: their INFO lines repeat on every evaluation (accelerate's "The used
dataset had no length ..." once per evaluation batch) and say nothing a user acts on. Piped into a file or a CI log,
a progress bar's redraws become thousands of lines: there the Trainer's own log line per logging step replaces them.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def on_terminal() -> bool:
    """Whether progress bars have a terminal to redraw on (tqdm writes to stderr)."""
    return sys.stderr.isatty()


def setup_logging(level: int = logging.INFO) -> None:
    """detr_ft's messages at `level`, every other library's at WARNING, in one format."""
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING)
    logging.getLogger("detr_ft").setLevel(level)
    if not on_terminal():  # transformers' own bars too ("Writing model shards" at every checkpoint)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
