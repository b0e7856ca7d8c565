"""tests/test_canvas_accumulation.py's test again with optimum-habana's GaudiTrainer, whose training loop is its
own copy of transformers 4.55's: each optimizer step holds the micro-batches of different canvases the sampler
dealt it."""

import pytest
import torch

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

from optimum.habana import GaudiConfig, GaudiTrainer, GaudiTrainingArguments  # noqa: E402
from test_canvas_accumulation import (  # noqa: E402, F401 (collected here too)
    test_the_trainer_accumulates_each_step_over_the_canvases_the_sampler_dealt_it,
)


@pytest.fixture
def make_trainer():
    """GaudiTrainer off Gaudi, as `--trainer gaudi` builds it: use_habana and lazy mode off, no fused ops."""

    def make(model: torch.nn.Module, train_dataset, callbacks: list, **arguments) -> GaudiTrainer:
        args = GaudiTrainingArguments(use_habana=False, use_cpu=True, use_lazy_mode=False, **arguments)
        gaudi_config = GaudiConfig(use_fused_adam=False, use_fused_clip_norm=False, use_torch_autocast=False)
        return GaudiTrainer(model=model, args=args, gaudi_config=gaudi_config, train_dataset=train_dataset,
                            callbacks=callbacks)

    return make
