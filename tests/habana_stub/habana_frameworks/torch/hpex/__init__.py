"""Test-only stand-in for `habana_frameworks.torch.hpex`: importable, for `adapt_transformers_to_gaudi()`; its fused
optimizer and gradient clipping for transformers' Trainer on HPU."""
