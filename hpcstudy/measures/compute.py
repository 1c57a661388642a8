"""Open-population measures: events over person-time (or persons) per calendar interval ×
groups × attained-age band, in one pass over each partition's rows, then rates with exact
(Garwood) CIs, proportions with Wilson CIs, direct and indirect age standardisation.

Each partition's sums are counts and whole days (age limits fall on whole days), so they add
to the same bits in any order: every engine and partitioning gives the same table.
"""

from __future__ import annotations

import math

import numpy as np

from hpcstudy_kernels import array_namespace, to_numpy

from ..engines.common import varying_column
from ..errors import UserError
from ..models.rates import chi2_quantile, poisson_ci, wilson_ci
from ..study.language import Measure
from ..timesplit.lexis import split
from . import standard as S

YEAR = S.YEAR
# a measure table's own columns: a key never takes one of these names
COLUMNS = ("persons", "events", "person_years", "rate", "proportion", "lower_95", "upper_95",
           "standardised_rate", "standardised_proportion", "standardised_lower_95",
           "standardised_upper_95", "expected", "sir", "sir_lower_95", "sir_upper_95",
           "suppressed")


def _keys(part, by, rows, xp, switched):
    from ..engines.common import year_of

    cols = []
    for b in by:
        if b == "index_year":
            cols.append(xp.asarray(year_of(to_numpy(part["index_date"]).astype(np.int64)))[rows])
        elif b == "time_band":
            cols.append(switched[b])
        elif b in switched:   # a time-varying covariate: its value in each piece
            cols.append(xp.asarray(part[b])[rows].astype(xp.int64) | switched[b])
        elif b not in ("age_band", "time_band"):
            cols.append(xp.asarray(part[b])[rows])
    return cols


def pieces(part, m: Measure, proportion: bool, age_col: str | None, varying=()):
    """The partition's follow-up cut into the measure's cells: (key columns (by values…,
    interval, age band), the person's row of each piece, its days, its events). The persons
    behind a row (secure/sketches.py) are found from these as its counts are."""
    xp = array_namespace(part["exit_date"])
    exit_ = part["exit_date"].astype(xp.int64)
    index = part["index_date"].astype(xp.int64)
    n = exit_.shape[0]
    event = part["event"].astype(xp.int64)
    bands = m.age_bands or S.default_bands()
    if proportion:
        # a fixed-horizon outcome: each person once, in the interval of their index day and
        # the band of their age at index
        row = xp.arange(n)
        ev = event
        days = xp.zeros(n, dtype=xp.float64)
        iv = (xp.searchsorted(xp.asarray(S.interval_cuts(m.interval)), index, side="right") - 1
              if m.interval else xp.zeros(n, dtype=xp.int64))
        ag = (xp.searchsorted(xp.asarray(bands), xp.asarray(part[age_col], dtype=xp.float64),
                              side="right") - 1) if m.by_age else xp.zeros(n, dtype=xp.int64)
        switched = {}   # a proportion: each person once, with the value at index
        if "time_band" in m.by:   # the band of the day the person left (outcome or not)
            days = exit_ - index
            switched["time_band"] = xp.searchsorted(
                xp.asarray([float(t) for t in m.time_bands]), days, side="right") - 1
    else:
        start = exit_ - part["time"].astype(xp.int64) + 1     # the index day, or after a lag
        axes = []
        if m.interval:
            axes.append((xp.zeros(n, dtype=xp.int64), xp.asarray(S.interval_cuts(m.interval))))
        if m.by_age:
            birth = xp.round(index - xp.asarray(part[age_col], dtype=xp.float64) * YEAR)
            axes.append((birth, xp.asarray(S.age_cut_days(bands))))
        if "time_band" in m.by:   # time since index: cut at index + the band limits
            axes.append((index, xp.asarray([float(t) for t in m.time_bands])))
        tv = [b for b in m.by if b in varying]
        for b in tv:
            axes.append((part[varying_column(b)].astype(xp.int64), xp.asarray([0.0])))
        ep = split(start, exit_ + 1, axes)
        switched = {b: (band >= 0).astype(xp.int64)
                    for b, band in zip(tv, ep["bands"][len(axes) - len(tv):], strict=True)}
        if "time_band" in m.by:
            switched["time_band"] = ep["bands"][len(axes) - len(tv) - 1]
        row = ep["row"]
        days = ep["t1"] - ep["t0"]
        at = exit_[row].astype(xp.float64)
        ev = event[row] * ((ep["t0"] <= at) & (at < ep["t1"]))
        k = 0
        iv = ep["bands"][k] if m.interval else xp.zeros(row.shape[0], dtype=xp.int64)
        k += bool(m.interval)
        ag = ep["bands"][k] if m.by_age else xp.zeros(row.shape[0], dtype=xp.int64)
    return [*_keys(part, m.by, row, xp, switched), iv, ag], row, days, ev


def _sums(part, m: Measure, proportion: bool, age_col: str | None, varying=()):
    """{cell: [persons, events, days]} with cell = (by values…, interval, age band), and
    {(by values…, interval): persons} for the rows without the age band."""
    xp = array_namespace(part["exit_date"])
    key, row, days, ev = pieces(part, m, proportion, age_col, varying)
    cells: dict = {}
    persons: dict = {}
    if row.shape[0] == 0:
        return {"cells": cells, "persons": persons}
    stacked = xp.stack([xp.asarray(c, dtype=xp.float64) for c in key], axis=1)
    uniq, inv = np.unique(to_numpy(stacked), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    r = to_numpy(row)
    cnt_days = np.bincount(inv, weights=to_numpy(days), minlength=len(uniq))
    cnt_ev = np.bincount(inv, weights=to_numpy(ev).astype(float), minlength=len(uniq))
    # persons: each person once per cell, and once per row of the table (age bands merged)
    pc = np.unique(np.stack([inv, r], axis=1), axis=0)[:, 0]
    cnt_p = np.bincount(pc, minlength=len(uniq))
    for i, u in enumerate(uniq):
        cells[_tuple(u)] = [float(cnt_p[i]), float(cnt_ev[i]), float(cnt_days[i])]
    out_u, out_inv = np.unique(to_numpy(stacked)[:, :-1], axis=0, return_inverse=True)
    pr = np.unique(np.stack([out_inv.reshape(-1), r], axis=1), axis=0)[:, 0]
    for i, c in enumerate(np.bincount(pr, minlength=len(out_u))):
        persons[_tuple(out_u[i])] = float(c)
    return {"cells": cells, "persons": persons}


def _tuple(u) -> tuple:
    return tuple(int(x) if float(x).is_integer() else float(x) for x in u)


def _band_label(limits, j: int) -> str:
    """Days since index of band j: ``0-29`` holds days 0 to 29 after index."""
    if j < 0:
        return f"<{limits[0]}"
    if j >= len(limits) - 1:
        return f"{limits[-1]}+"
    return f"{limits[j]}-{limits[j + 1] - 1}"


def _merge(a, b):
    cells = {k: list(v) for k, v in a["cells"].items()}
    for k, v in b["cells"].items():
        old = cells.setdefault(k, [0.0, 0.0, 0.0])
        for i in range(3):
            old[i] += v[i]
    persons = dict(a["persons"])
    for k, v in b["persons"].items():
        persons[k] = persons.get(k, 0.0) + v
    return {"cells": cells, "persons": persons}


def fay_feuer(counts, weights, alpha: float = 0.05) -> tuple[float, float, float]:
    """A weighted sum of Poisson counts Σ wᵢ kᵢ and its gamma interval (Fay & Feuer 1997,
    Stat Med 16:791–801), the usual CI of a directly standardised rate."""
    y = sum(w * k for w, k in zip(weights, counts, strict=True))
    v = sum(w * w * k for w, k in zip(weights, counts, strict=True))
    wm = max(weights) if weights else 0.0
    if y == 0 or v == 0:
        lower = 0.0
    else:
        lower = v / (2 * y) * chi2_quantile(alpha / 2, 2 * y * y / v)
    upper = (v + wm * wm) / (2 * (y + wm)) * chi2_quantile(1 - alpha / 2,
                                                              2 * (y + wm) ** 2 / (v + wm * wm)) \
        if wm > 0 else math.nan
    return y, lower, upper


def measure_rows(parts, m: Measure, proportion: bool, age_col: str | None,
                 standard: list[float] | None = None, varying=()) -> list[dict]:
    """The rows of one measure. ``standard``: persons of the standard population per age band
    (direct standardisation); ``varying``: the time-varying covariates (split at their
    switch days when they are keys)."""
    from ..engines.analyses import key_names

    sums = parts.map_reduce(_sums, m, proportion, age_col, tuple(varying), combine=_merge)
    cells, persons = sums["cells"], sums["persons"]
    bands = m.age_bands or S.default_bands()
    nb = len(bands) - 1
    if m.standardise or m.indirect:
        outside = sum(v[0 if proportion else 2] for k, v in cells.items()
                      if not 0 <= k[-1] < nb)
        if outside:
            what = "persons" if proportion else "person-years"
            amount = f"{outside:g}" if proportion else f"{outside / YEAR:.1f}"
            raise UserError(f"measure {m.name!r}: the standard population's age bands "
                            f"[{bands[0]:g}, {bands[-1]:g}) do not cover the cohort ({amount} "
                            f"{what} at other ages)", where=m.where,
                            fix="widen age_bands to the cohort's ages, or restrict "
                                "population.age to the bands")
    by_out = [b for b in m.by if b != "age_band"]
    names = key_names(tuple(by_out), COLUMNS)
    reference = None
    if m.indirect:   # the whole cohort's age-specific rates (or risks)
        tot = [[0.0, 0.0] for _ in range(nb)]
        for k, (p, e, d) in cells.items():
            if 0 <= k[-1] < nb:
                tot[k[-1]][0] += p if proportion else d
                tot[k[-1]][1] += e
        reference = [e / x if x else 0.0 for x, e in tot]
    weights = None
    if standard is not None:
        total = sum(standard)
        weights = [w / total for w in standard]
    rows: list[dict] = []
    out_keys = sorted({k[:-1] for k in cells} if "age_band" not in m.by else set(cells))
    for ok in out_keys:
        if "age_band" in m.by:
            members = {ok[-1]: cells[ok]}
            n_persons = cells[ok][0]
        else:
            members = {k[-1]: v for k, v in cells.items() if k[:-1] == ok}
            n_persons = persons[ok]
        events = sum(v[1] for v in members.values())
        days = sum(v[2] for v in members.values())
        key = list(ok[:len(by_out)])
        if "time_band" in by_out:
            j = by_out.index("time_band")
            key[j] = _band_label(m.time_bands, int(key[j]))
        row: dict = dict(zip(names, key, strict=True))
        if m.interval:
            row["interval"] = S.interval_label(m.interval, int(ok[len(by_out)]))
        if "age_band" in m.by:
            a = int(ok[-1])
            row["age_band"] = (f"{bands[a]:g}-{bands[a + 1]:g}" if 0 <= a < nb else
                               f"<{bands[0]:g}" if a < 0 else f"{bands[-1]:g}+")
        row["persons"] = int(n_persons)
        row["events"] = int(events)
        estimates(row, events, n_persons, days, members, nb, proportion, weights, reference)
        rows.append(row)
    return rows


def estimates(row: dict, events, n_persons, days, by_band: dict, nb: int, proportion: bool,
              weights, reference) -> None:
    """Fill a measure row's estimates from its counts: the proportion (Wilson) or rate (exact
    Poisson) with CI; with ``weights`` the directly standardised one (Fay–Feuer), with
    ``reference`` the expected count and SIR. ``by_band``: (persons, events, days) per age-band
    index. The formulas both engines share; each engine counts on its own."""
    if proportion:
        lo, hi = wilson_ci(events, n_persons)
        row.update(proportion=events / n_persons if n_persons else math.nan,
                   lower_95=lo, upper_95=hi)
    else:
        py = days / YEAR
        lo, hi = poisson_ci(events, py) if py > 0 else (math.nan, math.nan)
        row.update(person_years=py, rate=1000 * events / py if py else math.nan,
                   lower_95=1000 * lo, upper_95=1000 * hi)
    if weights is not None:
        counts, ws = [], []
        for a in range(nb):
            p, e, d = by_band.get(a, (0.0, 0.0, 0.0))
            x = p if proportion else d / YEAR
            if x > 0:
                counts.append(e)
                ws.append(weights[a] / x)
        y, lo, hi = fay_feuer(counts, ws)
        # each band's persons and events, for disclosure control (outputs.publish): the
        # interval's ends give Σ wᵢkᵢ, Σ wᵢ²kᵢ and max wᵢ, so a band's count comes back
        row["_bands"] = [[int(round(by_band.get(a, (0.0, 0.0, 0.0))[0])),
                          int(round(by_band.get(a, (0.0, 0.0, 0.0))[1]))] for a in range(nb)]
        scale = 1.0 if proportion else 1000.0
        name = "standardised_proportion" if proportion else "standardised_rate"
        row.update({name: scale * y, "standardised_lower_95": scale * lo,
                    "standardised_upper_95": scale * hi})
    if reference is not None:
        row["_bands"] = [[int(round(by_band.get(a, (0.0, 0.0, 0.0))[0])),
                          int(round(by_band.get(a, (0.0, 0.0, 0.0))[1]))] for a in range(nb)]
        expected = sum(reference[a] * (v[0] if proportion else v[2])
                       for a, v in by_band.items() if 0 <= a < nb)
        row["expected"] = expected
        if expected > 0:
            lo, hi = poisson_ci(events, expected)
            row.update(sir=events / expected, sir_lower_95=lo, sir_upper_95=hi)
        else:
            row.update(sir=math.nan, sir_lower_95=math.nan, sir_upper_95=math.nan)


def standard_population(m: Measure, ds=None) -> list[float] | None:
    """Persons of a measure's standard population per age band (None: no direct
    standardisation); a band without anybody is refused (its rates would weigh nothing)."""
    if not m.standardise:
        return None
    bands = m.age_bands or S.default_bands()
    if m.standardise == "esp2013":
        standard = S.esp_weights(bands)
    elif ds is None:
        raise UserError(f"measure {m.name!r}: the Danish standard population is "
                        "counted from the data's bef, which this call was not given",
                        where=m.where, fix="run the study (hpcstudy run) or pass the data")
    else:
        standard = S.danish_population(ds, int(m.standardise.split("_")[1]), bands)
    empty = [i for i, w in enumerate(standard) if w <= 0]
    if empty:
        i = empty[0]
        raise UserError(f"measure {m.name!r}: the standard population "
                        f"{m.standardise} has nobody aged {bands[i]:g}-"
                        f"{bands[i + 1]:g}, so its bands do not cover the cohort",
                        where=m.where, fix="merge that band into its neighbour in "
                        "age_bands")
    return standard


def measures(plan, parts, ds=None) -> dict[str, list[dict]]:
    """Every measure of the study, by name."""
    from ..engines.analyses import fixed_horizon

    proportion = fixed_horizon(plan)
    age_col = next((c.name for c in plan.columns if c.kind == "age"), None)
    varying = tuple(c.name for c in plan.columns if c.time_varying)
    return {m.name: measure_rows(parts, m, proportion, age_col, standard_population(m, ds),
                                 varying)
            for m in plan.measures}
