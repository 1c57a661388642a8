"""What every fitted model shares: the summary table, Newton's method, checks of the design."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from hpcstudy_kernels._namespace import array_namespace, to_numpy


class ModelError(ValueError):
    """A model that cannot be fitted as asked (collinear columns, separation, bad input)."""


class ConvergenceWarning(UserWarning):
    pass


Z95 = 1.959963984540054


def normal_sf(z: np.ndarray) -> np.ndarray:
    return np.array([0.5 * math.erfc(v / math.sqrt(2)) for v in np.ravel(z)]).reshape(
        np.shape(z))


@dataclass
class SummaryRow:
    name: str
    coef: float
    se: float
    ratio: float
    lower: float
    upper: float
    z: float
    p: float


def summary_table(names, coef, se, ratio_name: str) -> list[dict]:
    """Rows: coef, se, exp(coef) as HR/OR/RR with 95 % CI, z, two-sided p."""
    coef, se = np.asarray(coef, float), np.asarray(se, float)
    z = coef / se
    p = 2 * normal_sf(np.abs(z))
    return [{"term": n, "coef": float(c), "se": float(s), ratio_name: math.exp(c),
             "lower_95": math.exp(c - Z95 * s), "upper_95": math.exp(c + Z95 * s),
             "z": float(zz), "p": float(pp)}
            for n, c, s, zz, pp in zip(names, coef, se, z, p, strict=True)]


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no terms)"
    keys = list(rows[0])
    width = max(len(str(r["term"])) for r in rows)
    head = f"{'term':<{width}}  " + "  ".join(f"{k:>10}" for k in keys[1:])
    lines = [head]
    for r in rows:
        cells = []
        for k in keys[1:]:
            v = r[k]
            cells.append(f"{v:>10.3g}" if k == "p" else f"{v:>10.4f}")
        lines.append(f"{r['term']:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def check_collinearity(gram: np.ndarray, names: list[str], where: str) -> None:
    """Refuse a design whose columns are (nearly) linearly dependent, naming them."""
    g = to_numpy(gram)
    p = g.shape[0]
    if p == 0:
        return
    d = np.sqrt(np.clip(np.diag(g), 0, None))
    zero = np.flatnonzero(d <= 1e-12 * max(1.0, d.max()))
    if zero.size:
        raise ModelError(f"{where}: column(s) {[names[i] for i in zero]} are constant "
                         "(no variation after centring) — drop them from the model")
    corr = g / np.outer(d, d)
    vals, vecs = np.linalg.eigh(corr)
    if vals[0] < 1e-10 * vals[-1]:
        v = np.abs(vecs[:, 0])
        involved = [names[i] for i in np.flatnonzero(v > 0.1 * v.max())]
        raise ModelError(f"{where}: columns {involved} are collinear (one is a linear "
                         "combination of the others) — drop one of them")


class Fitted:
    """What a fitted model exposes: coef_, se_, cov_, loglik_, n_iter_, n_obs_, names."""

    def _set_fit(self, names, beta, loglik, info, steps, n_obs) -> None:
        self.names = list(names)
        self.coef_ = beta
        self.information_ = info
        self.cov_ = np.linalg.inv(info)
        self.se_ = np.sqrt(np.diag(self.cov_))
        self.loglik_ = loglik
        self.n_iter_ = steps
        self.n_obs_ = int(n_obs)
        self.robust_ = False

    def _set_robust(self, meat, n_clusters: int, correction: float = 1.0) -> None:
        """Replace the model-based covariance by the clustered sandwich I⁻¹·B·I⁻¹·correction;
        the model-based errors stay in ``naive_se_``."""
        self.naive_se_ = self.se_
        bread = self.cov_
        self.cov_ = bread @ np.asarray(meat, float) @ bread * correction
        self.se_ = np.sqrt(np.diag(self.cov_))
        self.robust_ = True
        self.n_clusters_ = int(n_clusters)


def _design_facts(part) -> tuple[int, int, bool]:
    """(rows, clusters, any weight other than 1) of one partition."""
    xp = array_namespace(part["weights"])
    n = int(part["weights"].shape[0])
    clusters = n if "cluster" not in part else _n_distinct(xp, part["cluster"])
    # a device array: it comes to the host with the partition's result
    return n, clusters, xp.any(part["weights"] != 1)


def _n_distinct(xp, c) -> int:
    """The number of distinct values of ``c``. On the host, a sorted column (a per-person
    table's pnr) is counted by its runs, without the hashing of ``unique``."""
    if xp is np and c.shape[0] > 1 and bool((c[1:] >= c[:-1]).all()):
        return int(np.count_nonzero(c[1:] != c[:-1])) + 1
    return int(xp.unique(c).shape[0])


def _or(a, b):
    return a[0] + b[0], a[1] + b[1], a[2] or b[2]


def wants_robust(robust: bool | None, parts) -> bool:
    """Robust errors as asked; by default whenever rows carry weights other than 1 or some
    cluster (person) has more than one row. Clusters never cross partitions."""
    if robust is not None:
        return bool(robust)
    n, clusters, weighted = parts.map_reduce(_design_facts, combine=_or)
    return bool(weighted) or clusters < n


def row_clusters(part):
    """The cluster id of every row: the partition's ``cluster`` column, else the row itself."""
    if "cluster" in part:
        return part["cluster"]
    xp = array_namespace(part["weights"])
    return xp.arange(part["weights"].shape[0])


def newton(evaluate, p: int, *, max_iter: int = 50, tol: float = 1e-9, names=None,
           where: str = "model", beta0=None, start=None, bound: float | None = 25):
    """Maximise a concave log-likelihood by Newton–Raphson with step halving.

    ``evaluate(beta, need_information)`` returns ``(loglik, score, information)`` (the
    information matrix only when asked); ``start`` is that triple at ``beta0`` if known.
    Stops when the next Newton step would move no coefficient by more than ``tol`` (the
    quadratic convergence of Newton's method makes that step the remaining error), so no
    evaluation is spent only to confirm convergence. Returns (beta, loglik, information,
    steps taken). Coefficients past ``bound`` after 5 steps (separation) raise ModelError;
    ``bound=None`` for a penalised likelihood, which has a finite maximum.
    """
    names = names or [f"x{i}" for i in range(p)]
    beta = np.zeros(p) if beta0 is None else np.asarray(beta0, float)
    ll, score, info = evaluate(beta, True) if start is None else start
    for it in range(max_iter + 1):
        try:
            step = np.linalg.solve(info, score)
        except np.linalg.LinAlgError as e:
            raise ModelError(f"{where}: the information matrix is singular — the model is "
                             "not identifiable (collinear columns or an empty group)") from e
        if np.max(np.abs(step)) < tol * max(1.0, float(np.max(np.abs(beta)))):
            return beta, ll, info, it
        if it == max_iter:
            break
        big = np.abs(beta) > (np.inf if bound is None else bound)
        if big.any() and it > 5:
            bad = [names[i] for i in np.flatnonzero(big)]
            raise ModelError(f"{where}: coefficient(s) of {bad} grow without bound "
                             "(monotone likelihood / separation: a group with no events or "
                             "only events) — remove or merge that covariate or level")
        halvings = 0
        while True:
            new = beta + step
            ll_new, score_new, info_new = evaluate(new, True)
            if np.isfinite(ll_new) and ll_new >= ll - 1e-12 * max(1.0, abs(ll)):
                break
            step = step / 2
            halvings += 1
            if halvings > 30:
                raise ModelError(f"{where}: Newton steps do not improve the likelihood")
        beta, ll, score, info = new, ll_new, score_new, info_new
    warnings.warn(f"{where}: did not converge in {max_iter} Newton steps", ConvergenceWarning,
                  stacklevel=3)
    return beta, ll, info, max_iter
