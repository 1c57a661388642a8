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
from hpcstudy.designs import reference_bootstrap as RB
from hpcstudy.engines import run as R
from hpcstudy.outputs.gate import _design_problems
from hpcstudy.study import StudyErrors, study_from_text

from .test_designs import BASE, compare


def test_replicate_weights_by_hand():
    # sets: exposed 10 with comparators 20 and 21 (1:2), 11 with 21 (reused), 12 with 22
    t, c = np.array([10, 10, 11, 12]), np.array([20, 21, 21, 22])
    share = np.array([0.5, 0.5, 1.0, 1.0])
    (part_pairs,) = B._split_pairs(1, t, c, share, None)
    rows = B._with_pairs({"pnr": np.array([10, 11, 12, 20, 21, 21, 22, 23]),
                          "arm": np.array([1, 1, 1, 0, 0, 0, 0, 0])}, *part_pairs)
    # every set drawn once (a CDF that always gives 1): the matching weights; 21 serves two
    # exposed persons (½ + 1, on both of its rows); 23 is in no set
    once = np.array([0.0, 2.0])
    assert list(B.replicate_weights(rows, 0, once)) == [1, 1, 1, 0.5, 1.5, 1.5, 1, 0]
    # a replicate: the sets' draws from the reference engine's own hash
    base = B.replicate_base(3, 7)
    n = RB.draws(3, 7, [10, 11, 12])
    want = [n[10], n[11], n[12], n[10] / 2, n[10] / 2 + n[11], n[10] / 2 + n[11], n[12], 0]
    assert list(B.replicate_weights(rows, base, B.POISSON_CDF)) == want


def test_the_draws_are_poisson_and_both_engines_hash_alike():
    pnrs = np.arange(1, 200_001, dtype=np.int64) * 7919
    got = B.set_draws(pnrs, B.replicate_base(5, 0), B.POISSON_CDF)
    assert list(got[:300]) == list(RB.draws(5, 0, pnrs[:300].tolist()))
    assert abs(got.mean() - 1) < 0.01 and abs(got.var() - 1) < 0.015
    assert abs((got == 0).mean() - np.exp(-1)) < 0.005 and got.max() <= 10
    # another replicate, another seed: other draws
    assert not np.array_equal(got, B.set_draws(pnrs, B.replicate_base(5, 1), B.POISSON_CDF))
    assert not np.array_equal(got, B.set_draws(pnrs, B.replicate_base(6, 0), B.POISSON_CDF))


def matched_sample(seed=1, sets=300, hr=0.6):
    """1:2 matched sets (comparators reused across sets), exponential times with the planted
    HR and an age effect, uniform censoring: Cox rows with each row's person."""
    rng = np.random.default_rng(seed)
    t_pnr = np.arange(1, sets + 1)
    c_pnr = 10_000 + np.arange(int(sets * 1.6))
    pairs_t = np.repeat(t_pnr, 2)
    pairs_c = np.concatenate([rng.choice(c_pnr, 2, replace=False) for _ in t_pnr])
    share = np.full(pairs_t.shape[0], 0.5)
    comps = np.unique(pairs_c)
    pnr = np.concatenate([t_pnr, comps])
    arm = np.concatenate([np.ones(sets, np.int64), np.zeros(comps.shape[0], np.int64)])
    age = rng.normal(0, 1, pnr.shape[0])
    rate = 0.1 * np.exp(np.log(hr) * arm + 0.3 * age)
    event_t, censor = rng.exponential(1 / rate), rng.uniform(0, 8, pnr.shape[0])
    rows = {"X": np.column_stack([arm.astype(float), age]),
            "time": np.minimum(event_t, censor), "event": (event_t <= censor).astype(float),
            "strata": np.zeros(pnr.shape[0], np.int64), "pnr": pnr, "arm": arm}
    return rows, (pairs_t, pairs_c, share)


def partitioned(rows, pairs, k, device="cpu"):
    """``rows`` in ``k`` partitions (by pnr), with their pairs, as bootstrap.cox_interval
    builds them."""
    from hpcstudy.models.partitions import LocalPartitions, map_each, on_device

    where = rows["pnr"] % k
    parts = LocalPartitions([{c: v[where == i] for c, v in rows.items()} for i in range(k)],
                            device)
    comparator_part = pairs[1] % k
    return map_each(on_device(parts), B._with_pairs,
                    B._split_pairs(k, *pairs, comparator_part))


def test_the_replicates_do_not_depend_on_the_partitions_or_the_device():
    rows, pairs = matched_sample()
    one, failed = B.estimates(partitioned(rows, pairs, 1), ["x", "age"], 3, 5)
    assert failed == 0 and len(set(one)) == 5
    three, _ = B.estimates(partitioned(rows, pairs, 3, "standin"), ["x", "age"], 3, 5)
    assert three == pytest.approx(one, rel=1e-10)


def test_a_replicate_equals_lifelines():
    """Replicate 0's fit against lifelines on the weights computed here, from the reference
    engine's draws."""
    rows, (t, c, share) = matched_sample(seed=2)
    ours, _ = B.estimates(partitioned(rows, (t, c, share), 2), ["x", "age"], 3, 1)
    n = RB.draws(3, 0, sorted(set(t.tolist())))
    per_c = pd.Series(n[t].to_numpy() * share).groupby(c).sum()
    w = np.where(rows["arm"] == 1, n.reindex(rows["pnr"]).fillna(0),
                 per_c.reindex(rows["pnr"]).fillna(0))
    df = pd.DataFrame({"time": rows["time"], "event": rows["event"], "x": rows["X"][:, 0],
                       "age": rows["X"][:, 1], "w": w})[w > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CoxPHFitter().fit(df, "time", "event", weights_col="w", robust=True,
                               fit_options={"precision": 1e-12, "step_size": 0.95,
                                            "max_steps": 200})
    assert ours[0] == pytest.approx(ref.params_["x"], rel=1e-6)


def test_the_poisson_bootstrap_agrees_with_a_plain_one():
    """The SE and interval against the plain bootstrap of the sets (n draws with replacement),
    on a sample with a planted HR of 0.6: the two estimate one sampling distribution."""
    from hpcstudy.models.cox import CoxPH

    rows, (t, c, share) = matched_sample(seed=4, sets=250)
    ours, failed = B.estimates(partitioned(rows, (t, c, share), 2), ["x", "age"], 9, 150)
    assert failed == 0
    rng = np.random.default_rng(0)
    sets = np.unique(t)
    plain = []
    for _ in range(150):
        n = pd.Series(np.bincount(rng.integers(0, sets.shape[0], sets.shape[0]),
                                  minlength=sets.shape[0]).astype(float), index=sets)
        per_c = pd.Series(n[t].to_numpy() * share).groupby(c).sum()
        w = np.where(rows["arm"] == 1, n.reindex(rows["pnr"]).fillna(0),
                     per_c.reindex(rows["pnr"]).fillna(0))
        keep = w > 0
        m = CoxPH(robust=False).fit(rows["X"][keep], rows["time"][keep], rows["event"][keep],
                                    weights=w[keep])
        plain.append(m.coef_[0])
    se, se_plain = np.std(ours, ddof=1), np.std(plain, ddof=1)
    assert 0.8 < se / se_plain < 1.25, (se, se_plain)
    lo, hi = np.percentile(ours, [2.5, 97.5])
    plo, phi = np.percentile(plain, [2.5, 97.5])
    assert abs(lo - plo) < 0.5 * se_plain and abs(hi - phi) < 0.5 * se_plain
    assert lo < np.log(0.6) < hi   # and the planted truth inside, on this sample
    fit = CoxPH().fit(rows["X"], rows["time"], rows["event"])
    assert 0.75 < se / fit.se_[0] < 1.35   # near the model's own error too


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
    # as published: without the values of persons' scores (outputs.publish.SCORE_VALUES)
    from hpcstudy.outputs.publish import SCORE_VALUES

    assert _design_problems({k: v for k, v in a["design"].items() if k not in SCORE_VALUES},
                            "d") == []


def test_deterministic_and_seeded(boot, small_data):
    again = run(spec(bootstrap=30), small_data, "dask")[2]["design"]["bootstrap"]
    assert again == boot["dask"][2]["design"]["bootstrap"]      # the same bits
    other = spec(bootstrap=30)
    other["seed"] = 4
    got = run(other, small_data, "dask")[2]["design"]["bootstrap"]
    assert got["se"] != again["se"]


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
