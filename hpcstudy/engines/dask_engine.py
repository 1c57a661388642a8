"""The dask engine: one task per register partition, person rows never leave it.

Each task reads only the columns the plan needs from its partition's files, moves them to the
run's device once and builds that partition's per-person table there with the array kernels
(:mod:`.partition`; linkage is partition-local: every register shares the pnr hash); the table
comes back to the memory of the process that computed it. Analyses are reductions over the
partition tables. Locally (the default) a pool of one thread per core runs the partitions, and
the analyses' reductions run on a pool of their own, without a dask graph; under a
``distributed.Client`` the tables stay in the workers' memory from the cohort step through
every Newton step of every model: the client sends coefficients and receives per-partition
sums, and the workers write the checkpoints and the private per-person table themselves.
"""

from __future__ import annotations

import math
import operator
import os
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..cluster import gpus
from ..models.partitions import DaskPartitions
from ..plan.nodes import Plan
from ..registers import arrow
from ..registers.store import Dataset
from . import checkpoint, partition
from .common import table_columns


def device_of(name: str):
    """The Device for a run's device name (``None`` for the plain CPU path: NumPy as always)."""
    if name == "cpu":
        return None
    from ..devices import get_device

    return get_device(name)


# read the last partition ahead while the ones before it compute (DaskEngine._threads)
LAST_READ_AHEAD = True

# One partition at a time on a process's device: a worker's threads (or the local scheduler's)
# share its GPU, and each partition's working memory is checked against what is free (by
# partition.load) and then used alone.
_DEVICE_BUSY = threading.Lock()


def run_partition(root: str, p: int, plan: Plan, device: str = "cpu",
                  ckpt: str | None = None, fp: str | None = None, resume: bool = False):
    """One partition, where it runs: (table, attrition, info). ``info`` says whether a
    checkpoint was reused and the partition's peak device memory (MiB; None on the CPU). The
    checkpoint is written here, by the worker."""
    if resume and ckpt is not None:
        got = checkpoint.load(Path(ckpt), p, fp)
        if got is not None:
            return got[0], got[1], {"resumed": True, "peak_memory_mib": None}
    dev = device_of(device)
    if dev is None:
        table, attrition = partition.person_table(partition.load(root, p, plan.reads), plan)
        peak = None
    else:
        with _DEVICE_BUSY:
            pool = getattr(dev.xp, "get_default_memory_pool", None)
            if pool is not None:   # CuPy: blocks cached for earlier partitions go back first
                pool().free_all_blocks()
            # read, check the fit, move each column once, compute, bring the table back
            try:
                table, attrition = partition.run_partition(root, p, plan, dev)
            except Exception as e:
                if gpus.device_failed(e):
                    gpus.leave_the_cluster(p, e)   # the partition goes to another worker
                raise
            got = dev.peak_memory()
            peak = None if got is None else int(math.ceil(got / 2 ** 20))
    if ckpt is not None:
        _slow_partition_for_tests()
        checkpoint.save(Path(ckpt), p, table, attrition, fp)
    return table, attrition, {"resumed": False, "peak_memory_mib": peak}


def _slow_partition_for_tests() -> None:
    """Test hook (as HPCSTUDY_TEST_KILL_AT): HPCSTUDY_TEST_PARTITION_SECONDS makes each
    checkpointed partition take that long, so a test can stop a job mid-way however fast the
    engine has become."""
    pause = os.environ.get("HPCSTUDY_TEST_PARTITION_SECONDS")
    if pause:
        import time

        time.sleep(float(pause))


def _meta(result):
    return result[1], result[2]


def combined(plan: Plan, tables) -> dict:
    """One per-person table from host partition tables: sorted by group (descending) then pnr,
    the same order the reference engine writes."""
    # a comparative design adds each person's score and weight
    cols = table_columns(plan) + [c for c in ("ps", "weight") if tables and c in tables[0]]
    t = {c: np.concatenate([x[c] for x in tables]) for c in cols}
    order = np.lexsort((t["pnr"], -t["group"].astype(np.int64)))
    return {c: v[order] for c, v in t.items()}


def write_person_table(table: dict, path) -> None:
    """The private per-person table as Parquet (one function, so every launcher writes the same
    bytes)."""
    pq.write_table(arrow.table(table), path, compression="zstd")


def _combine_and_write(plan: Plan, path: str, *tables) -> int:
    write_person_table(combined(plan, tables), path)
    return sum(int(t["pnr"].shape[0]) for t in tables)


def _person_table_bytes(plan: Plan, tables) -> bytes:
    """The bytes :func:`write_person_table` writes, in memory."""
    sink = pa.BufferOutputStream()
    write_person_table(combined(plan, tables), sink)
    return sink.getvalue().to_pybytes()


class PartitionTables:
    """The per-partition tables of a run, left where they were computed: in this process, or
    as futures whose tables stay in the memory of the client's workers.

    ``write(plan, path)`` writes the private per-person table where the rows are (a worker task
    under a client). Iterating or indexing gives the tables here and, under a client, moves
    rows through it: only for a caller that asked for them (the Python API's ``person_table``).
    """

    def __init__(self, parts: list, client=None):
        self.parts, self.client = parts, client
        self._ahead: Future | None = None

    def __len__(self) -> int:
        return len(self.parts)

    def _here(self) -> list[dict]:
        return self.parts if self.client is None else self.client.gather(self.parts)

    def __iter__(self):
        return iter(self._here())

    def __getitem__(self, i):
        return self.parts[i] if self.client is None else self.client.gather(self.parts[i])

    def write_ahead(self, plan: Plan) -> None:
        """Start making the private table's bytes in a background thread (tables in this
        process): sorting and compressing run beside the analyses, and ``write`` only puts
        them in place."""
        if self.client is None and self._ahead is None:
            self._ahead = Future()
            threading.Thread(target=_into, args=(self._ahead, _person_table_bytes, plan,
                                                 self.parts),
                             name="hpcstudy-person-table", daemon=True).start()

    def write(self, plan: Plan, path) -> None:
        if self.client is None:
            if self._ahead is not None:
                Path(path).write_bytes(self._ahead.result())
                return
            _combine_and_write(plan, str(path), *self.parts)
            return
        # one worker gathers the tables from the others and writes: no row passes here
        self.client.submit(_combine_and_write, plan, str(path), *self.parts,
                           pure=False).result()


def _into(future: Future, fn, *args) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as e:   # noqa: BLE001 - the waiting thread raises it
        future.set_exception(e)


class DaskEngine:
    name = "dask"

    def __init__(self, client=None, scheduler: str = "threads", progress=None,
                 device: str = "cpu"):
        self.client = client
        # "threads": this process's threads, no dask graph (nor dask's import, which for a
        # scheduler given by name looks for a client in distributed: about 1.5 s of CPU)
        self.scheduler = scheduler
        self.progress = progress
        self.device = device
        self.peak_memory_mib: dict[int, int | None] = {}

    def person_tables(self, ds: Dataset, plan: Plan, checkpoints: Path | None = None,
                      resume: bool = False):
        """Per-partition tables (a :class:`PartitionTables`, in partition order) and the
        summed attrition. With ``checkpoints``, each finished partition is saved there (by the
        worker that computed it); with ``resume``, verified checkpoints are loaded instead of
        recomputed (``self.resumed`` counts them)."""
        n = ds.partitions
        fp = checkpoint.fingerprint(plan, ds.manifest_sha256)   # the bytes the plan read
        args = (str(ds.root), plan, self.device,
                str(checkpoints) if checkpoints is not None else None, fp, resume)
        tables: dict[int, object] = {}
        meta: dict[int, tuple] = {}

        def finished(p, m):
            meta[p] = m
            if self.progress:
                self.progress("partitions", len(meta), n)

        if self.client is not None:
            self._on_client(n, args, tables, finished)
        else:
            self._local(n, args, tables, finished)
        self.resumed = sum(1 for _, info in meta.values() if info["resumed"])
        self.peak_memory_mib = {p: meta[p][1]["peak_memory_mib"] for p in range(n)}
        attrition: dict = {}
        for p in range(n):   # in partition order, whatever order they finished in
            for group, steps in meta[p][0].items():
                if group not in attrition:
                    attrition[group] = [[name, 0] for name, _ in steps]
                for row, (_, k) in zip(attrition[group], steps, strict=True):
                    row[1] += k
        parts = PartitionTables([tables[p] for p in range(n)], self.client)
        return parts, {g: [tuple(r) for r in rows] for g, rows in attrition.items()}

    def _on_client(self, n, args, tables, finished):
        from distributed import as_completed

        c = self.client
        root, plan, *rest = args
        small = {}
        for p in range(n):
            whole = c.submit(run_partition, root, p, plan, *rest, pure=False)
            tables[p] = c.submit(operator.getitem, whole, 0, pure=False)
            small[c.submit(_meta, whole, pure=False)] = p
        # only attrition and a few numbers come back; the tables stay on the workers
        for f, m in as_completed(list(small), with_results=True):
            finished(small[f], m)

    def _local(self, n, args, tables, finished):
        root, plan, *rest = args
        if self.scheduler == "threads":
            self._threads(n, root, plan, rest, tables, finished)
            return
        import dask

        # in chunks, so checkpoints and a progress bar advance on long runs; a chunk holds at
        # least one partition per core, so every core has a partition to work on
        step = max(1, min(n, max(os.cpu_count() or 1, n // 20)))
        for i in range(0, n, step):
            chunk = list(range(i, min(n, i + step)))
            out = dask.compute(*[dask.delayed(run_partition)(root, p, plan, *rest)
                                 for p in chunk], scheduler=self.scheduler)
            for p, (table, attrition, info) in zip(chunk, out, strict=True):
                tables[p] = table
                finished(p, (attrition, info))

    @staticmethod
    def _threads(n, root, plan, rest, tables, finished):
        """One thread per core, each taking the next partition as soon as it is free: no core
        waits for another's partition (a partition holds the GIL for about a tenth of its
        time: NumPy and pyarrow release it). Tables are kept by partition number, so the
        order they finish in changes nothing."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        from . import read_ahead

        workers = max(1, min(n, os.cpu_count() or 1))
        device, _, _, resume = rest
        # the last partition read while the ones before it compute: its task, the one most
        # likely to run alone at the end, is then shorter (its read is about 40 % of it)
        last = n - 1 - workers if LAST_READ_AHEAD and device == "cpu" and not resume and \
            n > 2 * workers else None

        def task(p):
            if p == last:
                read_ahead.start(root, plan.reads, [n - 1])
            return run_partition(root, p, plan, *rest)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hpcstudy-partition")
        try:
            pending = {pool.submit(task, p): p for p in range(n)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=pending.get):
                    p = pending.pop(f)
                    table, attrition, info = f.result()   # a partition's error stops the run
                    tables[p] = table
                    finished(p, (attrition, info))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if last is not None:
                read_ahead.clear()   # (a read no task took: a run that stopped)

    def partitions(self, tables):
        """The tables as partitions for the analyses: NumPy tables, where they are; the model
        fits move them to the run's device once (``models.partitions.on_device``)."""
        parts = tables.parts if isinstance(tables, PartitionTables) else list(tables)
        return DaskPartitions(parts, self.client, self.scheduler, self.device)

    def device_record(self) -> dict:
        """What results.json's run section says about the device."""
        peaks = self.peak_memory_mib
        return {"name": self.device,
                "peak_memory_mib": None if self.device == "cpu" else
                {str(p): v for p, v in sorted(peaks.items())}}


__all__ = ["DaskEngine", "PartitionTables", "combined", "write_person_table"]
