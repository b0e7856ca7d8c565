"""Gradient accumulation over canvases in the trainers' own training loops: every optimizer step holds the
micro-batches of different canvases that `CanvasGroupedSampler` dealt it (tests/gaudi collects the test again with
optimum-habana's GaudiTrainer, whose loop is its own copy of transformers 4.55's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detr_ft.data.canvases import CanvasGroupedSampler
from detr_ft.train.training_arguments import steps_per_epoch


class CanvasImages(torch.utils.data.Dataset):
    """Blank images, image i on canvas `canvases[canvas_of[i]]`."""

    def __init__(self, canvas_of: np.ndarray, canvases: list[tuple[int, int]]):
        self.canvas_of, self.canvases = canvas_of, canvases

    def __len__(self) -> int:
        return len(self.canvas_of)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.zeros(3, *self.canvases[self.canvas_of[i]])}


class ShapeRecorder(torch.nn.Module):
    """Records the image shape of every micro-batch it trains on."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.shapes: list[tuple[int, int]] = []

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        self.shapes.append(tuple(pixel_values.shape[2:]))
        return {"loss": self.weight * pixel_values.mean()}


@pytest.fixture
def make_trainer():
    """transformers' Trainer on CPU. tests/gaudi collects the test using it again, with optimum-habana's
    GaudiTrainer (its own training loop)."""
    from transformers import Trainer, TrainingArguments

    def make(model: torch.nn.Module, train_dataset, callbacks: list, **arguments) -> Trainer:
        return Trainer(model=model, args=TrainingArguments(use_cpu=True, **arguments), train_dataset=train_dataset,
                       callbacks=callbacks)

    return make


def test_the_trainer_accumulates_each_step_over_the_canvases_the_sampler_dealt_it(tmp_path, make_trainer):
    """The trainer cuts the batch stream into steps of G micro-batches from the start of each epoch: the sampler's
    steps must be those, the partial one last."""
    from transformers import TrainerCallback

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.micro_batches: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.micro_batches.append(len(model.shapes))

    canvas_of = np.array([0] * 8 + [1] * 8 + [2] * 4)  # (20,): 4, 4 and 2 batches of 2 an epoch
    canvases = [(8, 16), (16, 16), (16, 8)]
    model, step_ends = ShapeRecorder(), StepEnds()
    trainer = make_trainer(model, CanvasImages(canvas_of, canvases), [step_ends], output_dir=str(tmp_path),
                           per_device_train_batch_size=2, gradient_accumulation_steps=3, num_train_epochs=2,
                           dataloader_drop_last=True, save_strategy="no", report_to="none", seed=0)
    trainer._get_train_sampler = lambda *_: CanvasGroupedSampler(canvas_of, 2, seed=0, accumulation_steps=3)
    trainer.train()
    assert step_ends.micro_batches == [3, 6, 9, 10, 13, 16, 19, 20]  # 2 epochs of 3 full steps and 1 partial
    assert steps_per_epoch([8, 8, 4], trainer.args) == 4  # what the eval and save interval counts in
    starts = [0, *step_ends.micro_batches[:-1]]
    steps = [model.shapes[start:end] for start, end in zip(starts, step_ends.micro_batches, strict=True)]
    for epoch in (steps[:4], steps[4:]):
        assert sorted(len(set(step)) for step in epoch[:3]) == [2, 3, 3]
        assert len(epoch[3]) == 1
