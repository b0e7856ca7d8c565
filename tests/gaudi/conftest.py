"""Lets optimum-habana's real GaudiTrainer run on CPU by exposing the test-only `habana_frameworks` stand-in.

Runs only in the Gaudi venv (.venv-gaudi): in the main venv optimum-habana is absent and the tests skip themselves.
On a real Gaudi host the real `habana_frameworks` is found first and the stub stays unused.
"""

import importlib.util
import os
import sys
from pathlib import Path

HABANA_STUB_DIR = Path(__file__).resolve().parent.parent / "habana_stub"


def _is_installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # parent package missing, e.g. no `optimum` at all
        return False


if _is_installed("optimum.habana") and not _is_installed("habana_frameworks"):
    sys.path.insert(0, str(HABANA_STUB_DIR))
    # `import optimum.habana` shells out to `pip list`: make it the venv's pip and let it see the stub's dist-info.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HABANA_STUB_DIR), os.environ.get("PYTHONPATH")]))
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
