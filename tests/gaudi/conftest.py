"""Runs the Gaudi tests on CPU as Gaudi runs them: optimum-habana's real GaudiTrainer, with transformers adapted by
optimum-habana's own `adapt_transformers_to_gaudi()`, which `GaudiTrainingArguments` calls only when use_habana is on.

Runs only in the Gaudi venv (.venv-gaudi): in the main venv optimum-habana is absent and the tests skip themselves.
The test-only stand-ins for what only Gaudi hosts have: stand_ins.py.
"""

import pytest
from stand_ins import HpuTensorsOnCpu, expose

GAUDI_STACK = expose()

# What `adapt_transformers_to_gaudi()` replaces for DETR (optimum-habana 1.21.2, modeling_utils.py), kept before it
# runs: transformers' own code, for the tests that compare against it.
STOCK_DETR = {}


def _detr_classes() -> dict:
    from transformers.loss import loss_for_object_detection
    from transformers.models.detr import modeling_detr

    return {modeling_detr.DetrConvModel: ["forward"], loss_for_object_detection.HungarianMatcher: ["forward"],
            loss_for_object_detection.ImageLoss: ["forward", "loss_labels", "loss_cardinality", "loss_boxes"]}


@pytest.fixture(scope="session", autouse=True)
def transformers_adapted_to_gaudi():
    """transformers as a Gaudi host trains it: adapted once per process, as `GaudiTrainingArguments` does."""
    if not GAUDI_STACK:
        yield
        return
    from optimum.habana.transformers.modeling_utils import adapt_transformers_to_gaudi

    STOCK_DETR.update({(cls, name): cls.__dict__[name] for cls, names in _detr_classes().items() for name in names})
    adapt_transformers_to_gaudi()
    with HpuTensorsOnCpu():
        yield


@pytest.fixture
def stock_transformers_detr(monkeypatch):
    """Within a test: transformers' own DETR code again, as before `adapt_transformers_to_gaudi()`."""
    for (cls, name), function in STOCK_DETR.items():
        monkeypatch.setattr(cls, name, function)
