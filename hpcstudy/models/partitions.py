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
    """Partitions as Dask futures (with a ``distributed.Client``) or delayed values."""

    def __init__(self, parts: Sequence[Any], client=None, scheduler: str = "threads"):
        self.client = client
        self.scheduler = scheduler
        if client is not None and parts and not _is_future(parts[0]):
            parts = client.scatter(list(parts))
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts)

    def map(self, fn: Callable, *args: Any) -> DaskPartitions:
        if self.client is not None:
            futures = [self.client.submit(fn, p, *args, pure=False) for p in self.parts]
            return DaskPartitions(futures, self.client)
        import dask

        computed = dask.compute(*[dask.delayed(fn, pure=True)(p, *args) for p in self.parts],
                                scheduler=self.scheduler)
        return DaskPartitions(list(computed), None, self.scheduler)

    def map_reduce(self, fn: Callable, *args: Any, combine: Callable = add) -> Any:
        if self.client is not None:
            futures = [self.client.submit(fn, p, *args, pure=False) for p in self.parts]
            # The partial sums are small: add them here, in partition order, so every launcher
            # adds in the same order and gives the same bits.
            return reduce(combine, self.client.gather(futures))
        import dask

        results = dask.compute(*[dask.delayed(fn, pure=True)(p, *args) for p in self.parts],
                               scheduler=self.scheduler)
        return reduce(combine, results)


def _is_future(x: Any) -> bool:
    return type(x).__name__ == "Future"


def as_partitions(parts: Any) -> Partitions:
    if hasattr(parts, "map_reduce"):
        return parts
    return LocalPartitions(parts)
