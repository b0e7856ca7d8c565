"""Data parallel: `torchrun --nproc_per_node 2` (gloo, CPU) with batch b per process logs the losses of one process
with batch 2b, to 1e-5: the box count that normalises the box losses is averaged over the processes, by our loss and
by transformers' (`--num_buckets 0`, with patches/detr_loss_num_boxes.py: unpatched it divides by the process count
twice and logs larger box losses).

Both runs read the training images in order (sequential sampling): process r gets batch 2k + r of step k, which is
the one process's batch k split in two, and the two halves hold different numbers of objects, so a per-process box
count would give other box losses. The class loss is normalised per process by its summed class weights, as in
facebookresearch/detr; with eos_coefficient 1 that sum is the query count, the same everywhere. The model is a
"pretrained" tiny DETR with frozen BatchNorm, as fine-tuning uses: trainable BatchNorm would see per-process batch
statistics (there is no SyncBatchNorm), another computation. DDP runs with find_unused_parameters off (our default):
DETR uses every trainable parameter in every step.
"""

import json

import pytest
import torch
from entry_runs import entry_argv, launch_failure, run_in_process, run_two_processes

pytestmark = pytest.mark.slow  # torchrun and entry runs

STEPS = 3


@pytest.fixture
def data_dir(synthetic_coco):
    """seed 2: the two processes' first batches hold 4 and 8 objects"""
    return synthetic_coco(num_train=8, num_validation=2, image_size=32, min_objects=1, max_objects=4, seed=2)


@pytest.fixture
def pretrained_dir(tiny_detr, tmp_path):
    id2label = {0: "circle", 1: "square", 2: "triangle"}
    model = tiny_detr(id2label=id2label, label2id={v: k for k, v in id2label.items()}, eos_coefficient=1.0)
    model.save_pretrained(tmp_path / "detr")
    return tmp_path / "detr"


def run_argv(data_dir, pretrained_dir, output_dir, batch_size: int, *extra: str) -> list[str]:
    return [*entry_argv(data_dir, output_dir), "--model_name_or_path", str(pretrained_dir),
            "--per_device_train_batch_size", str(batch_size), "--augment", "false",
            "--train_sampling_strategy", "sequential", "--max_steps", str(STEPS), "--ckpt_store_interval_epochs", "10",
            *extra]


def first_step_object_counts(data_dir) -> list[int]:
    """Objects in process 0's and process 1's batch of step 1: training images 0-1 and 2-3."""
    coco = json.loads((data_dir / "annotations" / "train.json").read_text())
    per_image = [sum(a["image_id"] == image["id"] for a in coco["annotations"]) for image in coco["images"]]
    return [sum(per_image[0:2]), sum(per_image[2:4])]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.parametrize("loss_arguments", [(), ("--num_buckets", "0")], ids=["our_loss", "transformers_loss"])
def test_two_processes_with_batch_b_log_the_losses_of_one_with_batch_2b(tmp_path, data_dir, pretrained_dir,
                                                                       logged_losses, loss_arguments):
    single = tmp_path / "single"
    assert run_in_process(run_argv(data_dir, pretrained_dir, single, 4, *loss_arguments)) == 0
    counts = first_step_object_counts(data_dir)
    assert counts[0] != counts[1]  # else a per-process box count would pass too
    parallel = tmp_path / "parallel"
    result = run_two_processes(run_argv(data_dir, pretrained_dir, parallel, 2, *loss_arguments))
    assert result.returncode == 0, launch_failure(result)
    # Our default --ddp_find_unused_parameters false reached DDP (it would fail the step if DETR left a trainable
    # parameter unused); with True, DDP searches the graph every step and warns that it found nothing.
    assert "find_unused_parameters=True" not in result.stderr

    single_losses = logged_losses(single / f"checkpoint-{STEPS}")
    parallel_losses = logged_losses(parallel / f"checkpoint-{STEPS}")
    assert [step for step, _ in single_losses] == [step for step, _ in parallel_losses] == list(range(1, STEPS + 1))
    for (_, expected), (_, actual) in zip(single_losses, parallel_losses, strict=True):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-5)
