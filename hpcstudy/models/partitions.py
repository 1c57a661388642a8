"""Data split into partitions, and the two operations the model fits need: ``map`` (a new
partitioned value, left where it lives) and ``map_reduce`` (results combined, by default summed).

``LocalPartitions`` keeps everything in this process; ``DaskPartitions`` runs each partition's
work as a Dask task — on the local threaded scheduler, or on a ``distributed.Client``'s workers,
where the data stay between calls. An MPI launcher implements the same two operations with an
allreduce.

Partitions may live on a device (a GPU, or the CPU stand-in): ``on_device(parts)`` moves host
per-person tables to the partitions' ``device`` once. A per-partition function then gets the
partition's device arrays, with every host (NumPy) array argument moved to that device first,
and a reduction's result comes back to the host: both through the device's counted
``to_device``/``to_host``. So model code on the host sees only NumPy, and per-partition code
uses only the namespace of its arrays.

Every partition under a client is the result of a submitted task (never ``scatter``ed data),
so a worker lost mid-fit (a node, or a GPU that failed: ``cluster.gpus.leave_the_cluster``)
costs only recomputation: the scheduler rebuilds what it held from the tasks' lineage.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import reduce
from typing import Any, Protocol

import numpy as np


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
    """Partitions held as Python objects in this process. ``device`` names where their arrays
    live (``cpu``: NumPy; see :class:`DaskPartitions` for the others)."""

    def __init__(self, parts: Sequence[Any], device: str = "cpu"):
        self.parts = list(parts)
        self.device = device

    def __len__(self) -> int:
        return len(self.parts)

    def _task(self, fn: Callable, reduce_: bool, i: int):
        if self.device == "cpu" and not any(part_device(p) for p in self.parts[:1]):
            return fn
        return _OnDevice(fn, reduce_, i)

    def map(self, fn: Callable, *args: Any) -> LocalPartitions:
        return LocalPartitions([self._task(fn, False, i)(p, *args)
                                for i, p in enumerate(self.parts)], self.device)

    def map_reduce(self, fn: Callable, *args: Any, combine: Callable = add) -> Any:
        return reduce(combine, (self._task(fn, True, i)(p, *args)
                                for i, p in enumerate(self.parts)))


class DaskPartitions:
    """Partitions as Dask futures (with a ``distributed.Client``), or values in this process
    computed on a local scheduler (``"threads"``: a pool of this process's threads).

    Under a client the partitions stay on the workers between calls: ``map`` leaves its results
    there as new futures, ``map_reduce`` brings back only each partition's (small) result.
    ``device`` is the run's device: the dask engine's per-person tables are host arrays, which
    ``on_device`` moves there for the model fits; on a partition whose arrays live on a device,
    host arrays among the arguments (coefficients, grids) are moved to it where it runs, and
    ``map_reduce`` results come back as host arrays.
    Results are taken as tasks finish and added in partition order, so every launcher adds the
    same numbers in the same order and gives the same bits.
    """

    def __init__(self, parts: Sequence[Any], client=None, scheduler: str = "threads",
                 device: str = "cpu"):
        self.client = client
        self.scheduler = scheduler
        self.device = device
        if client is not None and parts and not _is_future(parts[0]):
            # submitted, not scattered: scattered data on a lost worker cannot be recomputed
            parts = [client.submit(_same, p, pure=False) for p in parts]
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts)

    def _task(self, fn: Callable, reduce_: bool, i: int):
        return fn if self.device == "cpu" else _OnDevice(fn, reduce_, i)

    def map(self, fn: Callable, *args: Any) -> DaskPartitions:
        if self.client is not None:
            futures = [self.client.submit(self._task(fn, False, i), p, *args, pure=False)
                       for i, p in enumerate(self.parts)]
            return DaskPartitions(futures, self.client, device=self.device)
        tasks = [self._task(fn, False, i) for i in range(len(self.parts))]
        return DaskPartitions(_local(tasks, self.parts, args, self.scheduler), None,
                              self.scheduler, self.device)

    def map_reduce(self, fn: Callable, *args: Any, combine: Callable = add) -> Any:
        if self.client is not None:
            from distributed import as_completed

            futures = [self.client.submit(self._task(fn, True, i), p, *args, pure=False)
                       for i, p in enumerate(self.parts)]
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
        tasks = [self._task(fn, True, i) for i in range(len(self.parts))]
        return reduce(combine, _local(tasks, self.parts, args, self.scheduler))


_POOL: list = []
_POOL_LOCK = threading.Lock()
_IN_POOL = threading.local()


def _local(tasks: list, parts: list, args: tuple, scheduler) -> list:
    """``tasks[i](parts[i], *args)`` for every partition in this process, in partition order. The
    threaded scheduler (``"threads"``) is a pool of one thread per core kept for the run: a
    dask graph costs about 8 ms of CPU a call, and example 1 makes 51 (every Newton step). A call
    from one of the pool's own threads runs its partitions there, one after another."""
    if scheduler != "threads":
        import dask

        # never pure: a pure task's key hashes its arguments, every partition table at every
        # Newton step (~5 % of a run), and device partitions would be copied to the host for it
        return list(dask.compute(*[dask.delayed(t, pure=False)(p, *args)
                                   for t, p in zip(tasks, parts, strict=True)],
                                 scheduler=scheduler))
    if len(parts) < 2 or getattr(_IN_POOL, "yes", False):
        return [t(p, *args) for t, p in zip(tasks, parts, strict=True)]
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                            thread_name_prefix="hpcstudy-partitions",
                                            initializer=_mark_pool_thread))
    return list(_POOL[0].map(lambda t, p: t(p, *args), tasks, parts))


def _mark_pool_thread() -> None:
    _IN_POOL.yes = True


def _same(x):
    return x


class _OnDevice:
    """Partition ``index``'s step ``fn`` run where the partition's arrays live: host (NumPy)
    array arguments are moved to that device first, and a reduction's result comes back to the
    host, each through the device's counted ``to_device``/``to_host``. On a partition of host
    arrays it is the plain call. A GPU that fails in it (a CUDA error, not out of memory) takes
    its worker out of the cluster and the step goes to another worker
    (:func:`hpcstudy.cluster.gpus.leave_the_cluster`)."""

    def __init__(self, fn: Callable, reduce_: bool, index: int = 0):
        self.fn, self.reduce_, self.index = fn, reduce_, index
        self.__name__ = getattr(fn, "__name__", "task")   # dask names the task after it

    def __call__(self, part, *args):
        try:
            dev = part_device(part)
            if dev is None:
                return self.fn(part, *args)
            out = self.fn(part, *(_to_device(dev, a) for a in args))
            return to_host(out, dev) if self.reduce_ else out
        except Exception as e:
            from ..cluster import gpus

            if gpus.device_failed(e):
                gpus.leave_the_cluster(self.index, e, step=self.__name__.strip("_"))
            raise


def _first_array(part):
    if isinstance(part, dict):
        values = part.values()
    elif isinstance(part, tuple | list):
        values = part
    elif hasattr(part, "__dict__"):   # a prepared partition (kernels' CoxPart)
        values = vars(part).values()
    else:
        values = (part,)
    return next((v for v in values if hasattr(v, "shape") and hasattr(v, "dtype")), None)


_GPU = {}


def part_device(part):
    """The :class:`~hpcstudy.devices.Device` a partition's arrays live on (its first array's),
    or None for host NumPy arrays. A stand-in array knows its device (and so its transfer
    counters); CuPy arrays share one GPU device per process."""
    a = _first_array(part)
    if a is None:
        return None
    from ..devices import device_of, get_device

    kind = device_of(a)
    if kind == "cpu":
        return None
    if kind == "standin":
        return a.__array_namespace__()._device
    if "gpu" not in _GPU:
        _GPU["gpu"] = get_device("gpu")
    return _GPU["gpu"]


def _move(part, device: str):
    """A host partition (a dict of arrays) with every array moved to ``device``: one counted
    transfer per array."""
    from ..devices import get_device

    if device == "gpu":
        dev = _GPU.get("gpu") or _GPU.setdefault("gpu", get_device("gpu"))
    else:
        dev = get_device(device)
    return {k: dev.to_device(v) if isinstance(v, np.ndarray) else v for k, v in part.items()}


def on_device(parts):
    """``parts`` (host per-person tables) with their arrays on the partitions' ``device``,
    moved once and left there (kept with ``parts``, so every model of a run reuses them). On
    the CPU, ``parts`` itself."""
    device = getattr(parts, "device", "cpu")
    if device == "cpu":
        return parts
    moved = getattr(parts, "_on_device", None)
    if moved is None:
        moved = parts.map(_move, device)
        parts._on_device = moved
    return moved


def _to_device(dev, x):
    if isinstance(x, np.ndarray):
        return dev.to_device(x)
    if isinstance(x, tuple | list):
        return type(x)(_to_device(dev, v) for v in x)
    return x


def to_host(x, dev):
    """``x`` with every device array in it (in tuples, lists, dicts) copied to the host."""
    if x is None or isinstance(x, np.generic | int | float | str):
        return x
    from ..devices import device_of

    if hasattr(x, "shape") and device_of(x) != "cpu":   # by type: a device array
        return dev.to_host(x)
    if isinstance(x, np.ndarray):
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


def map_each(parts, fn: Callable, args: Sequence[tuple]):
    """``parts.map(fn, ...)`` with partition i's own arguments ``args[i]``: under a client each
    partition's task carries only its own (so each is sent what is its, not everything)."""
    if isinstance(parts, DaskPartitions):
        if parts.client is not None:
            futures = [parts.client.submit(parts._task(fn, False, i), p, *a, pure=False)
                       for i, (p, a) in enumerate(zip(parts.parts, args, strict=True))]
            return DaskPartitions(futures, parts.client, device=parts.device)
        return DaskPartitions([parts._task(fn, False, i)(p, *a) for i, (p, a)
                               in enumerate(zip(parts.parts, args, strict=True))],
                              None, parts.scheduler, parts.device)
    parts = as_partitions(parts)
    return LocalPartitions([parts._task(fn, False, i)(p, *a) for i, (p, a)
                            in enumerate(zip(parts.parts, args, strict=True))], parts.device)


def as_partitions(parts: Any) -> Partitions:
    if hasattr(parts, "map_reduce"):
        return parts
    return LocalPartitions(parts)
