"""Count the host syncs a piece of torch code would cause on an accelerator.

A host sync is any point where Python must wait for the device: reading a value (``.item()``, ``bool(t)``, ``if
t.any():``), an op whose output shape depends on data (``nonzero``, boolean-mask indexing, ``masked_select``), or a
device->host copy (``.cpu()``, ``.to("cpu")``, ``.numpy()``, ``.tolist()``, ``np.asarray(t)``).

Two modes watch the code, so the count is the same on a CPU-only machine as on a GPU/HPU:

* a ``TorchDispatchMode`` sees aten ops, incl. those run by autograd in backward: ``_local_scalar_dense`` (what
  ``.item()`` and ``bool()`` reach), ``nonzero``, ``is_nonzero``, ``equal``, ``masked_select``, ``index`` /
  ``index_put`` with a boolean index, and ``_to_copy`` / ``copy_`` from a non-cpu tensor to cpu;
* a ``TorchFunctionMode`` sees ``Tensor.cpu/numpy/__array__/tolist`` and ``Tensor.to`` with a cpu target, which
  dispatch no aten op at all when the tensor already is on the cpu. Such a call counts once when its tensor is "on
  device", and the aten ops it runs inside are not counted again. On a cpu run the target of ``Tensor.to`` must be
  named, ``.to("cpu")`` or ``.to(device="cpu")``: ``.to(y.device)`` keeps a tensor on the audited device, as it does
  on an accelerator.

"On device" means: on ``device`` (the one the audited code runs on, ``"cpu"`` by default) and not a host tensor.
Host tensors are those an accelerator run would keep on the cpu, so that a cpu run counts what an accelerator run
counts:

* the result of a counted transfer, and every tensor sharing its storage (views such as ``split`` or ``c[i]``), so
  ``linear_sum_assignment(cost.cpu()[i])`` counts one sync, as it does on a GPU;
* a tensor the audited code creates with no ``device`` from no tensor, while the default device is the cpu:
  ``torch.rand([])``, ``torch.tensor(list)``, ``torch.as_tensor(array)`` (HOST_FACTORIES). LayerDrop's
  ``torch.rand([]) < p`` is thus no sync, as on HPU; ``torch.rand([], device=x.device)`` is a device tensor;
* on a cpu run, the result of an aten op whose tensor inputs are all host tensors (``torch.rand([]) < p``); one
  device input makes it a device tensor, as a 0-dim cpu tensor combined with a GPU tensor gives a GPU tensor.

Limits, on a cpu run: ``x.to(torch.device("cpu"))`` is not counted (it reads as ``x.to(y.device)``), and
``host.to(x.device)`` cannot be told apart from ``host.to("cpu")``: the tensor stays a host tensor, and a later read
of it is not counted (an accelerator run would count it). ``torch.from_numpy`` reaches neither mode: its tensor is
a device tensor, as after the ``.to(device)`` that usually follows it.

Host tensors are held until the counter exits, so their storage address cannot be reused by a device tensor
meanwhile. On a cpu run, a transfer under the counter returns a copy (as it does on an accelerator), not the tensor
itself.
"""

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
SCALAR_SYNC_OPS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default}
SHAPE_SYNC_OPS = {aten.nonzero.default, aten.masked_select.default}
BOOL_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
TRANSFER_METHODS = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__array__, torch.Tensor.tolist}
HOST_FACTORIES = {
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.zeros, torch.ones, torch.empty, torch.full,
    torch.arange, torch.linspace, torch.eye, torch.scalar_tensor, torch.tensor, torch.as_tensor,
}


class HostSyncCounter:
    """Context manager: ``with HostSyncCounter() as c: ...``; then ``c.count`` and ``c.by_op`` (op name -> count)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device_type = torch.device(device).type
        self.by_op: Counter[str] = Counter()
        self._host_tensors: list[torch.Tensor] = []
        self._host_storages: set[int] = set()
        self._in_transfer = False
        self._modes = (_TransferMode(self), _AtenSyncMode(self))

    @property
    def count(self) -> int:
        return sum(self.by_op.values())

    def __enter__(self) -> "HostSyncCounter":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._host_tensors.clear()

    def on_device(self, tensor: Any) -> bool:
        return (
            isinstance(tensor, torch.Tensor)
            and tensor.device.type == self.device_type
            and tensor.untyped_storage().data_ptr() not in self._host_storages
        )

    def mark_host(self, result: Any) -> None:
        for tensor in tree_leaves(result):
            # An empty tensor has no storage address (0): marking it would make every empty tensor a host tensor.
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr():
                self._host_tensors.append(tensor)
                self._host_storages.add(tensor.untyped_storage().data_ptr())

    def created_on_host(self, func: Any, args: tuple, kwargs: dict) -> bool:
        """A factory call that places its tensor on the default device, the cpu: see HOST_FACTORIES."""
        return (
            func in HOST_FACTORIES
            and kwargs.get("device") is None
            and not any(isinstance(arg, torch.Tensor) for arg in tree_leaves(args))
            and torch.get_default_device().type == "cpu"
        )

    def computed_on_host(self, args: tuple, kwargs: dict) -> bool:
        """On a cpu run: an op on host tensors only. On an accelerator the tensors' own device says it."""
        tensors = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        return self.device_type == "cpu" and bool(tensors) and not any(self.on_device(t) for t in tensors)


class _TransferMode(TorchFunctionMode):
    def __init__(self, counter: HostSyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.counter.created_on_host(func, args, kwargs):
            result = func(*args, **kwargs)
            self.counter.mark_host(result)
            return result
        if not self._is_transfer(func, args, kwargs) or not self.counter.on_device(args[0]):
            return func(*args, **kwargs)
        self.counter._in_transfer = True
        try:
            result = func(*args, **kwargs)
            if result is args[0]:  # `.cpu()` of a cpu tensor: copy, as on an accelerator, so the source stays on device
                result = result.clone()
        finally:
            self.counter._in_transfer = False
        self.counter.by_op[f"Tensor.{func.__name__}"] += 1
        self.counter.mark_host(result)
        return result

    def _is_transfer(self, func, args: tuple, kwargs: dict) -> bool:
        if func is not torch.Tensor.to:
            return func in TRANSFER_METHODS
        device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
        if device is None or device.type != "cpu":
            return False
        # On a cpu run `x.to(y.device)` stays on the audited device; only a cpu named as such leaves it.
        named = [arg for arg in (*args[1:], kwargs.get("device")) if isinstance(arg, str)]
        return self.counter.device_type != "cpu" or any(torch.device(name).type == "cpu" for name in named)


class _AtenSyncMode(TorchDispatchMode):
    def __init__(self, counter: HostSyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.counter._in_transfer and self._syncs(func, args, kwargs):
            self.counter.by_op[str(func.overloadpacket)] += 1
        result = func(*args, **kwargs)
        if self.counter.computed_on_host(args, kwargs):
            self.counter.mark_host(result)
        return result

    def _syncs(self, func, args, kwargs) -> bool:
        if func in SCALAR_SYNC_OPS or func in SHAPE_SYNC_OPS:
            return any(self.counter.on_device(arg) for arg in tree_leaves((args, kwargs)))
        if func in BOOL_INDEX_OPS:
            return any(self.counter.on_device(i) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        if func is aten._to_copy.default:
            return _device_to_host(args[0].device, kwargs.get("device"))
        if func is aten.copy_.default:
            return _device_to_host(args[1].device, args[0].device)
        return False


def _device_to_host(source: torch.device, target: torch.device | str | None) -> bool:
    return source.type != "cpu" and target is not None and torch.device(target).type == "cpu"
