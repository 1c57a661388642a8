"""Comparative designs end to end: the score against scikit-learn, the engines agreeing on every
design, SMDs against a hand computation, people in both arms, and bad designs refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli
from sklearn.linear_model import LogisticRegression

from hpcstudy.designs import propensity as P
from hpcstudy.engines import run as R
from hpcstudy.models.partitions import LocalPartitions
from hpcstudy.study import study_from_text


def compare(x, y, path="results", rel=1e-8):
    """Equal structure, equal values; floats to ``rel``."""
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            compare(x[k], y[k], f"{path}.{k}", rel)
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            compare(u, v, f"{path}[{i}]", rel)
    elif isinstance(x, float):
        # overlap weights balance the score's covariates exactly: SMDs of ~1e-16 vs 1e-11; a
        # weighted model's near-zero coefficient differs by the engines' summation order (~4e-11)
        tiny = 1e-9 if "smd" in path or ".models." in path else 1e-12
        assert x == pytest.approx(y, rel=rel, abs=tiny, nan_ok=True), path
    else:
        assert x == y, path

BASE = {
    "name": "ps_test", "seed": 3,
    "codelists": {"statins": {"system": "atc", "codes": ["C10AA*"]},
                  "ras": {"system": "atc", "codes": ["C09*"]},
                  "mi": {"system": "icd10", "codes": ["I21*"]},
                  "diabetes": {"system": "icd10", "codes": ["E11*"]}},
    "population": {"age": [40, 90]},
    "exposure": {"name": "statin", "first_event": {"codelist": "statins"},
                 "between": ["2005-01-01", "2020-12-31"], "washout_days": 365},
    "comparator": {"non_users": True},
    "covariates": ["age", "sex", "region",
                   {"name": "diabetes", "codelist": "diabetes", "window": [None, 0]},
                   "charlson"],
    "outcome": {"name": "mi", "codelist": "mi"},
    "analyses": {"cox": {"adjust": ["age"]}, "poisson": True},
}


def study(**changes):
    spec = yaml.safe_load(yaml.safe_dump(BASE))
    for k, v in changes.items():
        if v is None:
            spec.pop(k, None)
        else:
            spec[k] = v
    return study_from_text(yaml.safe_dump(spec))


def both_engines(s, data):
    _, plan, ds = R.prepare(s, data)
    out = {}
    for eng in ("reference", "dask"):
        built = R.person_table(plan, ds, eng)
        tables, att, parts = built
        out[eng] = (R.combined(plan, tables), att,
                    R.analyse(plan, parts, att, design=built.design), plan)
    return out


def test_score_equals_scikit_learn(small_data):
    s = study(propensity={"covariates": ["age", "sex", "region", "diabetes", "charlson"]})
    _, plan, ds = R.prepare(s, small_data)
    _, bare, _ = R.prepare(study(), small_data)   # the cohort before the design
    tables, _, _ = R.person_table(bare, ds, "dask")
    parts = LocalPartitions(tables)
    names, spec, coef = P.fit(plan, parts, "t")
    df = pd.DataFrame(R.combined(plan, tables))
    X = np.column_stack([df.age, df.sex] + [(df.region == r).astype(float)
                                            for r in sorted(df.region.unique())[1:]] +
                        [df.diabetes, df.charlson])
    ref = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=500).fit(
        X, (df.group == 1).astype(int))
    expect = np.concatenate([ref.intercept_, ref.coef_[0]])
    np.testing.assert_allclose(coef, expect, rtol=1e-6, atol=1e-8)
    assert names[:2] == ["age", "sex"] and names[2].startswith("region=")


DESIGNS = {
    "match_2_replace": {"method": "matching", "matching": {"ratio": 2, "caliper": 0.5,
                                                           "replace": True}},
    "match_3_trim": {"method": "matching", "matching": {"ratio": 3, "caliper": None},
                     "trim": True},
    "ate_stable_trunc": {"method": "weighting", "weighting": {"estimand": "ate",
                                                              "stabilised": True,
                                                              "truncate": [1, 99]}},
    "att": {"method": "weighting", "weighting": {"estimand": "att", "stabilised": True}},
    "overlap": {"method": "weighting", "weighting": {"estimand": "overlap"}, "bins": 10},
    "strata": {"method": "stratification", "stratification": {"strata": 4}},
}


# two designs in the quick suite (the hardest matching, the weights with every option); the
# others with the slow tests
FAST = ("match_3_trim", "ate_stable_trunc")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(DESIGNS)])
def test_engines_agree_on_each_design(name, small_data):
    s = study(propensity={"covariates": ["age", "sex", "diabetes", "charlson"],
                          **DESIGNS[name]})
    got = both_engines(s, small_data)
    (ta, aa, ra, _), (tb, ab, rb, _) = got["reference"], got["dask"]
    assert aa == ab
    assert set(ta) == set(tb) and "ps" in ta
    for k in ta:   # identical matched sets and weights (and scores to 1e-8)
        if k in ("ps", "weight"):
            np.testing.assert_allclose(ta[k], tb[k], rtol=1e-8)
        else:
            assert np.array_equal(ta[k], tb[k]), k
    compare(ra, rb)
    assert {"table1", "balance", "preference", "design"} <= set(ra)
    if name != "none":
        assert ra["models"]["cox"]["terms"][0]["se"] > 0
        assert "weight" in ta


def test_matching_attrition_and_robust_errors(small_data):
    s = study(propensity={"covariates": ["age", "sex", "diabetes"], "method": "matching"})
    table, att, res, plan = both_engines(s, small_data)["dask"]
    steps = {g: dict(a) for g, a in att.items()}
    n1 = steps["statin"]["matched on the propensity score"]
    n0 = steps["non_users"]["matched on the propensity score"]
    assert n1 == n0 == int((table["group"] == 1).sum()) > 0   # 1:1 without replacement
    # each matched pair within the caliper: 0.2 SD of the logit over the cohort before matching
    d = res["design"]
    assert d["caliper_logit"] > 0 and d["estimand"] == "att"
    assert set(np.unique(table["weight"])) == {1.0}


def test_smds_equal_a_hand_computation(small_data):
    s = study(propensity={"covariates": ["age", "diabetes"], "method": "weighting",
                          "weighting": {"estimand": "ate"}})
    _, plan, ds = R.prepare(s, small_data)
    built = R.person_table(plan, ds, "dask")
    tables, att, parts = built
    res = R.analyse(plan, parts, att, design=built.design)
    # the cohort before the design: the same study without propensity
    bare = study()
    _, plan0, _ = R.prepare(bare, small_data)
    t0, _, _ = R.person_table(plan0, ds, "dask")
    before = pd.DataFrame(R.combined(plan0, t0))
    after = pd.DataFrame(R.combined(plan, tables))
    rows = {r["variable"]: r for r in res["balance"]}
    for var, flag in (("age", False), ("diabetes", True)):
        a, b = before[before.group == 1][var], before[before.group == 0][var]
        if flag:
            va, vb = a.mean() * (1 - a.mean()), b.mean() * (1 - b.mean())
        else:
            va, vb = a.var(ddof=1), b.var(ddof=1)
        den = np.sqrt((va + vb) / 2)
        assert rows[var]["smd_before"] == pytest.approx((a.mean() - b.mean()) / den, rel=1e-9)
        e, c = after[after.group == 1], after[after.group == 0]
        wa = np.average(e[var], weights=e.weight)
        wb = np.average(c[var], weights=c.weight)
        assert rows[var]["smd_after"] == pytest.approx((wa - wb) / den, rel=1e-9)
        # ATE weights: 1/ps and 1/(1 − ps)
        np.testing.assert_allclose(e.weight, 1 / e.ps)
        np.testing.assert_allclose(c.weight, 1 / (1 - c.ps))
    assert abs(rows["age"]["smd_after"]) < abs(rows["age"]["smd_before"])


ACTIVE = {"active": {"first_event": {"codelist": "ras"}, "between": ["2005-01-01",
                                                                   "2020-12-31"],
                     "washout_days": 365}}


@pytest.fixture(scope="module")
def arms_runs(small_data):
    """Both engines on the active comparison, in each both_arms mode."""
    return {mode: both_engines(study(comparator={**ACTIVE, "both_arms": mode}), small_data)
            for mode in ("remove", "first", "keep")}


@pytest.mark.parametrize("mode", ["remove", "first", "keep"])
def test_people_in_both_arms(mode, arms_runs):
    got = arms_runs[mode]
    (ta, aa, ra, _), (tb, ab, rb, _) = got["reference"], got["dask"]
    assert aa == ab
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    compare(ra, rb)
    kp = pd.DataFrame(arms_runs["keep"]["dask"][0])
    twice = set(kp[kp.group == 1].pnr) & set(kp[kp.group == 0].pnr)
    assert twice, "the test needs persons in both arms"
    t = pd.DataFrame(ta)
    if mode == "keep":
        assert "not also in the other arm" not in dict(aa["statin"])
        assert set(t[t.group == 1].pnr) & set(t[t.group == 0].pnr) == twice
    elif mode == "remove":
        assert not set(t[t.group == 1].pnr) & set(t[t.group == 0].pnr)
        steps = aa["statin"]
        assert steps[-1][0] == "not also in the other arm"
        assert steps[-2][1] - steps[-1][1] == len(twice)
    else:
        assert not set(t[t.group == 1].pnr) & set(t[t.group == 0].pnr)
        firsts = kp[kp.pnr.isin(twice)].pivot(index="pnr", columns="group",
                                              values="index_date")
        want1 = set(firsts.index[firsts[1] < firsts[0]])
        assert set(t[(t.group == 1) & t.pnr.isin(twice)].pnr) == want1


def test_keep_gives_person_clustered_errors(small_data):
    from hpcstudy.models import CoxPH

    s = study(comparator={**ACTIVE, "both_arms": "keep"})
    _, plan, ds = R.prepare(s, small_data)
    tables, att, parts = R.person_table(plan, ds, "dask")
    fitted: dict = {}
    R.analyse(plan, parts, att, fitted)
    m = fitted["cox"]
    assert m.robust_ and m.n_clusters_ < m.n_obs_
    df = pd.DataFrame(R.combined(plan, tables))
    ref = CoxPH(robust=True).fit(np.column_stack([df.group, df.age]), df.time, df.event,
                                 cluster=df.pnr)
    np.testing.assert_allclose(m.se_, ref.se_, rtol=1e-8)


def write(tmp_path, **changes):
    s = study(**changes)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(s.to_dict()))
    return path


@pytest.mark.parametrize("engine,changes,words", [
    ("dask", {"propensity": {"covariates": ["statin_before"]},
      "covariates": ["age", {"name": "statin_before", "codelist": "statins",
                             "window": [None, 0]}]},
     "propensity score model"),
    ("reference", {"propensity": {"covariates": ["age", "sex", "charlson"],
                                  "matching": {"caliper": 1e-9}},
      "disclosure": {"min_cell": 100}}, "fewer than min_cell (100)"),
])
def test_bad_designs_are_one_line_exit_2(changes, words, engine, tmp_path, small_data):
    path = write(tmp_path, **changes)
    r = run_cli("run", path, "--data", small_data, "--out", tmp_path / "out", "--quiet",
                "--engine", engine)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if not x.startswith("hpcstudy: warning:")]
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error:") and words in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec,words", [
    ({"propensity": {"covariates": ["age"], "method": "matchng"}}, "did you mean 'matching'"),
    ({"propensity": {"covariates": ["agee"]}}, "'agee' is used but not defined"),
    ({"propensity": {"covariates": ["age"], "method": "weighting",
                     "matching": {"ratio": 2}}}, "is set but method is weighting"),
    ({"propensity": {"covariates": ["age"], "matching": {"ratio": 0}}}, "ratio"),
    ({"propensity": {"covariates": ["age"], "weighting": {"truncate": [99, 1]}}}, "truncate"),
    ({"propensity": {"covariates": ["age"], "matching": {"calliper": 0.1}}},
     "did you mean 'caliper'"),
    ({"comparator": {"non_users": True, "both_arms": "keep"}}, "only to an active"),
    ({"comparator": {**ACTIVE, "both_arms": "both"}}, "remove | first | keep"),
])
def test_bad_design_keys_are_named(spec, words, tmp_path):
    text = yaml.safe_dump({**BASE, **spec})
    path = tmp_path / "s.yaml"
    path.write_text(text)
    r = run_cli("check", path)
    assert r.returncode == 2
    assert words in r.stderr and "s.yaml:" in r.stderr


def test_single_cohort_with_propensity_is_refused(tmp_path):
    spec = {k: v for k, v in BASE.items() if k not in ("exposure", "comparator")}
    spec["index"] = {"date": "2010-01-01"}
    spec["propensity"] = {"covariates": ["age"]}
    spec["analyses"] = {"poisson": True}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = run_cli("check", path)
    assert r.returncode == 2 and "has no comparator" in r.stderr
