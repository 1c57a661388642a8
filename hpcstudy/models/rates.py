"""Rates and proportions with their 95 % confidence intervals.

``poisson_ci`` is the exact (Garwood) interval from chi-square quantiles; ``wilson_ci`` the
Wilson score interval for a proportion. No SciPy: the regularised incomplete gamma function
is computed by its series and continued fraction, and inverted by bisection.
"""

from __future__ import annotations

import math
from statistics import NormalDist

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


def _bisect(a: float, p: float, below) -> float:
    """x with P(χ²_2a ≤ x) = p, by doubling then bisection; ``below(x)`` says whether
    P(a, x/2) < p (the bits of the result follow from those answers alone)."""
    lo, hi = 0.0, max(1.0, 2 * a)
    while below(hi):
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if below(mid):
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return (lo + hi) / 2


# The bracket is used for a up to this (beyond, P's rounding grows and the series' cap nears)
BRACKET_MAX_A = 1e6


def _bracket(p: float, a: float) -> tuple[float, float] | None:
    """(lo, hi) around the quantile x with P(a, lo/2) below p and P(a, hi/2) above it by a
    margin far beyond P's rounding error, both checked by evaluating P; or None.

    P's computed value is within about 1e-12 of P relative to P's size for the a allowed here
    (its exponent -x + a log x - lgamma(a) is a sum of terms up to about 1e7, each rounded to
    a relative 1e-16; the series adds its terms in order), and P is increasing: so for x at or
    below lo the computed P(a, x/2) is below p too, and at or above hi it is not, and the
    bisection's answers there are known without evaluating P. Newton's method from the
    Wilson-Hilferty approximation finds x; the margin sets the bracket's width."""
    if not (0 < a <= BRACKET_MAX_A and 1e-6 < p < 1 - 1e-6):
        return None
    try:
        return _newton_bracket(p, a)
    except (ArithmeticError, ValueError):   # (an extreme a or p: the plain bisection's way)
        return None


def _newton_bracket(p: float, a: float) -> tuple[float, float] | None:
    df = 2 * a
    z = NormalDist().inv_cdf(p)
    c = 2 / (9 * df)
    x = df * (1 - c + z * math.sqrt(c)) ** 3
    if not x > 0 or a < 1:   # the lower tail of few degrees of freedom: P(a, t) ~ t^a/Γ(a+1)
        x = 2 * math.exp((math.log(p) + math.lgamma(a + 1)) / a)
    lg = math.lgamma(a)

    def density(x):   # d/dx P(a, x/2)
        return 0.5 * math.exp((a - 1) * math.log(x / 2) - x / 2 - lg)

    def margin(x):   # 1e4 times a bound on P's rounding error near x
        t = x / 2
        return 1e4 * 2.3e-16 * (a * abs(math.log(t)) + t + abs(lg) + 50 + 10 * math.sqrt(t)) \
            * min(p, 1 - p)

    for _ in range(8):   # Newton's steps, until a step is within the bracket's width
        if not x > 0:
            return None
        f = density(x)
        if not (f > 0 and math.isfinite(f)):
            return None
        x_new = x - (_gamma_p(a, x / 2) - p) / f
        x_new = x_new if x_new > 0 else x / 2
        step, x = abs(x_new - x), x_new
        width = 2 * margin(x) / density(x)
        if step <= width:
            break
    else:
        return None
    # the bracket's ends must be on either side of x by the margin: checked
    m = margin(x)
    width = max(2 * step, width, 1e-13 * x)
    for _ in range(4):
        lo, hi = x - width, x + width
        if lo > 0 and _gamma_p(a, lo / 2) < p - m and _gamma_p(a, hi / 2) >= p + m:
            return lo, hi
        width *= 16
    return None


def chi2_quantile(p: float, df: float) -> float:
    """x with P(χ²_df ≤ x) = p: by bisection, to the last bits; P is evaluated only where the
    answer is not already known from a checked bracket around x (:func:`_bracket`), so the
    result is the same bits as evaluating it at every step."""
    a = df / 2
    got = _bracket(p, a)
    if got is None:
        return _bisect(a, p, lambda x: _gamma_p(a, x / 2) < p)
    lo, hi = got
    return _bisect(a, p, lambda x: x <= lo or (x < hi and _gamma_p(a, x / 2) < p))


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
