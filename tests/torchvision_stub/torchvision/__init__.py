"""Test-only stand-in for `torchvision`, which Gaudi hosts get with Habana's PyTorch container.

`adapt_transformers_to_gaudi()` imports every optimum-habana model module, and glm4v's tokenizer module runs
`from torchvision import transforms` at import time. PyPI has no torchvision built for the CPU torch the Gaudi venv
installs (PyPI's links CUDA and fails to load). tests/gaudi/stand_ins.py puts this folder on `sys.path` only where no
real torchvision is installed; it has no dist-info, so transformers still reports torchvision as unavailable.
"""
