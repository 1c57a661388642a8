"""Splitting follow-up: the Lexis splitter against lifelines' episodic format and a hand
computation; time-varying covariates (spec table on both engines, counting-process Cox against
lifelines' CoxTimeVaryingFitter to 1e-6, person-time by exposure state)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from hpcstudy.engines import run as R
from hpcstudy.engines.common import NO_DATE
from hpcstudy.study import study_from_text
from hpcstudy.timesplit.lexis import split

from .builder import Registers


def d(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


def test_split_by_time_since_entry_equals_lifelines_episodic_format():
    from lifelines.utils import to_episodic_format

    durations = np.array([3, 1, 5, 2, 4])
    events = np.array([1, 0, 1, 1, 0])
    df = pd.DataFrame({"id": range(5), "T": durations, "E": events})
    want = to_episodic_format(df, "T", "E", id_col="id", time_gaps=1.0).sort_values(
        ["id", "start"]).reset_index(drop=True)
    ep = split(np.zeros(5), durations.astype(float), [(np.zeros(5), np.arange(1.0, 10.0))])
    got = pd.DataFrame({"id": ep["row"], "start": ep["t0"], "stop": ep["t1"]})
    got["E"] = ((got["stop"] == durations[got["id"]]) & (events[got["id"]] == 1)).astype(int)
    pd.testing.assert_frame_equal(got, want[["id", "start", "stop", "E"]].astype(got.dtypes),
                                  check_dtype=False)
    assert (ep["bands"][0] == ep["t0"] - 1).all()   # band j holds [j+1, j+2)


def test_split_on_three_scales_at_once_by_hand():
    # one person followed over days [10, 40): born on day -100 (age cuts at 120 and 130 days
    # of age = days 20, 30); calendar cuts at 15, 25; time since index (index day 10) cut at
    # 12 days = day 22
    ep = split(np.array([10]), np.array([40]),
               [(np.array([-100]), np.array([120.0, 130.0])),
                (np.array([0]), np.array([15.0, 25.0])),
                (np.array([10]), np.array([12.0]))])
    assert ep["t0"].tolist() == [10, 15, 20, 22, 25, 30]
    assert ep["t1"].tolist() == [15, 20, 22, 25, 30, 40]
    assert ep["bands"][0].tolist() == [-1, -1, 0, 0, 0, 1]
    assert ep["bands"][1].tolist() == [-1, 0, 0, 0, 1, 1]
    assert ep["bands"][2].tolist() == [-1, -1, -1, 0, 0, 0]
    # a cut on the start or the stop makes no empty piece; stop == start gives none
    ep = split(np.array([0, 5]), np.array([10, 5]), [(np.zeros(2), np.array([0.0, 10.0]))])
    assert ep["row"].tolist() == [0] and ep["bands"][0].tolist() == [0]


VARYING = """
name: varying
codelists:
  statins: {system: atc, codes: [C10AA*]}
  mi: {system: icd10, codes: [I21*]}
index: {date: 2010-01-01}
covariates:
  - age
  - {name: statin, codelist: statins, time_varying: true}
outcome: {name: mi, codelist: mi}
follow_up: {end_date: 2012-12-31}
analyses:
  measures:
    - {name: by_statin, by: [statin]}
"""


def varying_registers() -> Registers:
    r = Registers()
    r.person(1, "M", "1950-01-01").rx(1, "2009-05-01", "C10AA01")          # on at index
    r.person(2, "F", "1950-01-01").rx(2, "2011-01-01", "C10AA01")          # switches on
    r.contact(2, "2012-01-01", "DI219")                                     # MI while on
    r.person(3, "M", "1950-01-01").contact(3, "2011-06-01", "DI219")       # MI, never on
    r.rx(3, "2012-01-01", "C10AA01")                                        # after his exit
    r.person(4, "F", "1950-01-01").rx(4, "2010-01-01", "C10AA01")          # on the index day
    r.person(5, "M", "1950-01-01").rx(5, "2012-12-31", "C10AA05")          # on the last day
    return r


@pytest.fixture(scope="module")
def varying_data(tmp_path_factory):
    return varying_registers().write(tmp_path_factory.mktemp("tv") / "data", partitions=2)


def test_the_docs_example_is_this_study():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "time.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)
                 if b.startswith("# docs/time.md: the time-varying example"))
    assert study_from_text(block) == study_from_text(VARYING)


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_the_switch_day_per_person(engine, varying_data):
    _, plan, ds = R.prepare(study_from_text(VARYING), varying_data)
    tables, attrition, parts = R.person_table(plan, ds, engine)
    t = R.combined(plan, tables)
    rows = {int(p): (int(t["statin"][i]), int(t["statin@from"][i]))
            for i, p in enumerate(t["pnr"])}
    assert rows[1][0] == 1 and rows[4][0] == 1               # on at index: no switch
    assert rows[2] == (0, d("2011-01-01"))
    assert rows[3] == (0, d("2012-01-01"))                    # recorded; after his exit
    assert rows[5] == (0, d("2012-12-31"))
    assert rows[1][1] == rows[4][1] == NO_DATE               # no switch: NO_DATE
    # person-time by state, by hand: 1, 4 on all 3 years (1096 days each); 2 off 365 days
    # then on to 2012-01-01 (366 days, with the MI); 3 off to 2011-06-01; 5 off 1095, on 1
    res = R.analyse(plan, parts, attrition, ds=ds)["measures"]["by_statin"]
    by = {r["statin"]: r for r in res}
    off = 365 + (d("2011-06-01") - d("2010-01-01") + 1) + 1095
    on = 1096 * 2 + 366 + 1
    assert by[0]["person_years"] == pytest.approx(off / 365.25, rel=1e-12)
    assert by[1]["person_years"] == pytest.approx(on / 365.25, rel=1e-12)
    assert (by[0]["events"], by[1]["events"]) == (1, 1)
    assert (by[0]["persons"], by[1]["persons"]) == (3, 4)


COX = """
name: cox_tv
codelists:
  statins: {system: atc, codes: [C10AA*]}
  mi: {system: icd10, codes: [I21*]}
index: {date: 2008-01-01}
population: {age: [40, 90]}
covariates:
  - age
  - sex
  - {name: statin, codelist: statins, time_varying: true}
outcome: {name: mi, codelist: mi}
analyses:
  cox: {adjust: [statin, age, sex]}
"""


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_time_varying_cox_equals_lifelines(engine, small_data):
    from lifelines import CoxTimeVaryingFitter

    _, plan, ds = R.prepare(study_from_text(COX), small_data)
    tables, attrition, parts = R.person_table(plan, ds, engine)
    res = R.analyse(plan, parts, attrition)
    t = pd.DataFrame(R.combined(plan, tables))
    # the long format by hand: pieces (0, on − start] off and (on − start, T] on
    start = t["exit_date"] - t["time"] + 1
    on = t["statin@from"]
    switch = (t["statin"] == 0) & (on > start) & (on <= t["exit_date"])
    rows = []
    for i in range(len(t)):
        r = t.iloc[i]
        base = {"id": i, "age": r["age"], "sex": r["sex"]}
        if switch.iloc[i]:
            cut = int(on.iloc[i] - start.iloc[i])
            rows.append({**base, "start": 0, "stop": cut, "statin": 0, "E": 0})
            rows.append({**base, "start": cut, "stop": int(r["time"]), "statin": 1,
                         "E": int(r["event"])})
        else:
            rows.append({**base, "start": 0, "stop": int(r["time"]), "statin": int(r["statin"]),
                         "E": int(r["event"])})
    long = pd.DataFrame(rows)
    assert switch.sum() > 20          # the data exercises switching
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctv = CoxTimeVaryingFitter().fit(long[["id", "start", "stop", "E", "statin", "age",
                                               "sex"]], id_col="id", event_col="E",
                                         start_col="start", stop_col="stop")
    terms = {x["term"]: x for x in res["models"]["cox"]["terms"]}
    for name in ("statin", "age", "sex"):
        assert terms[name]["coef"] == pytest.approx(ctv.params_[name], abs=1e-6)
        assert terms[name]["se"] == pytest.approx(ctv.standard_errors_[name], abs=1e-6)
    assert res["models"]["cox"]["persons"] == len(t)


def test_split_tiles_follow_up_exactly_on_random_data():
    """Pieces are contiguous, cover [start, stop) without overlap, and each piece's bands are
    those of every day in it (checked day by day), on random persons and cuts."""
    rng = np.random.default_rng(7)
    n = 60
    start = rng.integers(0, 500, n)
    stop = start + rng.integers(0, 400, n)
    axes = [(rng.integers(-30_000, 0, n), np.sort(rng.choice(np.arange(0, 40_000, 7), 30,
                                                               replace=False)).astype(float)),
            (np.zeros(n, np.int64), np.array([100.0, 250.0, 251.0, 600.0])),
            (start.copy(), np.array([0.0, 30.0, 365.0]))]
    ep = split(start, stop, axes)
    for i in range(n):
        sel = ep["row"] == i
        t0, t1 = ep["t0"][sel], ep["t1"][sel]
        if stop[i] == start[i]:
            assert sel.sum() == 0
            continue
        assert t0[0] == start[i] and t1[-1] == stop[i] and (t0[1:] == t1[:-1]).all()
        for k, (off, cuts) in enumerate(axes):
            for a, b, band in zip(t0, t1, ep["bands"][k][sel], strict=True):
                for day in range(int(a), int(b)):
                    assert np.searchsorted(cuts, day - off[i], side="right") - 1 == band
