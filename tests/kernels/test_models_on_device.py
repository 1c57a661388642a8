"""Every model fitted on the array library of ``xp`` gives the NumPy answer."""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy.models import AalenJohansen, CoxPH, KaplanMeier, Logistic, Poisson

from .conftest import host


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    n = 4000
    X = rng.normal(size=(n, 3))
    t = np.floor(rng.exponential(200, n) / np.exp(X @ [0.4, -0.2, 0.1])) + 2
    c = rng.uniform(10, 800, n)
    time, event = np.minimum(t, c), (t <= c).astype(float)
    entry = np.where(rng.random(n) < 0.3, np.floor(time * rng.random(n) * 0.5), 0)
    entry = np.minimum(entry, time - 1)
    strata = rng.integers(0, 3, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ [0.5, -0.5, 0.2])))).astype(float)
    return X, time, event, entry, strata, y


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox(xp, data, ties):
    X, time, event, entry, strata, _ = data
    ref = CoxPH(ties).fit(X, time, event, entry=entry, strata=strata)
    m = CoxPH(ties).fit(xp.asarray(X), xp.asarray(time), xp.asarray(event),
                        entry=xp.asarray(entry), strata=xp.asarray(strata))
    assert np.allclose(m.coef_, ref.coef_, rtol=1e-8, atol=1e-12)
    assert np.allclose(m.se_, ref.se_, rtol=1e-8)


def test_glms(xp, data):
    X, time, _, _, _, y = data
    ref = Logistic().fit(X, y)
    m = Logistic().fit(xp.asarray(X), xp.asarray(y))
    assert np.allclose(m.coef_, ref.coef_, rtol=1e-8, atol=1e-12)
    counts = np.floor(time / 100)
    ref = Poisson().fit(X, counts, time)
    m = Poisson().fit(xp.asarray(X), xp.asarray(counts), xp.asarray(time))
    assert np.allclose(m.coef_, ref.coef_, rtol=1e-8, atol=1e-12)


def test_curves(xp, data):
    _, time, event, entry, strata, _ = data
    ref = KaplanMeier().fit(time, event, entry=entry)
    m = KaplanMeier().fit(xp.asarray(time), xp.asarray(event), entry=xp.asarray(entry))
    assert np.allclose(m.survival_, ref.survival_, rtol=1e-12)
    cause = event * (1 + (strata == 2))
    ref = AalenJohansen().fit(time, cause)
    m = AalenJohansen().fit(xp.asarray(time), xp.asarray(cause))
    assert np.allclose(host(m.cumulative_incidence_), ref.cumulative_incidence_, rtol=1e-12)
