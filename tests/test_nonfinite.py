"""A NaN loss is caught at its step: the run stops naming the step and images (the last checkpoint stays loadable),
or with --skip_nonfinite_batches that batch's update is skipped and recorded."""

import json
import logging

import pytest
import torch
from entry_runs import entry_argv, run_in_process
from torch import nn
from transformers import DetrForObjectDetection, TrainerControl, TrainerState, TrainingArguments

from detr_ft.data.dataset import DetectionDataset
from detr_ft.train.checkpoints import COMPLETE_MARKER
from detr_ft.train.nonfinite_guard import NONFINITE_FILE, NonFiniteLossGuard

slow = pytest.mark.slow  # entry runs

POISONED_IMAGE = 2  # with sequential sampling, batches are images [0, 1] then [2, 3]: its 2nd fetch is step 4


@pytest.fixture
def nan_image_in_epoch_two(monkeypatch):
    """Training image 2 comes with NaN pixels the second time it is read, i.e. in epoch 2."""
    fetches = []
    clean_getitem = DetectionDataset.__getitem__

    def getitem(dataset, i):
        item = clean_getitem(dataset, i)
        if dataset.split.name == "train" and i == POISONED_IMAGE:
            fetches.append(i)
            if len(fetches) == 2:
                item["pixel_values"] = torch.full_like(item["pixel_values"], float("nan"))
        return item

    monkeypatch.setattr(DetectionDataset, "__getitem__", getitem)


def argv_for(tmp_path, tiny_coco, *extra):
    # no loader workers: the poisoning patch counts fetches in this process (a worker starts afresh every epoch)
    return entry_argv(tiny_coco, tmp_path, "--train_sampling_strategy", "sequential", "--dataloader_num_workers", "0",
                      *extra)


@slow
def test_nan_loss_stops_at_its_step_naming_the_images(tmp_path, tiny_coco, nan_image_in_epoch_two, caplog):
    with caplog.at_level(logging.ERROR):
        assert run_in_process(argv_for(tmp_path, tiny_coco)) == 3
    images = json.loads((tiny_coco / "annotations" / "train.json").read_text())["images"]
    assert "non-finite training loss at step 4" in caplog.text
    assert f"2 ({images[2]['file_name']}), 3 ({images[3]['file_name']})" in caplog.text

    assert (tmp_path / "checkpoint-2" / COMPLETE_MARKER).exists()
    assert not (tmp_path / "checkpoint-4").exists() and not (tmp_path / "model.safetensors").exists()
    model = DetrForObjectDetection.from_pretrained(tmp_path / "checkpoint-2", use_safetensors=True)
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())


@slow
def test_skip_nonfinite_batches_skips_and_counts(tmp_path, tiny_coco, nan_image_in_epoch_two, logged_losses):
    assert run_in_process(argv_for(tmp_path, tiny_coco, "--skip_nonfinite_batches")) == 0

    assert json.loads((tmp_path / NONFINITE_FILE).read_text()) == [{"step": 4, "images": [2, 3]}]
    losses = dict(logged_losses(tmp_path / "checkpoint-4"))
    assert losses[4] == 0.0 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    optimizer = torch.load(tmp_path / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in optimizer["state"].values()} == {3}  # step 4 never reached the optimizer
    history = json.loads((tmp_path / "eval_history.json").read_text())
    assert [r["step"] for r in history] == [2, 4] and all(torch.isfinite(torch.tensor(r["metrics"]["loss"]))
                                                          for r in history)


def test_skip_puts_back_what_the_optimizer_step_changed_and_the_buffers(tmp_path):
    """The skipped step's optimizer step runs and is undone in place (HPU graphs keep writing into the tensors they
    captured): weights, moments and step counts as before it, the NaN forward's BatchNorm statistics put back, its
    loss logged as 0; the step after it is an ordinary one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(8, 3)).square().mean().backward()
    optimizer.step()  # moments and a step count to keep
    guard = NonFiniteLossGuard(tmp_path, skip=True)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    guard.on_step_begin(args, state, control, model=model)

    loss = guard.record(model(torch.full((8, 3), float("nan"))).sum(), {"image_index": torch.tensor([5, 6])})
    loss.backward()
    weights = [p.detach().clone() for p in model.parameters()]
    weight_tensors = list(model.parameters())
    moments = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    guard.on_pre_optimizer_step(args, state, control, model=model, optimizer=optimizer)
    optimizer.step()
    guard.on_optimizer_step(args, state, control, optimizer=optimizer)

    assert float(loss.detach()) == 0.0
    assert all(p is w for p, w in zip(model.parameters(), weight_tensors, strict=True))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    assert all(torch.equal(optimizer.state_dict()["state"][0][k], v) for k, v in moments.items())
    assert torch.isfinite(model[1].running_mean).all()  # the NaN forward's statistics were put back
    assert json.loads((tmp_path / NONFINITE_FILE).read_text()) == [{"step": 1, "images": [5, 6]}]

    model.zero_grad()
    model(torch.randn(8, 3)).square().mean().backward()
    optimizer.step()
    guard.on_optimizer_step(args, state, control, optimizer=optimizer)
    assert int(optimizer.state_dict()["state"][0]["step"]) == 2  # stepping again after the skipped one
    assert not all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


def test_skip_at_the_first_step_leaves_the_optimizer_without_state(tmp_path):
    """A step that creates the optimizer's state and is skipped leaves none: the next step starts AdamW afresh."""
    model = nn.Linear(3, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    guard = NonFiniteLossGuard(tmp_path, skip=True)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    guard.on_step_begin(args, state, control, model=model)
    guard.record(model(torch.full((2, 3), float("nan"))).sum(), {"image_index": torch.tensor([0, 1])}).backward()
    weights = [p.detach().clone() for p in model.parameters()]
    guard.on_pre_optimizer_step(args, state, control, model=model, optimizer=optimizer)
    optimizer.step()
    guard.on_optimizer_step(args, state, control, optimizer=optimizer)

    assert not optimizer.state
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


@slow
def test_a_diverging_run_without_padded_targets_stops_naming_the_step(tmp_path, tiny_coco, nan_image_in_epoch_two,
                                                                       caplog):
    """transformers' own loss (--num_buckets 0) refuses NaN boxes in its matcher before a loss exists: the guard
    still stops the run at the step, naming its images, with exit 3."""
    argv = argv_for(tmp_path, tiny_coco, "--num_buckets", "0")  # the last --num_buckets counts
    with caplog.at_level(logging.ERROR):
        assert run_in_process(argv) == 3
    images = json.loads((tiny_coco / "annotations" / "train.json").read_text())["images"]
    assert "non-finite training loss at step 4" in caplog.text
    assert f"2 ({images[2]['file_name']}), 3 ({images[3]['file_name']})" in caplog.text
    assert (tmp_path / "checkpoint-2" / COMPLETE_MARKER).exists() and not (tmp_path / "checkpoint-4").exists()
