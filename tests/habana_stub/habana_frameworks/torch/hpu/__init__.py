"""Test-only stand-in for `habana_frameworks.torch.hpu`: only what GaudiTrainer touches with `use_habana=False`."""


def memory_stats(device: object = None) -> dict[str, int]:
    # Called by GaudiTrainer.log -> optimum.habana.utils.get_hpu_memory_stats on every log, even on CPU.
    return {"InUse": 0, "MaxInUse": 0, "Limit": 0}


def get_device_name() -> str:
    # Imported at module level by optimum-habana's wav2vec2 when `adapt_transformers_to_gaudi()` runs; never called.
    raise NotImplementedError("no HPU: the test-only habana_frameworks stub has no device")
