"""Logistic and Poisson regression by Newton–Raphson (IRLS), single-array or partitioned.

    Logistic().fit(X, y, weights=None)            # odds ratios
    Poisson().fit(X, events, exposure)            # rate ratios; log(exposure) is the offset

An intercept is added unless ``intercept=False``.
"""

from __future__ import annotations

import math

import numpy as np

from hpcstudy_kernels import glm as K
from hpcstudy_kernels import robust as R
from hpcstudy_kernels._namespace import array_namespace, to_numpy

from .base import (
    Fitted,
    ModelError,
    check_collinearity,
    format_table,
    newton,
    row_clusters,
    summary_table,
    wants_robust,
)
from .partitions import LocalPartitions, Partitions
from .validate import as_design, as_vector, host_bool


def _gram(part):
    X, w = part["X"], part["weights"]
    xp = array_namespace(X)
    # sums stay arrays: on a device they come to the host with the partition's result
    exposure = (w * xp.exp(part["offset"])).sum() if "offset" in part else 0.0
    return (X * w[:, None]).T @ X, int(X.shape[0]), w.sum(), (w * part["y"]).sum(), exposure


def _packed(ll, score, info):
    """A step's sums (ll, score, information); off the CPU as one array: one transfer."""
    xp = array_namespace(score)
    if xp is np:
        return ll, score, info
    return xp.concatenate([xp.reshape(ll, (1,)), score, xp.reshape(info, (-1,))])


def _unpacked(flat, p):
    if isinstance(flat, tuple):
        ll, score, info = flat
        return float(to_numpy(ll)), to_numpy(score), to_numpy(info)
    return float(flat[0]), flat[1:1 + p], flat[1 + p:].reshape(p, p)


def _logistic(part, beta):
    return _packed(*K.logistic_step(part["X"], part["y"], part["weights"], beta))


def _poisson(part, beta):
    return _packed(*K.poisson_step(part["X"], part["y"], part["weights"], part["offset"], beta))


def _meat(part, beta, poisson):
    X = part["X"]
    mu = R.poisson_mean(X, part["offset"], beta) if poisson else R.logistic_mean(X, beta)
    return R.cluster_meat(R.glm_scores(X, part["y"], part["weights"], mu), row_clusters(part))


def _counts(part):
    xp = array_namespace(part["y"])
    return [xp.unique(part["y"])]


def _cat(a, b):
    return a + b


def _log_factorial(part, values, log_fact):
    """Σ w·log(y!) of this partition, from the table ``log_fact`` of log(v!) for the sorted
    distinct counts ``values`` of all partitions (lgamma runs on the host, on few values)."""
    xp = array_namespace(part["y"])
    return (log_fact[xp.searchsorted(values, part["y"])] * part["weights"]).sum()


def _clusters(cluster, n, xp) -> dict:
    if cluster is None:
        return {}
    c = xp.asarray(to_numpy(cluster) if not hasattr(cluster, "shape") else cluster)
    if c.shape != (n,):
        raise ModelError(f"cluster must have one id per row ({n}), not shape {c.shape}")
    return {"cluster": xp.unique(c, return_inverse=True)[1].reshape(-1)}


class _GLM(Fitted):
    ratio = "ratio"
    kind = "GLM"

    def __init__(self, intercept: bool = True, max_iter: int = 50, tol: float = 1e-10,
                 robust: bool | None = None, penalty: float = 0.0):
        """``penalty``: an L2 strength λ on every coefficient but an intercept (named
        ``intercept``): the fit maximises ll(β) − λ/2·Σβⱼ², scikit-learn's C = 1/λ."""
        self.intercept, self.max_iter, self.tol = intercept, max_iter, tol
        self.robust = robust
        self.penalty = float(penalty)

    def _design(self, X, names):
        X, names = as_design(X, names)
        if self.intercept:
            xp = array_namespace(X)
            X = xp.concatenate([xp.ones((X.shape[0], 1)), X], axis=1)
            names = ["intercept", *names]
        return X, names

    def _fit(self, parts: Partitions, names: list[str], step):
        p = len(names)
        g, n, wsum, wysum, exposure = parts.map_reduce(_gram)
        wsum, wysum, exposure = float(wsum), float(wysum), float(exposure)
        if not self.penalty:   # a penalised fit is identified whatever the columns
            check_collinearity(to_numpy(g), names, f"{self.kind} model")
        self._check_outcome(wsum, wysum)
        lam = np.array([0.0 if n == "intercept" else self.penalty for n in names])

        def evaluate(beta, need_information):
            # per partition: β out, one packed array of (ll, score, information) back
            ll, score, info = _unpacked(parts.map_reduce(step, beta), p)
            if self.penalty:
                ll, score = ll - 0.5 * float(lam @ (beta * beta)), score - lam * beta
                info = info + np.diag(lam)
            return ll, score, info

        beta, ll, info, it = newton(evaluate, p, max_iter=self.max_iter, tol=self.tol,
                                    names=names, where=f"{self.kind} model",
                                    beta0=self._start(names, wsum, wysum, exposure),
                                    bound=None if self.penalty else 25)
        self._set_fit(names, beta, ll, info, it, n)
        if wants_robust(self.robust, parts):
            meat, g = parts.map_reduce(_meat, beta, step is _poisson)
            # statsmodels' and Stata's small-sample factor for clustered errors
            k = len(names)
            factor = g / (g - 1) * (n - 1) / (n - k) if g > 1 and n > k else 1.0
            self._set_robust(to_numpy(meat), g, factor)
        return self

    def _start(self, names, wsum, wysum, exposure):
        """Start at the intercept-only fit: fewer Newton steps, no overflow on the way."""
        if names and names[0] == "intercept":
            b = np.zeros(len(names))
            b[0] = self._intercept(wsum, wysum, exposure)
            return b
        return None

    def _check_outcome(self, wsum, wysum):
        pass

    @property
    def summary(self) -> list[dict]:
        return summary_table(self.names, self.coef_, self.se_, self.ratio)

    def __str__(self) -> str:
        return (f"{self.kind} model: {self.n_obs_} rows, log-likelihood {self.loglik_:.4f}, "
                f"{self.n_iter_} Newton steps\n" + format_table(self.summary))


class Logistic(_GLM):
    """Logistic regression (no penalty): coefficients are log odds ratios."""

    ratio = "OR"
    kind = "logistic"

    def fit(self, X, y, weights=None, names=None, cluster=None):
        """``cluster``: a cluster (person) id per row, for clustered robust errors."""
        X, names = self._design(X, names)
        xp = array_namespace(X)
        n = X.shape[0]
        yv = as_vector(y, n, "y", xp)
        if not host_bool(xp.all((yv == 0) | (yv == 1))):
            raise ModelError("logistic model: y must be 0 or 1")
        w = xp.ones(n) if weights is None else as_vector(weights, n, "weights", xp)
        part = {"X": X, "y": yv, "weights": w, **_clusters(cluster, n, xp)}
        return self.fit_partitions(LocalPartitions([part]), names)

    def fit_partitions(self, parts: Partitions, names: list[str]):
        """Partitions of dicts with X (intercept column included), y, weights and
        optionally cluster (ids that never span partitions)."""
        return self._fit(parts, names, _logistic)

    def _check_outcome(self, wsum, wysum):
        if wysum <= 0 or wysum >= wsum:
            raise ModelError("logistic model: the outcome is " +
                             ("never 1" if wysum <= 0 else "always 1") +
                             " — there is nothing to model")

    @staticmethod
    def _intercept(wsum, wysum, exposure):
        return float(np.log(wysum / (wsum - wysum)))


class Poisson(_GLM):
    """Log-linear Poisson regression with log(exposure) as offset: coefficients are log rate
    ratios. ``loglik_`` includes the −log(y!) constant, as statsmodels reports it."""

    ratio = "RR"
    kind = "Poisson"

    def fit(self, X, events, exposure, weights=None, names=None, cluster=None):
        X, names = self._design(X, names)
        xp = array_namespace(X)
        n = X.shape[0]
        y = as_vector(events, n, "events", xp)
        if host_bool(xp.any(y < 0)):
            raise ModelError("Poisson model: events must be non-negative counts")
        t = as_vector(exposure, n, "exposure", xp)
        if host_bool(xp.any(t <= 0)):
            raise ModelError("Poisson model: exposure (person-time) must be positive")
        w = xp.ones(n) if weights is None else as_vector(weights, n, "weights", xp)
        part = {"X": X, "y": y, "weights": w, "offset": xp.log(t), **_clusters(cluster, n, xp)}
        return self.fit_partitions(LocalPartitions([part]), names)

    def fit_partitions(self, parts: Partitions, names: list[str]):
        """Partitions of dicts with X (intercept column included), y, weights, offset."""
        self._fit(parts, names, _poisson)
        values = np.unique(np.concatenate(parts.map_reduce(_counts, combine=_cat)))
        log_fact = np.array([math.lgamma(v + 1.0) for v in values])
        self.loglik_ -= float(parts.map_reduce(_log_factorial, values, log_fact))
        return self

    def _check_outcome(self, wsum, wysum):
        if wysum <= 0:
            raise ModelError("Poisson model: there are no events")

    @staticmethod
    def _intercept(wsum, wysum, exposure):
        return float(np.log(wysum / exposure))
