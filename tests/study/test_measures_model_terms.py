"""age_band and time_band as model terms (docs/time.md): Poisson and Cox fit counting-process
rows split where a person changes band, and equal statsmodels' GLM and lifelines'
CoxTimeVaryingFitter on pieces built here by hand from the per-person table; the counts behind
each band's term are persons, not pieces."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

STUDY = """
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
AGES, DAYS = [30, 60, 75, 150], [0, 365, 1461]


def pieces(t: pd.DataFrame) -> pd.DataFrame:
    """Each person's follow-up [start, exit] cut where attained age reaches a limit (day
    birth + ceil(a × 365.25)) or days since index reach one; the outcome on the last piece."""
    rows = []
    for i, r in enumerate(t.itertuples()):
        start, stop = r.exit_date - r.time + 1, r.exit_date + 1
        birth = round(r.index_date - r.age * 365.25)
        cuts = {birth + math.ceil(a * 365.25) for a in AGES} | {r.index_date + d for d in DAYS}
        bounds = [start, *sorted(c for c in cuts if start < c < stop), stop]
        for a, b in zip(bounds, bounds[1:], strict=False):
            age = sum(a >= birth + math.ceil(x * 365.25) for x in AGES) - 1
            since = sum(a - r.index_date >= d for d in DAYS) - 1
            rows.append({"id": i, "pnr": r.pnr, "start": a - start, "stop": b - start,
                         "sex": r.sex, "age_band": age, "time_band": since,
                         "E": int(r.event and b == stop)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted(small_data):
    _, plan, ds = R.prepare(study_from_text(STUDY), small_data)
    tables, attrition, parts = R.person_table(plan, ds, "dask")
    res = R.analyse(plan, parts, attrition)
    return res, pieces(pd.DataFrame(R.combined(plan, tables)))


def test_poisson_with_bands_equals_statsmodels_on_the_split_rows(fitted):
    import statsmodels.api as sm

    res, long = fitted
    X = pd.get_dummies(long[["age_band", "time_band"]].astype(str), drop_first=True,
                       dtype=float)
    X.insert(0, "sex", long["sex"].astype(float))
    X = sm.add_constant(X)
    glm = sm.GLM(long["E"], X, family=sm.families.Poisson(),
                 offset=np.log((long["stop"] - long["start"]) / 365.25)).fit(tol=1e-12)
    terms = {t["term"]: t for t in res["models"]["poisson"]["terms"]}
    names = {"intercept": "const", "sex": "sex", "age_band 60-75": "age_band_1",
             "age_band 75-150": "age_band_2", "time_band 365-1460": "time_band_1",
             "time_band 1461+": "time_band_2"}
    assert set(terms) == set(names)
    for ours, theirs in names.items():
        assert terms[ours]["coef"] == pytest.approx(glm.params[theirs], abs=1e-6)
        assert terms[ours]["se"] == pytest.approx(glm.bse[theirs], abs=1e-6)
    # the counts behind a band's term: persons with time in it (each once) and its events
    band = long[long["age_band"] == 1]
    t = terms["age_band 60-75"]
    assert (t["persons"], t["events"]) == (band["pnr"].nunique(), band["E"].sum())
    assert t["persons_other"] == long[long["age_band"] != 1]["pnr"].nunique()
    assert res["models"]["poisson"]["persons"] == long["pnr"].nunique()
    assert (long.groupby("pnr")["age_band"].nunique() > 1).sum() > 20   # persons cross bands


def test_cox_with_age_bands_equals_lifelines_time_varying(fitted):
    from lifelines import CoxTimeVaryingFitter

    res, long = fitted
    d = pd.get_dummies(long["age_band"].astype(str), prefix="a", drop_first=True, dtype=float)
    df = pd.concat([long[["id", "start", "stop", "E", "sex"]], d], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctv = CoxTimeVaryingFitter().fit(df, id_col="id", event_col="E", start_col="start",
                                         stop_col="stop")
    terms = {t["term"]: t for t in res["models"]["cox"]["terms"]}
    for ours, theirs in (("sex", "sex"), ("age_band 60-75", "a_1"), ("age_band 75-150", "a_2")):
        assert terms[ours]["coef"] == pytest.approx(ctv.params_[theirs], abs=1e-6)
        assert terms[ours]["se"] == pytest.approx(ctv.standard_errors_[theirs], abs=1e-6)


def test_both_engines_fit_the_same_bands(small_data):
    from .test_engines_agree import compare

    _, plan, ds = R.prepare(study_from_text(STUDY), small_data)
    out = []
    for engine in ("reference", "dask"):
        _, attrition, parts = R.person_table(plan, ds, engine)
        out.append(R.analyse(plan, parts, attrition)["models"])
    compare(out[0], out[1])


def test_the_docs_example_is_this_study():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "time.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)
                 if b.startswith("# docs/time.md: the model terms example"))
    assert block.split("\n", 1)[1].replace("name: bands", "name: terms").strip() == \
        STUDY.strip()


def test_the_python_api_hands_back_a_model_of_bands(small_data):
    from hpcstudy import api
    from hpcstudy.errors import UserError

    result = api.run(study_from_text(STUDY), small_data, engine="reference")
    assert "age_band 60-75" in result.models["poisson"].terms
    assert "age_band 60-75" in result.models["cox"].terms
    with pytest.raises(UserError, match="split follow-up"):
        _ = result.models["cox"].baseline_hazard
