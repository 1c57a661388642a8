"""Time-varying covariates: each person's follow-up split where a covariate switches on, into
counting-process rows (entry, exit] — what Cox and Poisson models of exposure states fit.

A time-varying covariate (``time_varying: true``) is a 0/1 flag measured at index that turns
1 on the day of its first event after index and stays 1 (one switch per covariate: no
as-treated episodes of stopping). Array code in the namespace of its inputs.
"""

from __future__ import annotations

from hpcstudy_kernels import array_namespace

from ..engines.common import varying_column
from .lexis import split


def episodes(part: dict, names: tuple[str, ...]) -> dict:
    """The partition's rows split at the switch days of the covariates ``names``: every
    column repeated per piece, the covariates set to their value in it, ``entry`` and ``time``
    the piece's (entry, exit] in days since the start of follow-up, ``event`` on the last
    piece only. Without a switch during follow-up a person keeps one row with entry 0."""
    xp = array_namespace(part["exit_date"])
    exit_ = part["exit_date"].astype(xp.int64)
    start = exit_ - part["time"].astype(xp.int64) + 1
    on = [part[varying_column(n)].astype(xp.int64) for n in names]
    ep = split(start, exit_ + 1, [(o, xp.asarray([0.0])) for o in on])
    r = ep["row"]
    out = {k: v[r] for k, v in part.items()}
    t0 = ep["t0"].astype(xp.int64)
    t1 = ep["t1"].astype(xp.int64)
    for name, band in zip(names, ep["bands"], strict=True):
        out[name] = (part[name][r].astype(xp.int8) | (band >= 0).astype(xp.int8))
    out["entry"] = (t0 - start[r]).astype(xp.float64)
    out["time"] = (t1 - start[r]).astype(xp.int64)
    last = t1 == exit_[r] + 1
    out["event"] = (part["event"][r].astype(xp.int8) * last).astype(xp.int8)
    out["status"] = xp.where(last, part["status"][r], 0).astype(xp.int8)
    return out
