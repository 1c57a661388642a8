"""Standard populations for direct age standardisation, and the intervals of a measure.

The European Standard Population 2013 ships as ``esp2013.csv`` (its source is cited there);
the Danish population of 1 January of a year is counted from the data's ``bef`` (alive, born,
and resident in Denmark on that day, by the same rules the engines use at index).
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np

YEAR = 365.25
TOP = 150.0           # the last band of a standard runs to this age
CALENDAR = (1900, 2101)   # interval cuts cover these years; every engine uses the same cuts


def esp2013() -> tuple[list[float], list[float]]:
    """(band lower limits 0, 5, …, 90; weights per 100 000) of the ESP 2013."""
    text = resources.files(__package__).joinpath("esp2013.csv").read_text()
    rows = [ln.split(",") for ln in text.splitlines() if ln and not ln.startswith(("#", "age"))]
    return [float(a) for a, _ in rows], [float(w) for _, w in rows]


def default_bands() -> tuple[float, ...]:
    return (*esp2013()[0], TOP)


def esp_weights(bands: tuple[float, ...]) -> list[float]:
    """ESP 2013 persons in each band [bands[i], bands[i+1]) (the 90+ band counts wholly in
    the band holding age 90)."""
    lows, weights = esp2013()
    out = [0.0] * (len(bands) - 1)
    for lo, w in zip(lows, weights, strict=True):
        for i in range(len(bands) - 1):
            if bands[i] <= lo < bands[i + 1]:
                out[i] += w
    return out


def danish_population(ds, year: int, bands: tuple[float, ...]) -> list[float]:
    """Persons alive, born and resident in Denmark on 1 January ``year``, per age band."""
    day = int(np.datetime64(f"{year}-01-01", "D").astype(np.int64))
    bef = ds.read("bef", columns=["pnr", "foed_dag"]).to_pandas()
    dod = ds.read("dod", columns=["pnr", "doddato"]).to_pandas()
    v = ds.read("vnds", columns=["pnr", "indud_kode", "haend_dato"], decode=True).to_pandas()

    def days(s):
        return s.astype("datetime64[s]").astype("int64") // 86400

    born = days(bef["foed_dag"]).to_numpy()
    died = bef["pnr"].map(dod.groupby("pnr")["doddato"].min().pipe(days)).to_numpy()
    v = v.assign(day=days(v["haend_dato"])).sort_values(["pnr", "day"], kind="stable")
    first = v.groupby("pnr")["indud_kode"].first()
    last = v[v["day"] <= day].groupby("pnr")["indud_kode"].last()
    moved = bef["pnr"].map(last)
    native = bef["pnr"].map(first).fillna("U") != "I"
    resident = np.where(moved.isna(), native, moved == "I")
    alive = (born <= day) & ~(died < day)
    age = (day - born[alive & resident]) / YEAR
    counts, _ = np.histogram(age, bins=np.asarray(bands))
    return [float(c) for c in counts]


def interval_cuts(kind: str) -> np.ndarray:
    """First days of every month, quarter or year from CALENDAR[0] to CALENDAR[1]."""
    step = {"month": 1, "quarter": 3, "year": 12}[kind]
    months = np.arange(CALENDAR[0] * 12, CALENDAR[1] * 12 + 1, step)
    return np.array([np.datetime64(f"{m // 12}-{m % 12 + 1:02d}-01", "D").astype(np.int64)
                     for m in months], dtype=np.int64)


def interval_label(kind: str, j: int) -> str:
    """The name of interval ``j`` of :func:`interval_cuts`: 2015, 2015-Q2, 2015-04."""
    step = {"month": 1, "quarter": 3, "year": 12}[kind]
    m = CALENDAR[0] * 12 + j * step
    y = m // 12
    if kind == "year":
        return str(y)
    if kind == "quarter":
        return f"{y}-Q{m % 12 // 3 + 1}"
    return f"{y}-{m % 12 + 1:02d}"


def age_cut_days(bands: tuple[float, ...]) -> np.ndarray:
    """Age limits in whole days after birth: age a is reached on the day ceil(a × 365.25)."""
    return np.array([math.ceil(a * YEAR) for a in bands], dtype=np.float64)
