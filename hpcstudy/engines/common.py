"""Rules both engines share because they are part of a study's meaning, not of an engine:
the random index date of a non-user, dates as days, the per-person table's columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from hpcstudy_kernels.windows import NO_DATE  # noqa: F401 - one "no such date" everywhere

STATUS = {0: "end of follow-up", 1: "outcome", 2: "death (competing)", 3: "emigration",
          4: "started the exposure"}


def random_index_days(pnr: np.ndarray, seed: int, start: int, end: int) -> np.ndarray:
    """A uniform day in [start, end] per person, from (seed, pnr) alone: the same in every
    engine, partitioning and run."""
    mix = np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
    x = pnr.astype(np.uint64) ^ mix
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
        x = (x ^ (x >> np.uint64(33))) * np.uint64(0xC4CEB9FE1A85EC53)
        x = x ^ (x >> np.uint64(33))
    span = np.uint64(end - start + 1)
    return (start + (x % span).astype(np.int64)).astype(np.int64)


def year_of(days: np.ndarray) -> np.ndarray:
    return days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970


def as_days_or_values(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_date32(col.type):
        return col.cast(pa.int32()).to_numpy().astype(np.int64)
    return col.to_numpy()


def table_columns(plan) -> list[str]:
    """Column order of the per-person table."""
    return (["pnr", "group", "index_date"] + [c.name for c in plan.columns] +
            [varying_column(c.name) for c in plan.columns if c.time_varying] +
            ["exit_date", "status", "time", "event"])


def varying_column(name: str) -> str:
    """The column of the day a time-varying covariate switches on (NO_DATE: not after index,
    or already on at index): NAME@from, a name no covariate can take."""
    return f"{name}@from"
