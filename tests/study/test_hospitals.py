"""Hospital comparisons: the index contact's attributes on both engines (spec table), and the
hospitals table against an independent computation (statsmodels' logistic model, chi-square
intervals, Poisson funnel limits written out here); rank identification; the re-checker."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLES, run_cli
from scipy.stats import chi2, poisson

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

from .builder import Registers


def d(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


CONTACTS = """
name: contacts
codelists:
  mi: {system: icd10, codes: [I21*]}
index:
  first_event: {codelist: mi, patient_type: [inpatient, emergency]}
  between: [2010-01-01, 2020-12-31]
covariates:
  - {name: hospital, index_contact: c_sgh}
  - {name: patient_type, index_contact: c_pattype}
outcome: {name: death, death: true, window: [0, 30]}
"""


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_attributes_of_the_index_contact(engine, tmp_path):
    r = Registers()
    r.person(1, "M", "1950-01-01").contact(1, "2012-01-01", "DI219", sgh=8001)
    r.contact(1, "2013-01-01", "DI219", sgh=7005)                 # a later MI elsewhere
    r.person(2, "F", "1950-01-01").contact(2, "2012-05-05", "DI219", pattype=2, sgh=4202)
    r.contact(2, "2012-06-01", "DI210", pattype=3, sgh=5501)      # outpatient first: skipped
    r.person(3, "M", "1950-01-01").contact(3, "2014-02-02", "DZ039", sgh=1330)
    r.contact(3, "2014-02-02", "DI211", sgh=1516)                 # same day: the MI contact
    r.person(4, "F", "1950-01-01").contact(4, "2009-01-01", "DI219", sgh=2000)
    r.contact(4, "2011-01-01", "DI219", sgh=3007)                 # first in the window
    data = r.write(tmp_path / "d", partitions=2)
    _, plan, ds = R.prepare(study_from_text(CONTACTS), data)
    tables, _, _ = R.person_table(plan, ds, engine)
    t = R.combined(plan, tables)
    got = {int(p): (int(t["hospital"][i]), int(t["patient_type"][i]))
           for i, p in enumerate(t["pnr"])}
    assert got == {1: (8001, 0), 2: (5501, 3), 3: (1516, 0), 4: (3007, 0)}


def spiegelhalter(expected, p):
    """Funnel limits of O/E: the Poisson quantile of the expected count, interpolated."""
    out = []
    for q in ((1 - p) / 2, 1 - (1 - p) / 2):
        r = poisson.ppf(q, expected)
        a = (poisson.cdf(r, expected) - q) / poisson.pmf(r, expected)
        out.append(max(r - a, 0) / expected)
    return out


@pytest.fixture(scope="module")
def hospital_run(medium_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hosp") / "out"
    r = run_cli("run", EXAMPLES / "mi_hospitals.yaml", "--data", medium_data, "--out", out,
                "--engine", "reference")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_the_hospitals_table_equals_an_independent_computation(hospital_run, medium_data):
    import statsmodels.api as sm

    out, stdout = hospital_run
    person = pd.read_parquet(out / "private" / "person_table.parquet")
    X = sm.add_constant(person[["age", "sex", "charlson"]].astype(float))
    fit = sm.Logit(person["event"].astype(float), X).fit(disp=0, tol=1e-12)
    person["p"] = fit.predict(X)
    by = person.groupby("hospital").agg(persons=("pnr", "size"), events=("event", "sum"),
                                        expected=("p", "sum"))
    exported = json.loads((out / "results.json").read_text())["hospitals"]
    assert len(exported) == len(by) >= 15
    assert 0 < sum(r["persons"] is None for r in exported) < len(exported)  # some suppressed
    # every row before disclosure, on the other engine
    _, plan, ds = R.prepare(EXAMPLES / "mi_hospitals.yaml", medium_data)
    tables, attrition, parts = R.person_table(plan, ds, "dask")
    res = R.analyse(plan, parts, attrition)["hospitals"]
    for r in res:
        want = by.loc[r["hospital"]]
        assert (r["persons"], r["events"]) == (want["persons"], want["events"])
        assert r["expected"] == pytest.approx(want["expected"], rel=1e-6)
        assert r["oe"] == pytest.approx(want["events"] / want["expected"], rel=1e-6)
        o, e = r["events"], want["expected"]
        lo = chi2.ppf(0.025, 2 * o) / 2 / e if o else 0.0
        assert (r["lower_95"], r["upper_95"]) == pytest.approx(
            (lo, chi2.ppf(0.975, 2 * o + 2) / 2 / e), rel=1e-6)
        assert [r["limit95_low"], r["limit95_high"]] == pytest.approx(spiegelhalter(e, 0.95))
        assert [r["limit998_low"], r["limit998_high"]] == pytest.approx(
            spiegelhalter(e, 0.998))
    # all hospitals together: observed = expected (the model's intercept sees to it)
    assert by["expected"].sum() == pytest.approx(by["events"].sum(), rel=1e-6)
    assert "hospitals:" in stdout and "per 1000 person-years" not in stdout


def test_the_outputs_declare_and_recheck_the_hospitals_table(hospital_run, tmp_path):
    import shutil

    out, _ = hospital_run
    manifest = json.loads((out / "outputs.json").read_text())
    kinds = {f["path"]: f["kind"] for f in manifest["files"]}
    assert kinds["tables/hospitals.csv"] == "hospitals"
    assert run_cli("check-outputs", out).returncode == 0
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    res = json.loads((bad / "results.json").read_text())
    row = next(r for r in res["hospitals"] if r["persons"] is not None)
    row["events"], row["persons"] = 2, 3
    (bad / "results.json").write_text(json.dumps(res))
    r = run_cli("check-outputs", bad)
    assert r.returncode == 1 and "results.json:hospitals: row" in r.stderr, r.stderr


def test_hospitals_identified_by_rank(medium_data, tmp_path):
    text = (EXAMPLES / "mi_hospitals.yaml").read_text().replace(
        "adjust: [age, sex, charlson]}", "adjust: [age, sex, charlson], identify: rank}")
    _, plan, ds = R.prepare(study_from_text(text), medium_data)
    tables, attrition, parts = R.person_table(plan, ds, "reference")
    rows = R.analyse(plan, parts, attrition)["hospitals"]
    assert [r["hospital"] for r in rows] == list(range(1, len(rows) + 1))
    oe = [r["oe"] for r in rows]
    assert oe == sorted(oe)
    codes = {int(x) for x in R.combined(plan, tables)["hospital"]}
    assert not {r["hospital"] for r in rows} & codes    # no code is shown


def test_the_docs_example_is_the_example():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "measures.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)
                 if b.startswith("# docs/measures.md: the hospitals example"))
    example = (EXAMPLES / "mi_hospitals.yaml").read_text()
    assert block.split("\n", 1)[1].strip() in example
