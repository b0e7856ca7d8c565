"""Bad inputs and faults around a finished run: damaged checkpoint files, an unreadable run_args.json, bad flags,
output folders that cannot be written, a full disk, a kill in the middle, hostile pickles. Each row: the fault, the
command, its exit code and the words of its one-line message (no traceback); and what must not be lost (the good
checkpoints' rows, the rows scored before a kill, the files a refused command finds).

Faults are applied to a copy of the shared run (`trained_run`: checkpoint-6, -12, -18 and a final model). A read-only
or full file system is a mount in a private mount namespace (`unshare --mount`) around a subprocess, gone with it:
those rows are skipped, saying why, where the machine allows no such mount.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TRAINED_RUN_STEPS as STEPS
from conftest import copy_run, history_map
from entry_runs import ENTRY, REPO, entry_argv, run_in_process
from safetensors.torch import load_file
from transformers import TrainingArguments

from detr_ft.evaluation import eval_checkpoints, inference
from detr_ft.train.checkpoints import CheckpointCompleteCallback, resume_checkpoint
from detr_ft.train.run_folder import LOCK_FILE

GOOD = ["checkpoint-6", "checkpoint-18"]  # the rows left when checkpoint-12 is damaged
Fault = Callable[[Path], None]  # what is done to the run copy


def truncate(relative: str) -> Fault:
    def fault(run: Path) -> None:
        content = (run / relative).read_bytes()
        (run / relative).write_bytes(content[: len(content) // 2])
    return fault


def overwrite(relative: str, text: str) -> Fault:
    def fault(run: Path) -> None:
        (run / relative).write_text(text)
    return fault


def remove(relative: str) -> Fault:
    def fault(run: Path) -> None:
        (run / relative).unlink()
    return fault


def untouched(run: Path) -> None:
    pass


COMMANDS = {"eval-all": eval_checkpoints.main, "inference": inference.main, "train": run_in_process}


@dataclass(frozen=True)
class Case:
    fault: Fault
    command: str  # eval-all, inference or train (the entry), run in this process
    argv: tuple[str, ...]  # {run}: the run copy, {tmp}: a scratch folder, {data}: the run's dataset
    exit_code: int
    words: tuple[str, ...]  # all in one line the command logs (an error, or for exit 0 the warning)


EVAL = ("--run_dir", "{run}")
INFER = ("--output_dir", "{tmp}/out", "--model_path")
TRAIN = ("--dataset_dir", "{data}", "--model_name_or_path", "detr-tiny", "--image_size", "64", "--pad_images",
         "--pad_objects", "--report_to", "none", "--device", "cpu", "--output_dir")
CORRUPT = "{\"half\": "  # json cut short, as a write cut short leaves it

CASES = {
    # eval-all: an unreadable file of one checkpoint skips that checkpoint, naming it and the file; the others score
    "eval: preprocessor_config.json not json": Case(
        overwrite("checkpoint-12/preprocessor_config.json", CORRUPT), "eval-all", EVAL, 0,
        ("skipping", "checkpoint-12", "preprocessor_config.json is damaged", "JSONDecodeError")),
    "eval: preprocessor_config.json missing": Case(
        remove("checkpoint-12/preprocessor_config.json"), "eval-all", EVAL, 0,
        ("skipping", "checkpoint-12", "preprocessor_config.json is missing")),
    "eval: config.json not json": Case(
        overwrite("checkpoint-12/config.json", CORRUPT), "eval-all", EVAL, 0,
        ("skipping", "checkpoint-12", "config.json is damaged", "JSONDecodeError")),
    "eval: config.json missing": Case(
        remove("checkpoint-12/config.json"), "eval-all", EVAL, 0,
        ("skipping", "checkpoint-12", "config.json is missing")),
    "eval: trainer_state.json not json": Case(
        overwrite("checkpoint-12/trainer_state.json", CORRUPT), "eval-all", EVAL, 0,
        ("skipping", "checkpoint-12", "trainer_state.json is damaged", "JSONDecodeError")),
    "eval: trainer_state.json missing": Case(
        remove("checkpoint-12/trainer_state.json"), "eval-all", EVAL, 0,
        ("skipping", "checkpoint-12", "trainer_state.json is missing")),
    "eval: model.safetensors truncated": Case(
        truncate("checkpoint-12/model.safetensors"), "eval-all", EVAL, 0,
        ("skipping", "checkpoint-12", "model.safetensors is damaged", "SafetensorError")),
    "eval: model.safetensors missing": Case(
        remove("checkpoint-12/model.safetensors"), "eval-all", EVAL, 0,
        ("skipping", "checkpoint-12", "model.safetensors is missing")),
    "eval: checkpoint_metrics.json (an earlier call's) not json": Case(
        overwrite("checkpoint_metrics.json", CORRUPT), "eval-all", EVAL, 0,
        ("checkpoint_metrics.json cannot be read", "evaluating every checkpoint again")),
    # eval-all: refused in one line
    "eval: run_args.json not json": Case(
        overwrite("run_args.json", CORRUPT), "eval-all", EVAL, 2,
        ("run_args.json cannot be read", "JSONDecodeError", "Remove it", "--dataset_dir")),
    "eval: run_args.json not an object": Case(
        overwrite("run_args.json", "[]"), "eval-all", EVAL, 2,
        ("run_args.json cannot be read", "not an object of flags", "Remove it")),
    "eval: --run_dir does not exist": Case(
        untouched, "eval-all", ("--run_dir", "{tmp}/no_such_run"), 2, ("--run_dir", "no_such_run", "no such folder")),
    # inference: refused in one line before any image is run
    "infer: --model_path does not exist": Case(
        untouched, "inference", (*INFER, "{tmp}/no_such_model"), 2,
        ("--model_path", "no_such_model", "no such folder")),
    "infer: --model_path is a file": Case(
        untouched, "inference", (*INFER, "{run}/config.json"), 2, ("--model_path", "a file, not a folder")),
    "infer: --threshold 1.5": Case(
        untouched, "inference", (*INFER, "{run}", "--threshold", "1.5"), 2, ("--threshold 1.5", "[0, 1]")),
    "infer: --threshold nan": Case(
        untouched, "inference", (*INFER, "{run}", "--threshold", "nan"), 2, ("--threshold nan", "[0, 1]")),
    "infer: --threshold -0.1": Case(
        untouched, "inference", (*INFER, "{run}", "--threshold", "-0.1"), 2, ("--threshold -0.1", "[0, 1]")),
    "infer: model.safetensors truncated": Case(
        truncate("model.safetensors"), "inference", (*INFER, "{run}"), 2,
        ("model.safetensors is damaged", "SafetensorError", "another --model_path")),
    "infer: model.safetensors missing (no final model)": Case(
        remove("model.safetensors"), "inference", (*INFER, "{run}"), 2,
        ("model.safetensors is missing", "another --model_path")),
    "infer: config.json not json": Case(
        overwrite("checkpoint-6/config.json", CORRUPT), "inference", (*INFER, "{run}/checkpoint-6"), 2,
        ("checkpoint-6 cannot be loaded", "config.json is damaged", "JSONDecodeError")),
    "infer: preprocessor_config.json not json": Case(
        overwrite("preprocessor_config.json", CORRUPT), "inference", (*INFER, "{run}"), 2,
        ("preprocessor_config.json is damaged", "JSONDecodeError", "another --model_path")),
    "infer: run_args.json not json (checkpoint given)": Case(
        overwrite("run_args.json", CORRUPT), "inference", (*INFER, "{run}/checkpoint-6"), 2,
        ("run_args.json cannot be read", "JSONDecodeError", "Remove it")),
    "infer: --output_dir is a file": Case(
        untouched, "inference", ("--output_dir", "{run}/run_args.json", "--model_path", "{run}"), 2,
        ("--output_dir", "is a file, not a folder")),
    "infer: --images_dir does not exist": Case(
        untouched, "inference", (*INFER, "{run}", "--images_dir", "{tmp}/no_such_images"), 2,
        ("--images_dir", "no such folder")),
    # the training entry: refused before anything is read or written
    "train: rerun into a folder whose run_args.json is not json": Case(
        overwrite("run_args.json", CORRUPT), "train", (*TRAIN, "{run}"), 2,
        ("run_args.json cannot be read", "JSONDecodeError", "Remove it", "training rerun")),
    "train: --output_dir is a file": Case(
        untouched, "train", (*TRAIN, "{run}/run_args.json"), 2, ("--output_dir", "is a file, not a folder")),
    "train: --output_dir under a file": Case(
        untouched, "train", (*TRAIN, "{run}/run_args.json/run"), 2, ("--output_dir", "cannot be written")),
}


def the_line(caplog, level: int, words: tuple[str, ...]) -> str:
    """The one log line at `level` holding every word (a message over several lines would be no one line)."""
    lines = [r.getMessage() for r in caplog.records if r.levelno == level and all(w in r.getMessage() for w in words)]
    assert lines, f"no {logging.getLevelName(level)} line holds {words}:\n{caplog.text}"
    assert "\n" not in lines[0]
    return lines[0]


def files(folder: Path) -> dict[Path, bytes]:
    """Every file under `folder` and its bytes, but the lock file a training run rewrites with its process id."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE}


def metrics_rows(run: Path) -> tuple[list[str], list[str]]:
    """The checkpoints of checkpoint_metrics.json and of checkpoint_metrics.csv."""
    table = json.loads((run / "checkpoint_metrics.json").read_text())
    with (run / "checkpoint_metrics.csv").open() as handle:
        return [r["checkpoint"] for r in table["checkpoints"]], [r["checkpoint"] for r in csv.DictReader(handle)]


@pytest.mark.slow  # the shared run (trained_run), then evaluations of it
@pytest.mark.parametrize("name", CASES)
def test_fault(name: str, trained_run: Path, tmp_path: Path, caplog) -> None:
    case = CASES[name]
    run = copy_run(trained_run, tmp_path / "run")
    data_dir = json.loads((run / "run_args.json").read_text())["dataset_dir"]
    case.fault(run)
    before = files(run)
    argv = [a.format(run=run, tmp=tmp_path, data=data_dir) for a in case.argv]

    with caplog.at_level(logging.INFO):
        assert COMMANDS[case.command](argv) == case.exit_code

    the_line(caplog, logging.WARNING if case.exit_code == 0 else logging.ERROR, case.words)
    if case.command == "eval-all" and case.exit_code == 0:
        damaged_checkpoint = "checkpoint-12" in case.words
        scored, in_csv = metrics_rows(run)
        assert scored == in_csv == (GOOD if damaged_checkpoint else [f"checkpoint-{s}" for s in STEPS])
        skipped = json.loads((run / "checkpoint_metrics.json").read_text())["skipped"]
        assert [s["checkpoint"] for s in skipped] == (["checkpoint-12"] if damaged_checkpoint else [])
        logged = history_map(run)
        assert all(r["metrics"]["map"] == pytest.approx(logged[r["checkpoint"]], abs=1e-6)
                   for r in json.loads((run / "checkpoint_metrics.json").read_text())["checkpoints"])
    else:  # refused: nothing written, nothing changed
        assert files(run) == before
        assert not (tmp_path / "out").exists()


# Private mounts: a read-only bind mount or a small tmpfs in a mount namespace of its own, gone with the process.
@pytest.fixture(scope="session")
def private_mounts(tmp_path_factory) -> None:
    point = tmp_path_factory.mktemp("mount_check")
    try:
        check = subprocess.run(["unshare", "--mount", "sh", "-ec", f"mount -t tmpfs -o size=64k tmpfs {point}"],
                               capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no unshare (util-linux) on this machine: a read-only or full file system cannot be set up")
    if check.returncode != 0:
        pytest.skip(f"this machine allows no private mount (unshare --mount, then mount -t tmpfs): "
                    f"{check.stderr.strip()}")


def in_mount_namespace(script: str) -> subprocess.CompletedProcess:
    """`script` (sh, stops at the first failing mount) in a mount namespace of its own, from the repository root."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          env=environment, timeout=600)


def read_only(folder: Path) -> str:
    return f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "


PYTHON = sys.executable
READ_ONLY_CASES = {
    # fault (the folder made read-only), command, exit code, words of its one line on stderr
    "eval: run folder on a read-only file system": (
        "{run}", f"{PYTHON} -m detr_ft.evaluation.eval_checkpoints --run_dir {{run}}", 4,
        ("writing to the run folder", "it is not writable", "Read-only file system", "rerunning scores only")),
    "infer: --output_dir on a read-only file system": (
        "{tmp}/ro", f"{PYTHON} -m detr_ft.evaluation.inference --model_path {{run}} --output_dir {{tmp}}/ro/out", 2,
        ("--output_dir", "/ro/out cannot be created", "Read-only file system", "choose another --output_dir")),
    "train: --output_dir on a read-only file system": (
        "{tmp}/ro", f"{PYTHON} {ENTRY} {' '.join(TRAIN)} {{tmp}}/ro/run", 2,
        ("--output_dir", "/ro/run cannot be written", "Read-only file system", "choose another --output_dir")),
}


def one_line_on_stderr(stderr: str, words: tuple[str, ...]) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if all(w in line for w in words)]
    assert len(lines) == 1, f"no one line holds {words}:\n{stderr}"
    return lines[0]


@pytest.mark.slow  # the shared run (trained_run), commands in subprocesses
@pytest.mark.parametrize("name", READ_ONLY_CASES)
def test_read_only_file_system(name: str, trained_run: Path, tmp_path: Path, private_mounts) -> None:
    folder, command, exit_code, words = READ_ONLY_CASES[name]
    run = copy_run(trained_run, tmp_path / "run")
    (tmp_path / "ro").mkdir()
    data_dir = json.loads((run / "run_args.json").read_text())["dataset_dir"]
    values = {"run": run, "tmp": tmp_path, "data": data_dir}
    before = files(run)

    result = in_mount_namespace(read_only(Path(folder.format(**values))) + command.format(**values))

    assert result.returncode == exit_code, result.stderr
    one_line_on_stderr(result.stderr, words)
    assert files(run) == before
    assert not list((tmp_path / "ro").iterdir())


def every_checkpoint_scored(table: dict) -> bool:
    return [r["checkpoint"] for r in table["checkpoints"]] == [f"checkpoint-{s}" for s in STEPS]


def detections_of_every_image(predictions: list) -> bool:
    return len({p["image_id"] for p in predictions}) == 16  # trained_run's validation images


FULL_DISK_CASES = {
    # the run copied onto the disk or not, the command, words of its one line on stderr, the file a rerun after
    # freeing space writes and what it must hold
    "eval: the run folder's disk full": (
        True, f"{PYTHON} -m detr_ft.evaluation.eval_checkpoints --run_dir {{disk}}",
        ("writing to the run folder", "most likely the disk is full", "0 MiB free", "Free space"),
        "checkpoint_metrics.json", every_checkpoint_scored),
    "infer: the --output_dir's disk full": (
        False, f"{PYTHON} -m detr_ft.evaluation.inference --model_path {{run}} --output_dir {{disk}}/out",
        ("writing to --output_dir", "most likely the disk is full", "0 MiB free", "Free space"),
        "out/predictions.json", detections_of_every_image),
}


@pytest.mark.slow  # the shared run (trained_run), two calls of a command in a subprocess
@pytest.mark.parametrize("name", FULL_DISK_CASES)
def test_full_disk(name: str, trained_run: Path, tmp_path: Path, private_mounts) -> None:
    """A full disk: exit 4 in one line, no file left half-written; once space is freed the same command completes."""
    run_on_disk, command, words, written, complete = FULL_DISK_CASES[name]
    run = copy_run(trained_run, tmp_path / "run")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    command = command.format(disk=disk, run=run)
    copy = f"cp -r {run}/checkpoint-* {run}/run_args.json {run}/eval_history.json {disk}/" if run_on_disk else ":"
    script = f"""set -e
mount -t tmpfs -o size=16m tmpfs {disk}
{copy}
find {disk} -type f | sort > {out}/before
dd if=/dev/zero of={disk}/filler bs=4k 2> /dev/null || true  # the disk full to its last page
status=0; {command} > /dev/null 2> {out}/full.log || status=$?; echo $status > {out}/full.status
find {disk} -type f ! -name filler | sort > {out}/after
rm {disk}/filler
status=0; {command} > /dev/null 2> {out}/freed.log || status=$?; echo $status > {out}/freed.status
cp {disk}/{written} {out}/written
"""

    result = in_mount_namespace(script)

    assert result.returncode == 0, result.stderr
    assert (out / "full.status").read_text().strip() == "4", (out / "full.log").read_text()
    one_line_on_stderr((out / "full.log").read_text(), words)
    assert (out / "after").read_text() == (out / "before").read_text()  # no half-written or temporary file
    assert (out / "freed.status").read_text().strip() == "0", (out / "freed.log").read_text()
    assert complete(json.loads((out / "written").read_text()))


TERMINATED_DURING_CHECKPOINT_12 = """
import os, signal, sys
from detr_ft.evaluation import eval_checkpoints

score = eval_checkpoints.evaluate_checkpoint


def terminated_while_scoring_checkpoint_12(path, split, batch_size):
    if path.name == "checkpoint-12":
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` does: no handler, the process ends here
    return score(path, split, batch_size)


eval_checkpoints.evaluate_checkpoint = terminated_while_scoring_checkpoint_12
sys.exit(eval_checkpoints.main(sys.argv[1:]))
"""


@pytest.mark.slow  # the shared run (trained_run), an evaluation in a subprocess
def test_sigterm_keeps_the_rows_scored_and_the_rerun_scores_only_the_others(trained_run: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    run = copy_run(trained_run, tmp_path / "run")
    killed = subprocess.run([PYTHON, "-c", TERMINATED_DURING_CHECKPOINT_12, "--run_dir", str(run)], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGTERM, killed.stderr
    kept = json.loads((run / "checkpoint_metrics.json").read_text())
    assert [r["checkpoint"] for r in kept["checkpoints"]] == ["checkpoint-6"]
    assert kept["best"]["checkpoint"] == "checkpoint-6"

    score, scored = eval_checkpoints.evaluate_checkpoint, []

    def counted(path, split, batch_size):
        scored.append(path.name)
        return score(path, split, batch_size)

    monkeypatch.setattr(eval_checkpoints, "evaluate_checkpoint", counted)
    assert eval_checkpoints.main(["--run_dir", str(run)]) == 0

    assert scored == ["checkpoint-12", "checkpoint-18"]
    table = json.loads((run / "checkpoint_metrics.json").read_text())
    assert table["checkpoints"][0] == kept["checkpoints"][0]
    in_json, in_csv = metrics_rows(run)
    assert in_json == in_csv == [f"checkpoint-{s}" for s in STEPS]
    best = max(table["checkpoints"], key=lambda r: r["metrics"]["map"])
    assert table["best"] == {"epoch": best["epoch"], "step": best["step"], "checkpoint": best["checkpoint"],
                             "map": best["metrics"]["map"]}


# Resume: a pickle the Trainer would refuse at resume is a damaged checkpoint, skipped and named.
class RunsCode:
    """Unpickled, it would create the folder `marker`: proof that the pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def torch_save(path: Path, payload) -> None:  # the zip form the Trainer writes
    torch.save(payload, path)


def plain_pickle(path: Path, payload) -> None:  # an older, unzipped form
    path.write_bytes(pickle.dumps(payload))


PICKLE_CASES = {
    # the file replaced, how it is written, words of the warning that skips checkpoint-2
    "rng_state.pth, torch.save with code": ("rng_state.pth", torch_save, ("rng_state.pth is damaged",
                                                                         "weights-only", "GLOBAL posix.mkdir")),
    "optimizer.pt, torch.save with code": ("optimizer.pt", torch_save, ("optimizer.pt is damaged", "weights-only",
                                                                       "GLOBAL posix.mkdir")),
    "scheduler.pt, torch.save with code": ("scheduler.pt", torch_save, ("scheduler.pt is damaged", "weights-only",
                                                                       "GLOBAL posix.mkdir")),
    "optimizer.pt, plain pickle with code": ("optimizer.pt", plain_pickle, ("optimizer.pt is damaged",
                                                                           "not a zip file")),
}


@pytest.mark.parametrize("name", PICKLE_CASES)
def test_a_pickle_the_trainer_would_refuse_is_a_damaged_checkpoint(name: str, tmp_path: Path, tiny_trainer,
                                                                    caplog) -> None:
    file_name, write, words = PICKLE_CASES[name]
    tiny_trainer(tmp_path, max_steps=2, callbacks=[CheckpointCompleteCallback()]).train()
    marker = tmp_path / "code_ran"
    write(tmp_path / "checkpoint-2" / file_name, {"state": RunsCode(marker)})

    resume_from = resume_checkpoint(TrainingArguments(output_dir=str(tmp_path)))

    assert resume_from == str(tmp_path / "checkpoint-1")
    line = the_line(caplog, logging.WARNING, ("skipping", "checkpoint-2", *words))
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line  # not torch's advice
    assert not marker.exists()
    rerun = tiny_trainer(tmp_path, max_steps=2, callbacks=[CheckpointCompleteCallback()])
    rerun.train(resume_from_checkpoint=resume_from)  # resumes from checkpoint-1 and writes checkpoint-2 again
    assert rerun.state.global_step == 2
    assert resume_checkpoint(TrainingArguments(output_dir=str(tmp_path))) == str(tmp_path / "checkpoint-2")
    assert not marker.exists()


@pytest.mark.slow  # entry runs
def test_the_entry_resumes_past_a_checkpoint_whose_rng_state_would_run_code(reference_run: Path, tiny_coco: Path,
                                                                           tmp_path: Path, caplog) -> None:
    run = Path(shutil.copytree(reference_run, tmp_path / "run"))  # checkpoint-2, checkpoint-4 (2 epochs)
    marker = tmp_path / "code_ran"
    torch_save(run / "checkpoint-4" / "rng_state.pth", {"python": RunsCode(marker)})

    assert run_in_process(entry_argv(tiny_coco, run, "--num_train_epochs", "3")) == 0

    the_line(caplog, logging.WARNING, ("skipping", "checkpoint-4", "rng_state.pth is damaged", "weights-only"))
    assert "resuming from" in caplog.text and str(run / "checkpoint-2") in caplog.text
    assert not marker.exists()
    assert json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


TRAIN_FULL_DISK_CASES = {
    # tmpfs size, a file the failed run left, the words of its one line on stderr. A detr-tiny checkpoint is about
    # 12.5 MB (weights 4.1, optimizer 8.3); the run ends with its first checkpoint (--max_steps 2: an epoch of
    # tiny_coco), then saves the final model (weights 4.1).
    "train: disk full during a checkpoint save": (
        "8m", "checkpoint-2/optimizer.pt", ("writing to --output_dir", "most likely the disk is full", "MiB free",
                                            "RuntimeError")),
    "train: disk full during the final save": (
        "15m", "checkpoint-2/checkpoint_complete",
        ("writing to --output_dir", "most likely the disk is full", "MiB free", "SafetensorError")),
}


@pytest.mark.slow  # two entry runs in a subprocess
@pytest.mark.parametrize("name", TRAIN_FULL_DISK_CASES)
def test_training_on_a_full_disk_exits_4_and_a_rerun_with_space_finishes_without_training_further(
        name: str, tiny_coco: Path, tmp_path: Path, private_mounts) -> None:
    """Torch's checkpoint writer and safetensors' final save each report a full disk their own way: both exit 4 in
    one line. The checkpoint cut short has no completion marker; once space is freed the rerun finishes the run: from
    scratch when no checkpoint was complete, else by saving the final model from the last one (no step more)."""
    size, left, words = TRAIN_FULL_DISK_CASES[name]
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    command = " ".join([PYTHON, str(ENTRY), *entry_argv(tiny_coco, disk / "run", "--max_steps", "2")])
    script = f"""set -e
mount -t tmpfs -o size={size} tmpfs {disk}
status=0; {command} > /dev/null 2> {out}/full.log || status=$?; echo $status > {out}/full.status
test -e {disk}/run/{left} && echo yes > {out}/left || true
test -e {disk}/run/checkpoint-2/checkpoint_complete && echo yes > {out}/complete_before || true
mount -o remount,size=64m {disk}
status=0; {command} > /dev/null 2> {out}/freed.log || status=$?; echo $status > {out}/freed.status
cp -r {disk}/run {out}/run
"""

    result = in_mount_namespace(script)

    assert result.returncode == 0, result.stderr
    assert (out / "full.status").read_text().strip() == "4", (out / "full.log").read_text()
    one_line_on_stderr((out / "full.log").read_text(), words)
    assert (out / "left").exists()  # the write that failed was the one the case names
    assert (out / "freed.status").read_text().strip() == "0", (out / "freed.log").read_text()
    run = out / "run"
    assert [p.name for p in sorted(run.glob("checkpoint-*"))] == ["checkpoint-2"]  # no step more than asked for
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    final, last = load_file(run / "model.safetensors"), load_file(run / "checkpoint-2" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in last)
    if (out / "complete_before").exists():  # the final save failed: the rerun saved it from the checkpoint
        assert "saving it from there" in (out / "freed.log").read_text()


@pytest.mark.slow  # entry runs
@pytest.mark.parametrize("max_steps", ["3", "4"], ids=["inside an epoch", "at an epoch's end"])
def test_a_finished_run_stays_finished_byte_for_byte(max_steps: str, tiny_coco: Path, tmp_path: Path, caplog) -> None:
    """Rerunning a finished run trains nothing and writes nothing, whether it ended inside an epoch or at its end
    (tiny_coco: 2 steps an epoch); asking for more steps trains on from the last checkpoint."""
    argv = entry_argv(tiny_coco, tmp_path / "run", "--max_steps", max_steps, "--ckpt_store_interval_epochs", "1")
    assert run_in_process(argv) == 0
    every_file = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*") if p.is_file()}

    with caplog.at_level(logging.INFO, logger="detr_ft"):  # the root logger stays at WARNING, as for a user
        assert run_in_process(argv) == 0
        assert run_in_process(argv) == 0

    assert {p: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in (tmp_path / "run").rglob("*") if p.is_file()} == every_file  # the lock file too
    assert f"finished: checkpoint-{max_steps} is its last step ({max_steps})" in caplog.text
    assert run_in_process([*argv, "--max_steps", "6"]) == 0
    assert json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
