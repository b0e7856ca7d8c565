"""Test-only stand-in for `habana_frameworks.torch.hpu`: only what GaudiTrainer touches with `use_habana=False`, and
the HPU graphs' module cache both trainers apply with `use_hpu_graphs_for_training`."""

CACHED_MODULES: list = []  # every module a ModuleCacher of this process cached, in order


def memory_stats(device: object = None) -> dict[str, int]:
    # Called by GaudiTrainer.log -> optimum.habana.utils.get_hpu_memory_stats on every log, even on CPU.
    return {"InUse": 0, "MaxInUse": 0, "Limit": 0}


def get_device_name() -> str:
    # Imported at module level by optimum-habana's wav2vec2 when `adapt_transformers_to_gaudi()` runs; never called.
    raise NotImplementedError("no HPU: the test-only habana_frameworks stub has no device")


class ModuleCacher:
    """Stand-in for HPU graphs' module cache, which GaudiTrainer applies with `use_hpu_graphs_for_training`: like the
    real one it replaces `model.forward` in place (there: by the replay of a captured graph); this one calls the
    forward it replaced, records the keyword names of every call in `model.forward.calls` and the module in
    `CACHED_MODULES`."""

    def __call__(self, model, inplace: bool = True, **kwargs):
        CACHED_MODULES.append(model)
        forward = model.forward

        def cached_forward(*args, **kwargs):
            cached_forward.calls.append(sorted(kwargs))
            return forward(*args, **kwargs)

        cached_forward.calls = []
        model.forward = cached_forward
        return model
