"""The device the equivalence tests run on: the one DETR_FT_TEST_DEVICE names (default cpu), read at each call, so
that scripts/gpu_check.sh runs the same tests on cuda.

On cuda, TF32 is turned off for the test's length (`float32_matmuls`): the tests compare float32 losses and gradients
to a few float32 ulps, and a TF32 convolution or matmul rounds to 10 mantissa bits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

DEVICE_VARIABLE = "DETR_FT_TEST_DEVICE"


def device_under_test() -> torch.device:
    """The device DETR_FT_TEST_DEVICE names, cpu when it is unset."""
    return torch.device(os.environ.get(DEVICE_VARIABLE) or "cpu")


def on_device(value: Any) -> Any:
    """`value` with every tensor in it (nested in dicts and lists: a batch, labels) moved to the device under test."""
    if isinstance(value, torch.Tensor):
        return value.to(device_under_test())
    if isinstance(value, dict):
        return {key: on_device(item) for key, item in value.items()}
    if isinstance(value, list):
        return [on_device(item) for item in value]
    return value


@contextlib.contextmanager
def float32_matmuls() -> Iterator[None]:
    """Convolutions and matmuls in full float32 on cuda (TF32 off) while inside; nothing changes elsewhere."""
    matmul, convolution = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, convolution
