"""Cox proportional hazards: Efron or Breslow ties, delayed entry, strata, weights.

    m = CoxPH(ties="efron").fit(X, duration, event, entry=None, strata=None, weights=None)
    m.coef_, m.se_, m.loglik_, m.n_iter_, m.summary

The same fit runs over partitions (``fit_partitions``): the data stay where they are and each
Newton step is two sums of small arrays (see ``hpcstudy_kernels.cox``).
"""

from __future__ import annotations

import math

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
from .validate import as_design, as_vector, host_bool


# -- per-partition steps (top-level functions so that Dask can ship them) ----------------------
# On a device, each Newton step sends every partition β (pass 1) and one array of β and the
# grid weights (pass 2), and gets back one packed array of risk-set sums (pass 1) and one
# p × p matrix (pass 2): two transfers each way, whatever the partition's rows.
def _sums(part):
    X, w = part["X"], part["weights"]
    total, wx = K.weighted_sums(X, w)
    # the counts stay arrays: on a device, they come to the host with the other sums
    return total, wx, part["event"].sum(), int(part["time"].shape[0]), (w != 1.0).sum()


def _pairs(part):
    s, t = K.event_pairs(part["time"], part["event"], part["strata"])
    return [s], [t]


def _concat(a, b):
    return a[0] + b[0], a[1] + b[1]


def _prepare(part, times, keys, facts, mean, unit):
    xp = array_namespace(part["X"])
    grid = K.CoxGrid(times, keys, **facts)
    cp = K.prepare(part["X"], part["time"], part["event"], part.get("entry"),
                   part["strata"], part["weights"], grid, mean,
                   unit=None if xp is np else unit)
    cp.cluster = part.get("cluster")
    return cp


def _pass1(cp, beta, key):
    xp = array_namespace(cp.w)
    out = K.pass1(cp, beta, key)
    if xp is np:
        return out
    shift, s0, s1, e0, e1 = out
    # off the CPU one array: one transfer to the host
    return xp.concatenate([xp.reshape(shift, (1,)), s0, xp.reshape(s1, (-1,)), e0,
                           xp.reshape(e1, (-1,))])


def _add_pass1(x, y):
    """Two partitions' pass-1 sums added (``kernels.cox.add_shifted``; packed off the CPU)."""
    if isinstance(x, tuple):
        return K.add_shifted(x, y)
    shift = max(x[0], y[0])
    a, b = x[1:], y[1:]
    if x[0] != shift:
        a = a * math.exp(x[0] - shift)
    if y[0] != shift:
        b = b * math.exp(y[0] - shift)
    return np.concatenate([[shift], a + b])


def _unpack1(flat, G, p):
    if isinstance(flat, tuple):
        return flat
    s0, s1 = flat[1:1 + G], flat[1 + G:1 + G + G * p].reshape(G, p)
    rest = flat[1 + G + G * p:]
    return float(flat[0]), s0, s1, rest[:G], rest[G:].reshape(G, p)


def _pass2(cp, packed, shift, key):
    """``packed``: β, then the grid weights c and e (one transfer to the device)."""
    p, G = cp.n_covariates, cp.grid_size
    return K.pass2(cp, packed[:p], packed[p:p + G], packed[p + G:], shift, key)


def _cox_meat(cp, beta, terms, shift=0.0):
    xp = array_namespace(cp.w)
    U = R.cox_scores(cp, xp.asarray(beta), terms, shift)
    # rows never at risk at an event time were dropped by prepare: their residual is 0
    order = xp.arange(cp.b.shape[0]) if cp.order is None else cp.order
    return R.cluster_meat(U, order if cp.cluster is None else cp.cluster[order])


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
        if not host_bool(xp.all((d == 0) | (d == 1))):
            raise ModelError("event must be 0 or 1")
        w = xp.ones(n) if weights is None else as_vector(weights, n, "weights", xp)
        if host_bool(xp.any(w < 0)):
            raise ModelError("weights must be non-negative")
        part = {"X": X, "time": t, "event": d, "weights": w}
        if entry is not None:
            e = as_vector(entry, n, "entry", xp)
            if host_bool(xp.any(e >= t)):
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
        total, wx, events, n, not_one = parts.map_reduce(_sums)
        total, wx, events = float(to_numpy(total)), to_numpy(wx), float(to_numpy(events))
        if events == 0:
            raise ModelError("Cox model: there are no events")
        mean = wx / total
        s_list, t_list = parts.map_reduce(_pairs, combine=_concat)
        grid = K.make_grid(s_list, t_list)
        G = grid.size
        prepared = parts.map(_prepare, grid.times, grid.keys, K.grid_facts(grid), mean,
                             int(not_one) == 0)
        m, dw, xd = prepared.map_reduce(K.fixed_sums)
        xd_np = to_numpy(xd)
        ties = self.ties

        def evaluate(beta, need_information):
            key = beta.tobytes()   # names β for the partitions' cached risks
            shift, s0, s1, e0, e1 = _unpack1(
                prepared.map_reduce(_pass1, beta, key, combine=_add_pass1), G, p)
            ll_rs, score_rs, outer, c, e = K.grid_terms(s0, s1, e0, e1, m, dw, ties)
            # the sums were taken times exp(−shift): log S0 is shift more than log(s0)
            ll = float(xd_np @ beta) + float(to_numpy(ll_rs)) - shift * float(to_numpy(dw.sum()))
            score = xd_np - to_numpy(score_rs)
            info = None
            if need_information and np.isfinite(ll):
                packed = np.concatenate([beta, c, e])
                info = to_numpy(prepared.map_reduce(_pass2, packed, shift, key)) - \
                    to_numpy(outer)
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
            shift, s0, s1, e0, e1 = _unpack1(
                prepared.map_reduce(_pass1, beta, beta.tobytes(), combine=_add_pass1), G, p)
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
