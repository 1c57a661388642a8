"""The reference engine's own measures and hospital comparisons: pandas on the whole per-person
table, written apart from the partition engine's one-pass reduction
(:mod:`hpcstudy.measures.compute`, :mod:`hpcstudy.measures.hospitals`) so that each checks the
other (docs/measures.md).

Follow-up is cut one time scale after another: each piece of follow-up is repeated once per
band of the scale it touches and clipped to the band's days (pandas ``repeat``), the calendar
from datetime64 months, attained age from whole-day limits after birth, time since index from
the index day, a time-varying covariate at its switch day; the Danish standard population is
counted here too. Shared with the partition engine: the statistics of a finished count (exact
intervals, Fay–Feuer, funnel limits), the ESP 2013 table, the risk model's Newton fit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import UserError
from ..models import Logistic, Poisson
from ..models.base import ModelError
from ..models.rates import poisson_ci
from ..plan.nodes import Plan
from . import common

YEAR = 365.25
INF = np.iinfo(np.int64).max // 4
MEASURE_COLUMNS = ("persons", "events", "person_years", "rate", "proportion", "lower_95",
                   "upper_95", "standardised_rate", "standardised_proportion",
                   "standardised_lower_95", "standardised_upper_95", "expected", "sir",
                   "sir_lower_95", "sir_upper_95", "suppressed")


# -- time scales ------------------------------------------------------------------------------
def _month(day: np.ndarray) -> np.ndarray:
    """Months since January 1970 of each day."""
    return day.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def _first_of_month(month: np.ndarray) -> np.ndarray:
    return month.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)


class _Calendar:
    """Calendar intervals: band = months since 1970 // the interval's months."""

    def __init__(self, kind: str):
        self.step = {"month": 1, "quarter": 3, "year": 12}[kind]
        self.kind = kind

    def band(self, day, _rows):
        return _month(day) // self.step

    def bounds(self, band, _rows):
        return _first_of_month(band * self.step), _first_of_month((band + 1) * self.step)

    def label(self, band: int) -> str:
        m = band * self.step
        year, month = 1970 + m // 12, m % 12 + 1
        if self.kind == "year":
            return str(year)
        if self.kind == "quarter":
            return f"{year}-Q{(month - 1) // 3 + 1}"
        return f"{year}-{month:02d}"


class _Offset:
    """Limits in whole days after a per-person day (birth, index, a switch day): band -1 before
    the first limit, j from limit j, the last band from the last limit on."""

    def __init__(self, offset: np.ndarray, limits):
        self.offset = np.asarray(offset, dtype=np.int64)
        self.limits = np.asarray(limits, dtype=np.int64)
        self.lows = np.concatenate([[-INF], self.limits])
        self.highs = np.concatenate([self.limits, [INF]])

    def band(self, day, rows):
        return np.searchsorted(self.limits, day - self.offset[rows], side="right") - 1

    def bounds(self, band, rows):
        off = self.offset[rows]
        lo, hi = self.lows[band + 1], self.highs[band + 1]
        return (np.where(lo == -INF, -INF, off + lo), np.where(hi == INF, INF, off + hi))


def _cut(pieces: pd.DataFrame, scale, name: str) -> pd.DataFrame:
    """Each piece repeated once per band of ``scale`` it touches, clipped to the band."""
    rows = pieces["row"].to_numpy()
    first = scale.band(pieces["t0"].to_numpy(), rows)
    last = scale.band(pieces["t1"].to_numpy() - 1, rows)
    k = last - first + 1
    out = pieces.loc[pieces.index.repeat(k)].reset_index(drop=True)
    step = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)   # 0, 1, … per piece
    out[name] = np.repeat(first, k) + step
    lo, hi = scale.bounds(out[name].to_numpy(), out["row"].to_numpy())
    out["t0"] = np.maximum(out["t0"].to_numpy(), lo)
    out["t1"] = np.minimum(out["t1"].to_numpy(), hi)
    return out[out["t1"] > out["t0"]].reset_index(drop=True)


def _age_limits(bands) -> list[int]:
    """Age a is reached on the day birth + ceil(a × 365.25) (docs/measures.md)."""
    return [math.ceil(a * YEAR) for a in bands]


def _by_age(m) -> bool:
    return bool(m.standardise or m.indirect or "age_band" in m.by)


def _days_band(limits, j: int) -> str:
    """``0-29``: days 0 to 29 after index; ``365+`` from day 365 on."""
    if j < 0:
        return f"<{limits[0]}"
    if j >= len(limits) - 1:
        return f"{limits[-1]}+"
    return f"{limits[j]}-{limits[j + 1] - 1}"


# -- one measure --------------------------------------------------------------------------------
def _cells(df: pd.DataFrame, m, proportion: bool, age_col, varying, bands) -> pd.DataFrame:
    """One row per (person, piece): the person's position ``row``, the keys ``k0…``, the
    interval ``iv``, the age band ``ag``, ``days`` and ``events``."""
    n = len(df)
    index = df["index_date"].to_numpy().astype(np.int64)
    exit_ = df["exit_date"].to_numpy().astype(np.int64)
    event = df["event"].to_numpy().astype(np.int64)
    cal = _Calendar(m.interval) if m.interval else None
    if proportion:   # each person once: interval of the index day, age at index
        p = pd.DataFrame({"row": np.arange(n), "days": np.zeros(n), "events": event})
        p["iv"] = cal.band(index, None) if cal else 0
        if _by_age(m):
            p["ag"] = np.searchsorted(np.asarray(bands, float),
                                      df[age_col].to_numpy(float), side="right") - 1
        else:
            p["ag"] = 0
        if "time_band" in m.by:   # the band of the day the person left
            p["tb"] = np.searchsorted(np.asarray(m.time_bands), exit_ - index, side="right") - 1
        states = {}
    else:
        start = exit_ - df["time"].to_numpy().astype(np.int64) + 1
        p = pd.DataFrame({"row": np.arange(n), "t0": start, "t1": exit_ + 1})
        if cal:
            p = _cut(p, cal, "iv")
        else:
            p["iv"] = 0
        if _by_age(m):
            birth = np.round(index - df[age_col].to_numpy(float) * YEAR).astype(np.int64)
            p = _cut(p, _Offset(birth, _age_limits(bands)), "ag")
        else:
            p["ag"] = 0
        if "time_band" in m.by:
            p = _cut(p, _Offset(index, m.time_bands), "tb")
        states = {}
        for b in m.by:
            if b in varying:
                on = df[common.varying_column(b)].to_numpy().astype(np.int64)
                p = _cut(p, _Offset(on, [0]), f"on_{b}")
                states[b] = (p[f"on_{b}"].to_numpy() >= 0).astype(np.int64)
        rows = p["row"].to_numpy()
        p["days"] = (p["t1"] - p["t0"]).to_numpy().astype(float)
        p["events"] = event[rows] * (p["t1"].to_numpy() == exit_[rows] + 1)
    rows = p["row"].to_numpy()
    keys = []
    for i, b in enumerate(b for b in m.by if b != "age_band"):
        if b == "index_year":
            v = index.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
            p[f"k{i}"] = v[rows]
        elif b == "time_band":
            p[f"k{i}"] = p["tb"].to_numpy()
        elif b in states:
            p[f"k{i}"] = df[b].to_numpy().astype(np.int64)[rows] | states[b]
        else:
            p[f"k{i}"] = df[b].to_numpy().astype(np.int64)[rows]
        keys.append(f"k{i}")
    return p[["row", *keys, "iv", "ag", "days", "events"]]


def measure_rows(df: pd.DataFrame, m, proportion: bool, age_col, standard=None,
                 varying=()) -> list[dict]:
    """The rows of one measure from the reference engine's per-person frame."""
    from ..measures.compute import estimates
    from .analyses import key_names

    bands = m.age_bands or _default_bands()
    nb = len(bands) - 1
    p = _cells(df, m, proportion, age_col, varying, bands)
    keys = [c for c in p.columns if c.startswith("k")] + ["iv"]
    if p.empty:
        return []
    cells = p.groupby([*keys, "ag"], sort=True).agg(
        persons=("row", "nunique"), events=("events", "sum"), days=("days", "sum"))
    size = "persons" if proportion else "days"
    if m.standardise or m.indirect:
        ag = cells.index.get_level_values("ag")
        outside = float(cells[size][(ag < 0) | (ag >= nb)].sum())
        if outside:
            what = "persons" if proportion else "person-years"
            amount = f"{outside:g}" if proportion else f"{outside / YEAR:.1f}"
            raise UserError(f"measure {m.name!r}: the standard population's age bands "
                            f"[{bands[0]:g}, {bands[-1]:g}) do not cover the cohort ({amount} "
                            f"{what} at other ages)", where=m.where,
                            fix="widen age_bands to the cohort's ages, or restrict "
                                "population.age to the bands")
    reference = None
    if m.indirect:   # the whole cohort's rate (or risk) per age band
        tot = cells.groupby(level="ag")[[size, "events"]].sum()
        reference = {int(a): (r["events"] / r[size] if r[size] else 0.0)
                     for a, r in tot.iterrows() if 0 <= a < nb}
    weights = None
    if standard is not None:
        weights = [w / sum(standard) for w in standard]
    by_out = [b for b in m.by if b != "age_band"]
    names = key_names(tuple(by_out), MEASURE_COLUMNS)
    flat = cells.reset_index()
    if "age_band" in m.by:   # a row per cell
        groups = [(tuple(r[[*keys, "ag"]]), flat.iloc[[i]]) for i, r in flat.iterrows()]
        persons = {k: int(g["persons"].iloc[0]) for k, g in groups}
    else:                    # a row per key, its age bands together; each person once
        groups = [(k, g) for k, g in flat.groupby(keys, sort=True)]
        persons = {(k if isinstance(k, tuple) else (k,)): int(v)
                   for k, v in p.groupby(keys, sort=True)["row"].nunique().items()}
    cal = _Calendar(m.interval) if m.interval else None
    rows = []
    for key, g in groups:
        key = tuple(int(x) for x in key)
        row: dict = {}
        for j, name in enumerate(names):
            v = key[j]
            row[name] = _days_band(m.time_bands, v) if by_out[j] == "time_band" else v
        if cal:
            row["interval"] = cal.label(key[len(by_out)])
        if "age_band" in m.by:
            a = key[-1]
            row["age_band"] = (f"{bands[a]:g}-{bands[a + 1]:g}" if 0 <= a < nb else
                               f"<{bands[0]:g}" if a < 0 else f"{bands[-1]:g}+")
        n_persons = persons[key]
        events = int(g["events"].sum())
        by_band = {int(r["ag"]): (float(r["persons"]), float(r["events"]), float(r["days"]))
                   for r in g.to_dict("records")}
        row["persons"], row["events"] = n_persons, events
        # the formulas are shared with the partition engine; the counts above are this one's
        estimates(row, events, n_persons, float(g["days"].sum()), by_band, nb, proportion,
                  weights, reference)
        rows.append(row)
    return rows


def _default_bands():
    from ..measures.standard import default_bands

    return default_bands()


def measures_of(plan: Plan, parts, ds=None) -> dict:
    """The results' ``measures``: the reference engine's partitions carry its pandas frame
    (``parts.frame``) and get this module's code; the partition engine's get the one-pass
    reduction of :mod:`hpcstudy.measures`."""
    frame = getattr(parts, "frame", None)
    if frame is not None:
        return measures(plan, frame, ds)
    from ..measures.compute import measures as reduced

    return reduced(plan, parts, ds)


def hospitals_of(plan: Plan, parts, fitted: dict | None = None) -> list:
    """The results' ``hospitals``, as :func:`measures_of` chooses."""
    frame = getattr(parts, "frame", None)
    if frame is not None:
        return hospitals(plan, frame, fitted)
    from ..measures.hospitals import hospitals as reduced

    return reduced(plan, parts, fitted)


def danish_population(ds, year: int, bands) -> list[float]:
    """Persons alive, born and living in Denmark on 1 January ``year`` per age band, counted
    with the reference engine's own rules: the last move on or before the day says where a
    person lives; without one, a person whose first move is an immigration lived abroad."""
    day = int(np.datetime64(f"{year}-01-01", "D").astype(np.int64))

    def days(s):
        return pd.to_datetime(s).to_numpy().astype("datetime64[D]").astype(np.int64)

    bef = ds.read("bef", columns=["pnr", "foed_dag"]).to_pandas()
    dod = ds.read("dod", columns=["pnr", "doddato"]).to_pandas()
    moves = ds.read("vnds", columns=["pnr", "indud_kode", "haend_dato"],
                    decode=True).to_pandas()
    moves["day"] = days(moves["haend_dato"])
    moves = moves.sort_values(["pnr", "day"], kind="stable")
    people = pd.DataFrame({"born": days(bef["foed_dag"])}, index=bef["pnr"].to_numpy())
    people["died"] = pd.Series(days(dod["doddato"]), index=dod["pnr"].to_numpy()) \
        .groupby(level=0).min().reindex(people.index)
    before = moves[moves["day"] <= day].groupby("pnr")["indud_kode"].last()
    first = moves.groupby("pnr")["indud_kode"].first()
    home = before.reindex(people.index).eq("I")
    never = before.reindex(people.index).isna()
    home[never] = first.reindex(people.index)[never].ne("I").to_numpy()
    alive = (people["born"] <= day) & ~(people["died"] < day)
    age = (day - people["born"][alive & home]) / YEAR
    edges = np.asarray(bands, dtype=float)
    j = np.searchsorted(edges, age.to_numpy(), side="right") - 1
    return [float(np.count_nonzero(j == i)) for i in range(len(edges) - 1)]


def _standard(m, ds):
    """The standard population of a measure (None: no direct standardisation), the Danish one
    counted here; refusals as the partition engine's (measures.compute)."""
    from ..measures.compute import standard_population

    if m.standardise and m.standardise.startswith("danish_") and ds is not None:
        bands = m.age_bands or _default_bands()
        own = danish_population(ds, int(m.standardise.split("_")[1]), bands)
        if all(w > 0 for w in own):
            return own
    return standard_population(m, ds)   # the ESP 2013, or the refusal of an empty band


def measures(plan: Plan, df: pd.DataFrame, ds=None) -> dict[str, list[dict]]:
    """Every measure of the study, by name, from the per-person frame."""
    from .analyses import fixed_horizon

    proportion = fixed_horizon(plan)
    age_col = next((c.name for c in plan.columns if c.kind == "age"), None)
    varying = tuple(c.name for c in plan.columns if c.time_varying)
    return {m.name: measure_rows(df, m, proportion, age_col, _standard(m, ds), varying)
            for m in plan.measures}


# -- hospitals ----------------------------------------------------------------------------------
def _design(plan: Plan, df: pd.DataFrame, adjust) -> tuple[np.ndarray, list[str]]:
    """The risk model's columns: the group (with a comparator), then each term; a region or an
    index-contact attribute as indicators against its lowest value."""
    cols, names = [], []
    if plan.has_comparator:
        cols.append(df["group"].to_numpy(float))
        names.append(plan.exposure_name)
    kinds = {c.name: c.kind if c.attribute != "diagnoses" else "flag" for c in plan.columns}
    for a in adjust:
        v = df[a].to_numpy()
        if kinds[a] in ("region", "index_contact"):
            for level in sorted(set(v.tolist()))[1:]:
                cols.append((v == level).astype(float))
                names.append(f"{a}={level}")
        else:
            cols.append(v.astype(float))
            names.append(a)
    X = np.column_stack(cols) if cols else np.zeros((len(df), 0))
    return X, names


def hospitals(plan: Plan, df: pd.DataFrame, fitted: dict | None = None,
              identify: str | None = None) -> list[dict]:
    """The hospitals table from the per-person frame (rows as :mod:`measures.hospitals`)."""
    from ..measures.hospitals import funnel_limits
    from .analyses import fixed_horizon

    h = plan.hospitals
    identify = identify or h.identify
    proportion = fixed_horizon(plan)
    X, names = _design(plan, df, h.adjust)
    y = df["event"].to_numpy(float)
    w = df["weight"].to_numpy(float) if "weight" in df else None
    years = df["time"].to_numpy(float) / YEAR
    try:
        if proportion:
            model = Logistic().fit(X, y, weights=w, names=names, cluster=df["pnr"].to_numpy())
        else:
            model = Poisson().fit(X, y, years, weights=w, names=names,
                                  cluster=df["pnr"].to_numpy())
    except ModelError as e:
        raise UserError(f"the hospitals' risk model cannot be fitted: {e}",
                        where=plan.source, fix="simplify analyses.hospitals.adjust") from e
    if fitted is not None:
        fitted["hospitals_risk_model"] = model
    coef = np.asarray(model.coef_, float)
    eta = coef[0] + X @ coef[1:]
    mu = 1.0 / (1.0 + np.exp(-eta)) if proportion else np.exp(eta) * years
    t = pd.DataFrame({"unit": df[h.by].to_numpy().astype(np.int64), "event": y, "mu": mu})
    per = t.groupby("unit", sort=True).agg(persons=("event", "size"), events=("event", "sum"),
                                           expected=("mu", "sum"))
    rows = []
    for unit, r in per.iterrows():
        o, e = int(r["events"]), float(r["expected"])
        lo, hi = poisson_ci(o, e) if e > 0 else (math.nan, math.nan)
        l95, h95 = funnel_limits(e, 0.95)
        l998, h998 = funnel_limits(e, 0.998)
        rows.append({"hospital": int(unit), "persons": int(r["persons"]), "events": o,
                     "expected": e, "oe": o / e if e > 0 else math.nan, "lower_95": lo,
                     "upper_95": hi, "limit95_low": l95, "limit95_high": h95,
                     "limit998_low": l998, "limit998_high": h998})
    return _identified(rows, identify)


def _identified(rows: list[dict], identify: str) -> list[dict]:
    """Codes replaced: ``rank`` by O/E (1 the lowest, ties by code), ``none`` by size."""
    if identify == "rank":
        # by O/E, a unit without expected events (no O/E) last
        rows = sorted(rows, key=lambda r: (not r["oe"] >= 0, r["oe"] if r["oe"] >= 0 else 0,
                                           r["hospital"]))
    elif identify == "none":
        rows = sorted(rows, key=lambda r: (r["persons"], r["hospital"]))
    else:
        return rows
    return [{**r, "hospital": i} for i, r in enumerate(rows, 1)]
