"""The dask engine: one task per register partition, person rows never leave it.

Each task reads only the columns the plan needs from its partition's files and builds that
partition's per-person table with the array kernels (linkage is partition-local: every
register shares the pnr hash). Analyses are reductions over the partition tables. The local
threaded scheduler is the default; a ``distributed.Client`` runs the tasks on its workers and
keeps the tables there between the model's Newton steps.
"""

from __future__ import annotations

import dask

from ..models.partitions import DaskPartitions
from ..plan.nodes import Plan
from ..registers.store import Dataset
from . import partition


def run_partition(root: str, p: int, plan: Plan):
    data = partition.load(root, p, plan.reads)
    return partition.person_table(data, plan)


class DaskEngine:
    name = "dask"

    def __init__(self, client=None, scheduler: str = "threads", progress=None):
        self.client = client
        self.scheduler = scheduler
        self.progress = progress

    def person_tables(self, ds: Dataset, plan: Plan):
        """Per-partition tables (in partition order) and the summed attrition."""
        root = str(ds.root)
        n = ds.partitions
        if self.client is not None:
            futures = [self.client.submit(run_partition, root, p, plan, pure=False)
                       for p in range(n)]
            done = []
            for i, f in enumerate(futures):
                done.append(f.result())
                if self.progress:
                    self.progress("partitions", i + 1, n)
            results = done
        else:
            tasks = [dask.delayed(run_partition)(root, p, plan) for p in range(n)]
            results = []
            # in chunks, so a progress bar moves on long runs
            step = max(1, n // 20)
            for i in range(0, n, step):
                results += dask.compute(*tasks[i:i + step], scheduler=self.scheduler)
                if self.progress:
                    self.progress("partitions", min(n, i + step), n)
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
