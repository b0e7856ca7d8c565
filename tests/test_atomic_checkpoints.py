"""A save that crashes never leaves a checkpoint that counts as complete; resume and evaluation skip such folders;
resume falls back past a complete checkpoint damaged later; a failed write names the disk."""

import errno

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from detr_ft.train.checkpoints import (
    COMPLETE_MARKER,
    CheckpointCompleteCallback,
    checkpoint_damage,
    complete_checkpoints,
    describe_write_failure,
    resume_checkpoint,
)


class TinyRegression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, labels):
        return {"loss": nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


class SaveCrash(RuntimeError):
    """The simulated crash."""


def tiny_trainer(output_dir, max_steps: int) -> Trainer:
    torch.manual_seed(0)
    samples = [{"x": torch.randn(2), "labels": torch.randn(())} for _ in range(8)]
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, save_steps=1,
                             per_device_train_batch_size=2, report_to="none", use_cpu=True)
    return Trainer(model=TinyRegression(), args=args, train_dataset=samples, callbacks=[CheckpointCompleteCallback()])


def test_crash_during_save_leaves_an_incomplete_checkpoint_that_resume_skips(tmp_path, monkeypatch):
    save_rng_state = Trainer._save_rng_state

    def crash_on_second_save(trainer, output_dir):
        if output_dir.endswith("checkpoint-2"):
            raise SaveCrash("killed while saving")  # weights and optimizer of checkpoint-2 are already written
        save_rng_state(trainer, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(SaveCrash):
        tiny_trainer(tmp_path, max_steps=3).train()
    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)

    assert (tmp_path / "checkpoint-2" / "model.safetensors").exists()
    assert not (tmp_path / "checkpoint-2" / COMPLETE_MARKER).exists()
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]
    args = TrainingArguments(output_dir=str(tmp_path))
    assert resume_checkpoint(args) == str(tmp_path / "checkpoint-1")

    trainer = tiny_trainer(tmp_path, max_steps=3)
    trainer.train(resume_from_checkpoint=resume_checkpoint(args))
    assert trainer.state.global_step == 3
    assert complete_checkpoints(tmp_path) == [tmp_path / f"checkpoint-{step}" for step in (1, 2, 3)]


def test_truncated_unmarked_checkpoint_is_ignored(tmp_path):
    tiny_trainer(tmp_path, max_steps=2).train()
    last = tmp_path / "checkpoint-2"
    (last / COMPLETE_MARKER).unlink()
    weights = (last / "model.safetensors").read_bytes()
    (last / "model.safetensors").write_bytes(weights[: len(weights) // 2])

    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]
    assert resume_checkpoint(TrainingArguments(output_dir=str(tmp_path))) == str(tmp_path / "checkpoint-1")


class CrashAtFirstStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        raise SaveCrash("killed before the first step")


def test_resuming_earlier_unmarks_the_checkpoints_it_will_overwrite(tmp_path):
    """A run resumed from step 1 writes checkpoint-2 again in place: until it has, checkpoint-2 is not complete."""
    tiny_trainer(tmp_path, max_steps=2).train()
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.add_callback(CrashAtFirstStep())
    with pytest.raises(SaveCrash):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]


@pytest.mark.parametrize("damaged_file", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_complete_checkpoint_damaged_later_is_skipped_naming_it(tmp_path, caplog, damaged_file):
    tiny_trainer(tmp_path, max_steps=2).train()
    damaged = tmp_path / "checkpoint-2" / damaged_file
    content = damaged.read_bytes()
    damaged.write_bytes(content[: len(content) // 2])  # truncated after its marker was written

    assert (tmp_path / "checkpoint-2" / COMPLETE_MARKER).exists()
    resume_from = resume_checkpoint(TrainingArguments(output_dir=str(tmp_path)))
    assert resume_from == str(tmp_path / "checkpoint-1")
    assert f"skipping {tmp_path / 'checkpoint-2'}: complete when saved, damaged since ({damaged_file}" in caplog.text

    tiny_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=resume_from)
    assert checkpoint_damage(tmp_path / "checkpoint-2") is None  # written again


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 basic_ios::clear: iostream "
                 "error"),
    RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: file "
                 "write failed"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_write_failures_name_the_disk(tmp_path, error):
    message = describe_write_failure(error, tmp_path)
    assert f"writing to --output_dir {tmp_path} failed, most likely the disk is full" in message
    assert "MiB free" in message


def test_other_errors_are_not_taken_for_a_full_disk(tmp_path):
    assert describe_write_failure(RuntimeError("CUDA out of memory"), tmp_path) is None
    assert describe_write_failure(OSError(errno.EACCES, "Permission denied"), tmp_path) is None


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_save_is_reported_as_such(tmp_path, tmp_path_factory, monkeypatch, caplog):
    from entry_runs import entry_argv, run_in_process, tiny_coco

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 basic_ios::clear: "
                           "iostream error")

    monkeypatch.setattr(torch, "save", disk_full)  # the Trainer saves optimizer and RNG state with torch.save
    argv = entry_argv(tiny_coco(tmp_path_factory.getbasetemp() / "tiny_coco"), tmp_path, "--max_steps", "2")

    assert run_in_process(argv) == 4

    assert "most likely the disk is full" in caplog.text and "basic_ios::clear" in caplog.text
    assert not complete_checkpoints(tmp_path)
