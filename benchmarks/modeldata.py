"""Synthetic model-fit data with a chosen event fraction and number of distinct event times.

    X, time, event = survival(n, p, event_fraction=0.25, times="days", seed=0)

``times``: ``"few"`` (whole years: a few dozen distinct event times, heavy ties), ``"days"``
(whole days: about ten thousand distinct times, the registers' own resolution), or
``"continuous"`` (every time distinct). Censoring is exponential, its rate chosen so that the
expected share of events is ``event_fraction``.
"""

from __future__ import annotations

import numpy as np

TIME_SCALES = {"few": 365.25, "days": 1.0}


def coefficients(p: int) -> np.ndarray:
    return np.linspace(0.3, -0.3, p) / np.sqrt(p)


def survival(n: int, p: int, event_fraction: float = 0.25, times: str = "days", seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    hazard = np.exp(X @ coefficients(p)) / 3000.0  # mean survival about 3000 days
    t = rng.exponential(1.0, n) / hazard
    # censoring rate mu with mean(h / (h + mu)) = event_fraction, by bisection on log mu
    lo, hi = -30.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        share = np.mean(hazard / (hazard + np.exp(mid)))
        lo, hi = (mid, hi) if share > event_fraction else (lo, mid)
    c = rng.exponential(1.0, n) / np.exp(lo)
    obs = np.minimum(t, c)
    if times in TIME_SCALES:
        obs = np.floor(obs / TIME_SCALES[times]) + 1.0
    elif times != "continuous":
        raise ValueError(f"times must be few, days or continuous, not {times!r}")
    return X, obs, (t <= c).astype(float)


def binary(n: int, p: int, event_fraction: float = 0.25, seed: int = 0):
    """Logistic-model data with about ``event_fraction`` ones (X without an intercept)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    eta = X @ coefficients(p)
    base = np.log(event_fraction / (1 - event_fraction))
    y = (rng.random(n) < 1 / (1 + np.exp(-(base + eta)))).astype(float)
    return X, y


def counts(n: int, p: int, rate: float = 0.25, seed: int = 0):
    """Poisson-model data: counts y over exposures (X without an intercept)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    exposure = rng.uniform(0.5, 10.0, n)
    mu = exposure * rate * np.exp(X @ coefficients(p))
    y = rng.poisson(mu).astype(float)
    return X, y, exposure
