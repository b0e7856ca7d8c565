"""Data loader workers: how many, how they start, and how they end with the training process.

- How many: `loader_workers` turns --dataloader_num_workers -1 (the project's default, `config.AUTO_WORKERS`) into one
  per CPU of this process's share, one left for the training loop (`default_dataloader_workers`): with 0 workers
  (the HF default) a device waits while every batch is read, augmented and resized.
- How they start: from a forkserver (`worker_start_method`). Forking the training process, which runs other
  threads, can leave the worker deadlocked before it runs a line: CPython before 3.12 takes in the child a lock that
  another thread may have held at the fork (python/cpython#112275), and each epoch forks fresh workers while the
  previous epoch's worker-queue thread may still be ending. A forkserver is a single-threaded process,
  started once, that forks the workers from itself. It imports what they need once (`preload_worker_modules`), so a
  worker still starts in milliseconds, and every epoch still gets fresh workers seeded as with fork (resume stays
  bit-exact).
- How they end: torch's worker watchdog checks the worker's parent, which under a forkserver is the server: a
  trainer killed without shutting its loader down would leave the worker (and the server it keeps alive) running
  forever, so a worker ends itself once the process that pickled its dataset is gone (`exit_with`).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time

from transformers import TrainingArguments

from detr_ft.config import AUTO_WORKERS

MAX_AUTO_WORKERS = 8
# What a data loader worker unpickles besides our modules: the Trainer's worker seeding (`preload_worker_modules`).
WORKER_MODULES = ("transformers.trainer_utils",)


def default_dataloader_workers() -> int:
    """The CPUs this process may use, shared by the processes of this machine, one left for the training loop itself
    (at least 1, at most MAX_AUTO_WORKERS)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(MAX_AUTO_WORKERS, cpus // local_processes - 1))


def loader_workers(training: TrainingArguments) -> dict:
    """TrainingArguments fields for the data loader workers: their number and start method."""
    workers = training.dataloader_num_workers
    workers = default_dataloader_workers() if workers == AUTO_WORKERS else workers
    return {"dataloader_num_workers": workers, **worker_start_method(training, workers)}


def worker_start_method(training: TrainingArguments, workers: int) -> dict[str, str]:
    """`dataloader_multiprocessing_context="forkserver"` when there are workers and the user chose no other start
    method (transformers 4.55, the Gaudi stack, has no such argument: its workers fork)."""
    chosen = getattr(training, "dataloader_multiprocessing_context", "no such argument")
    if workers == 0 or chosen not in (None, "forkserver"):
        return {}
    preload_worker_modules()
    return {"dataloader_multiprocessing_context": "forkserver"}


def preload_worker_modules() -> None:
    """Have the forkserver import this package's modules imported so far and WORKER_MODULES before it forks a
    worker. A worker imports the entry script again as `__mp_main__` (multiprocessing's forkserver does not preload
    `__main__` as documented), then unpickles the dataset, the collator and the Trainer's worker seeding: without
    the preload every worker of every epoch imports transformers, datasets and albumentations anew."""
    package = __name__.split(".")[0]
    imported = sorted(name for name in sys.modules if name.split(".")[0] == package)
    multiprocessing.set_forkserver_preload([*imported, *WORKER_MODULES])


def exit_with(pid: int, interval_s: float = 1.0) -> None:
    """End this process (a data loader worker) once process `pid` is gone; checked every `interval_s` by a daemon
    thread."""

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True).start()
