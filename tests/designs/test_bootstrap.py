"""The bootstrap of a matched analysis: replicate weights by hand, a replicate's fit against
lifelines, both engines giving the same interval, the same bytes on a second run, another
seed giving other replicates, and bad settings refused."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import yaml
from lifelines import CoxPHFitter

from hpcstudy.designs import bootstrap as B
from hpcstudy.engines import run as R
from hpcstudy.outputs.gate import _design_problems
from hpcstudy.study import StudyErrors, study_from_text

from .test_designs import BASE, compare


def test_replicate_weights_by_hand():
    # sets: exposed 10 with comparators 20 and 21 (1:2), 11 with 21 (reused), 12 with 22
    t = np.array([10, 10, 11, 12])
    c = np.array([20, 21, 21, 22])
    share = np.array([0.5, 0.5, 1.0, 1.0])
    sets, of = B.sets_of(t, c)
    assert list(sets) == [10, 11, 12] and list(of) == [0, 0, 1, 2]
    keys, w = B.replicate_weights(np.array([2, 0, 1]), sets, of, c, share)
    # exposed (pnr·2+1): drawn 2, 0, 1 times; 20: 2·½; 21: 2·½ + 0·1; 22: 1·1
    assert list(keys) == [21, 23, 25, 40, 42, 44]
    assert list(w) == [2.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    # every set drawn once: the matching weights (21 serves two exposed persons: ½ + 1)
    _, w1 = B.replicate_weights(np.ones(3, np.int64), sets, of, c, share)
    assert list(w1) == [1.0, 1.0, 1.0, 0.5, 1.5, 1.0]


def spec(**matching):
    s = yaml.safe_load(yaml.safe_dump(BASE))
    s["propensity"] = {"covariates": ["age", "sex", "diabetes"], "method": "matching",
                       "matching": {"ratio": 2, "caliper": 0.5, **matching}}
    return s


def run(s, data, engine):
    _, plan, ds = R.prepare(study_from_text(yaml.safe_dump(s)), data)
    built = R.person_table(plan, ds, engine)
    tables, att, parts = built
    return plan, tables, R.analyse(plan, parts, att, design=built.design)


@pytest.fixture(scope="module")
def boot(small_data):
    return {e: run(spec(bootstrap=30), small_data, e) for e in ("dask", "reference")}


def test_engines_agree_and_the_interval_is_near_the_robust_one(boot):
    (_, _, a), (_, _, b) = boot["dask"], boot["reference"]
    compare(a["design"], b["design"])
    bs = a["design"]["bootstrap"]
    assert bs["replicates"] == 30 and bs["failed"] == 0 and bs["term"] == "statin"
    term = a["models"]["cox"]["terms"][0]
    assert term["term"] == "statin"
    # the same model, two ways of its error: the bootstrap SE within a factor of the robust
    assert 0.5 < bs["se"] / term["se"] < 2
    assert bs["lower_95"] < term["HR"] < bs["upper_95"]
    assert _design_problems(a["design"], "d") == []


def test_deterministic_and_seeded(boot, small_data):
    again = run(spec(bootstrap=30), small_data, "dask")[2]["design"]["bootstrap"]
    assert again == boot["dask"][2]["design"]["bootstrap"]      # the same bits
    other = spec(bootstrap=30)
    other["seed"] = 4
    got = run(other, small_data, "dask")[2]["design"]["bootstrap"]
    assert got["se"] != again["se"]


def test_a_replicate_equals_lifelines(boot):
    plan, tables, _ = boot["dask"]
    rows, keys, names = B._model_rows(plan, list(tables))
    t = pd.DataFrame(R.combined(plan, tables))
    # a replicate of the matched persons: each person drawn 0-3 times, by weight
    rng = np.random.default_rng(5)
    pk = np.sort(keys)
    pw = rng.integers(0, 4, pk.shape[0]).astype(float) * rng.choice([0.5, 1.0], pk.shape[0])
    ours = B.replicate_fit(rows, keys, names, pk, pw)
    t["w"] = pw[np.searchsorted(pk, t.pnr * 2 + t.group)]
    t = t[t.w > 0]
    df = pd.DataFrame({"time": t.time, "event": t.event, "statin": t.group, "age": t.age,
                       "w": t.w})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CoxPHFitter().fit(df, "time", "event", weights_col="w", robust=True,
                               fit_options={"precision": 1e-12, "step_size": 0.95,
                                            "max_steps": 200})
    assert names == ["statin", "age"]
    assert ours == pytest.approx(ref.params_["statin"], rel=1e-6)


@pytest.mark.parametrize("change,message", [
    ({"bootstrap": 5}, "propensity.matching.bootstrap: 5 replicates are too few"),
    ({"bootstrap": -1}, "propensity.matching.bootstrap: must be a whole number"),
    ({"bootstrap": 100, "no_cox": True}, "the study has no analyses.cox"),
])
def test_bad_bootstrap_settings(change, message):
    s = spec(**{k: v for k, v in change.items() if k != "no_cox"})
    if change.get("no_cox"):
        s["analyses"].pop("cox")
    with pytest.raises(StudyErrors) as e:
        study_from_text(yaml.safe_dump(s), "s.yaml")
    line = next(x for x in e.value.lines() if message in x)
    assert line.startswith("s.yaml:") and " — " in line


def test_the_gate_refuses_an_edited_bootstrap_section():
    d = {"method": "matching", "covariates": ["age"], "warnings": [],
         "bootstrap": {"replicates": 30, "failed": 0, "term": "statin", "se": 0.2,
                       "lower_95": 0.5, "upper_95": 0.9, "persons": 17}}
    assert any("bootstrap: fields ['persons']" in p for p in _design_problems(d, "d"))
    d["bootstrap"].pop("persons")
    d["bootstrap"]["replicates"] = "30"
    assert any("bootstrap.replicates: not a" in p for p in _design_problems(d, "d"))
