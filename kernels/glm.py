"""Sufficient statistics of logistic and Poisson regression, one partition at a time.

Each Newton (IRLS) step needs Σ w·μ'·x·xᵀ, Σ w·(y − μ)·x and the log-likelihood: sums that
add across partitions, so a distributed fit is one reduction per step.
"""

from __future__ import annotations

import math

import numpy as np

from ._namespace import array_namespace, to_numpy


def _weighted_gram(X, h, resid, xp):
    """(Xᵀ diag(h) X, Xᵀ resid) with h ≥ 0. On the CPU in blocks of rows that stay in cache,
    as T·Tᵀ with T = (X·sqrt(h))ᵀ (NumPy hands T @ T.T to BLAS syrk: half a gemm's work) and
    without an (n, p) temporary."""
    if xp is not np:
        return (X * h[:, None]).T @ X, X.T @ resid
    n, p = X.shape
    root = np.sqrt(h)
    info = np.zeros((p, p))
    score = np.zeros(p)
    step = max(1024, (1 << 18) // max(p, 1))
    tmp = np.empty((min(step, n), p))
    for i in range(0, n, step):
        j = min(n, i + step)
        block = X[i:j]
        t = tmp[:j - i]
        np.multiply(block, root[i:j, None], out=t)
        info += t.T @ t
        score += resid[i:j] @ block
    return info, score


# Rows from which a NumPy step runs in blocks of BLOCK rows: each block's η, μ and weights
# stay in cache (whole-array temporaries cost a fresh 8 MB array and its page faults apiece
# per 1e6 rows), and the blocks' sums add in block order. Fewer rows (a study partition
# at 1 M persons has ~62 500) run as whole arrays, as before: the same bits.
BLOCKED_FROM = 1 << 17
BLOCK = 1 << 14


def _blocked(rows_step, X, *cols):
    """``rows_step(X, *cols)`` summed over blocks of BLOCK rows, in block order."""
    n = X.shape[0]
    if n < BLOCKED_FROM:
        return rows_step(X, *cols)
    ll, score, info = 0.0, 0.0, 0.0
    for i in range(0, n, BLOCK):
        a, b, c = rows_step(X[i:i + BLOCK], *(v[i:i + BLOCK] for v in cols))
        ll, score, info = ll + a, score + b, info + c
    return ll, score, info


def logistic_step(X, y, w, beta):
    """(log-likelihood, score, information) of a logistic model at β on these rows."""
    xp = array_namespace(X)
    if xp is np:
        return _blocked(lambda X, y, w: _logistic_rows(X, y, w, beta, np), X, y, w)
    return _logistic_rows(X, y, w, beta, xp)


def _logistic_rows(X, y, w, beta, xp):
    eta = X @ xp.asarray(beta)
    # log(1 + e^η) = max(η, 0) + log1p(e^−|η|), without overflow; μ from the same e^−|η|
    a = xp.exp(-xp.abs(eta))
    log1pexp = xp.maximum(eta, 0.0) + xp.log1p(a)
    inv = 1.0 / (1.0 + a)
    mu = xp.where(eta >= 0, inv, a * inv)
    ll = (w * (y * eta - log1pexp)).sum()
    info, score = _weighted_gram(X, w * mu * (1 - mu), w * (y - mu), xp)
    return ll, score, info


def poisson_step(X, y, w, offset, beta):
    """(log-likelihood without the log(y!) constant, score, information) of a log-linear
    Poisson model with ``offset`` (log exposure) at β on these rows."""
    xp = array_namespace(X)
    if xp is np:
        return _blocked(lambda X, y, w, o: _poisson_rows(X, y, w, o, beta, np),
                        X, y, w, offset)
    return _poisson_rows(X, y, w, offset, beta, xp)


def _poisson_rows(X, y, w, offset, beta, xp):
    eta = X @ xp.asarray(beta) + offset
    mu = xp.exp(eta)
    ll = (w * (y * eta - mu)).sum()
    wmu = w * mu
    info, score = _weighted_gram(X, wmu, w * y - wmu, xp)
    return ll, score, info


def log_factorial_sum(y, w) -> float:
    """Σ w·log(y!) for count data (the Poisson log-likelihood's constant)."""
    values = to_numpy(y)
    weights = to_numpy(w)
    uniq, inv = np.unique(values, return_inverse=True)
    lf = np.array([math.lgamma(v + 1.0) for v in uniq])
    return float((lf[inv.reshape(-1)] * weights).sum())
