"""Plan → person tables: the step of a run that an engine does.

``person_table(plan, ds, engine)`` builds the per-person analysis table with the reference or
the dask engine, then the plan's comparative design (hpcstudy/designs) on it; the rest of a run
(preparing it once, the analyses, disclosure, writers and audit) is hpcstudy/pipeline.py. The
names that used to live here (prepare, run, analyse, exported, write_outputs, check_run) still
import from here.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..models.partitions import LocalPartitions
from ..plan.nodes import Plan
from ..registers.store import Dataset
from .common import STATUS, table_columns  # noqa: F401 - R.table_columns, for tests
from .dask_engine import DaskEngine

ENGINES = ("reference", "dask")


class PersonTables:
    """What an engine built: the per-partition tables, the attrition per group, the partitions
    the analyses run on, and the design's sections (table1, balance, preference; None without
    a design). Unpacks as ``tables, attrition, parts``."""

    def __init__(self, tables, attrition: dict, parts, design: dict | None = None):
        self.tables, self.attrition, self.parts, self.design = tables, attrition, parts, design

    def __iter__(self):
        return iter((self.tables, self.attrition, self.parts))

    def __getitem__(self, i):
        return (self.tables, self.attrition, self.parts)[i]


def check_engine(plan: Plan, engine: str) -> None:
    """Refuse, before any data is read, an engine this hpcstudy does not have, or one that
    lacks a function for one of the plan's nodes ("not supported by this engine")."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}", fix=f"use one of {', '.join(ENGINES)}")
    # each engine's module only: the reference engine's loads pandas (0.6 s of CPU)
    if engine == "reference":
        from .reference import check
    else:
        from .partition import check
    check(plan)


def person_table(plan: Plan, ds: Dataset, engine: str = "dask", client=None, progress=None,
                 checkpoints: Path | None = None, resume: bool = False, report=None,
                 device: str = "cpu") -> PersonTables:
    """The plan's person tables on ``engine``; ``report["resumed"]`` says how many partitions
    came from checkpoints, ``report["device"]`` what the run computed on."""
    check_engine(plan, engine)
    if engine == "reference":
        from .reference import ReferenceEngine

        eng = ReferenceEngine()
        df, attrition = eng.person_table(ds, plan)
        df, attrition, design = eng.design(plan, df, attrition)
        tables = [{c: df[c].to_numpy() for c in df.columns}]
        parts = LocalPartitions(tables)
        parts.frame = df   # measures and hospitals: the reference engine's own pandas code
        return PersonTables(tables, attrition, parts, design)
    from . import partition
    from .dask_engine import PartitionTables

    dask = DaskEngine(client=client, progress=progress, device=device)
    tables, attrition = dask.person_tables(ds, plan, checkpoints, resume)
    if report is not None:
        report["resumed"] = dask.resumed
        report["device"] = dask.device_record()
    design = None
    if plan.design is not None:
        # the design's partitions stay where the tables are (on the workers, under a client)
        tables, attrition, design = partition.DESIGN(plan.design, plan, dask.partitions(tables),
                                                     attrition)
        tables = PartitionTables(tables, dask.client)
    return PersonTables(tables, attrition, dask.partitions(tables), design)


def combined(plan: Plan, tables) -> dict:
    """The partitions' tables as one, sorted by group (exposed first) then pnr."""
    from .dask_engine import combined as combine

    return combine(plan, tables)


_MOVED = {"prepare": "hpcstudy.pipeline", "run": "hpcstudy.pipeline",
          "check_run": "hpcstudy.pipeline", "write_outputs": "hpcstudy.pipeline",
          "analyse": "hpcstudy.engines.results",
          "exported": "hpcstudy.outputs.publish", "_disclosed": "hpcstudy.outputs.publish"}


def __getattr__(name: str):
    if name in _MOVED:   # imported lazily: the pipeline imports this module
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
