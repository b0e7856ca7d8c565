"""Tiny runs of the real entry (run_object_detection.py) shared by the resume, determinism and non-finite tests.

A run is detr-tiny on 32 px synthetic images: 4 train images in batches of 2 (2 steps per epoch, 2 epochs), a
checkpoint and an mAP evaluation every epoch, every step's loss logged in trainer_state.json. The data
(`tiny_coco`), the shared uninterrupted run (`reference_run`) and `logged_losses` are fixtures in conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "run_object_detection.py"


def entry_argv(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset_dir", str(data_dir), "--model_name_or_path", "detr-tiny", "--image_size", "32",
        "--pad_images", "--pad_objects", "--num_buckets", "1", "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--num_train_epochs", "2",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--device", "cpu",
        "--deterministic", "--seed", "7", "--audit_host_syncs", *extra,
    ]


def run_in_process(argv: list[str]) -> int:
    """main(argv) in this process; the global switches full determinism flips are put back afterwards."""
    from run_object_detection import main

    environment = dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return main(argv)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        os.environ.clear()
        os.environ.update(environment)


def entry_command(argv: list[str]) -> list[str]:
    return [sys.executable, str(ENTRY), *argv]


def kill_after_checkpoint(command: list[str], marker, timeout: float = 300.0) -> int:
    """Start `command`, SIGKILL it as soon as `marker` exists, return its exit code."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def run_two_processes(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The entry under `torch.distributed.run` with 2 processes on CPU (gloo), one thread each.

    A launch still running after `timeout` seconds fails the test with the Python stack of every worker: they are
    aborted (SIGABRT, which faulthandler answers with each thread's stack) and the launch's output tail is shown.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ENTRY),
               *argv, "--ddp_backend", "gloo"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=environment) as launch:
        try:
            stdout, stderr = launch.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for worker in child_processes(launch.pid):
                os.kill(worker, signal.SIGABRT)
            try:
                stdout, stderr = launch.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                launch.kill()
                stdout, stderr = launch.communicate()
            stacks = "".join(line for line in stderr.splitlines(keepends=True)
                             if not line.startswith("Extension modules:"))  # faulthandler's list of 140 modules
            raise AssertionError(f"the 2-process launch was still running after {timeout:.0f} s; its workers were "
                                 f"aborted.\n--- stdout (tail) ---\n{stdout[-3000:]}\n--- stderr (tail) ---\n"
                                 f"{stacks[-20000:]}") from None
    return subprocess.CompletedProcess(command, launch.returncode, stdout, stderr)


def launch_failure(result: subprocess.CompletedProcess, lines_per_rank: int = 40) -> str:
    """What a failed 2-process launch printed, for an assertion message: each worker's own lines first (torch
    prefixes them "[rankN]:"), since torchrun's report at the tail names the failing rank but not its error."""
    ranks: dict[str, list[str]] = {}
    for line in result.stderr.splitlines():
        if line.startswith("[rank") and "]:" in line:
            ranks.setdefault(line[1:line.index("]:")], []).append(line)
    own = "".join(f"--- {rank} (last {lines_per_rank} lines) ---\n" + "\n".join(lines[-lines_per_rank:]) + "\n"
                  for rank, lines in sorted(ranks.items()))
    return f"exit status {result.returncode}\n{own}--- stderr (tail) ---\n{result.stderr[-2000:]}"


def child_processes(pid: int) -> list[int]:
    """The direct children of process `pid` (Linux /proc)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


TIMING_METRICS = ("runtime", "samples_per_second", "steps_per_second")


def eval_records(run_dir: Path) -> list[dict]:
    """eval_history.json without timings, each checkpoint named relative to its run (runs live in other folders)."""
    records = json.loads((run_dir / "eval_history.json").read_text())
    return [{**record, "checkpoint": Path(record["checkpoint"]).name,
             "metrics": {k: v for k, v in record["metrics"].items() if k not in TIMING_METRICS}} for record in records]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")
