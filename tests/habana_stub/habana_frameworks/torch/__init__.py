"""Test-only stand-in for `habana_frameworks.torch`: importable, registers no `torch.hpu`, so accelerate and
transformers still report that no HPU is available. Importing it registers the `hpu_backend` torch.compile backend,
as importing Habana's does."""

from habana_frameworks.torch.dynamo.compile_backend import backends  # noqa: F401
