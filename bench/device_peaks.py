"""Dense bf16 tensor-core peaks of known GPUs: what a measured TFLOP/s is a fraction of.

Dense means without structured sparsity: NVIDIA's datasheets list bf16 with sparsity, twice these. A name is matched
by the first pattern found in `torch.cuda.get_device_name()` (e.g. "NVIDIA H100 80GB HBM3" is the SXM part), so the
more specific patterns come first.
"""

from __future__ import annotations

import re

# (pattern in the device name, the part, dense bf16 TFLOP/s)
DENSE_BF16_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200.*NVL", "H200 NVL", 835.0),
    (r"H200", "H200 SXM", 989.0),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.0),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
)


def dense_bf16_peak(device_name: str) -> tuple[str, float] | None:
    """(part, dense bf16 TFLOP/s) of the first known part whose pattern `device_name` holds; None for others."""
    for pattern, part, tflops in DENSE_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return part, tflops
    return None


def peak_table() -> str:
    """One line naming every known part and its peak, printed beside a measurement."""
    return "dense bf16 peaks, TFLOP/s: " + ", ".join(f"{part} {tflops:g}" for _, part, tflops in DENSE_BF16_TFLOPS)
