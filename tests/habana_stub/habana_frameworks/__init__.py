"""Test-only stand-in for Intel's `habana_frameworks` (not on PyPI), holding only what optimum-habana's real
`GaudiTrainer` touches with `use_habana=False, use_cpu=True`, and what `adapt_transformers_to_gaudi()` imports.
tests/gaudi/stand_ins.py puts this folder on `sys.path` only when optimum-habana is installed and the real
`habana_frameworks` is not.

The sibling `habana_torch_plugin-1.24.0.dist-info` exists because `import optimum.habana` runs
`check_synapse_version()`, which parses `pip list | grep habana-torch-plugin` and raises IndexError when the plugin
is absent; 1.24.0 is the SynapseAI version optimum-habana 1.21.2 is validated for, so no mismatch warning.
"""
