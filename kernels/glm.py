"""Sufficient statistics of logistic and Poisson regression, one partition at a time.

Each Newton (IRLS) step needs Σ w·μ'·x·xᵀ, Σ w·(y − μ)·x and the log-likelihood: sums that
add across partitions, so a distributed fit is one reduction per step.
"""

from __future__ import annotations

import math

from ._namespace import array_namespace, to_numpy


def logistic_step(X, y, w, beta):
    """(log-likelihood, score, information) of a logistic model at β on these rows."""
    xp = array_namespace(X)
    eta = X @ xp.asarray(beta)
    # log(1 + e^η) computed without overflow
    log1pexp = xp.where(eta > 0, eta + xp.log1p(xp.exp(-xp.abs(eta))),
                        xp.log1p(xp.exp(-xp.abs(eta))))
    mu = xp.exp(eta - log1pexp)
    ll = (w * (y * eta - log1pexp)).sum()
    score = X.T @ (w * (y - mu))
    info = (X * (w * mu * (1 - mu))[:, None]).T @ X
    return ll, score, info


def poisson_step(X, y, w, offset, beta):
    """(log-likelihood without the log(y!) constant, score, information) of a log-linear
    Poisson model with ``offset`` (log exposure) at β on these rows."""
    xp = array_namespace(X)
    eta = X @ xp.asarray(beta) + offset
    mu = xp.exp(eta)
    ll = (w * (y * eta - mu)).sum()
    score = X.T @ (w * (y - mu))
    info = (X * (w * mu)[:, None]).T @ X
    return ll, score, info


def log_factorial_sum(y, w) -> float:
    """Σ w·log(y!) for count data (the Poisson log-likelihood's constant)."""
    values = to_numpy(y)
    weights = to_numpy(w)
    import numpy as np

    uniq, inv = np.unique(values, return_inverse=True)
    lf = np.array([math.lgamma(v + 1.0) for v in uniq])
    return float((lf[inv.reshape(-1)] * weights).sum())
