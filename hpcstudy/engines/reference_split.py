"""The reference engine's own split of follow-up for model terms (docs/time.md): pandas on the
whole per-person table, written apart from the partition engine's one-pass splitter
(:mod:`hpcstudy.timesplit.terms`) so that each checks the other.

Every person's follow-up, days ``[start, exit]``, is cut at each day something changes: a
``age_bands`` limit *a* is reached on ``birth + ceil(a × 365.25)`` (birth as the measures
have it: the index day less the age at index in days, rounded), a ``time_bands`` limit *L* on
``index + L``, a time-varying covariate switches on on its ``NAME@from`` day. A cut counts only
strictly inside the follow-up; each piece then reads its bands and covariates off its own
first day, and only the last piece keeps the outcome.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..models.partitions import LocalPartitions
from .common import NO_DATE, varying_column

YEAR = 365.25
LAST_ONLY = ("event", "status")   # the outcome belongs to the piece that holds the exit day


def _birth(df: pd.DataFrame, age_col: str) -> np.ndarray:
    index = df["index_date"].to_numpy(np.int64)
    return np.round(index - df[age_col].to_numpy(float) * YEAR).astype(np.int64)


def _limit_days(df: pd.DataFrame, bands: dict, age_col: str | None) -> dict:
    """{term: (persons × limits) array of the day each limit is reached}."""
    index = df["index_date"].to_numpy(np.int64)
    out = {}
    if "age_band" in bands:
        offsets = np.array([math.ceil(a * YEAR) for a in bands["age_band"]], dtype=np.int64)
        out["age_band"] = _birth(df, age_col)[:, None] + offsets[None, :]
    if "time_band" in bands:
        offsets = np.array([int(d) for d in bands["time_band"]], dtype=np.int64)
        out["time_band"] = index[:, None] + offsets[None, :]
    return out


def split_frame(df: pd.DataFrame, varying: tuple[str, ...], bands: dict,
                age_col: str | None) -> pd.DataFrame:
    """``df`` (one row per person) as one row per piece of follow-up: every column repeated,
    ``age_band``/``time_band`` the piece's band (-1 before the first limit, j from limit j),
    each of ``varying`` 1 from its switch day on, ``entry``/``time`` the piece's (entry, exit]
    in days since the start of follow-up, ``event``/``status`` on the last piece only."""
    n = len(df)
    exit_ = df["exit_date"].to_numpy(np.int64)
    start = exit_ - df["time"].to_numpy(np.int64) + 1
    stop = exit_ + 1
    limits = _limit_days(df, bands, age_col)
    switch = {v: df[varying_column(v)].to_numpy(np.int64) for v in varying}

    # all candidate cut days, long: (person, day); the follow-up's own ends first
    rows = np.arange(n)
    persons, days = [rows, rows], [start, stop]
    for arr in limits.values():
        persons.append(np.repeat(rows, arr.shape[1]))
        days.append(arr.ravel())
    for arr in switch.values():
        keep = arr != NO_DATE
        persons.append(rows[keep])
        days.append(arr[keep])
    cuts = pd.DataFrame({"row": np.concatenate(persons), "day": np.concatenate(days)})
    lo, hi = start[cuts["row"].to_numpy()], stop[cuts["row"].to_numpy()]
    day = cuts["day"].to_numpy()
    inside = (day >= lo) & (day <= hi)
    cuts = cuts[inside].drop_duplicates().sort_values(["row", "day"], kind="stable")

    # consecutive cut days of a person bound a piece; a follow-up of no days has none
    nxt = cuts.groupby("row")["day"].shift(-1)
    pieces = cuts.assign(end=nxt).dropna(subset=["end"])
    row = pieces["row"].to_numpy(np.int64)
    first = pieces["day"].to_numpy(np.int64)
    end = pieces["end"].to_numpy(np.int64)

    out = df.iloc[row].reset_index(drop=True)
    time_dtype = df["time"].dtype
    out["entry"] = (first - start[row]).astype(time_dtype)
    out["time"] = (end - start[row]).astype(time_dtype)
    last = end == stop[row]
    for c in LAST_ONLY:
        if c in out:
            out[c] = np.where(last, out[c].to_numpy(), 0).astype(df[c].dtype)
    for term, arr in limits.items():
        # how many limits the piece's first day has reached, less one
        out[term] = (first[:, None] >= arr[row]).sum(axis=1).astype(np.int64) - 1
    for v, on in switch.items():
        now = (on[row] != NO_DATE) & (first >= on[row])
        out[v] = np.where(now, 1, out[v].to_numpy()).astype(df[v].dtype)
    return out


def split_parts(parts, varying: tuple[str, ...], bands: dict, age_col: str | None):
    """The reference engine's partitions (``parts.frame``) split as :func:`split_frame`, one
    table; and the persons before the split."""
    frame = parts.frame
    long = split_frame(frame, varying, bands, age_col)
    return LocalPartitions([{c: long[c].to_numpy() for c in long.columns}]), len(frame)
