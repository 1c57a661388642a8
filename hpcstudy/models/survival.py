"""Kaplan–Meier survival and Aalen–Johansen cumulative incidence, with delayed entry.

    km = KaplanMeier().fit(duration, event, entry=None)
    km.timeline_, km.survival_, km.lower_95_, km.upper_95_, km.at_risk_, km.predict(t)

    aj = AalenJohansen().fit(duration, cause, event_of_interest=1)   # cause 0 = censored
    aj.timeline_, aj.cumulative_incidence_
"""

from __future__ import annotations

import numpy as np

from hpcstudy_kernels import survival as K
from hpcstudy_kernels._namespace import array_namespace, to_numpy

from .base import Z95, ModelError
from .partitions import LocalPartitions, Partitions
from .validate import as_vector, host_bool, host_value


def _times(part):
    return [K.event_times(part["time"], part["event"])]


def _concat(a, b):
    return a + b


def _counts(part, grid, causes):
    return K.counts(part["time"], part["event"], part.get("entry"), part["weights"], grid,
                    causes)


def _part(duration, event, entry, weights):
    xp = array_namespace(duration) if hasattr(duration, "shape") else np
    t = as_vector(duration, len(duration), "duration", xp)
    n = t.shape[0]
    e = as_vector(event, n, "event", xp)
    part = {"time": t, "event": e,
            "weights": xp.ones(n) if weights is None else as_vector(weights, n, "weights", xp)}
    if entry is not None:
        en = as_vector(entry, n, "entry", xp)
        if host_bool(xp.any(en >= t)):
            raise ModelError("entry must be before duration for every row")
        part["entry"] = en
    return part


def _grid(parts: Partitions):
    times = parts.map_reduce(_times, combine=_concat)
    xp = array_namespace(*times)
    return xp.unique(xp.concatenate(times))


class KaplanMeier:
    """Product-limit survival with Greenwood variance and log(−log) 95 % limits."""

    def fit(self, duration, event, entry=None, weights=None):
        part = _part(duration, event, entry, weights)
        ev = part["event"]
        xp = array_namespace(ev)
        if not host_bool(xp.all((ev == 0) | (ev == 1))):
            raise ModelError("event must be 0 or 1")
        return self.fit_partitions(LocalPartitions([part]))

    def fit_partitions(self, parts: Partitions):
        grid = _grid(parts)
        at_risk, events = parts.map_reduce(_counts, grid, 1)
        self.timeline_ = to_numpy(grid)
        self.at_risk_ = to_numpy(at_risk)
        self.events_ = to_numpy(events[0])
        n, d = self.at_risk_, self.events_
        with np.errstate(divide="ignore", invalid="ignore"):
            self.survival_ = np.cumprod(1 - d / n)
            self.greenwood_ = np.cumsum(np.where(n > d, d / (n * (n - d)), 0.0))
            log_s = np.log(self.survival_)
            half = Z95 * np.sqrt(self.greenwood_) / log_s
            a = np.exp(-np.exp(np.log(-log_s) - half))
            b = np.exp(-np.exp(np.log(-log_s) + half))
        self.lower_95_ = np.where(np.isfinite(a), np.minimum(a, b), np.nan)
        self.upper_95_ = np.where(np.isfinite(b), np.maximum(a, b), np.nan)
        return self

    def predict(self, t):
        """Survival at times ``t`` (1 before the first event)."""
        i = np.searchsorted(self.timeline_, np.asarray(t, float), side="right")
        return np.concatenate([[1.0], self.survival_])[i]

    @property
    def median_(self) -> float:
        below = np.flatnonzero(self.survival_ <= 0.5)
        return float(self.timeline_[below[0]]) if below.size else float("inf")


class AalenJohansen:
    """Cumulative incidence of one cause with competing causes (cause 0 = censored)."""

    def fit(self, duration, cause, event_of_interest: int = 1, entry=None, weights=None):
        part = _part(duration, cause, entry, weights)
        c = part["event"]
        xp = array_namespace(c)
        if host_bool(xp.any(c < 0) | xp.any(c != xp.floor(c))):
            raise ModelError("cause must hold integer codes: 0 censored, 1, 2, … causes")
        self.causes_ = int(host_value(c.max())) if c.shape[0] else 0
        if not 1 <= event_of_interest <= max(self.causes_, 1):
            raise ModelError(f"event_of_interest {event_of_interest} does not occur")
        return self.fit_partitions(LocalPartitions([part]), event_of_interest, self.causes_)

    def fit_partitions(self, parts: Partitions, event_of_interest: int, causes: int):
        grid = _grid(parts)
        at_risk, events = parts.map_reduce(_counts, grid, causes)
        n, d = to_numpy(at_risk), to_numpy(events)
        total = d.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            surv = np.cumprod(1 - total / n)
            before = np.concatenate([[1.0], surv[:-1]])
            self.cumulative_incidence_ = np.cumsum(before * d[event_of_interest - 1] / n)
        self.timeline_ = to_numpy(grid)
        self.at_risk_ = n
        self.events_ = d
        self.event_of_interest = event_of_interest
        self.survival_ = surv
        return self

    def predict(self, t):
        i = np.searchsorted(self.timeline_, np.asarray(t, float), side="right")
        return np.concatenate([[0.0], self.cumulative_incidence_])[i]
