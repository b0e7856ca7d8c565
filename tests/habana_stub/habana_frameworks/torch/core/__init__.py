"""Test-only stand-in for `habana_frameworks.torch.core`: optimum-habana's model modules import it at module level
(`import habana_frameworks.torch.core as htcore`) when `adapt_transformers_to_gaudi()` runs, and the trainers call
its `mark_step()` in lazy mode."""

import sys

MARK_STEP_CALLERS: list[str] = []  # the function that called each mark_step() of this process, in order


def mark_step() -> None:
    # Ends an HPU lazy-mode graph; the CPU runs every op eagerly, there is nothing to end. Who asked is recorded.
    MARK_STEP_CALLERS.append(sys._getframe(1).f_code.co_name)
