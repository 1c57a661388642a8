"""Exact Poisson intervals (``models.rates``): held to SciPy's chi-square quantiles and to
statsmodels' exact interval, from 0 events to a million; and the incomplete gamma function
gives the same bits as the loop it replaced (results.json prints them in full)."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import chi2
from statsmodels.stats.rates import confint_poisson

from hpcstudy.models import rates


def former_gamma_p(a: float, x: float) -> float:
    """The regularised incomplete gamma as it was written before (abs in its tests)."""
    if x <= 0:
        return 0.0
    if x < a + 1:
        term = total = 1.0 / a
        k = a
        for _ in range(10_000):
            k += 1
            term *= x / k
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return total * math.exp(-x + a * math.log(x) - math.lgamma(a))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return 1.0 - math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


@pytest.mark.parametrize("events", [0, 1, 2, 5, 17, 194, 2489, 45641, 1_000_000])
def test_exact_interval_matches_scipy_and_statsmodels(events):
    exposure = 1234.5
    lo, hi = rates.poisson_ci(events, exposure)
    want_lo = 0.0 if events == 0 else chi2.ppf(0.025, 2 * events) / 2 / exposure
    want_hi = chi2.ppf(0.975, 2 * events + 2) / 2 / exposure
    assert lo == pytest.approx(want_lo, rel=1e-10, abs=0)
    assert hi == pytest.approx(want_hi, rel=1e-10)
    sm_lo, sm_hi = confint_poisson(events, exposure, method="exact-c")
    assert lo == pytest.approx(sm_lo, rel=1e-9, abs=1e-300)
    assert hi == pytest.approx(sm_hi, rel=1e-9)


def test_the_incomplete_gamma_keeps_its_bits():
    rng = random.Random(7)
    cases = [(a, a * f) for a in (0.5, 1.0, 3.0, 40.0, 194.0, 2489.0, 45641.0)
             for f in (0.01, 0.5, 0.97, 1.0, 1.03, 2.0, 30.0)]
    cases += [(rng.uniform(0.05, 5e4), rng.uniform(0.01, 6e4)) for _ in range(400)]
    for a, x in cases:
        assert rates._gamma_p(a, x) == former_gamma_p(a, x), (a, x)


def test_the_quantile_is_monotone_in_its_probability():
    qs = [rates.chi2_quantile(p, 50.0) for p in (0.001, 0.025, 0.5, 0.975, 0.999)]
    assert qs == sorted(qs) and len(set(qs)) == len(qs)
