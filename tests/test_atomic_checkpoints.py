"""A save that crashes never leaves a checkpoint that counts as complete; resume and evaluation skip such folders;
resume falls back past a complete checkpoint damaged later; a failed write names the disk."""

import errno
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError
from transformers import Trainer, TrainerCallback, TrainingArguments

from detr_ft.train.checkpoints import (
    COMPLETE_MARKER,
    CheckpointCompleteCallback,
    checkpoint_damage,
    complete_checkpoints,
    describe_write_failure,
    resume_checkpoint,
)


class SaveCrash(RuntimeError):
    """The simulated crash."""


def assert_rerun_resumes_from_checkpoint_1(run_dir, tiny_trainer) -> None:
    """Only checkpoint-1 counts as complete; rerunning resumes from it and completes the run, checkpoints included."""
    assert complete_checkpoints(run_dir) == [run_dir / "checkpoint-1"]
    args = TrainingArguments(output_dir=str(run_dir))
    assert resume_checkpoint(args) == str(run_dir / "checkpoint-1")
    trainer = tiny_trainer(run_dir, max_steps=3, callbacks=[CheckpointCompleteCallback()])
    trainer.train(resume_from_checkpoint=resume_checkpoint(args))
    assert trainer.state.global_step == 3
    assert complete_checkpoints(run_dir) == [run_dir / f"checkpoint-{step}" for step in (1, 2, 3)]


def test_crash_during_save_leaves_an_incomplete_checkpoint_that_resume_skips(tmp_path, monkeypatch, tiny_trainer):
    save_rng_state = Trainer._save_rng_state

    def crash_on_second_save(trainer, output_dir):
        if output_dir.endswith("checkpoint-2"):
            raise SaveCrash("killed while saving")  # weights and optimizer of checkpoint-2 are already written
        save_rng_state(trainer, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(SaveCrash):
        tiny_trainer(tmp_path, max_steps=3, callbacks=[CheckpointCompleteCallback()]).train()
    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)

    assert (tmp_path / "checkpoint-2" / "model.safetensors").exists()
    assert not (tmp_path / "checkpoint-2" / COMPLETE_MARKER).exists()
    assert_rerun_resumes_from_checkpoint_1(tmp_path, tiny_trainer)


def test_checkpoint_truncated_by_a_crash_while_writing_weights_is_ignored(tmp_path, monkeypatch, tiny_trainer):
    """Killed halfway through writing checkpoint-2's weights: the file is there, truncated, and unreadable; only
    the order of the save (marker after everything else) keeps resume away from it."""
    save_file = safetensors.torch.save_file

    def crash_halfway_through_checkpoint_2(tensors, filename, *args, **kwargs):
        save_file(tensors, filename, *args, **kwargs)
        if Path(filename).parent.name == "checkpoint-2":
            written = Path(filename).read_bytes()
            Path(filename).write_bytes(written[: len(written) // 2])
            raise SaveCrash("killed while writing the weights")

    monkeypatch.setattr(safetensors.torch, "save_file", crash_halfway_through_checkpoint_2)
    with pytest.raises(SaveCrash):
        tiny_trainer(tmp_path, max_steps=3, callbacks=[CheckpointCompleteCallback()]).train()
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)

    truncated = tmp_path / "checkpoint-2" / "model.safetensors"
    assert truncated.stat().st_size < (tmp_path / "checkpoint-1" / "model.safetensors").stat().st_size
    with pytest.raises(SafetensorError):
        safetensors.torch.load_file(truncated)
    assert_rerun_resumes_from_checkpoint_1(tmp_path, tiny_trainer)


class CrashAtFirstStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        raise SaveCrash("killed before the first step")


def test_resuming_earlier_unmarks_the_checkpoints_it_will_overwrite(tmp_path, tiny_trainer):
    """A run resumed from step 1 writes checkpoint-2 again in place: until it has, checkpoint-2 is not complete."""
    tiny_trainer(tmp_path, max_steps=2, callbacks=[CheckpointCompleteCallback()]).train()
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[CheckpointCompleteCallback(), CrashAtFirstStep()])
    with pytest.raises(SaveCrash):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]


@pytest.mark.parametrize("damaged_file", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_complete_checkpoint_damaged_later_is_skipped_naming_it(tmp_path, caplog, damaged_file, tiny_trainer):
    tiny_trainer(tmp_path, max_steps=2, callbacks=[CheckpointCompleteCallback()]).train()
    damaged = tmp_path / "checkpoint-2" / damaged_file
    content = damaged.read_bytes()
    damaged.write_bytes(content[: len(content) // 2])  # truncated after its marker was written

    assert (tmp_path / "checkpoint-2" / COMPLETE_MARKER).exists()
    resume_from = resume_checkpoint(TrainingArguments(output_dir=str(tmp_path)))
    assert resume_from == str(tmp_path / "checkpoint-1")
    assert f"skipping {tmp_path / 'checkpoint-2'} (complete when saved): {damaged_file} is damaged" in caplog.text

    rerun = tiny_trainer(tmp_path, max_steps=2, callbacks=[CheckpointCompleteCallback()])
    rerun.train(resume_from_checkpoint=resume_from)
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
def test_disk_full_during_a_checkpoint_save_is_reported_as_such(tmp_path, tiny_coco, monkeypatch, caplog):
    from entry_runs import entry_argv, run_in_process

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 basic_ios::clear: "
                           "iostream error")

    monkeypatch.setattr(torch, "save", disk_full)  # the Trainer saves optimizer and RNG state with torch.save
    argv = entry_argv(tiny_coco, tmp_path, "--max_steps", "2")

    assert run_in_process(argv) == 4

    assert "most likely the disk is full" in caplog.text and "basic_ios::clear" in caplog.text
    assert not complete_checkpoints(tmp_path)
