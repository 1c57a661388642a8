"""Cox partial likelihood on an event-time grid, as sums that add across partitions.

The grid is the sorted set of (stratum, event time) pairs of the whole data. A person with
entry ``e`` and exit ``t`` is at risk at grid point ``j`` (stratum ``s_j``, time ``τ_j``) when
``s = s_j`` and ``e < τ_j ≤ t`` (counting process, as R's survival and lifelines). Every
person falls in one half-open range ``[a, b)`` of grid indices, so

* pass 1 gives the risk-set sums ``S0[j] = Σ r_i``, ``S1[j] = Σ r_i x_i`` over the people at
  risk, and ``E0``, ``E1`` over the people who die at ``j`` (``r = w·exp(xβ)``);
* the caller sums those over partitions and turns them into per-grid weights;
* pass 2 gives ``Σ_i r_i C_i x_i x_iᵀ`` with ``C_i`` a difference of prefix sums over the grid.

Each Newton step is two reductions of small arrays; person rows never move, and the result
equals a single-array fit. Works on NumPy or CuPy arrays (the namespace of the inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._namespace import array_namespace


@dataclass
class CoxGrid:
    """The global event grid: sorted unique event ``times`` and sorted unique integer keys
    ``stratum·(T+1) + rank(time)`` of (stratum, event time) pairs."""

    times: object  # (T,) sorted unique event times over all strata
    keys: object   # (G,) sorted unique int64 keys

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    def key(self, strata, when):
        xp = array_namespace(self.keys)
        rank = xp.searchsorted(self.times, when, side="right")
        return strata.astype(xp.int64) * (self.times.shape[0] + 1) + rank


def event_pairs(time, event, strata):
    """Unique (stratum, event time) pairs of one partition, as two arrays."""
    xp = array_namespace(time)
    d = event.astype(bool)
    s, t = strata[d], time[d]
    if t.shape[0] == 0:
        return s, t
    if bool(s.min() == s.max()):
        t = xp.unique(t)
        return xp.full(t.shape[0], s[0]), t
    order = xp.lexsort(xp.stack([t, s]))
    s, t = s[order], t[order]
    keep = xp.ones(t.shape[0], dtype=bool)
    keep[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1])
    return s[keep], t[keep]


def make_grid(strata_list, time_list) -> CoxGrid:
    """Grid from the (stratum, time) event pairs of all partitions."""
    xp = array_namespace(*time_list)
    s = xp.concatenate(strata_list).astype(xp.int64)
    t = xp.concatenate(time_list)
    times = xp.unique(t)
    grid = CoxGrid(times, xp.zeros(0, dtype=xp.int64))
    grid.keys = xp.unique(grid.key(s, t))
    return grid


@dataclass
class CoxPart:
    """One partition, prepared for a given grid (independent of β).

    Rows are sorted by grid exit index ``b`` and, within one ``b``, deaths first. So the people
    whose risk ends at a grid point form one contiguous segment and the deaths among them a
    prefix of it: one segmented sum gives both, and a reverse cumulative sum over the (small)
    grid turns them into risk-set sums. Covariates are kept transposed, (p, n), so that every
    segment of a column is contiguous in memory.
    """

    XT: object          # (p, n) float64, centred by the caller, columns in row order
    w: object           # (n,) weights
    a: object           # (n,) first grid index at risk
    b: object           # (n,) one past the last grid index at risk
    starts: object      # segment starts: alternately deaths and survivors of each b
    seg_bins: object    # grid index (b - 1) of each segment
    seg_dead: object    # whether the segment holds deaths
    late: object        # rows with a > 0, sorted by a
    a_starts: object
    a_bins: object
    dead: object        # (n,) bool
    grid_size: int
    buffer: object = None   # (1 + p, n) scratch for r and r·x
    _beta: object = None
    order: object = None    # (n,) the partition's row of each prepared row (robust errors)

    @property
    def X(self):
        return self.XT.T

    def risk_sums(self, beta):
        """(1 + p, n) rows r = w·exp(xβ) and r·x, for the last β (pass 1 and 2 share it)."""
        xp = array_namespace(self.XT)
        if self._beta is None or not bool(xp.all(self._beta == beta)):
            if self.buffer is None:
                self.buffer = xp.empty((self.XT.shape[0] + 1, self.XT.shape[1]))
            r = self.buffer[0]
            xp.exp(beta @ self.XT, out=r)
            r *= self.w
            xp.multiply(self.XT, r[None, :], out=self.buffer[1:])
            self._beta = beta.copy()
        return self.buffer


def _segments(keys, xp):
    """Start positions and key values of the runs of equal values in sorted ``keys``."""
    if keys.shape[0] == 0:
        return xp.zeros(0, dtype=xp.int64), xp.zeros(0, dtype=keys.dtype)
    change = xp.ones(keys.shape[0], dtype=bool)
    change[1:] = keys[1:] != keys[:-1]
    starts = xp.nonzero(change)[0]
    return starts, keys[starts]


def _rank_lookup(times, xp):
    """``t -> searchsorted(times, t, side="right")``; when the event times are whole days over
    a modest span, a table of ranks indexed by day (one gather instead of a binary search per
    row), valid for any t."""
    def search(t):
        return xp.searchsorted(times, t, side="right")

    if times.shape[0] == 0:
        return search
    lo, hi = float(times[0]), float(times[-1])
    whole = bool(xp.all(times == xp.floor(times)))
    if not whole or hi - lo > 5_000_000:
        return search
    lo_i = int(lo)
    table = xp.searchsorted(times, xp.arange(lo_i, int(hi) + 1, dtype=times.dtype),
                            side="right")

    def lookup(t):
        # every grid time is a whole day, so τ ≤ t exactly when τ ≤ floor(t)
        k = xp.floor(t).astype(xp.int64) - lo_i
        out = table[xp.clip(k, 0, table.shape[0] - 1)]
        out = xp.where(k < 0, 0, out)
        return xp.where(k >= table.shape[0], times.shape[0], out)

    return lookup


def _sort_key(values, size, xp):
    # Small unsigned keys let NumPy use a radix sort (linear time) when the grid is small.
    dtype = xp.uint16 if size < 2**16 else xp.int64
    return values.astype(dtype)


def _transpose(X, order, mean, xp):
    """(p, n) array of the rows ``order`` of X minus ``mean``, copied in cache-sized blocks."""
    n, p = order.shape[0], X.shape[1]
    out = xp.empty((p, n))
    step = 1 << 15
    for i in range(0, n, step):
        block = X[order[i:i + step]]
        block -= mean
        out[:, i:i + step] = block.T
    return out


def prepare(X, time, event, entry, strata, weights, grid: CoxGrid, mean=None) -> CoxPart:
    xp = array_namespace(X)
    n = time.shape[0]
    G = grid.size
    one_stratum = grid.keys.shape[0] == grid.times.shape[0] and \
        (G == 0 or bool(grid.keys[-1] == G))
    if one_stratum:
        # one stratum: the keys are the ranks 1 … T of the event times themselves
        rank = _rank_lookup(grid.times, xp)
        b = rank(time)
        a = xp.zeros(n, dtype=b.dtype) if entry is None else rank(entry)
    else:
        b = xp.searchsorted(grid.keys, grid.key(strata, time), side="right")
        if entry is None:  # at risk from the first grid point of the person's own stratum
            start = strata.astype(xp.int64) * (grid.times.shape[0] + 1)
            a = xp.searchsorted(grid.keys, start, side="right")
        else:
            a = xp.searchsorted(grid.keys, grid.key(strata, entry), side="right")
    alive = (event == 0).astype(b.dtype)
    keep = xp.nonzero(b > a)[0]  # people never at risk at an event time add nothing
    key = b[keep] * 2 + alive[keep]  # by exit, deaths first
    order = keep[xp.argsort(_sort_key(key, 2 * G + 2, xp), kind="stable")]
    mean = xp.zeros(X.shape[1]) if mean is None else xp.asarray(mean)
    XT = _transpose(X, order, mean, xp)
    w, a, b = weights[order], a[order], b[order]
    starts, seg_key = _segments(b * 2 + alive[order], xp)
    late = xp.nonzero(a > 0)[0]
    late = late[xp.argsort(_sort_key(a[late], G + 1, xp), kind="stable")]
    a_starts, a_vals = _segments(a[late], xp)
    return CoxPart(XT, w, a, b, starts, seg_key // 2 - 1, seg_key % 2 == 0, late, a_starts,
                   a_vals - 1, alive[order] == 0, G, order=order)


def _segment_sums(values, starts, xp):
    """Sums over consecutive column segments of a (k, n) array, beginning at ``starts``."""
    if starts.shape[0] == 0:
        return xp.zeros(values.shape[:1] + (0,), dtype=values.dtype)
    if xp is np:
        return np.add.reduceat(values, starts, axis=1)
    csum = xp.concatenate([xp.zeros((values.shape[0], 1), dtype=values.dtype),
                           xp.cumsum(values, axis=1)], axis=1)
    ends = xp.concatenate([starts[1:], xp.asarray([values.shape[1]])])
    return csum[:, ends] - csum[:, starts]


def _on_grid(seg, bins, G, xp):
    """Scatter per-segment sums onto the grid (segments with the same bin are added)."""
    full = xp.zeros((seg.shape[0], G), dtype=seg.dtype)
    if xp is np:
        np.add.at(full.T, bins, seg.T)
    else:
        for k in range(seg.shape[0]):
            full[k] = xp.bincount(bins, weights=seg[k], minlength=G)
    return full


def _leaving_after(full, xp):
    """Σ over bins ≥ j, for every grid point j (a reverse cumulative sum along the grid)."""
    return xp.cumsum(full[:, ::-1], axis=1)[:, ::-1]


def fixed_sums(part: CoxPart):
    """β-independent sums: deaths per grid point (count, Σw) and Σ w·x over deaths."""
    xp = array_namespace(part.XT)
    G = part.grid_size
    d = part.seg_dead
    ones_w = xp.stack([xp.ones(part.w.shape[0]), part.w])
    counts = _segment_sums(ones_w, part.starts, xp)[:, d]
    full = _on_grid(counts, part.seg_bins[d], G, xp)
    xd = part.XT[:, part.dead] @ part.w[part.dead]
    return full[0], full[1], xd


def pass1(part: CoxPart, beta):
    """Risk-set sums at β: S0 (G,), S1 (G, p), and over deaths E0 (G,), E1 (G, p)."""
    xp = array_namespace(part.XT)
    G = part.grid_size
    both = part.risk_sums(beta)  # (1 + p, n): r and r·x
    seg = _segment_sums(both, part.starts, xp)
    d = part.seg_dead
    # each grid point has at most one death segment and one survivor segment
    e = xp.zeros((both.shape[0], G))
    e[:, part.seg_bins[d]] = seg[:, d]
    s = e.copy()
    alive = ~d
    s[:, part.seg_bins[alive]] += seg[:, alive]
    s = _leaving_after(s, xp)
    if part.late.shape[0]:
        # people who entered after grid point j were never at risk there: take them out
        late = _segment_sums(both[:, part.late], part.a_starts, xp)
        full = xp.zeros((both.shape[0], G))
        full[:, part.a_bins] = late
        s = s - _leaving_after(full, xp)
    return s[0], s[1:].T, e[0], e[1:].T


def pass2(part: CoxPart, beta, c, e):
    """This partition's share of Σ_j c_j S2_j − Σ_j e_j E2_j: a (p, p) matrix."""
    xp = array_namespace(part.XT)
    both = part.risk_sums(beta)
    cum = xp.concatenate([xp.zeros(1), xp.cumsum(c)])
    v = cum[part.b] - cum[part.a]
    d = part.dead
    v[d] -= e[part.b[d] - 1]
    if xp is not np:
        return (both[1:] * v[None, :]) @ part.XT.T  # reuses pass 1's r·x rows
    # On the CPU, in chunks of rows that stay in cache: no (p, n) temporary per step.
    p, n = part.XT.shape
    out = np.zeros((p, p))
    step = max(1024, (1 << 21) // max(p, 1))
    for i in range(0, n, step):
        j = min(n, i + step)
        out += (both[1:, i:j] * v[None, i:j]) @ part.XT[:, i:j].T
    return out


def grid_terms(s0, s1, e0, e1, m, dw, ties: str):
    """From the reduced sums: the log-likelihood's risk-set part, the score's risk-set part,
    the outer-product part of the information, and the weights c, e that pass 2 needs.

    Efron: with ``m`` tied deaths of mean weight ``w̄`` at a grid point, the k-th of them sees
    the denominator ``S0 − (k/m)·E0`` (k = 0 … m−1). Breslow: ``S0`` for all of them.
    """
    xp = array_namespace(s0)
    G = s0.shape[0]
    has = m > 0
    if ties == "breslow":
        inv = xp.where(has, 1.0 / xp.where(has, s0, 1.0), 0.0)
        c = dw * inv
        alpha = dw * inv * inv
        loglik = -(dw[has] * xp.log(s0[has])).sum()
        score = c @ s1
        outer = (s1 * alpha[:, None]).T @ s1
        return loglik, score, outer, c, xp.zeros(G)
    mi = m.astype(xp.int64)
    jj = xp.repeat(xp.arange(G), mi)
    start = xp.cumsum(mi) - mi
    k = xp.arange(jj.shape[0]) - start[jj]
    f = k / m[jj]
    meanwt = xp.where(has, dw / xp.where(has, m, 1.0), 0.0)[jj]
    den = s0[jj] - f * e0[jj]
    inv = 1.0 / den
    inv2 = inv * inv
    loglik = -(meanwt * xp.log(den)).sum()
    c = xp.bincount(jj, weights=meanwt * inv, minlength=G)
    e = xp.bincount(jj, weights=meanwt * f * inv, minlength=G)
    alpha = xp.bincount(jj, weights=meanwt * inv2, minlength=G)
    beta_ = xp.bincount(jj, weights=meanwt * f * inv2, minlength=G)
    gamma = xp.bincount(jj, weights=meanwt * f * f * inv2, minlength=G)
    score = c @ s1 - e @ e1
    cross = (s1 * beta_[:, None]).T @ e1
    outer = (s1 * alpha[:, None]).T @ s1 - cross - cross.T + (e1 * gamma[:, None]).T @ e1
    return loglik, score, outer, c, e


def weighted_sums(X, w):
    """Σ w and Σ w·x: for centring the covariates across partitions."""
    return w.sum(), w @ X


__all__ = ["CoxGrid", "CoxPart", "event_pairs", "make_grid", "prepare", "fixed_sums", "pass1",
           "pass2", "grid_terms", "weighted_sums"]
