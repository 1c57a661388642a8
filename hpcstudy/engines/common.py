"""Rules both engines share because they are part of a study's meaning, not of an engine:
the random index date of a non-user, dates as days, the per-person table's columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from hpcstudy_kernels import array_namespace
from hpcstudy_kernels.windows import NO_DATE  # noqa: F401 - one "no such date" everywhere

from ..registers.arrow import to_numpy

STATUS = {0: "end of follow-up", 1: "outcome", 2: "death (competing)", 3: "emigration",
          4: "started the exposure", 5: "end of the exposure episode",
          6: "switched to the other arm's drug", 7: "started an add-on drug"}


def random_index_days(pnr, seed: int, start: int, end: int):
    """A uniform day in [start, end] per person, from (seed, pnr) alone: the same in every
    engine, partitioning, run and device (``pnr`` a NumPy, CuPy or stand-in array)."""
    xp = array_namespace(pnr)
    mix = np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
    s33 = np.uint64(33)
    x = pnr.astype(xp.uint64) ^ mix
    # uint64 products wrap on purpose (array arithmetic wraps silently on every device)
    x = (x ^ (x >> s33)) * np.uint64(0xFF51AFD7ED558CCD)
    x = (x ^ (x >> s33)) * np.uint64(0xC4CEB9FE1A85EC53)
    x = x ^ (x >> s33)
    span = np.uint64(end - start + 1)
    return (start + (x % span).astype(xp.int64)).astype(xp.int64)


def year_of(days):
    """Calendar year of each day (days since 1970-01-01), in integer arithmetic so it runs on
    any device (H. Hinnant's civil-from-days; the same as NumPy's datetime64 years)."""
    xp = array_namespace(days)
    z = days.astype(xp.int64) + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    return yoe + era * 400 + (mp >= 10).astype(xp.int64)


def as_days_or_values(col: pa.ChunkedArray) -> np.ndarray:
    """A column as NumPy: dates as int32 days since 1970 (widened where they are compared)."""
    if pa.types.is_date32(col.type):  # the same 32-bit storage: a view, not a cast
        col = pa.chunked_array([c.view(pa.int32()) for c in col.chunks], pa.int32())
    return to_numpy(col)   # col.to_numpy(), without importing pandas


def table_columns(plan) -> list[str]:
    """Column order of the per-person table."""
    return (["pnr", "group", "index_date"] + [c.name for c in plan.columns] +
            [varying_column(c.name) for c in plan.columns if c.time_varying] +
            ["exit_date", "status", "time", "event"])


def varying_column(name: str) -> str:
    """The column of the day a time-varying covariate switches on (NO_DATE: not after index,
    or already on at index): NAME@from, a name no covariate can take."""
    return f"{name}@from"
