"""Table 1 after matching or weighting: weighted numbers against a hand computation from the
person table, the disclosure rules (small cells, and rows whose difference from Table 1 would
show a few dropped persons) checked against the tables, and the re-checker catching both."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from hpcstudy.engines import run as R
from hpcstudy.outputs import checks
from hpcstudy.study import study_from_text

from .test_designs import BASE

K = 5


def run(propensity, data):
    s = yaml.safe_load(yaml.safe_dump(BASE))
    s["propensity"] = {"covariates": ["age", "sex", "diabetes", "charlson"], **propensity}
    _, plan, ds = R.prepare(study_from_text(yaml.safe_dump(s)), data)
    built = R.person_table(plan, ds, "dask")
    tables, att, parts = built
    bare = yaml.safe_load(yaml.safe_dump(BASE))
    _, plan0, _ = R.prepare(study_from_text(yaml.safe_dump(bare)), data)
    t0, _, _ = R.person_table(plan0, ds, "dask")
    return (pd.DataFrame(R.combined(plan, tables)), pd.DataFrame(R.combined(plan0, t0)),
            R.analyse(plan, parts, att, design=built.design))


@pytest.fixture(scope="module")
def weighted(small_data):
    return run({"method": "weighting", "weighting": {"estimand": "ate"}}, small_data)


@pytest.fixture(scope="module")
def matched(small_data):
    return run({"method": "matching"}, small_data)


def rows_of(res):
    return {(r["variable"], r["arm"]): r for r in res["table1_adjusted"]}


def test_weighted_numbers_by_hand(weighted):
    t, _, res = weighted
    rows = rows_of(res)
    for arm, label in ((1, "statin"), (0, "non_users")):
        d = t[t.group == arm]
        w = d.weight.to_numpy()
        for var in ("age", "charlson"):
            x = d[var].to_numpy(float)
            m = (w * x).sum() / w.sum()
            sd = math.sqrt((w * (x - m) ** 2).sum() / (w.sum() - 1))
            r = rows[(var, label)]
            assert r["persons"] == len(d)
            assert r["weighted_persons"] == pytest.approx(w.sum(), rel=1e-12)
            assert r["mean"] == pytest.approx(m, rel=1e-10)
            assert r["sd"] == pytest.approx(sd, rel=1e-10)
        x = d.sex.to_numpy(float)
        r = rows[("sex", label)]
        if not r.get("suppressed"):
            assert r["persons"] == int(x.sum())
            assert r["weighted_persons"] == pytest.approx((w * x).sum(), rel=1e-12)
            assert r["percent"] == pytest.approx(100 * (w * x).sum() / w.sum(), rel=1e-10)
    # weighting keeps everyone: the persons are Table 1's
    t1 = {(r["variable"], r["arm"]): r["persons"] for r in res["table1"]}
    assert all(r["persons"] == t1[k] for k, r in rows.items() if r["persons"] is not None)


def test_withheld_where_a_few_dropped_persons_would_show(matched):
    t, t0, res = matched
    shown = by_drop = 0
    for (var, label), r in rows_of(res).items():
        arm = 1 if label == "statin" else 0
        a, b = t[t.group == arm][var], t0[t0.group == arm][var]
        flag = set(np.unique(b)) <= {0, 1}
        if flag:
            groups = [(a == 1).sum(), (a == 0).sum()]
            dropped = [(b == 1).sum() - groups[0], (b == 0).sum() - groups[1]]
        else:
            groups, dropped = [len(a)], [len(b) - len(a)]
        hide = min(groups) < K or any(0 < x < K for x in dropped)
        if hide:   # withheld by the rules; other rows may go too (secondary, checked below)
            assert r.get("suppressed") and r["persons"] is None, (var, label)
        elif not r.get("suppressed"):
            assert r["persons"] == (groups[0] if flag else len(a)), (var, label)
            shown += 1
        by_drop += hide and min(groups) >= K
    assert shown and by_drop, "the test needs rows shown and rows withheld for the difference"
    # no withheld row follows from the totals the re-checker assumes (secondary suppression)
    assert checks.check_kind("results", res, K, "r") == []


def test_the_checker_catches_a_small_difference_and_derived_values(matched):
    _, _, res = matched
    doc = {k: res[k] for k in ("table1", "table1_adjusted")}
    doc = yaml.safe_load(yaml.safe_dump(doc))
    row = next(r for r in doc["table1_adjusted"] if r["persons"] is not None and
               r["variable"] == "age")
    before = next(r for r in doc["table1"] if (r["variable"], r["arm"]) ==
                  ("age", row["arm"]))
    row["persons"] = before["persons"] - 2
    found = checks.check_kind("results", doc, K, "r")
    assert any("2 persons fewer than in table1" in p for p in found)
    withheld = {"variable": "sex", "level": "-", "arm": "statin", "persons": None,
                "weighted_persons": 3.5, "percent": None, "mean": None, "sd": None,
                "suppressed": True}
    found = checks.check_kind("table1_adjusted", [withheld], K, "t")
    assert any("'weighted_persons': shown for a withheld row" in p for p in found)


def test_secondary_suppression_leaves_nothing_determined():
    from hpcstudy.designs.disclosure import TABLE1_ADJUSTED, secondary
    from hpcstudy.outputs.protection import determined, margin_groups

    rng = np.random.default_rng(3)
    for _ in range(30):
        rows = [{"variable": v, "level": lv, "arm": a, "persons": int(rng.integers(0, 60)),
                 "weighted_persons": 1.0, "percent": 1.0, "mean": None, "sd": None}
                for v, lv in (("age", "-"), ("sex", "-"), ("region", "1081"),
                              ("region", "1082")) for a in ("x", "y")]
        for r in rows:
            if r["persons"] < K:
                r.update(persons=None, weighted_persons=None, percent=None, suppressed=True)
        out = secondary(rows, TABLE1_ADJUSTED)
        hidden = [r.get("suppressed") is True for r in out]
        assert all(h for r, h in zip(rows, hidden, strict=True) if r.get("suppressed"))
        assert determined(hidden, margin_groups(out, ("variable", "level", "arm"))) == [] \
            or all(hidden)
        assert all(r["persons"] is None and r["weighted_persons"] is None
                   for r, h in zip(out, hidden, strict=True) if h)
