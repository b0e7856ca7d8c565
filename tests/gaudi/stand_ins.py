"""The CPU stand-ins for a Gaudi host, shared by tests/gaudi/conftest.py and `make bench` (bench/gaudi_syncs.py).

`expose()` puts the test-only packages on `sys.path`, each only where the real one is missing: `habana_frameworks`
(tests/habana_stub: not on PyPI; what optimum-habana touches on CPU) and `torchvision` (tests/torchvision_stub). On a
real Gaudi host the real packages are found first and the stand-ins stay unused. `HpuTensorsOnCpu` stands in for the
HPU device itself.
"""

import importlib.util
import os
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

TESTS_DIR = Path(__file__).resolve().parent.parent
HABANA_STUB_DIR = TESTS_DIR / "habana_stub"
TORCHVISION_STUB_DIR = TESTS_DIR / "torchvision_stub"


def is_installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # parent package missing, e.g. no `optimum` at all
        return False


def expose() -> bool:
    """Make optimum-habana importable and adaptable on CPU; False where it is not installed (the main venv)."""
    if not is_installed("optimum.habana"):
        return False
    if not is_installed("habana_frameworks"):
        sys.path.insert(0, str(HABANA_STUB_DIR))
        # `import optimum.habana` shells out to `pip list`: make it the venv's pip and let it see the stub's dist-info.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HABANA_STUB_DIR), os.environ.get("PYTHONPATH")]))
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    if not is_installed("torchvision"):
        sys.path.append(str(TORCHVISION_STUB_DIR))
    return True


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
