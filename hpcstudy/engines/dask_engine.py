"""The dask engine: one task per register partition, person rows never leave it.

Each task reads only the columns the plan needs from its partition's files and builds that
partition's per-person table with the array kernels (linkage is partition-local: every
register shares the pnr hash). Analyses are reductions over the partition tables. The local
threaded scheduler is the default; a ``distributed.Client`` runs the tasks on its workers and
keeps the tables there between the model's Newton steps.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dask

from ..models.partitions import DaskPartitions
from ..plan.nodes import Plan
from ..registers.store import Dataset
from . import checkpoint, partition


def run_partition(root: str, p: int, plan: Plan):
    data = partition.load(root, p, plan.reads)
    return partition.person_table(data, plan)


class DaskEngine:
    name = "dask"

    def __init__(self, client=None, scheduler: str = "threads", progress=None):
        self.client = client
        self.scheduler = scheduler
        self.progress = progress

    def person_tables(self, ds: Dataset, plan: Plan, checkpoints: Path | None = None,
                      resume: bool = False):
        """Per-partition tables (in partition order) and the summed attrition. With
        ``checkpoints``, each finished partition is saved there; with ``resume``, verified
        checkpoints are loaded instead of recomputed (``self.resumed`` counts them)."""
        root = str(ds.root)
        n = ds.partitions
        fp = checkpoint.fingerprint(plan, hashlib.sha256(
            (ds.root / "manifest.json").read_bytes()).hexdigest())
        results: dict[int, tuple] = {}
        if checkpoints is not None and resume:
            for p in range(n):
                got = checkpoint.load(checkpoints, p, fp)
                if got is not None:
                    results[p] = got
        self.resumed = len(results)
        todo = [p for p in range(n) if p not in results]

        def finished(p, result):
            results[p] = result
            if checkpoints is not None:
                checkpoint.save(checkpoints, p, result[0], result[1], fp)
            if self.progress:
                self.progress("partitions", len(results), n)

        if self.client is not None:
            futures = {p: self.client.submit(run_partition, root, p, plan, pure=False)
                       for p in todo}
            for p, f in futures.items():
                finished(p, f.result())
        else:
            # in chunks, so checkpoints and a progress bar advance on long runs; a chunk holds
            # at least one partition per core, so every core has a partition to work on
            cores = os.cpu_count() or 1
            step = max(1, min(len(todo), max(cores, n // 20)))
            for i in range(0, len(todo), step):
                chunk = todo[i:i + step]
                out = dask.compute(*[dask.delayed(run_partition)(root, p, plan)
                                     for p in chunk], scheduler=self.scheduler)
                for p, r in zip(chunk, out, strict=True):
                    finished(p, r)
        results = [results[p] for p in range(n)]
        tables = [r[0] for r in results]
        attrition = {}
        for _, att in results:
            for group, steps in att.items():
                if group not in attrition:
                    attrition[group] = [[name, 0] for name, _ in steps]
                for row, (_, k) in zip(attrition[group], steps, strict=True):
                    row[1] += k
        return tables, {g: [tuple(r) for r in rows] for g, rows in attrition.items()}

    def partitions(self, tables):
        return DaskPartitions(tables, self.client, self.scheduler)
