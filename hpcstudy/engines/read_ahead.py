"""The first partitions of a run read while the run still imports what it computes with.

A run of the dask engine in this process spends its first few tenths of a second on one core,
importing the engine, the models and the outputs; its first partitions' Parquet files can be
read and decompressed meanwhile on the other (pyarrow releases the GIL). The partition task then
takes the table read ahead instead of reading it (:func:`take`, waiting for a read still going):
the same bytes, read once. A read that fails here is left to the task's own read, which says
what went wrong in its usual one line.

    read_ahead.start(root, plan.reads, partitions=range(2))   # after the run's checks
    ...
    t = read_ahead.take(path, columns) or read_partition(path, columns)
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

_LOCK = threading.Lock()
_AHEAD: dict[tuple[str, tuple[str, ...]], Future] = {}


def start(root, reads: dict[str, tuple[str, ...]], partitions, threads: int | None = None) -> None:
    """Read ``reads`` (register: columns) of each of ``partitions`` under ``root``, each table
    kept for the partition task that asks for it: one thread per partition, or ``threads``
    threads taking the partitions in turn (thread 0 partitions 0, k, 2k…), each in order."""
    from ..registers.store import part_name

    partitions = list(partitions)
    k = len(partitions) if threads is None else max(1, threads)
    for i in range(min(k, len(partitions))):
        jobs = []
        with _LOCK:
            for p in partitions[i::k]:
                for reg, cols in reads.items():
                    key = (str(Path(root) / reg / part_name(p)), tuple(cols))
                    if key not in _AHEAD:
                        _AHEAD[key] = Future()
                        jobs.append((key, _AHEAD[key]))
        if jobs:
            threading.Thread(target=_read, args=(jobs,), name=f"hpcstudy-read-ahead-{i}",
                             daemon=True).start()


def _read(jobs) -> None:
    from ..registers.store import read_partition

    for (path, cols), f in jobs:
        try:
            f.set_result(read_partition(Path(path), cols))
        except BaseException as e:   # noqa: BLE001 - the task reads again and says it
            f.set_exception(e)


def take(path, columns):
    """The table read ahead for ``path`` and ``columns`` (waiting for its read to finish), once;
    None when none was read ahead or its read failed."""
    with _LOCK:
        f = _AHEAD.pop((str(path), tuple(columns)), None)
    if f is None:
        return None
    try:
        return f.result()
    except Exception:   # noqa: BLE001 - the caller's own read reports it
        return None


def clear() -> None:
    """Drop what no task took (a run that stopped early): its memory goes back."""
    with _LOCK:
        _AHEAD.clear()
