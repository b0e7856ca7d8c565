"""A run folder belongs to one run: a rerun with other run-defining flags is refused before anything is written
(--overwrite_output_dir starts over), a second process on the folder is refused while the first holds its lock,
and the lock of a killed process is taken again."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import weakref

import pytest
from entry_runs import REPO, entry_argv, run_in_process

from detr_ft.run_files import RUN_ARGUMENTS_FILE
from detr_ft.train.run_folder import LOCK_FILE, RunFolderError, differing_flags, lock_run_folder


@pytest.fixture
def data_dir(tiny_coco):
    return tiny_coco


@pytest.fixture
def earlier_run(tmp_path, reference_run):
    """A copy of a finished tiny run (checkpoint-2, checkpoint-4, final model, run_args.json)."""
    return shutil.copytree(reference_run, tmp_path / "run")


@pytest.mark.slow
def test_rerun_with_other_flags_is_refused_before_anything_is_written(earlier_run, data_dir, caplog):
    run_args = (earlier_run / RUN_ARGUMENTS_FILE).read_bytes()
    argv = entry_argv(data_dir, earlier_run, "--image_size", "64", "--learning_rate", "5e-4", "--optim", "sgd")

    assert run_in_process(argv) == 2

    assert "--image_size 32 -> 64" in caplog.text and "--learning_rate 0.001 -> 0.0005" in caplog.text
    assert "--optim adamw_torch_fused -> sgd" in caplog.text  # the checkpoint's optimizer state is AdamW's
    assert "--overwrite_output_dir" in caplog.text
    assert (earlier_run / RUN_ARGUMENTS_FILE).read_bytes() == run_args


@pytest.mark.slow
def test_rerun_with_harmless_changes_resumes(earlier_run, data_dir):
    """Flags that do not define the run may change: the finished run stays as it is; asked for more epochs, it
    resumes and trains on with them."""
    run_args, summary = (earlier_run / RUN_ARGUMENTS_FILE).read_bytes(), (earlier_run / "run_summary.json").read_bytes()
    argv = entry_argv(data_dir, earlier_run, "--logging_steps", "2", "--per_device_eval_batch_size", "1")

    assert run_in_process(argv) == 0
    assert (earlier_run / RUN_ARGUMENTS_FILE).read_bytes() == run_args  # nothing to train: nothing written
    assert (earlier_run / "run_summary.json").read_bytes() == summary

    assert run_in_process([*argv, "--num_train_epochs", "3"]) == 0
    assert json.loads((earlier_run / RUN_ARGUMENTS_FILE).read_text())["per_device_eval_batch_size"] == 1
    assert json.loads((earlier_run / "run_summary.json").read_text())["steps"] == 6


@pytest.mark.slow
def test_overwrite_output_dir_starts_over(earlier_run, data_dir):
    argv = entry_argv(data_dir, earlier_run, "--image_size", "64", "--max_steps", "1", "--overwrite_output_dir")

    assert run_in_process(argv) == 0

    assert [p.name for p in earlier_run.glob("checkpoint-*")] == ["checkpoint-1"]  # this run's; 2 and 4 are gone
    assert json.loads((earlier_run / RUN_ARGUMENTS_FILE).read_text())["image_size"] == 64
    assert json.loads((earlier_run / "run_summary.json").read_text())["steps"] == 1


def test_only_run_defining_flags_are_compared():
    saved = {"image_size": 32, "dataset_dir": "a", "dataset_name": "cppe-5", "logging_steps": 1}
    assert differing_flags(saved, {**saved, "logging_steps": 5, "num_train_epochs": 9}) == []
    assert differing_flags(saved, {**saved, "dataset_name": "other"}) == []  # unused beside --dataset_dir
    assert differing_flags(saved, {**saved, "image_size": 64, "dataset_dir": "b"}) == ["dataset_dir", "image_size"]
    assert differing_flags({"image_size": 32}, {"image_size": 32, "learning_rate": 1.0}) == []  # older run_args
    assert differing_flags({"image_buckets": 1, "optim": "adamw_torch_fused"},
                           {"image_buckets": 3, "optim": "sgd"}) == ["image_buckets", "optim"]


HOLD_LOCK = (
    "import sys, time\n"
    "from detr_ft.train.run_folder import lock_run_folder\n"
    "lock = lock_run_folder(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "time.sleep(300)\n"
)


def test_second_process_on_one_output_dir_is_refused_until_the_first_dies(data_dir, tmp_path, monkeypatch,
                                                                          caplog):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built in a folder another run holds")

    monkeypatch.setattr("detr_ft.model.build.build_model", no_model)
    output_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output_dir)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"

        assert run_in_process(entry_argv(data_dir, output_dir)) == 2
        assert f"is in use by another training run (process {holder.pid})" in caplog.text
        assert not (output_dir / RUN_ARGUMENTS_FILE).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    assert (output_dir / LOCK_FILE).exists()  # left behind by the killed process: not a lock any more
    lock = lock_run_folder(output_dir)
    try:
        with pytest.raises(RunFolderError, match="in use by another training run"):
            lock_run_folder(output_dir)  # a second open file description conflicts even in one process
    finally:
        lock.close()


HOLD_LOCK_AND_FORK = (
    "import os, sys, time\n"
    "from detr_ft.train.run_folder import lock_run_folder\n"
    "lock = lock_run_folder(sys.argv[1])\n"
    "child = os.fork()  # as a DataLoader worker is forked\n"
    "if child == 0:\n"
    "    time.sleep(300)\n"
    "    os._exit(0)\n"
    "print(child, flush=True)\n"
    "time.sleep(300)\n"
)


def test_lock_of_a_killed_run_is_free_while_its_forked_workers_live_on(tmp_path):
    """A killed run's loader workers outlive it for seconds: they must not hold its lock (a rerun would be refused)."""
    output_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK_AND_FORK, str(output_dir)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the forked child still lives
        lock_run_folder(output_dir).close()
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_closed_lock_is_not_kept_alive_for_forked_children(tmp_path):
    """Each lock once registered its own at-fork handler, which held the file object for the process's life."""
    lock = lock_run_folder(tmp_path / "run")
    lock.close()
    closed = weakref.ref(lock)
    del lock
    gc.collect()

    assert closed() is None


@pytest.mark.parametrize("variable", ["RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"])  # torchrun, gaudi_spawn --use_mpi
def test_only_rank_zero_locks(tmp_path, monkeypatch, variable):
    """mpirun sets no RANK (on Gaudi, importing habana_frameworks copies Open MPI's rank into it, not PMI_RANK): a
    process that read no rank locked as rank 0, and all but one process were refused."""
    monkeypatch.setenv(variable, "1")
    assert lock_run_folder(tmp_path / "run") is None
    assert not (tmp_path / "run").exists()
