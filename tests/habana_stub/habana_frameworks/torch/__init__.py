"""Test-only stand-in for `habana_frameworks.torch`: importable, registers no `torch.hpu`, so accelerate and
transformers still report that no HPU is available."""
