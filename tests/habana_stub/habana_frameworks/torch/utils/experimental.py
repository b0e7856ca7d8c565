"""Test-only stand-in for `habana_frameworks.torch.utils.experimental`: optimum-habana's FP8 quantizer module asks
`_get_device_type()` which Gaudi it runs on when `adapt_transformers_to_gaudi()` imports it."""

import enum


class synDeviceType(enum.Enum):  # noqa: N801 (Habana's name)
    synDeviceGaudi = 1
    synDeviceGaudi2 = 2
    synDeviceGaudi3 = 3


def _get_device_type() -> synDeviceType | None:
    return None  # no Gaudi at all
