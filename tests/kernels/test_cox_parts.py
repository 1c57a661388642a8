"""The Cox kernel's blocked parts against direct sums written out per grid point and per row:
Efron's terms when the tied deaths are expanded in several blocks, the deaths' sums of
``fixed_sums`` with and without weights, and the covariates' weighted sums in row blocks."""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy_kernels import cox as K

from .conftest import host


def _efron_by_hand(s0, s1, e0, e1, m, dw):
    """Efron's log-likelihood part, score part, outer part, c and e, one death at a time."""
    G, p = s1.shape
    ll, score, outer = 0.0, np.zeros(p), np.zeros((p, p))
    c, e = np.zeros(G), np.zeros(G)
    for j in range(G):
        mj = int(m[j])
        for k in range(mj):
            f = k / mj
            w = dw[j] / mj
            den = s0[j] - f * e0[j]
            num = s1[j] - f * e1[j]
            ll -= w * np.log(den)
            c[j] += w / den
            e[j] += w * f / den
            score += w * num / den
            outer += w * np.outer(num, num) / den**2
    return ll, score, outer, c, e


@pytest.mark.parametrize("block", [1, 3, 50, 1 << 15])
def test_efron_terms_in_blocks_equal_one_death_at_a_time(monkeypatch, block):
    rng = np.random.default_rng(3)
    G, p = 40, 3
    m = rng.choice([0, 1, 2, 3, 7, 60], size=G).astype(float)
    dw = m * rng.uniform(0.5, 2.0, G)
    e0 = rng.uniform(0.5, 2.0, G) * np.maximum(m, 1)
    s0 = e0 + rng.uniform(0.1, 50.0, G)        # the dying are part of the risk set
    s1, e1 = rng.normal(size=(G, p)), rng.normal(size=(G, p))
    monkeypatch.setattr(K, "_EFRON_BLOCK", block)
    got = K.grid_terms(s0, s1, e0, e1, m, dw, "efron")
    want = _efron_by_hand(s0, s1, e0, e1, m, dw)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g, float), w, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("weighted", [False, True])
def test_deaths_sums_equal_a_direct_count(xp, weighted):
    rng = np.random.default_rng(5)
    n, p = 3000, 4
    X = rng.normal(size=(n, p))
    time = rng.integers(1, 40, n).astype(float)
    event = (rng.random(n) < 0.6).astype(float)
    w = rng.uniform(0.2, 3.0, n) if weighted else np.ones(n)
    strata = np.zeros(n, np.int64)
    a = [xp.asarray(v) for v in (X, time, event, strata, w)]
    pairs = K.event_pairs(a[1], a[2], a[3])
    grid = K.make_grid([pairs[0]], [pairs[1]])
    mean = X.mean(axis=0)
    part = K.prepare(a[0], a[1], a[2], None, a[3], a[4], grid, xp.asarray(mean))
    count, sw, xd = (host(v) for v in K.fixed_sums(part))
    times = host(grid.times)
    d = event == 1
    at = np.searchsorted(times, time[d])
    np.testing.assert_array_equal(count, np.bincount(at, minlength=len(times)))
    np.testing.assert_allclose(sw, np.bincount(at, weights=w[d], minlength=len(times)),
                               rtol=1e-12)
    np.testing.assert_allclose(xd, ((X[d] - mean) * w[d, None]).sum(axis=0), rtol=1e-10,
                               atol=1e-9)


def test_weighted_sums_over_row_blocks_equal_a_direct_sum():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(70_001, 3))   # more rows than one block, and a ragged last block
    w = rng.uniform(0, 2, X.shape[0])
    total, wx = K.weighted_sums(X, w)
    np.testing.assert_allclose(total, w.sum(), rtol=1e-13)
    np.testing.assert_allclose(wx, (X * w[:, None]).sum(axis=0), rtol=1e-11, atol=1e-9)
