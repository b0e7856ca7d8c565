"""Training data loader workers start from a forkserver, not as forks of the training process (which can deadlock
on CPython before 3.12: python/cpython#112275), and the training data survives the pickling that takes."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import Trainer

from detr_ft.config import parse_arguments
from detr_ft.data import loader_workers
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.prepare import prepare_data
from detr_ft.data.sources import carve_validation, load_coco_folder
from detr_ft.train.training_arguments import training_arguments


class ParentProcessIds(torch.utils.data.Dataset):
    """Each sample is the id of the parent of the process that loads it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"parent": os.getppid()}


def finalized_training_arguments(tmp_path, *argv: str):
    args = parse_arguments(["--output_dir", str(tmp_path), "--image_size", "32", "--device", "cpu", *argv])
    return training_arguments("cpu", args, images_per_canvas=[16])


def test_training_loader_workers_are_not_forked_from_the_training_process(tmp_path):
    training = finalized_training_arguments(tmp_path, "--per_device_train_batch_size", "1", "--report_to", "none",
                                            "--dataloader_pin_memory", "false")
    assert training.dataloader_num_workers >= 1
    trainer = Trainer(model=torch.nn.Linear(1, 1), args=training, train_dataset=ParentProcessIds(),
                      eval_dataset=ParentProcessIds())
    parents = [parent for batch in trainer.get_train_dataloader() for parent in batch["parent"].tolist()]
    assert len(parents) == 2 and os.getpid() not in parents


def test_forkserver_workers_load_the_augmented_batches_forked_workers_load(synthetic_coco, tmp_path):
    """Same seeds, same augmentation: the start method changes nothing a run trains on (resume stays bit-exact)."""
    folder = synthetic_coco(num_train=8, num_validation=2, image_size=32)
    epochs = {}
    for start_method in ("fork", "forkserver"):
        args = parse_arguments([
            "--dataset_dir", str(folder), "--output_dir", str(tmp_path), "--image_size", "32", "--pad_images",
            "--pad_objects", "--per_device_train_batch_size", "2", "--report_to", "none", "--dataloader_pin_memory",
            "false", "--dataloader_multiprocessing_context", start_method])
        data = prepare_data(args.data, args.shapes)
        assert args.data.augment
        training = training_arguments("cpu", args, data.images_per_canvas())
        trainer = Trainer(model=torch.nn.Linear(1, 1), args=training, train_dataset=data.train,
                          eval_dataset=data.eval, data_collator=data.collator())
        loader = trainer.get_train_dataloader()
        epochs[start_method] = [batch["pixel_values"] for _ in range(2) for batch in loader]  # 2 x (2, 3, 32, 32)
    assert len(epochs["fork"]) == 8
    assert all(torch.equal(a, b) for a, b in zip(epochs["fork"], epochs["forkserver"], strict=True))


def machine(monkeypatch, cpus: int, processes: int) -> None:
    """This process may run on `cpus` CPUs, shared by `processes` training processes on the machine."""
    monkeypatch.setattr(loader_workers.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))


@pytest.mark.parametrize(("cpus", "processes", "workers"), [
    (2, 1, 1),  # 2 - 1
    (6, 1, 5),  # 6 - 1
    (64, 1, 8),  # 63, capped at MAX_AUTO_WORKERS
    (16, 4, 3),  # 16 / 4 - 1: the machine's CPUs are shared by its processes
    (4, 4, 1),  # 4 / 4 - 1 = 0, raised to 1
])
def test_default_workers_are_the_processs_share_of_its_cpus_less_one(monkeypatch, cpus, processes, workers):
    """README: (CPUs of this process / processes on the machine) - 1 workers, at least 1, at most 8."""
    machine(monkeypatch, cpus, processes)
    assert loader_workers.default_dataloader_workers() == workers


def test_a_run_without_a_worker_count_gets_the_default_workers(tmp_path, monkeypatch):
    machine(monkeypatch, cpus=16, processes=4)
    assert finalized_training_arguments(tmp_path, "--report_to", "none").dataloader_num_workers == 3


@pytest.mark.parametrize(("argv", "start_method"), [
    (["--dataloader_num_workers", "0"], None),  # no workers: nothing to start
    (["--dataloader_multiprocessing_context", "spawn"], "spawn"),  # the user's choice stands
    (["--dataloader_multiprocessing_context", "fork"], "fork"),
])
def test_the_start_method_is_left_alone_without_workers_or_when_chosen(tmp_path, argv, start_method):
    assert finalized_training_arguments(tmp_path, *argv).dataloader_multiprocessing_context == start_method


def test_a_pickled_training_dataset_loads_the_same_samples_under_the_runs_pillow_limit(synthetic_coco):
    folder = synthetic_coco(num_train=6, num_validation=2, image_size=32)
    train, _ = carve_validation(load_coco_folder(folder, "train"), 0.5, seed=0)  # a subset: its reader too
    classes = ClassMapping.from_categories(train.coco["categories"])
    default_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 100  # as --max_image_pixels 100 sets it: 32 x 32 images are over twice that
        dataset = DetectionDataset(train, classes.category_to_label, 32)
        Image.MAX_IMAGE_PIXELS = default_limit  # a worker's fresh interpreter
        copy = pickle.loads(pickle.dumps(dataset))
        with pytest.raises(Image.DecompressionBombError):
            copy[0]
        Image.MAX_IMAGE_PIXELS = default_limit
        for i in range(len(dataset)):
            sample, copied = dataset[i], copy[i]
            assert all(torch.equal(sample[key], copied[key]) for key in sample)
    finally:
        Image.MAX_IMAGE_PIXELS = default_limit


LOADING_PROCESS = """
import sys, torch
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.sources import load_coco_folder
split = load_coco_folder(sys.argv[1], "train")
dataset = DetectionDataset(split, ClassMapping.from_categories(split.coco["categories"]).category_to_label, 32)
loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1, multiprocessing_context="forkserver",
                                     collate_fn=len)
batches = iter(loader)
next(batches)
print(batches._workers[0].pid, flush=True)
input()  # until killed
"""


def is_running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\tZ" not in status.read_text().split("State:")[1].splitlines()[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_forkserver_worker_ends_when_the_process_it_loads_for_is_killed(synthetic_coco):
    folder = synthetic_coco(num_train=6, num_validation=2, image_size=32)
    loading = subprocess.Popen([sys.executable, "-c", LOADING_PROCESS, str(folder)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    worker = int(loading.stdout.readline())
    assert is_running(worker)
    loading.send_signal(signal.SIGKILL)  # no shutdown of its loader: torch's watchdog would watch the forkserver
    loading.wait()
    deadline = time.monotonic() + 60  # the worker checks every second; a loaded machine may be slow to run it
    while is_running(worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not is_running(worker)
