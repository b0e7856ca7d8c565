"""The test-only `habana_frameworks` (tests/habana_stub) in the main venv, for the tests of transformers' own Trainer
on HPU (`--use_habana --trainer hf`, detr_ft/train/hpu_trainer.py), and only for them: `in_process` puts it on this
process's path for one test (conftest.py's `habana_stand_in` fixture), `subprocess_variables` for a child
process.

The stand-in gives torch no HPU (a CPU build of torch has no "hpu" tensors, and the stand-in registers no
`torch.hpu`): transformers and accelerate find none and train on the CPU. ACCELERATE_USE_CPU, accelerate's own
switch, makes them set the CPU up as they do for `--device cpu` (under torchrun: a gloo process group), where
transformers on a Gaudi host would pick `hpu` and Habana's hccl. Everything the project does because of
`--use_habana` runs as on a Gaudi host, each Habana call answered on the CPU (tests/habana_stub): `mark_step` records
its caller, FusedAdamW and FusedClipNorm step and clip as the CPU path does, ModuleCacher calls the forward it
caches, `hpu_backend` compiles with dynamo's eager backend. What this cannot speak for: docs/gaudi.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HABANA_STUB_DIR = Path(__file__).resolve().parent / "habana_stub"
CPU_DEVICE_SETUP = {"ACCELERATE_USE_CPU": "true"}


@contextmanager
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The stand-in importable in this process until the context ends; then its modules, and the `hpu_backend` it
    registers with dynamo, are gone again."""
    from torch._dynamo.backends import registry

    monkeypatch.syspath_prepend(str(HABANA_STUB_DIR))
    for name, value in CPU_DEVICE_SETUP.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(registry, "_COMPILER_FNS", dict(registry._COMPILER_FNS))
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    try:
        yield
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "habana_frameworks"]:
            del sys.modules[name]


def subprocess_variables() -> dict[str, str]:
    """The environment variables that give a child process the stand-in (PYTHONPATH reaches torchrun's workers)."""
    path = os.pathsep.join(filter(None, [str(HABANA_STUB_DIR), os.environ.get("PYTHONPATH")]))
    return {**CPU_DEVICE_SETUP, "PYTHONPATH": path}
