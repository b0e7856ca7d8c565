"""Test-only stand-in for Intel's `habana_frameworks` (not on PyPI), holding what the project's two Gaudi paths touch on
a CPU: optimum-habana's real `GaudiTrainer` with `use_habana=False, use_cpu=True` and what
`adapt_transformers_to_gaudi()` imports (the Gaudi venv; tests/gaudi/stand_ins.py puts this folder on `sys.path`
only when optimum-habana is installed and the real `habana_frameworks` is not), and transformers' own Trainer on HPU
(`--use_habana --trainer hf`, detr_ft/train/hpu_trainer.py: the main venv; tests/hpu_stand_in.py puts it on the
path for the tests that ask for it). Each Habana call is answered on the CPU; what that cannot speak for is listed in
docs/gaudi.md.

The sibling `habana_torch_plugin-1.24.0.dist-info` exists because `import optimum.habana` runs
`check_synapse_version()`, which parses `pip list | grep habana-torch-plugin` and raises IndexError when the plugin
is absent; 1.24.0 is the SynapseAI version optimum-habana 1.21.2 is validated for, so no mismatch warning.
"""
