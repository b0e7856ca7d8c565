"""Test-only stand-in for `habana_frameworks.torch.dynamo.compile_backend`."""
