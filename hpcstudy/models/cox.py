"""Cox proportional hazards: Efron or Breslow ties, delayed entry, strata, weights.

    m = CoxPH(ties="efron").fit(X, duration, event, entry=None, strata=None, weights=None)
    m.coef_, m.se_, m.loglik_, m.n_iter_, m.summary

The same fit runs over partitions (``fit_partitions``): the data stay where they are and each
Newton step is two sums of small arrays (see ``hpcstudy_kernels.cox``).
"""

from __future__ import annotations

import numpy as np

from hpcstudy_kernels import cox as K
from hpcstudy_kernels import robust as R
from hpcstudy_kernels._namespace import array_namespace, to_numpy

from .base import (
    Fitted,
    ModelError,
    check_collinearity,
    format_table,
    newton,
    summary_table,
    wants_robust,
)
from .partitions import LocalPartitions, Partitions
from .validate import as_design, as_vector


# -- per-partition steps (top-level functions so that Dask can ship them) ----------------------
def _sums(part):
    X, w = part["X"], part["weights"]
    total, wx = K.weighted_sums(X, w)
    # the event count stays an array: on a device, it comes to the host with the other sums
    return total, wx, part["event"].sum(), int(part["time"].shape[0])


def _pairs(part):
    s, t = K.event_pairs(part["time"], part["event"], part["strata"])
    return [s], [t]


def _concat(a, b):
    return a[0] + b[0], a[1] + b[1]


def _prepare(part, grid, mean):
    cp = K.prepare(part["X"], part["time"], part["event"], part.get("entry"),
                   part["strata"], part["weights"], grid, mean)
    cp.cluster = part.get("cluster")
    return cp


def _pass1(cp, beta):
    xp = array_namespace(cp.X)
    return K.pass1(cp, xp.asarray(beta))


def _pass2(cp, beta, c, e, shift):
    xp = array_namespace(cp.X)
    return K.pass2(cp, xp.asarray(beta), c, e, shift)


def _cox_meat(cp, beta, terms, shift=0.0):
    xp = array_namespace(cp.XT)
    U = R.cox_scores(cp, xp.asarray(beta), terms, shift)
    # rows never at risk at an event time were dropped by prepare: their residual is 0
    return R.cluster_meat(U, cp.order if cp.cluster is None else cp.cluster[cp.order])


class CoxPH(Fitted):
    """Cox regression by Newton–Raphson on the partial likelihood."""

    def __init__(self, ties: str = "efron", max_iter: int = 50, tol: float = 1e-10,
                 robust: bool | None = None):
        """``robust``: clustered sandwich errors (Lin–Wei); None: whenever weights other than
        1 are given or a cluster (person) has more than one row."""
        if ties not in ("efron", "breslow"):
            raise ModelError(f"ties must be 'efron' or 'breslow', not {ties!r}")
        self.ties, self.max_iter, self.tol = ties, max_iter, tol
        self.robust = robust

    # -- single arrays ----------------------------------------------------------------------
    def fit(self, X, duration, event, entry=None, strata=None, weights=None, names=None,
            cluster=None):
        X, names = as_design(X, names)
        xp = array_namespace(X)
        n = X.shape[0]
        t = as_vector(duration, n, "duration", xp)
        d = as_vector(event, n, "event", xp)
        if not bool(xp.all((d == 0) | (d == 1))):
            raise ModelError("event must be 0 or 1")
        w = xp.ones(n) if weights is None else as_vector(weights, n, "weights", xp)
        if bool(xp.any(w < 0)):
            raise ModelError("weights must be non-negative")
        part = {"X": X, "time": t, "event": d, "weights": w}
        if entry is not None:
            e = as_vector(entry, n, "entry", xp)
            if bool(xp.any(e >= t)):
                raise ModelError("entry must be before duration for every row "
                                 "(at risk on (entry, duration])")
            part["entry"] = e
        if strata is None:
            part["strata"] = xp.zeros(n, dtype=xp.int64)
        else:
            s = xp.asarray(to_numpy(strata) if not hasattr(strata, "shape") else strata)
            part["strata"] = xp.unique(s, return_inverse=True)[1].reshape(-1).astype(xp.int64)
        if cluster is not None:
            c = xp.asarray(to_numpy(cluster) if not hasattr(cluster, "shape") else cluster)
            if c.shape != (n,):
                raise ModelError(f"cluster must have one id per row ({n}), not shape {c.shape}")
            part["cluster"] = xp.unique(c, return_inverse=True)[1].reshape(-1)
        return self.fit_partitions(LocalPartitions([part]), names)

    # -- partitions -------------------------------------------------------------------------
    def fit_partitions(self, parts: Partitions, names: list[str]):
        """Fit over partitions of dicts with X, time, event, weights, strata (int codes ≥ 0,
        the same coding in every partition) and optionally entry and cluster (ids that never
        span partitions)."""
        p = len(names)
        total, wx, events, n = parts.map_reduce(_sums)
        total, wx, events = float(to_numpy(total)), to_numpy(wx), float(to_numpy(events))
        if events == 0:
            raise ModelError("Cox model: there are no events")
        mean = wx / total
        s_list, t_list = parts.map_reduce(_pairs, combine=_concat)
        grid = K.make_grid(s_list, t_list)
        prepared = parts.map(_prepare, grid, mean)
        m, dw, xd = prepared.map_reduce(K.fixed_sums)
        xd_np = to_numpy(xd)
        ties = self.ties

        def evaluate(beta, need_information):
            shift, s0, s1, e0, e1 = prepared.map_reduce(_pass1, beta, combine=K.add_shifted)
            ll_rs, score_rs, outer, c, e = K.grid_terms(s0, s1, e0, e1, m, dw, ties)
            # the sums were taken times exp(−shift): log S0 is shift more than log(s0)
            ll = float(xd_np @ beta) + float(to_numpy(ll_rs)) - shift * float(to_numpy(dw.sum()))
            score = xd_np - to_numpy(score_rs)
            info = None
            if need_information and np.isfinite(ll):
                info = to_numpy(prepared.map_reduce(_pass2, beta, c, e, shift)) - to_numpy(outer)
            return ll, score, info

        start = evaluate(np.zeros(p), True)
        self.loglik0_ = start[0]
        # At β = 0 the information is the covariance of x within risk sets: singular exactly
        # when columns are constant or collinear among the people at risk.
        check_collinearity(start[2], names, "Cox model")
        beta, ll, info, it = newton(evaluate, p, max_iter=self.max_iter, tol=self.tol,
                                    names=names, where="Cox model", start=start)
        self._set_fit(names, beta, ll, info, it, n)
        if wants_robust(self.robust, parts):
            shift, s0, s1, e0, e1 = prepared.map_reduce(_pass1, beta, combine=K.add_shifted)
            terms = R.cox_residual_terms(s0, s1, e0, e1, m, dw, ties)
            meat, g = prepared.map_reduce(_cox_meat, beta, terms, shift)
            self._set_robust(to_numpy(meat), g)
        self.n_events_ = int(events)
        self.grid_size_ = grid.size
        return self

    @property
    def hazard_ratios_(self) -> np.ndarray:
        return np.exp(self.coef_)

    @property
    def summary(self) -> list[dict]:
        return summary_table(self.names, self.coef_, self.se_, "HR")

    def __str__(self) -> str:
        return (f"Cox model ({self.ties} ties): {self.n_obs_} rows, {self.n_events_} events, "
                f"log-likelihood {self.loglik_:.4f}, {self.n_iter_} Newton steps\n"
                + format_table(self.summary))


__all__ = ["CoxPH"]
