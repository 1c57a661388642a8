"""As-treated follow-up (``follow_up.as_treated``): exposure episodes from dispensings.

A person's episode of the index drug starts at the index dispensing and is built from their
dispensings of that drug (the index rule's own events) on or after the index day, in date
order:

* a dispensing's days of supply are ``apk × volume / per_day`` (``supply: ddd``; ``volume`` is
  DDDs per pack) or ``apk × packsize / per_day`` (``supply: units``), rounded down, at least 1:
  ``per_day`` is the study's stated assumption of DDDs (units) taken per day;
* the supply of dispensing i covers days up to ``e_i``: with ``stockpile`` a refill made before
  the supply in hand runs out is used after it, ``e_i = max(d_i, e_(i-1) + 1) + s_i - 1``;
  without, ``e_i = max(e_(i-1), d_i + s_i - 1)``;
* the episode goes on through dispensing i when the days without supply before it are at most
  ``grace_days`` (``d_i - e_(i-1) - 1 <= grace_days``); the first longer gap ends it;
* the last day exposed is the last covered day of the episode plus ``grace_days``.

Follow-up then ends (each configurable) on the last day exposed (status 5), the day before the
first dispensing of the other arm's drug after the index day (status 6), or the day before the
first dispensing after the index day of an ``add_on`` drug (status 7).

The partition engine computes the episodes here with the array namespace of the partition's
device (:func:`array_ends`); the reference engine with its own pandas and a plain loop
(:func:`frame_ends`). The stockpiling recursion becomes a prefix maximum:
``e_i = S_i + max_(j<=i) (d_j - 1 - S_(j-1))`` with S the running sum of supplies, so it runs
without a loop over dispensings (a per-person prefix maximum by doubling: log2 steps).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from hpcstudy_kernels import windows as W
from hpcstudy_kernels.windows import NO_DATE

from .spec import EpisodePlan

if TYPE_CHECKING:   # pandas is the reference engine's: the dask engine never loads it
    import pandas as pd

UNITS = {"ddd": "volume", "units": "packsize"}


# -- the plan ---------------------------------------------------------------------------------
def plan_groups(compiler, study, groups: list) -> list:
    """``groups`` with each first-dispensing group's EpisodePlan (called by plan/compile.py)."""
    from dataclasses import replace

    from ..study.language import Events

    a = study.as_treated
    units = UNITS[a.supply]
    compiler.reads.setdefault("lmdb", set()).update({"apk", units})
    add_on = tuple(compiler.stream(Events(name, "lmdb"), "follow_up.as_treated.add_on")
                   for name in a.add_on)
    drugs = [g.index.stream for g in groups if g.index.kind == "first_event"]
    out = []
    for g in groups:
        if g.index.kind != "first_event":   # non-users: their own censoring at exposure
            out.append(g)
            continue
        other = [s for s in drugs if s != g.index.stream]
        switch = other[0] if a.switch and other else None
        ep = EpisodePlan(units, a.per_day, a.grace_days, a.stockpile, a.episode_end, switch,
                         add_on)
        out.append(replace(g, episodes=ep))
    return out


def plan_text(plan) -> list[str]:
    """The ends as-treated follow-up adds, for plan.txt (no numbers: the study states them)."""
    eps = [g.episodes for g in plan.groups if g.episodes is not None]
    if not eps:
        return []
    ep = eps[0]
    out = []
    if ep.episode_end:
        out.append("the end of the exposure episode (supply from " +
                   ("apk × volume" if ep.units == "volume" else "apk × packsize") +
                   (", stockpiled" if ep.stockpile else "") + ", plus the grace days)")
    if any(e.switch is not None for e in eps):
        out.append("a switch to the other arm's drug")
    if ep.add_on:
        out.append("an add-on drug (" + ", ".join(_codes(s) for s in ep.add_on) + ")")
    return out


def _codes(s) -> str:
    return "lmdb[" + ", ".join(p + "*" for p in s.codes.prefixes) + "]" if s.codes else "lmdb"


def streams(g) -> list:
    """The event streams a group's as-treated follow-up reads besides its index stream."""
    ep = g.episodes
    if ep is None:
        return []
    return ([ep.switch] if ep.switch is not None else []) + list(ep.add_on)


# -- the partition engine (array namespace) ---------------------------------------------------
def _prefix_max(xp, v, row):
    """Per run of equal ``row`` (sorted): the running maximum of ``v``, by doubling."""
    m = v.shape[0]
    k = 1
    while k < m:
        same = row[k:] == row[:-k]
        nxt = v.copy()
        nxt[k:] = xp.where(same, xp.maximum(v[k:], v[:-k]), v[k:])
        v = nxt
        k *= 2
    return v


def _per_run_sum(xp, x, first, run):
    """Per run (``first`` marks each run's first element, ``run`` its number): the running
    sum of ``x`` within the run."""
    c = xp.cumsum(x)
    starts = xp.nonzero(first)[0]
    return c - (c[starts] - x[starts])[run]


def supply_days(xp, apk, units, per_day: float):
    """Days of supply of dispensings: floor(apk × units / per_day), at least 1."""
    days = xp.floor(apk.astype(xp.float64) * units.astype(xp.float64) / per_day)
    return xp.maximum(days, 1).astype(xp.int64)


def episode_last_days(xp, row, day, supply, n: int, grace: int, stockpile: bool):
    """Per person row 0..n-1: the last day exposed of the episode begun by each person's first
    dispensing (NO_DATE: none). ``row``, ``day``, ``supply`` are dispensings sorted by person
    and day."""
    out = xp.full(n, NO_DATE, dtype=xp.int64)
    m = row.shape[0]
    if m == 0:
        return out
    first = xp.ones(m, dtype=bool)
    first[1:] = row[1:] != row[:-1]
    run = xp.cumsum(first.astype(xp.int64)) - 1
    if stockpile:
        total = _per_run_sum(xp, supply, first, run)      # S_i
        covered = total + _prefix_max(xp, day - 1 - (total - supply), row)
    else:
        covered = _prefix_max(xp, day + supply - 1, row)
    gap = xp.zeros(m, dtype=bool)
    gap[1:] = ~first[1:] & (day[1:] > covered[:-1] + grace + 1)
    within = _per_run_sum(xp, gap.astype(xp.int64), first, run) == 0
    last = W.nth_per_row(row, within, n, -1)
    has = last >= 0
    return xp.where(has, covered[xp.where(has, last, 0)] + grace, NO_DATE)


def array_ends(pp, g, ref, rows) -> list:
    """Partition engine: [last day exposed, day before a switch, day before an add-on] of the
    cohort's rows (NO_DATE where it does not happen). ``pp`` is engines.partition.Persons with
    the streams built, ``ref`` the index day per person row (NO_DATE outside the cohort)."""
    xp = pp.xp
    ep: EpisodePlan = g.episodes
    none = xp.full(rows.shape[0], NO_DATE, dtype=xp.int64)
    out = [none, none, none]
    if ep.episode_end:
        s = g.index.stream
        er, ed = pp.streams[s]
        at = pp.positions[s]
        lmdb = pp.data["lmdb"]
        ok = xp.nonzero(W.events_in_window(er, ed, ref, 0, None))[0]
        supply = supply_days(xp, lmdb["apk"][at[ok]], lmdb[ep.units][at[ok]], ep.per_day)
        last = episode_last_days(xp, er[ok], ed[ok], supply, pp.n, ep.grace_days, ep.stockpile)
        out[0] = last[rows]
    for k, found in ((1, [ep.switch] if ep.switch is not None else []), (2, list(ep.add_on))):
        first = none
        for s in found:
            er, ed = pp.streams[s]
            first = xp.minimum(first, W.first_day_per_row(er, ed, ref, pp.n, 1, None)[rows])
        out[k] = xp.where(first != NO_DATE, first - 1, NO_DATE)
    return out


# -- the reference engine (pandas, and a loop over each person's dispensings) -----------------
def _dispensings(data, s) -> pd.DataFrame:
    """The reference engine's lmdb rows of stream ``s`` (codes as text prefixes), by person
    and day."""
    t = data.t["lmdb"]
    if s.codes is not None:
        t = t[t["atc"].str.startswith(tuple(s.codes.prefixes))]
    for col, vals in s.filters:
        t = t[t[col].isin(vals)]
    return t.sort_values(["pnr", "eksd"], kind="stable")


def _last_day_exposed(days, supplies, grace: int, stockpile: bool) -> int:
    """The episode begun by the first of a person's dispensings (in date order): its last day
    exposed, dispensing by dispensing."""
    end = days[0] + supplies[0] - 1
    for d, s in zip(days[1:], supplies[1:], strict=True):
        if d - end - 1 > grace:
            break
        end = max(d, end + 1) + s - 1 if stockpile else max(end, d + s - 1)
    return end + grace


def frame_ends(data, g, c: pd.Series) -> list:
    """Reference engine: [last day exposed, day before a switch, day before an add-on] per
    person of ``c`` (pnr → index day), NO_DATE where it does not happen."""
    import pandas as pd

    ep: EpisodePlan = g.episodes
    none = pd.Series(NO_DATE, index=c.index, dtype="int64")
    out = [none, none, none]
    if ep.episode_end:
        t = _dispensings(data, g.index.stream)
        t = t[t["pnr"].isin(c.index)]
        t = t[t["eksd"] >= t["pnr"].map(c)]
        last = {}
        for pnr, rx in t.groupby("pnr", sort=False):
            supply = [max(1, math.floor(float(a) * float(u) / ep.per_day))
                      for a, u in zip(rx["apk"], rx[ep.units], strict=True)]
            last[pnr] = _last_day_exposed(rx["eksd"].to_numpy(np.int64), supply,
                                          ep.grace_days, ep.stockpile)
        out[0] = c.index.to_series().map(last).fillna(NO_DATE).astype("int64")
    for k, found in ((1, [ep.switch] if ep.switch is not None else []), (2, list(ep.add_on))):
        first = none
        for s in found:
            t = _dispensings(data, s)
            t = t[t["pnr"].isin(c.index)]
            t = t[t["eksd"] > t["pnr"].map(c)]
            day = t.groupby("pnr")["eksd"].min()
            first = np.minimum(first, c.index.to_series().map(day).fillna(NO_DATE)
                               .astype("int64"))
        out[k] = first.where(first == NO_DATE, first - 1)
    return out
