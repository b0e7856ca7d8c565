"""Evaluation under `torchrun --nproc_per_node 2` (gloo, CPU) when the processes' evaluation batches have different
label shapes: the run completes and eval_history.json holds the mAP of a 1-process evaluation of the same checkpoint.

The data: 3 evaluation images holding 3, 1 and 2 objects, padded with one filler to 4, and 4 training images with at
most 2 objects (bucket 2), evaluation images 1 and 2 among them, so that a few steps of detr-tiny find their objects
and the mAPs compared are not zero. With eval batch 2 per process, process 0 evaluates images 0-1 (targets padded to
the extra evaluation bucket, T = 3) and process 1 image 2 and the filler (T = 2); without buckets the per-image label
lists differ in length too. Gathering those labels across processes is what used to crash.

With aspect-ratio canvases (`--image_buckets 3`) the evaluation set is grouped by canvas and each group is padded
with fillers of its canvas to a multiple of batch x processes, so every process's batch holds one canvas; the
gathered rows must still land on their images.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CANVAS_RUN_ARGUMENTS, extend_to_aspect_ratios
from entry_runs import entry_argv, launch_failure, run_two_processes

from detr_ft.evaluation import eval_checkpoints

STEPS, INTERVAL = 30, 15  # 4 images, batch 2 per process: one step an epoch; a checkpoint and evaluation every 15
CANVAS_STEPS, CANVAS_INTERVAL = 90, 45  # 6 images, 3 canvases, batch 1 per process: 3 steps an epoch


def read_split(data_dir: Path, split: str) -> dict:
    return json.loads((data_dir / "annotations" / f"{split}.json").read_text())


def object_counts(coco: dict) -> list[int]:
    return [sum(a["image_id"] == image["id"] for a in coco["annotations"]) for image in coco["images"]]


def ragged_eval_coco(source: Path, folder: Path) -> Path:
    """A copy of `source` (synthetic 32 px COCO) whose training split is validation images 1-2 and training images
    0-1."""
    data_dir = shutil.copytree(source, folder)
    train, validation = read_split(data_dir, "train"), read_split(data_dir, "validation")
    picked = [(validation, image) for image in validation["images"][1:]]
    picked += [(train, image) for image in train["images"][:2]]
    images, annotations = [], []
    for new_id, (coco, image) in enumerate(picked, start=1):
        images.append({**image, "id": new_id})
        annotations += [{**a, "image_id": new_id} for a in coco["annotations"] if a["image_id"] == image["id"]]
    annotations = [{**a, "id": i} for i, a in enumerate(annotations, start=1)]
    (data_dir / "annotations" / "train.json").write_text(json.dumps({**train, "images": images,
                                                                     "annotations": annotations}))
    return data_dir


def logs_the_one_process_map(run_dir: Path, steps: int = STEPS, interval: int = INTERVAL) -> None:
    """eval_history.json of the 2-process run holds, at every checkpoint, the mAP of `make eval-all-checkpoints` (one
    process, the run's data and batch size), and some mAP is above 0."""
    history = {r["step"]: r["metrics"] for r in json.loads((run_dir / "eval_history.json").read_text())}
    assert sorted(history) == list(range(interval, steps + 1, interval))
    assert eval_checkpoints.main(["--run_dir", str(run_dir)]) == 0
    single = {r["step"]: r["metrics"] for r in
              json.loads((run_dir / "checkpoint_metrics.json").read_text())["checkpoints"]}
    assert sorted(single) == sorted(history)
    assert max(metrics["map"] for metrics in single.values()) > 0  # else dropped or misplaced rows could agree
    for step, metrics in single.items():
        assert {k: history[step][k] for k in metrics} == pytest.approx(metrics, abs=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.parametrize("num_buckets", ["1", "0"])
def test_two_process_evaluation_of_ragged_labels_logs_the_one_process_map(tmp_path, num_buckets, synthetic_coco):
    # seed 2: training images hold 1, 1, 2, 1 objects, validation images 3, 1, 2
    source = synthetic_coco(num_train=4, num_validation=3, image_size=32, min_objects=1, max_objects=3, seed=2)
    data_dir = ragged_eval_coco(source, tmp_path / "coco")
    train_max = max(object_counts(read_split(data_dir, "train")))
    evaluation = object_counts(read_split(data_dir, "validation"))
    assert max(evaluation[0:2]) > train_max >= evaluation[2]  # process 0's eval batch in another bucket than 1's

    run_dir = tmp_path / "run"
    argv = entry_argv(data_dir, run_dir, "--num_buckets", num_buckets, "--max_steps", str(STEPS),
                      "--ckpt_store_interval_epochs", str(INTERVAL), "--augment", "false")
    result = run_two_processes(argv)
    assert result.returncode == 0, launch_failure(result)
    logs_the_one_process_map(run_dir)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_two_process_evaluation_on_canvases_logs_the_one_process_map(tmp_path, synthetic_coco):
    """6 evaluation images, 2 per canvas, each canvas's pair padded with 2 fillers. Training on those 6 images (batch
    1 per process: one global batch per canvas, 3 steps an epoch) so that they are learned and the mAP is not 0."""
    source = synthetic_coco(num_train=1, num_validation=6, image_size=32, min_objects=1, max_objects=3, seed=2)
    data_dir = extend_to_aspect_ratios(shutil.copytree(source, tmp_path / "coco"))
    shutil.copy(data_dir / "annotations" / "validation.json", data_dir / "annotations" / "train.json")

    run_dir = tmp_path / "run"
    argv = entry_argv(data_dir, run_dir, *CANVAS_RUN_ARGUMENTS, "--max_steps", str(CANVAS_STEPS),
                      "--ckpt_store_interval_epochs", str(CANVAS_INTERVAL // 3), "--augment", "false",
                      "--per_device_train_batch_size", "1")
    result = run_two_processes(argv)
    assert result.returncode == 0, launch_failure(result)
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert len(summary["image_canvases"]) == 3
    logs_the_one_process_map(run_dir, CANVAS_STEPS, CANVAS_INTERVAL)
