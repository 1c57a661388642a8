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


def former_chi2_quantile(p: float, df: float) -> float:
    """The quantile as it was computed before: P evaluated at every step of the bisection."""
    a = df / 2
    lo, hi = 0.0, max(1.0, df)
    while rates._gamma_p(a, hi / 2) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if rates._gamma_p(a, mid / 2) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return (lo + hi) / 2


def test_the_quantile_keeps_its_bits_where_it_skips_evaluations():
    # the exact intervals' quantiles for 0 to 60 events and some large counts, and quantiles
    # of other probabilities and fractional degrees of freedom (the measures' gamma
    # intervals): every one the same bits as the bisection that evaluated P at every step
    rng = random.Random(11)
    cases = [(0.025, 2 * k) for k in range(1, 61)] + [(0.975, 2 * k + 2) for k in range(61)]
    cases += [(p, 2 * k + (p > 0.5) * 2) for k in (194, 2489, 9158, 45641) for p in (.025, .975)]
    cases += [(rng.choice([0.001, 0.025, 0.3, 0.5, 0.975, 0.999]), 10 ** rng.uniform(-1.5, 4))
              for _ in range(80)]
    skipped = 0
    for p, df in cases:
        assert rates.chi2_quantile(p, df) == former_chi2_quantile(p, df), (p, df)
        skipped += rates._bracket(p, df / 2) is not None
    assert skipped >= 0.95 * len(cases)   # (mostly by the bracket: the fast path is tested)


def test_the_bracket_holds_the_quantile_and_is_refused_where_p_is_extreme():
    for p, df in ((0.025, 2.0), (0.975, 4.0), (0.025, 91282.0), (0.5, 0.2)):
        lo, hi = rates._bracket(p, df / 2)
        x = rates.chi2_quantile(p, df)
        assert lo < x < hi and (hi - lo) < 1e-6 * x
        assert rates._gamma_p(df / 2, lo / 2) < p <= rates._gamma_p(df / 2, hi / 2)
    assert rates._bracket(1e-9, 10.0) is None and rates._bracket(0.975, 4e6) is None
