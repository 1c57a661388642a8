"""Data split into partitions, and the two operations the model fits need: ``map`` (a new
partitioned value, left where it lives) and ``map_reduce`` (results combined, by default summed).

``LocalPartitions`` keeps everything in this process; ``DaskPartitions`` runs each partition's
work as a Dask task — on the local threaded scheduler, or on a ``distributed.Client``'s workers,
where the data stay between calls. An MPI launcher implements the same two operations with an
allreduce.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any, Protocol


def add(x, y):
    """Element-wise sum of two results: arrays, numbers, or tuples/lists of them."""
    if isinstance(x, tuple | list):
        return type(x)(add(a, b) for a, b in zip(x, y, strict=True))
    if x is None:
        return None
    return x + y


class Partitions(Protocol):
    def map(self, fn: Callable, *args: Any) -> Partitions: ...

    def map_reduce(self, fn: Callable, *args: Any, combine: Callable = add) -> Any: ...

    def __len__(self) -> int: ...


class LocalPartitions:
    """Partitions held as Python objects in this process."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts)

    def map(self, fn: Callable, *args: Any) -> LocalPartitions:
        return LocalPartitions([fn(p, *args) for p in self.parts])

    def map_reduce(self, fn: Callable, *args: Any, combine: Callable = add) -> Any:
        return reduce(combine, (fn(p, *args) for p in self.parts))


class DaskPartitions:
    """Partitions as Dask futures (with a ``distributed.Client``) or delayed values.

    Under a client the partitions stay on the workers between calls: ``map`` leaves its results
    there as new futures, ``map_reduce`` brings back only each partition's (small) result.
    ``device`` says where the partitions' arrays live (the dask engine's per-person tables are
    host arrays: ``cpu``). On another device, host arrays among the arguments (coefficients,
    grids) are moved to the partition's device where it runs, and ``map_reduce`` results come
    back as host arrays.
    Results are taken as tasks finish and added in partition order, so every launcher adds the
    same numbers in the same order and gives the same bits.
    """

    def __init__(self, parts: Sequence[Any], client=None, scheduler: str = "threads",
                 device: str = "cpu"):
        self.client = client
        self.scheduler = scheduler
        self.device = device
        if client is not None and parts and not _is_future(parts[0]):
            parts = client.scatter(list(parts))
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts)

    def _task(self, fn: Callable, reduce_: bool):
        return fn if self.device == "cpu" else _OnDevice(fn, self.device, reduce_)

    def map(self, fn: Callable, *args: Any) -> DaskPartitions:
        task = self._task(fn, False)
        if self.client is not None:
            futures = [self.client.submit(task, p, *args, pure=False) for p in self.parts]
            return DaskPartitions(futures, self.client, device=self.device)
        import dask

        computed = dask.compute(*[dask.delayed(task, pure=True)(p, *args) for p in self.parts],
                                scheduler=self.scheduler)
        return DaskPartitions(list(computed), None, self.scheduler, self.device)

    def map_reduce(self, fn: Callable, *args: Any, combine: Callable = add) -> Any:
        task = self._task(fn, True)
        if self.client is not None:
            from distributed import as_completed

            futures = [self.client.submit(task, p, *args, pure=False) for p in self.parts]
            where = {f.key: i for i, f in enumerate(futures)}
            got: dict[int, Any] = {}
            total, k = None, 0
            for f, r in as_completed(futures, with_results=True):
                got[where[f.key]] = r
                while k in got:   # add in partition order, as soon as the prefix is in
                    r_k = got.pop(k)
                    total = r_k if k == 0 else combine(total, r_k)
                    k += 1
            return total
        import dask

        results = dask.compute(*[dask.delayed(task, pure=True)(p, *args) for p in self.parts],
                               scheduler=self.scheduler)
        return reduce(combine, results)


class _OnDevice:
    """A per-partition function run on the partition's device: host array arguments go to the
    device there; a reduction's result comes back to the host."""

    def __init__(self, fn: Callable, device: str, reduce_: bool):
        self.fn, self.device, self.reduce_ = fn, device, reduce_
        self.__name__ = getattr(fn, "__name__", "task")   # dask names the task after it

    def __call__(self, part, *args):
        from ..devices import get_device

        dev = get_device(self.device)
        out = self.fn(part, *(_to_device(dev, a) for a in args))
        return to_host(out, dev) if self.reduce_ else out


def _to_device(dev, x):
    import numpy as np

    if isinstance(x, np.ndarray):
        return dev.to_device(x)
    if isinstance(x, tuple | list):
        return type(x)(_to_device(dev, v) for v in x)
    return x


def to_host(x, dev):
    """``x`` with every device array in it (in tuples, lists, dicts) copied to the host."""
    import numpy as np

    if isinstance(x, np.ndarray | np.generic) or x is None or isinstance(x, int | float | str):
        return x
    if isinstance(x, tuple | list):
        return type(x)(to_host(v, dev) for v in x)
    if isinstance(x, dict):
        return {k: to_host(v, dev) for k, v in x.items()}
    if hasattr(x, "shape"):
        return dev.to_host(x)
    return x


def _is_future(x: Any) -> bool:
    return type(x).__name__ == "Future"


def as_partitions(parts: Any) -> Partitions:
    if hasattr(parts, "map_reduce"):
        return parts
    return LocalPartitions(parts)
