"""Rates and proportions with their 95 % confidence intervals.

``poisson_ci`` is the exact (Garwood) interval from chi-square quantiles; ``wilson_ci`` the
Wilson score interval for a proportion. No SciPy: the regularised incomplete gamma function
is computed by its series and continued fraction, and inverted by bisection.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def _gamma_p(a: float, x: float) -> float:
    """Regularised lower incomplete gamma P(a, x)."""
    if x <= 0:
        return 0.0
    if x < a + 1:
        term = total = 1.0 / a
        k = a
        for _ in range(10_000):   # (every term and sum is positive: no abs)
            k += 1
            term *= x / k
            total += term
            if term < total * 1e-16:
                break
        return total * math.exp(-x + a * math.log(x) - math.lgamma(a))
    # continued fraction for Q(a, x) (modified Lentz)
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if -tiny < d < tiny else d   # (abs(d) < tiny, without the call)
        c = b + an / c
        c = tiny if -tiny < c < tiny else c
        d = 1 / d
        dc = d * c
        h *= dc
        if -1e-16 < dc - 1 < 1e-16:
            break
    return 1.0 - math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_quantile(p: float, df: float) -> float:
    """x with P(χ²_df ≤ x) = p."""
    a = df / 2
    lo, hi = 0.0, max(1.0, df)
    while _gamma_p(a, hi / 2) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _gamma_p(a, mid / 2) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return (lo + hi) / 2


def poisson_ci(events: float, exposure: float, alpha: float = 0.05) -> tuple[float, float]:
    """Exact 95 % interval of a rate events/exposure (events an integer count)."""
    k = float(events)
    lower = 0.0 if k == 0 else chi2_quantile(alpha / 2, 2 * k) / 2
    upper = chi2_quantile(1 - alpha / 2, 2 * k + 2) / 2
    return lower / exposure, upper / exposure


def wilson_ci(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half
