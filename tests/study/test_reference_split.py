"""The reference engine's own split of follow-up for model terms (engines/reference_split.py)
against a hand table, and against the partition engine's splitter (timesplit/terms.py): the
same pieces (as a multiset of rows) and the same Poisson/Cox estimates on studies with
``age_band``, ``time_band`` and a time-varying covariate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpcstudy.engines import analyses
from hpcstudy.engines import run as R
from hpcstudy.engines.common import NO_DATE
from hpcstudy.engines.reference_split import split_frame
from hpcstudy.study import study_from_text
from hpcstudy.timesplit.terms import episodes

BANDS = """
name: terms
codelists:
  diabetes: {system: icd10, codes: [E11*]}
index: {date: 2008-01-01}
population: {age: [30, 95]}
covariates: [age, sex]
outcome: {name: diabetes, codelist: diabetes}
follow_up: {start_day: 30, end_date: 2016-12-31}
analyses:
  poisson: {adjust: [sex, age_band, time_band], age_bands: [30, 60, 75, 150],
            time_bands: [0, 365, 1461]}
  cox: {adjust: [sex, age_band], age_bands: [30, 60, 75, 150]}
"""

# a time-varying statin with both split terms; follow-up starts after index, so some switch
# before it (on throughout) and some on their first day
BOTH = """
name: both
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
follow_up: {start_day: 60}
analyses:
  poisson: {adjust: [statin, sex, age_band, time_band], age_bands: [40, 55, 70, 90],
            time_bands: [0, 200, 700]}
  cox: {adjust: [statin, age, sex, age_band], age_bands: [40, 55, 70, 90]}
"""

# column values the spec table is read against; entry/time in days since follow-up starts
HAND = pd.DataFrame({
    "pnr": [1, 2, 3, 4, 5, 6],
    "index_date": [1000] * 6,
    # start = exit − time + 1: 1000 for all but 5 (start 1010, an empty follow-up for 4)
    "exit_date": [1999, 1999, 1499, 999, 1109, 1366],
    "time": [1000, 1000, 500, 0, 100, 367],
    "age": [0.0] * 6,   # birth on the index day: age limits are days after it
    "event": [1, 0, 1, 1, 1, 1],
    "status": [1, 0, 2, 1, 1, 1],
    "statin": [0, 1, 0, 0, 0, 0],
    "statin@from": [1300, NO_DATE, 1000, NO_DATE, 1005, 1366],
})


def test_split_equals_a_hand_table():
    # age limits 1 and 2 years: days birth + 366 and + 731; time limits 0 and 500 days
    out = split_frame(HAND, ("statin",), {"age_band": [1.0, 2.0], "time_band": [0, 500]},
                      "age")
    got = sorted(out[["pnr", "entry", "time", "age_band", "time_band", "statin", "event",
                      "status"]].itertuples(index=False, name=None))
    want = sorted([
        # 1: cuts at 1300 (switch), 1366 (age 1), 1500 (day 500), 1731 (age 2); event last
        (1, 0, 300, -1, 0, 0, 0, 0), (1, 300, 366, -1, 0, 1, 0, 0),
        (1, 366, 500, 0, 0, 1, 0, 0), (1, 500, 731, 0, 1, 1, 0, 0),
        (1, 731, 1000, 1, 1, 1, 1, 1),
        # 2: on at index (NO_DATE) stays on; no outcome on any piece
        (2, 0, 366, -1, 0, 1, 0, 0), (2, 366, 500, 0, 0, 1, 0, 0),
        (2, 500, 731, 0, 1, 1, 0, 0), (2, 731, 1000, 1, 1, 1, 0, 0),
        # 3: switches on its first day; exit 1499 ends just before day 500's cut
        (3, 0, 366, -1, 0, 1, 0, 0), (3, 366, 500, 0, 0, 1, 1, 2),
        # 4: no days of follow-up, no piece
        # 5: switched before its follow-up began (1005 < 1010): on throughout, one piece
        (5, 0, 100, -1, 0, 1, 1, 1),
        # 6: exits on the day it reaches age 1 and switches on: a last piece of one day
        (6, 0, 366, -1, 0, 0, 0, 0), (6, 366, 367, 0, 0, 1, 1, 1),
    ])
    assert got == want


def _model(plan, name):
    return next(a for a in plan.analyses if getattr(a, "model", None) == name)


def _rows(df: pd.DataFrame, cols) -> list:
    return sorted(tuple(int(x) for x in r) for r in df[list(cols)].itertuples(index=False))


@pytest.fixture(scope="module", params=[BANDS, BOTH], ids=["bands", "both"])
def both_engines(request, small_data):
    _, plan, ds = R.prepare(study_from_text(request.param), small_data)
    ref = R.person_table(plan, ds, "reference")
    dask = R.person_table(plan, ds, "dask")
    return plan, ref, dask


@pytest.mark.parametrize("model", ["poisson", "cox"])
def test_split_tables_agree(both_engines, model):
    plan, ref, dask = both_engines
    spec = _model(plan, model)
    bands = analyses.model_bands(spec)
    terms = tuple(spec.adjust)
    tv = tuple(c.name for c in plan.columns if c.time_varying and c.name in terms)
    age_col = next(c.name for c in plan.columns if c.kind == "age")
    ours = split_frame(ref.parts.frame, tv, {k: v for k, v in bands.items() if k in terms},
                       age_col)
    theirs = pd.concat([pd.DataFrame({c: np.asarray(v) for c, v in t.items()
                                      if np.ndim(v) == 1})
                        for t in (episodes(p, tv, {k: v for k, v in bands.items()
                                                   if k in terms}, age_col)
                                  for p in dask.parts.parts)])
    cols = ["pnr", "entry", "time", "event", "status", "sex", *tv,
            *(k for k in bands if k in terms)]
    assert len(ours) > len(ref.parts.frame) + 100     # the data crosses limits
    f = ref.parts.frame
    if tv:   # the data switches inside follow-up, and before it starts (on throughout)
        start = f["exit_date"] - f["time"] + 1
        on = f[f"{tv[0]}@from"]
        off = f[tv[0]] == 0
        assert (off & (on > start) & (on <= f["exit_date"])).sum() > 20
        assert (off & (on < start)).sum() >= 5
    assert _rows(ours, cols) == _rows(theirs, cols)


def test_fitted_band_terms_agree(both_engines):
    plan, ref, dask = both_engines
    a = R.analyse(plan, ref.parts, ref.attrition)["models"]
    b = R.analyse(plan, dask.parts, dask.attrition)["models"]
    for model in ("poisson", "cox"):
        ta = {t["term"]: t for t in a[model]["terms"]}
        tb = {t["term"]: t for t in b[model]["terms"]}
        assert set(ta) == set(tb) and any(k.startswith("age_band") for k in ta)
        for k in ta:
            assert ta[k]["coef"] == pytest.approx(tb[k]["coef"], abs=1e-8), (model, k)
            assert ta[k]["se"] == pytest.approx(tb[k]["se"], abs=1e-8), (model, k)
            assert ta[k].get("persons") == tb[k].get("persons"), (model, k)
        assert a[model]["persons"] == b[model]["persons"]


def test_the_reference_engine_fits_its_own_split(both_engines, monkeypatch):
    """The reference engine's models go through reference_split, not the shared splitter."""
    plan, ref, _ = both_engines
    from hpcstudy.engines import reference_split
    from hpcstudy.timesplit import terms

    def shared(*a, **k):
        raise AssertionError("the shared splitter ran on the reference engine")

    monkeypatch.setattr(terms, "episodes", shared)
    seen = []
    real = reference_split.split_frame
    monkeypatch.setattr(reference_split, "split_frame",
                        lambda *a, **k: seen.append(1) or real(*a, **k))
    R.analyse(plan, ref.parts, ref.attrition)
    assert len(seen) == 2      # poisson and cox
