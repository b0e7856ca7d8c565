"""The host-sync audit of `RunSummaryCallback`: its torch modes end with training, also when the audited step raises."""

import json

import pytest
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from transformers import TrainerCallback

from detr_ft.train.run_summary import AUDITED_STEP, SUMMARY_FILE, RunSummaryCallback


def active_torch_modes() -> list:
    return [*_get_current_dispatch_mode_stack(), *_get_current_function_mode_stack()]


class StepFailure(RuntimeError):
    """Stands for an out-of-memory error or the guard's NonFiniteLossError."""


class FailInAuditedStep(TrainerCallback):
    """Raises inside the audited step: in the model's forward (as an out-of-memory error would), or in
    on_pre_optimizer_step before the summary's own (as the finite-loss guard, listed first, does). Records which torch
    modes were active when it raised."""

    def __init__(self, where: str):
        self.where = where
        self.modes_when_raised: list | None = None

    def fail(self, *args) -> None:
        self.modes_when_raised = active_torch_modes()
        raise StepFailure(f"failed in the audited step's {self.where}")

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.where == "forward" and state.global_step == AUDITED_STEP:
            model.register_forward_pre_hook(self.fail)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.where == "pre_optimizer_step" and state.global_step == AUDITED_STEP:
            self.fail()


def summary_callback(output_dir) -> RunSummaryCallback:
    return RunSummaryCallback(output_dir, "cpu", None, 64, "fp32", audit_host_syncs=True)


@pytest.mark.parametrize("where", ["forward", "pre_optimizer_step"])
def test_audited_step_that_raises_leaves_no_torch_mode_active(tmp_path, tiny_trainer, where):
    summary, failure = summary_callback(tmp_path), FailInAuditedStep(where)
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=[failure, summary])  # the failure first, as the guard is

    with pytest.raises(StepFailure), summary.host_sync_audit():
        trainer.train()

    assert len(failure.modes_when_raised) == 2  # it did raise inside the audit: the counter's two modes were on
    assert active_torch_modes() == []


class ReadsTheDevice(TrainerCallback):
    """`reads` host reads (`.item()` of a parameter, a device tensor) at the start of every step, after the summary's
    hook has started the audit. (A tensor made on the host, `torch.ones(2)`, would not count: no device sync.)"""

    def __init__(self, reads: int):
        self.reads = reads

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        parameter = next(model.parameters())
        for _ in range(self.reads):
            parameter.sum().item()


@pytest.mark.parametrize("max_steps", [2, 4])
def test_audit_counts_the_syncs_of_one_step_and_ends_with_training(tmp_path, tiny_trainer, max_steps):
    """Three reads at every step add three syncs to the count, however many steps the run has."""
    counts = []
    for reads in (0, 3):
        summary = summary_callback(tmp_path / str(reads))
        with summary.host_sync_audit():
            tiny_trainer(tmp_path / str(reads), max_steps=max_steps, callbacks=[summary, ReadsTheDevice(reads)]).train()
        assert active_torch_modes() == []
        counts.append(json.loads((tmp_path / str(reads) / SUMMARY_FILE).read_text())["host_syncs_per_step"])

    assert counts[1] - counts[0] == 3


def test_without_the_audit_context_nothing_is_audited(tmp_path, tiny_trainer):
    """Outside `host_sync_audit` no hook enters a torch mode, so a failing step cannot leave one behind."""
    summary = summary_callback(tmp_path)
    failure = FailInAuditedStep("pre_optimizer_step")

    with pytest.raises(StepFailure):
        tiny_trainer(tmp_path, max_steps=3, callbacks=[failure, summary]).train()

    assert failure.modes_when_raised == [] and active_torch_modes() == []
