"""Model terms that change during follow-up: time-varying covariates (at their switch day),
``age_band`` (attained age) and ``time_band`` (days since index). A model with any of them fits
counting-process rows: each person's follow-up split at every such change in one pass
(:func:`hpcstudy.timesplit.lexis.split`), one row per piece (docs/time.md).

Array code in the namespace of its inputs. The counts behind a model's terms are then of
*persons* (a person with pieces in two age bands counts once in each, never twice in one).
"""

from __future__ import annotations

from hpcstudy_kernels import array_namespace

from ..engines.common import varying_column
from ..measures.standard import YEAR, age_cut_days
from .lexis import split

SPLITS = ("age_band", "time_band")


def band_label(term: str, limits, j: int) -> str:
    """``50-70`` (ages: the band's limits), ``30-364`` (days: its first and last day);
    ``<40`` before the first limit and ``80+`` from the last."""
    fmt = (lambda x: f"{x:g}") if term == "age_band" else str
    if j < 0:
        return f"<{fmt(limits[0])}"
    if j >= len(limits) - 1:
        return f"{fmt(limits[-1])}+"
    hi = limits[j + 1] if term == "age_band" else limits[j + 1] - 1
    return f"{fmt(limits[j])}-{fmt(hi)}"


def episodes(part: dict, varying: tuple[str, ...], bands: dict, age_col: str | None) -> dict:
    """The partition's rows split at the switch days of ``varying`` and at the limits of
    ``bands`` ({"age_band": ages, "time_band": days}): every column repeated per piece, the
    covariates set to their value in it, ``age_band``/``time_band`` the piece's band index,
    ``entry`` and ``time`` the piece's (entry, exit] in days since the start of follow-up,
    ``event`` and ``status`` on the last piece only."""
    xp = array_namespace(part["exit_date"])
    exit_ = part["exit_date"].astype(xp.int64)
    index = part["index_date"].astype(xp.int64)
    start = exit_ - part["time"].astype(xp.int64) + 1
    axes = [(part[varying_column(n)].astype(xp.int64), xp.asarray([0.0])) for n in varying]
    if "age_band" in bands:
        birth = xp.round(index - xp.asarray(part[age_col], dtype=xp.float64) * YEAR)
        axes.append((birth, xp.asarray(age_cut_days(bands["age_band"]))))
    if "time_band" in bands:
        axes.append((index, xp.asarray([float(t) for t in bands["time_band"]])))
    ep = split(start, exit_ + 1, axes)
    r = ep["row"]
    out = {k: v[r] for k, v in part.items()}
    for name, band in zip(varying, ep["bands"], strict=False):
        out[name] = (part[name][r].astype(xp.int8) | (band >= 0).astype(xp.int8))
    rest = ep["bands"][len(varying):]
    for term in SPLITS:
        if term in bands:
            out[term] = rest.pop(0).astype(xp.int64)
    t0, t1 = ep["t0"].astype(xp.int64), ep["t1"].astype(xp.int64)
    out["entry"] = (t0 - start[r]).astype(xp.float64)
    out["time"] = (t1 - start[r]).astype(xp.int64)
    last = t1 == exit_[r] + 1
    out["event"] = (part["event"][r].astype(xp.int8) * last).astype(xp.int8)
    out["status"] = xp.where(last, part["status"][r], 0).astype(xp.int8)
    return out


def _persons_part(part, spec):
    """Per indicator column: the persons with a piece where it is 1, and where it is 0. A
    person's pieces are all in one partition (partitions split by person), so the counts of
    the partitions add."""
    import numpy as np

    from hpcstudy_kernels._namespace import to_numpy

    # a person in both arms of an active comparison is two persons of the model
    pnr = np.asarray(to_numpy(part["pnr"])).astype(np.int64) * 256 + \
        np.asarray(to_numpy(part["group"])).astype(np.int64)
    out = []
    for name, level in spec:
        v = np.asarray(to_numpy(part[name]), float)
        on = v == level if level is not None else v == 1
        off = v != level if level is not None else v == 0
        out.append([np.unique(pnr[on]).size, np.unique(pnr[off]).size])
    return out


def person_counts(parts, spec, cells: dict) -> dict:
    """``cells`` (analyses.term_cells of split rows) with each indicator term's ``persons``
    and ``persons_other`` counted as persons, not pieces."""
    counts = parts.map_reduce(_persons_part, spec)
    offset = len(cells["terms"]) - len(spec)   # an intercept first
    terms = []
    for i, t in enumerate(cells["terms"]):
        if i >= offset and t["persons"] is not None:
            on, off = counts[i - offset]
            t = {**t, "persons": int(on), "persons_other": int(off)}
        terms.append(t)
    return {**cells, "terms": terms}
