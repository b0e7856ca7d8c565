"""eval_checkpoints on a real run: table, best checkpoint, plot, caching, damaged checkpoints skipped; and
the mAP of a checkpoint is the same from the training callback, eval_checkpoints and inference.

The run (fixture `trained_run` in conftest.py, shared with test_inference.py) learns images holding one shape at
the same central place: three epochs of detr-tiny are enough for its collapsed queries to find that box, so the mAPs
compared here are not all zero.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import EVAL_CHECKPOINTS_OUTPUTS as RUN_OUTPUTS
from conftest import IMAGE_SIZE, copy_run, history_map
from conftest import TRAINED_RUN_STEPS as STEPS
from PIL import Image

from detr_ft.config import DataArguments, StaticShapeArguments
from detr_ft.data.prepare import prepare_data
from detr_ft.evaluation import eval_checkpoints, inference

pytestmark = pytest.mark.slow  # the shared entry run (trained_run), then evaluations of it

@pytest.fixture(scope="module")
def evaluated_run(trained_run: Path, tmp_path_factory) -> Path:
    """A copy of the run after one `eval_checkpoints` call that found its dataset and split in run_args.json."""
    run_dir = copy_run(trained_run, tmp_path_factory.mktemp("evaluated") / "run")
    assert eval_checkpoints.main(["--run_dir", str(run_dir)]) == 0
    return run_dir


def test_every_checkpoint_gets_a_row_and_the_best_is_named(evaluated_run: Path) -> None:
    with (evaluated_run / "checkpoint_metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == STEPS
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0, 3.0]
    assert {"map", "map_50", "map_75", "map_circle", "map_square", "map_triangle"} <= rows[0].keys()

    logged = history_map(evaluated_run)
    table = json.loads((evaluated_run / "checkpoint_metrics.json").read_text())
    best_checkpoint = max(logged, key=lambda name: (logged[name], -int(name.split("-")[1])))  # first of ties
    assert table["best"]["checkpoint"] == best_checkpoint
    assert table["best"]["map"] == pytest.approx(logged[best_checkpoint], abs=1e-6)
    assert table["evaluated_on"]["split"] == "validation"
    with Image.open(evaluated_run / "map_vs_epoch.png") as plot:
        plot.load()
        assert plot.width > 100 and plot.height > 100


def test_training_eval_checkpoints_and_inference_give_the_same_map(evaluated_run: Path, tmp_path: Path) -> None:
    logged = history_map(evaluated_run)
    assert max(logged.values()) > 0  # else agreeing proves little
    table = {r["checkpoint"]: r["metrics"] for r in
             json.loads((evaluated_run / "checkpoint_metrics.json").read_text())["checkpoints"]}
    for step in STEPS:
        name = f"checkpoint-{step}"
        out = tmp_path / name
        assert inference.main(["--model_path", str(evaluated_run / name), "--split", "validation",
                               "--output_dir", str(out)]) == 0
        inferred = json.loads((out / "metrics.json").read_text())
        assert table[name]["map"] == pytest.approx(logged[name], abs=1e-6)
        assert inferred["map"] == pytest.approx(logged[name], abs=1e-6)
        assert inferred == pytest.approx(table[name], abs=1e-6)  # every metric, per class included


def test_a_second_call_evaluates_nothing_new_unless_redo(evaluated_run: Path, monkeypatch) -> None:
    first = json.loads((evaluated_run / "checkpoint_metrics.json").read_text())
    evaluated = []

    def count_evaluation(path, split, batch_size):
        evaluated.append(path.name)
        return next(r for r in first["checkpoints"] if r["checkpoint"] == path.name)

    monkeypatch.setattr(eval_checkpoints, "evaluate_checkpoint", count_evaluation)
    assert eval_checkpoints.main(["--run_dir", str(evaluated_run)]) == 0
    assert evaluated == []
    assert json.loads((evaluated_run / "checkpoint_metrics.json").read_text()) == first
    assert eval_checkpoints.main(["--run_dir", str(evaluated_run), "--redo"]) == 0
    assert evaluated == [f"checkpoint-{step}" for step in STEPS]


def test_damaged_and_incomplete_checkpoints_are_named_and_skipped(trained_run: Path, tmp_path: Path,
                                                                  caplog) -> None:
    run_dir = copy_run(trained_run, tmp_path / "run")
    weights = run_dir / "checkpoint-12" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    interrupted = run_dir / "checkpoint-24"
    shutil.copytree(run_dir / "checkpoint-18", interrupted)
    (interrupted / "checkpoint_complete").unlink()

    with caplog.at_level("INFO"):
        assert eval_checkpoints.main(["--run_dir", str(run_dir)]) == 0

    table = json.loads((run_dir / "checkpoint_metrics.json").read_text())
    assert [r["checkpoint"] for r in table["checkpoints"]] == ["checkpoint-6", "checkpoint-18"]
    assert [s["checkpoint"] for s in table["skipped"]] == ["checkpoint-12"]
    skipped = [r.getMessage() for r in caplog.records if "checkpoint-12" in r.getMessage()]
    assert skipped and "cannot be loaded" in skipped[0]
    assert any("incomplete" in r.getMessage() and "checkpoint-24" in r.getMessage() for r in caplog.records)
    with (run_dir / "checkpoint_metrics.csv").open() as handle:
        assert [r["checkpoint"] for r in csv.DictReader(handle)] == ["checkpoint-6", "checkpoint-18"]


def test_a_carved_eval_split_is_carved_again_as_training_carved_it(trained_run: Path) -> None:
    data_dir = json.loads((trained_run / "run_args.json").read_text())["dataset_dir"]
    data = DataArguments(dataset_dir=data_dir, eval_split="held_out", train_val_split=0.25, train_val_seed=7,
                         image_size=IMAGE_SIZE)
    training_eval = prepare_data(data, StaticShapeArguments()).eval_split
    settings = dataclasses.asdict(data)  # as run_args.json holds them

    carved = eval_checkpoints.load_split(settings, "held_out")

    assert [image["id"] for image in carved.coco["images"]] == [image["id"] for image in training_eval.coco["images"]]
    assert carved.coco["annotations"] == training_eval.coco["annotations"]
    other_seed = eval_checkpoints.load_split({**settings, "train_val_seed": 8}, "held_out")
    assert [image["id"] for image in other_seed.coco["images"]] != [image["id"] for image in carved.coco["images"]]
    with pytest.raises(ValueError, match="no split"):
        eval_checkpoints.load_split(settings, "no_such_split")


@pytest.mark.parametrize("variable", ["WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"])  # torchrun, gaudi_spawn --use_mpi
def test_eval_checkpoints_and_inference_refuse_several_processes(trained_run: Path, tmp_path: Path, monkeypatch,
                                                                 caplog, variable: str) -> None:
    run_dir = copy_run(trained_run, tmp_path / "run")
    monkeypatch.setenv(variable, "2")
    assert eval_checkpoints.main(["--run_dir", str(run_dir)]) == 2
    assert inference.main(["--model_path", str(run_dir), "--output_dir", str(tmp_path / "out")]) == 2
    refusals = [r.getMessage() for r in caplog.records if "launched as 2 processes" in r.getMessage()]
    assert len(refusals) == 2 and all("plain python" in message for message in refusals)
    assert not any((run_dir / name).exists() for name in RUN_OUTPUTS) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("changed", ["per_device_eval_batch_size", "split", "dataset_dir"])
def test_other_settings_evaluate_every_checkpoint_again(evaluated_run: Path, tmp_path: Path, monkeypatch,
                                                        changed: str) -> None:
    """Scores of another split, dataset or batch size are not the ones asked for: a call with other settings
    evaluates every checkpoint again and records them in `evaluated_on`; the same settings again reuse them."""
    run_dir = Path(shutil.copytree(evaluated_run, tmp_path / "run"))  # evaluated_run stays as the others read it
    first = json.loads((run_dir / "checkpoint_metrics.json").read_text())
    data_dir = json.loads((run_dir / "run_args.json").read_text())["dataset_dir"]
    new = {"per_device_eval_batch_size": 4, "split": "train",  # the run's: 8 and validation
           "dataset_dir": str(shutil.copytree(data_dir, tmp_path / "data"))}[changed]
    expected_on = {**first["evaluated_on"], ("dataset" if changed == "dataset_dir" else changed): new}
    assert expected_on != first["evaluated_on"]
    evaluated = []

    def count_evaluation(path, split, batch_size):
        evaluated.append((path.name, split.name, batch_size))
        return next(r for r in first["checkpoints"] if r["checkpoint"] == path.name)

    monkeypatch.setattr(eval_checkpoints, "evaluate_checkpoint", count_evaluation)
    argv = ["--run_dir", str(run_dir), f"--{changed}", str(new)]
    assert eval_checkpoints.main(argv) == 0
    assert evaluated == [(f"checkpoint-{step}", expected_on["split"], expected_on["per_device_eval_batch_size"])
                         for step in STEPS]
    assert json.loads((run_dir / "checkpoint_metrics.json").read_text())["evaluated_on"] == expected_on

    evaluated.clear()
    assert eval_checkpoints.main(argv) == 0  # the settings just recorded: nothing to evaluate
    assert evaluated == []
    assert json.loads((run_dir / "checkpoint_metrics.json").read_text())["evaluated_on"] == expected_on
