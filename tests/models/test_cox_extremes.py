"""Newton's trial steps whose linear predictors are far beyond exp's range (|xβ| of several
hundred): r = w·exp(xβ) is taken shifted by the largest xβ, so nothing overflows and the
partial log-likelihood is exact wherever floats can hold it (checked by hand with logsumexp,
on one partition and on partitions with different shifts); a trial β that no float can
represent gives a NaN log-likelihood, so Newton halves the step instead of warning."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from hpcstudy_kernels import cox as K


def loglik_at(X, t, e, beta, ties="breslow", parts=1):
    """The kernels' partial log-likelihood at a given β (as CoxPH's Newton steps evaluate
    it), over ``parts`` partitions of consecutive rows."""
    n = t.shape[0]
    s = np.zeros(n, dtype=np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    mean = X.mean(axis=0)
    total = None
    for rows in np.array_split(np.arange(n), parts):
        part = K.prepare(X[rows], t[rows], e[rows], None, s[rows], np.ones(rows.shape[0]),
                         grid, mean)
        fixed = K.fixed_sums(part)
        sums = K.pass1(part, beta)
        total = (fixed, sums) if total is None else \
            (tuple(a + b for a, b in zip(total[0], fixed, strict=True)),
             K.add_shifted(total[1], sums))
    (m, dw, xd), (shift, s0, s1, e0, e1) = total
    ll, *_ = K.grid_terms(s0, s1, e0, e1, m, dw, ties)
    return float(xd @ beta) + float(ll) - shift * float(dw.sum())


def breslow_by_hand(X, t, e, beta):
    eta = (X - X.mean(axis=0)) @ beta
    return sum(eta[i] - logsumexp(eta[t >= t[i]]) for i in np.flatnonzero(e))


def test_trial_beta_past_exp_range_is_exact_when_representable():
    # x in [0, 1] and β = 1500: centred xβ spans ±750 (exp(750) overflows). The person with
    # the largest x outlives everyone, so every risk set holds a term of size 1 after the shift
    rng = np.random.default_rng(4)
    n = 300
    x = rng.random(n)
    t = np.floor(rng.exponential(100, n)) + 1
    t[np.argmax(x)] = t.max() + 10
    e = (rng.random(n) < 0.7).astype(float)
    X = np.column_stack([x, rng.normal(size=n)])
    beta = np.array([1500.0, 0.3])
    assert np.abs((X - X.mean(axis=0)) @ beta).max() > 709  # past exp's range
    by_hand = breslow_by_hand(X, t, e, beta)
    assert loglik_at(X, t, e, beta) == pytest.approx(by_hand, rel=1e-12)
    # sorted by x, three partitions have very different largest xβ (and so shifts)
    order = np.argsort(x)
    assert loglik_at(X[order], t[order], e[order], beta, parts=3) == \
        pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_trial_beta_that_underflows_a_risk_set_gives_nan(ties):
    # now the person with the largest x dies first: later risk sets hold only terms below
    # 1e-150 after the shift, whose inverse squares no float holds
    rng = np.random.default_rng(5)
    n = 300
    x = rng.random(n)
    t = np.floor(rng.exponential(100, n)) + 2
    t[np.argmax(x)] = 1
    e = np.ones(n)
    X = x[:, None]
    assert np.isnan(loglik_at(X, t, e, np.array([1500.0]), ties))
    assert np.isfinite(loglik_at(X, t, e, np.array([3.0]), ties))
