"""Runs the Gaudi tests on CPU as Gaudi runs them: optimum-habana's real GaudiTrainer, with transformers adapted by
optimum-habana's own `adapt_transformers_to_gaudi()`, which `GaudiTrainingArguments` calls only when use_habana is on.

Runs only in the Gaudi venv (.venv-gaudi): in the main venv optimum-habana is absent and the tests skip themselves.
Test-only stand-ins, each put on `sys.path` only where the real package is missing: `habana_frameworks` (not on
PyPI; what optimum-habana touches on CPU) and `torchvision` (see tests/torchvision_stub). On a real Gaudi host the
real packages are found first and the stand-ins stay unused.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

TESTS_DIR = Path(__file__).resolve().parent.parent
HABANA_STUB_DIR = TESTS_DIR / "habana_stub"
TORCHVISION_STUB_DIR = TESTS_DIR / "torchvision_stub"


def _is_installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # parent package missing, e.g. no `optimum` at all
        return False


GAUDI_STACK = _is_installed("optimum.habana")
if GAUDI_STACK and not _is_installed("habana_frameworks"):
    sys.path.insert(0, str(HABANA_STUB_DIR))
    # `import optimum.habana` shells out to `pip list`: make it the venv's pip and let it see the stub's dist-info.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HABANA_STUB_DIR), os.environ.get("PYTHONPATH")]))
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
if GAUDI_STACK and not _is_installed("torchvision"):
    sys.path.append(str(TORCHVISION_STUB_DIR))


class HpuTensorsOnCpu(TorchFunctionMode):
    """`tensor.to("hpu")` gives a cpu tensor: the stand-in for the HPU device, which optimum-habana's DETR code
    names literally (`gaudi_DetrConvModel_forward` copies the position embedding back to "hpu")."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            args = tuple(_hpu_to_cpu(arg) for arg in args)
            kwargs = {name: _hpu_to_cpu(value) for name, value in kwargs.items()}
        return func(*args, **kwargs)


def _hpu_to_cpu(value):
    is_hpu = isinstance(value, str | torch.device) and torch.device(value).type == "hpu"
    return torch.device("cpu") if is_hpu else value


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
