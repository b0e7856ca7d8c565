"""Test-only stand-in for `habana_frameworks.torch.hpu`: only what GaudiTrainer touches with `use_habana=False`."""


def memory_stats(device: object = None) -> dict[str, int]:
    # Called by GaudiTrainer.log -> optimum.habana.utils.get_hpu_memory_stats on every log, even on CPU.
    return {"InUse": 0, "MaxInUse": 0, "Limit": 0}
