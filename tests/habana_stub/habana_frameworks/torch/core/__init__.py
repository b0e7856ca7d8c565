"""Test-only stand-in for `habana_frameworks.torch.core`: optimum-habana's model modules import it at module level
(`import habana_frameworks.torch.core as htcore`) when `adapt_transformers_to_gaudi()` runs."""


def mark_step() -> None:
    # Ends an HPU lazy-mode graph; the CPU runs every op eagerly, there is nothing to end.
    pass
