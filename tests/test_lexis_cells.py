"""The Lexis cells of one partition (person-years, events and persons per group, age band and
period, and the margins behind the Lexis model's terms) against a person-by-person reading of
the same follow-up, and, bit for bit, against the cell-by-cell computation they replaced."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcstudy.engines.analyses import YEAR, _lexis_part

AGES = [20, 40, 50, 60, 70, 80, 90, 120]
PERIODS = [2000, 2005, 2010, 2015, 2020, 2024]


def _day(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


def _table(rows) -> dict:
    """Per-person rows (group, index day, age at index, first day, last day, event)."""
    g, idx, age, first, last, ev = (np.array(c) for c in zip(*rows, strict=True))
    return {"pnr": np.arange(len(rows), dtype=np.int64), "group": g.astype(np.int8),
            "index_date": idx.astype(np.int32), "age": age.astype(float),
            "exit_date": last.astype(np.int32), "time": (last - first + 1).astype(np.int32),
            "event": ev.astype(np.int8)}


def _by_person(table) -> tuple[dict, dict]:
    """Cells and margins read person by person, with the definition written out: the time in
    a cell is the overlap of [first day, last day + 1) with the band's ages (birth day = index
    day - age * 365.25) and the period's years; an event counts where its day falls."""
    bounds = [_day(f"{y}-01-01") for y in PERIODS]
    cells: dict = {}
    inside = {("age", j): set() for j in range(len(AGES) - 1)}
    inside.update({("period", j): set() for j in range(len(PERIODS) - 1)})
    events = dict.fromkeys(inside, 0)
    for i in range(table["pnr"].shape[0]):
        stop = int(table["exit_date"][i]) + 1
        start = stop - int(table["time"][i])
        birth = int(table["index_date"][i]) - float(table["age"][i]) * YEAR
        for a in range(len(AGES) - 1):
            for p in range(len(PERIODS) - 1):
                lo = max(start, birth + AGES[a] * YEAR, bounds[p])
                hi = min(stop, birth + AGES[a + 1] * YEAR, bounds[p + 1])
                ev = int(table["event"][i] == 1 and lo <= table["exit_date"][i] < hi)
                c = cells.setdefault((int(table["group"][i]), AGES[a], PERIODS[p]),
                                     {"person_years": [], "events": 0, "persons": 0})
                c["person_years"].append(max(hi - lo, 0) / YEAR)
                c["events"] += ev
                c["persons"] += hi > lo
                if hi > lo:
                    inside[("age", a)].add(i)
                    inside[("period", p)].add(i)
                events[("age", a)] += ev
                events[("period", p)] += ev
    for c in cells.values():
        c["person_years"] = math.fsum(c["person_years"])
    margins = {}
    for key in inside:
        others = set().union(*(inside[k] for k in inside if k[0] == key[0] and k != key))
        margins[key] = {"persons": len(inside[key]), "events": events[key],
                        "persons_other": len(others),
                        "events_other": sum(v for k, v in events.items()
                                            if k[0] == key[0] and k != key)}
    anyone = set().union(*(inside[k] for k in inside if k[0] == "age"))
    margins[("all", 0)] = {"persons": len(anyone),
                           "events": sum(v for k, v in events.items() if k[0] == "age"),
                           "persons_other": 0, "events_other": 0}
    return cells, margins


def _same_as_by_person(table):
    got = _lexis_part(table, AGES, PERIODS)
    cells, margins = _by_person(table)
    assert set(got["cells"]) == set(cells)
    for key, want in cells.items():
        c = got["cells"][key]
        assert math.isclose(c["person_years"], want["person_years"], rel_tol=1e-12,
                            abs_tol=1e-12), key
        assert (c["events"], c["persons"]) == (want["events"], want["persons"]), key
    assert got["margins"] == {k: {n: float(v) for n, v in m.items()}
                              for k, m in margins.items()}
    return got


def test_a_person_crossing_bands_and_periods_on_exact_days():
    # born 1949-07-01 (index 2000-01-01, age from the same 365.25-day years): follow-up to
    # 2012-03-15 crosses age 60 (band 50-60 to 60-70) and the periods 2000-, 2005-, 2010-
    index = _day("2000-01-01")
    age = (index - _day("1949-07-01")) / YEAR
    rows = [(0, index, age, index, _day("2012-03-15"), 1),
            # an event on the first day of a period counts in that period ...
            (0, index, 30.0, index, _day("2005-01-01"), 1),
            # ... and on its last day in that period
            (0, index, 30.0, index, _day("2004-12-31"), 1),
            # a one-day follow-up, a late entry (follow-up starts after index), no event
            (0, index, 45.0, index, index, 0),
            (0, index, 59.99, _day("2003-06-01"), _day("2021-01-01"), 0)]
    got = _same_as_by_person(_table(rows))["cells"]
    # the first person: 2000-01-01 .. 2009-06-30 in band 50-60 is all of 2000-2004 and part
    # of 2005-2009; the event falls in band 60-70, period 2010-2014
    assert got[(0, 60, 2010)]["events"] == 1 and got[(0, 50, 2010)]["events"] == 0
    assert got[(0, 20, 2005)]["events"] == 1 and got[(0, 20, 2000)]["events"] == 1
    # whole days of the 30-year-olds: 2000-01-01 .. 2004-12-31 is 1827 days, twice, plus one
    assert got[(0, 20, 2000)]["person_years"] == (1827 + 1827) / YEAR
    assert got[(0, 20, 2005)]["person_years"] == 1 / YEAR
    assert got[(0, 40, 2000)]["persons"] == 1   # the one-day follow-up


def test_planted_rates_come_back_per_cell():
    # persons of each (band, period) cell followed for a whole period with a planted number
    # of events: each cell's rate is the planted one
    rng = np.random.default_rng(3)
    rows, want = [], {}
    index = _day("2000-01-01")
    for a in (20, 50, 80):
        for p, start in ((2000, index), (2010, _day("2010-01-01"))):
            rate = rng.uniform(0.01, 0.2)
            n = 40
            k = int(round(rate * n * 2))   # events among n persons of two years each
            for i in range(n):
                last = start + 729 if i >= k else start + 365
                rows.append((0, index, a + 5 - (start - index) / YEAR, start, last, i < k))
            want[(a, p)] = (k, (k * 366 + (n - k) * 730) / YEAR)
    got = _same_as_by_person(_table(rows))["cells"]
    for (a, p), (k, py) in want.items():
        assert got[(0, a, p)]["events"] == k
        assert math.isclose(got[(0, a, p)]["person_years"], py, rel_tol=1e-12)


persons = st.tuples(st.integers(0, 1), st.floats(18.0, 95.0),
                    st.integers(_day("1999-06-01"), _day("2023-12-31")),
                    st.integers(0, 9000), st.integers(0, 3000), st.booleans())


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(persons, min_size=1, max_size=25))
def test_generated_cohorts_match_by_person_and_bit_for_bit(rows):
    index = _day("2000-01-01")
    table = _table([(g, index, age, min(index + lag, last), max(index + lag, last), ev)
                    for g, age, last, lag, _, ev in rows])
    got = _same_as_by_person(table)
    assert got == _by_columns(table, AGES, PERIODS)


def _by_columns(part, ages, periods, birth_col="age"):
    """The computation the engine used before (every cell over every person): its sums are
    the bits the engine must keep."""
    cells: dict = {}
    stop = part["exit_date"].astype(np.int64) + 1
    start = stop - part["time"].astype(np.int64)
    age0 = np.asarray(part[birth_col], float)
    birth = part["index_date"].astype(np.int64) - age0 * YEAR
    pbounds = [int(np.datetime64(f"{y}-01-01", "D").astype(np.int64)) for y in periods]
    n = start.shape[0]
    na, npd = len(ages) - 1, len(periods) - 1
    time_a, ev_a = np.zeros((n, na)), np.zeros((n, na))
    time_p, ev_p = np.zeros((n, npd)), np.zeros((n, npd))
    ev_day = part["exit_date"].astype(np.int64)
    for ai in range(na):
        a_lo = birth + ages[ai] * YEAR
        a_hi = birth + ages[ai + 1] * YEAR
        for pi in range(npd):
            lo = np.maximum(np.maximum(start, a_lo), pbounds[pi])
            hi = np.minimum(np.minimum(stop, a_hi), pbounds[pi + 1])
            py = np.clip(hi - lo, 0, None) / YEAR
            ev = (part["event"] == 1) & (ev_day >= lo) & (ev_day < hi)
            time_a[:, ai] += py
            time_p[:, pi] += py
            ev_a[:, ai] += ev
            ev_p[:, pi] += ev
            for g in np.unique(part["group"]):
                sel = part["group"] == g
                key = (int(g), ages[ai], periods[pi])
                cells[key] = {"person_years": float(py[sel].sum()),
                              "events": float(ev[sel].sum()),
                              "persons": float((py[sel] > 0).sum())}
    margins = {}
    for name, t, e in (("age", time_a, ev_a), ("period", time_p, ev_p)):
        inside = t > 0
        for j in range(t.shape[1]):
            rest = np.delete(inside, j, axis=1).any(axis=1)
            margins[(name, j)] = {"persons": float(inside[:, j].sum()),
                                  "events": float(e[:, j].sum()),
                                  "persons_other": float(rest.sum()),
                                  "events_other": float(np.delete(e, j, axis=1).sum())}
    anywhere = (time_a > 0).any(axis=1)
    margins[("all", 0)] = {"persons": float(anywhere.sum()), "events": float(ev_a.sum()),
                           "persons_other": 0.0, "events_other": 0.0}
    return {"cells": cells, "margins": margins}


def test_a_large_partition_keeps_the_bits_of_every_cell():
    # sums over thousands of persons (NumPy's pairwise blocks): the same bits as before
    rng = np.random.default_rng(7)
    n = 5000
    index = _day("2000-01-01")
    last = index + rng.integers(0, 8800, n)
    table = _table([(int(g), index, float(a), index, int(x), int(e)) for g, a, x, e in
                    zip(rng.integers(0, 2, n), rng.uniform(20, 90, n), last,
                        rng.random(n) < 0.1, strict=True)])
    got = _lexis_part(table, AGES, PERIODS)
    want = _by_columns(table, AGES, PERIODS)
    assert got == want and list(got["cells"]) == list(want["cells"])
    one = dict(table, group=np.zeros(n, np.int8))   # one group: its sums without a selection
    assert _lexis_part(one, AGES, PERIODS) == _by_columns(one, AGES, PERIODS)
