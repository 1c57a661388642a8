"""Logistic, Poisson, Kaplan–Meier and Aalen–Johansen against scikit-learn, statsmodels and
lifelines, and across partitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import AalenJohansenFitter, KaplanMeierFitter
from sklearn.linear_model import LogisticRegression

from hpcstudy.models import (
    AalenJohansen,
    DaskPartitions,
    KaplanMeier,
    LocalPartitions,
    Logistic,
    ModelError,
    Poisson,
)

RTOL = 1e-6


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.maximum(np.abs(b), 1e-12))


@pytest.fixture(scope="module")
def binary():
    rng = np.random.default_rng(0)
    n = 5000
    X = rng.normal(size=(n, 4))
    X[:, 3] = rng.random(n) < 0.3
    eta = X @ [0.5, -1.0, 0.2, 0.8] - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    w = rng.integers(1, 3, n).astype(float)
    return X, y, w


def test_logistic_matches_sklearn_and_statsmodels(binary):
    X, y, w = binary
    m = Logistic().fit(X, y)
    sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)
    assert rel(m.coef_, np.r_[sk.intercept_, sk.coef_[0]]) < RTOL
    g = sm.GLM(y, sm.add_constant(X), family=sm.families.Binomial()).fit(tol=1e-13)
    assert rel(m.coef_, g.params) < RTOL and rel(m.se_, g.bse) < RTOL
    assert m.loglik_ == pytest.approx(g.llf, rel=1e-10)
    assert m.summary[1]["OR"] == pytest.approx(np.exp(m.coef_[1]))


def test_logistic_weights_match_statsmodels_freq_weights(binary):
    X, y, w = binary
    # frequency weights: model-based errors asked for (weights default to robust errors)
    m = Logistic(robust=False).fit(X, y, weights=w)
    g = sm.GLM(y, sm.add_constant(X), family=sm.families.Binomial(), freq_weights=w).fit(
        tol=1e-13)
    assert rel(m.coef_, g.params) < RTOL and rel(m.se_, g.bse) < RTOL


def test_logistic_separation_is_an_error():
    x = np.r_[np.zeros(50), np.ones(50)]
    y = x.copy()
    with pytest.raises(ModelError, match="grow without bound"):
        Logistic().fit(np.c_[x, np.random.default_rng(1).normal(size=100)], y, names=["sep", "z"])


def test_logistic_needs_both_outcomes():
    with pytest.raises(ModelError, match="never 1"):
        Logistic().fit(np.arange(10.0), np.zeros(10))


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(2)
    n = 4000
    X = np.c_[rng.normal(size=n), rng.random(n) < 0.5, rng.integers(0, 3, n)]
    t = rng.uniform(0.1, 20, n)
    y = rng.poisson(t * np.exp(X @ [0.3, -0.5, 0.1] - 3))
    return X, y.astype(float), t


def test_poisson_matches_statsmodels(counts):
    X, y, t = counts
    m = Poisson().fit(X, y, t)
    g = sm.GLM(y, sm.add_constant(X), family=sm.families.Poisson(), exposure=t).fit(tol=1e-13)
    assert rel(m.coef_, g.params) < RTOL and rel(m.se_, g.bse) < RTOL
    assert m.loglik_ == pytest.approx(g.llf, rel=1e-10)


def test_glms_over_partitions_equal_single_array(binary, counts):
    X, y, w = binary
    one = Logistic().fit(X, y, weights=w)
    Xi = np.c_[np.ones(len(X)), X]
    parts = [{"X": Xi[i::3], "y": y[i::3], "weights": w[i::3]} for i in range(3)]
    names = one.names
    for P in (LocalPartitions(parts), DaskPartitions(parts)):
        m = Logistic().fit_partitions(P, names)
        assert rel(m.coef_, one.coef_) < 1e-8 and rel(m.se_, one.se_) < 1e-8
    X, y, t = counts
    one = Poisson().fit(X, y, t)
    Xi = np.c_[np.ones(len(X)), X]
    parts = [{"X": Xi[i::4], "y": y[i::4], "weights": np.ones(len(y[i::4])),
              "offset": np.log(t[i::4])} for i in range(4)]
    m = Poisson().fit_partitions(LocalPartitions(parts), one.names)
    assert rel(m.coef_, one.coef_) < 1e-8 and m.loglik_ == pytest.approx(one.loglik_, rel=1e-12)


def test_blocked_steps_agree_with_whole_arrays_and_leave_small_fits_alone(monkeypatch):
    """From BLOCKED_FROM rows a step runs in cache-sized blocks: the same fit as whole arrays
    (to rounding), the same bytes on every call; below it, the very same bits as before."""
    import hpcstudy_kernels.glm as K

    rng = np.random.default_rng(5)
    n = K.BLOCKED_FROM + 12_345            # not a multiple of the block
    X = rng.normal(size=(n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ [0.4, -0.2, 0.1])))).astype(float)
    t = rng.uniform(0.5, 3, n)
    ev = rng.poisson(t * np.exp(X @ [0.2, 0.1, -0.3] - 1)).astype(float)
    fits = {}
    for mode, start in (("blocked", K.BLOCKED_FROM), ("whole", 1 << 40)):
        monkeypatch.setattr(K, "BLOCKED_FROM", start)
        fits[mode] = (Logistic().fit(X, y), Poisson().fit(X, ev, t))
    for b, w in zip(fits["blocked"], fits["whole"], strict=True):
        assert rel(b.coef_, w.coef_) < 1e-12 and rel(b.se_, w.se_) < 1e-12
        assert b.loglik_ == pytest.approx(w.loglik_, rel=1e-13)
    monkeypatch.setattr(K, "BLOCKED_FROM", 1 << 17)
    again = Logistic().fit(X, y)
    assert again.coef_.tobytes() == fits["blocked"][0].coef_.tobytes()
    # the blocked step is the sum of its blocks' steps, in block order
    beta = np.array([0.1, 0.3, -0.2, 0.05])
    Xi = np.c_[np.ones(n), X]
    ll, score, info = K.logistic_step(Xi, y, np.ones(n), beta)
    parts = [K._logistic_rows(Xi[i:i + K.BLOCK], y[i:i + K.BLOCK], np.ones(n)[i:i + K.BLOCK],
                              beta, np) for i in range(0, n, K.BLOCK)]
    assert ll == sum(p[0] for p in parts)
    assert np.array_equal(score, sum(p[1] for p in parts))
    assert np.array_equal(info, sum(p[2] for p in parts))
    # below BLOCKED_FROM rows (a study partition): exactly the whole-array step
    small = slice(0, 60_000)
    got = K.logistic_step(Xi[small], y[small], np.ones(60_000), beta)
    want = K._logistic_rows(Xi[small], y[small], np.ones(60_000), beta, np)
    assert all(np.asarray(a).tobytes() == np.asarray(b).tobytes()
               for a, b in zip(got, want, strict=True))


def test_poisson_refuses_nonpositive_exposure():
    with pytest.raises(ModelError, match="exposure"):
        Poisson().fit(np.arange(3.0), [1, 0, 2], [1.0, 0.0, 2.0])


@pytest.fixture(scope="module")
def durations():
    rng = np.random.default_rng(3)
    n = 3000
    d = np.floor(rng.exponential(30, n)) + 1
    e = (rng.random(n) < 0.7).astype(float)
    entry = np.where(rng.random(n) < 0.4, np.floor(rng.uniform(0, 1, n) * (d - 1)), 0)
    return d, e, entry


def test_kaplan_meier_matches_lifelines(durations):
    d, e, _ = durations
    km = KaplanMeier().fit(d, e)
    ref = KaplanMeierFitter().fit(d, e)
    tl = ref.timeline
    assert np.abs(km.predict(tl) - ref.survival_function_.values[:, 0]).max() < 1e-12
    ci = ref.confidence_interval_.loc[km.timeline_].values
    ok = np.isfinite(km.lower_95_)
    assert np.abs(km.lower_95_[ok] - ci.min(axis=1)[ok]).max() < 1e-10
    assert np.abs(km.upper_95_[ok] - ci.max(axis=1)[ok]).max() < 1e-10
    assert km.median_ == ref.median_survival_time_


def test_kaplan_meier_delayed_entry_matches_lifelines(durations):
    d, e, entry = durations
    km = KaplanMeier().fit(d, e, entry=entry)
    ref = KaplanMeierFitter().fit(d, e, entry=entry)
    tl = ref.timeline
    assert np.abs(km.predict(tl) - ref.survival_function_.values[:, 0]).max() < 1e-12
    # at risk at τ: entered before τ and still there at τ, counted directly
    direct = [((entry < t) & (d >= t)).sum() for t in km.timeline_]
    assert (km.at_risk_ == direct).all()


def test_kaplan_meier_over_partitions(durations):
    d, e, entry = durations
    one = KaplanMeier().fit(d, e, entry=entry)
    parts = [{"time": d[i::5], "event": e[i::5], "entry": entry[i::5],
              "weights": np.ones(len(d[i::5]))} for i in range(5)]
    m = KaplanMeier().fit_partitions(LocalPartitions(parts))
    assert np.array_equal(m.timeline_, one.timeline_)
    assert np.abs(m.survival_ - one.survival_).max() < 1e-14


def test_aalen_johansen_matches_lifelines():
    rng = np.random.default_rng(4)
    n = 2000
    t = rng.exponential(10, n)  # continuous: no ties, so lifelines does not jitter
    cause = rng.choice([0, 1, 2], size=n, p=[0.3, 0.5, 0.2])
    aj = AalenJohansen().fit(t, cause, event_of_interest=1)
    ref = AalenJohansenFitter(calculate_variance=False).fit(t, cause, event_of_interest=1)
    tl = ref.cumulative_density_.index.to_numpy()
    assert np.abs(aj.predict(tl) - ref.cumulative_density_.values[:, 0]).max() < 1e-12
    # Cumulative incidences of all causes and survival add up to one.
    aj2 = AalenJohansen().fit(t, cause, event_of_interest=2)
    total = aj.cumulative_incidence_ + aj2.cumulative_incidence_ + aj.survival_
    assert np.allclose(total, 1.0)


def test_aalen_johansen_refuses_bad_causes():
    with pytest.raises(ModelError, match="integer codes"):
        AalenJohansen().fit([1.0, 2.0], [0.5, 1])
    frame = pd.DataFrame({"t": [1.0, 2.0], "c": [0, 1]})
    with pytest.raises(ModelError, match="does not occur"):
        AalenJohansen().fit(frame.t, frame.c, event_of_interest=3)
