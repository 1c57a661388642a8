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

import math
from dataclasses import dataclass

import numpy as np

from . import cox_cpu
from ._namespace import array_namespace

# |xβ| beyond which r = w·exp(xβ) is computed shifted by the largest xβ (exp(709) overflows;
# below 100, sums of a billion rows and their squares stay finite).
SHIFT_ABOVE = 100.0
# Event days spanning at most this many days are ranked by a table indexed by day.
_DAY_SPAN = 5_000_000


@dataclass
class CoxGrid:
    """The global event grid: sorted unique event ``times`` and sorted unique integer keys
    ``stratum·(T+1) + rank(time)`` of (stratum, event time) pairs."""

    times: object  # (T,) sorted unique event times over all strata
    keys: object   # (G,) sorted unique int64 keys
    # host facts about the grid (``grid_facts``), so that a device never sends them back:
    one_stratum: bool | None = None   # every event in stratum 0
    days: tuple | None = None         # (first, last) event day when all are whole days
    bounds: tuple | None = None       # grid index where each stratum starts, then G

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
    if xp is np and bool(s.min() == s.max()):   # a device would have to say so: sort
        t = _unique_times(t)
        return xp.full(t.shape[0], s[0]), t
    order = xp.lexsort(xp.stack([t, s]))
    s, t = s[order], t[order]
    keep = xp.ones(t.shape[0], dtype=bool)
    keep[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1])
    return s[keep], t[keep]


def _sorted_unique(a, xp):
    """``xp.unique(a)`` of values that are never NaN. On the CPU by a sort and a comparison
    (np.unique's first call imports numpy.ma: 15 ms of a first fit)."""
    if xp is not np:
        return xp.unique(a)
    a = np.sort(a)
    keep = np.ones(a.shape[0], dtype=bool)
    keep[1:] = a[1:] != a[:-1]
    return a[keep]


def _unique_times(t):
    """``np.unique(t)`` of a NumPy array (finite values); whole days over a modest span by
    marking the days seen (linear time) instead of sorting."""
    if t.shape[0] < 1 << 14:
        return _sorted_unique(t, np)
    lo, hi = float(t.min()), float(t.max())
    if not hi - lo <= _DAY_SPAN:
        return _sorted_unique(t, np)
    k = t - lo   # exact for whole days
    day = k.astype(np.int64)
    if not np.array_equal(day, k):
        return _sorted_unique(t, np)
    seen = np.zeros(int(hi - lo) + 1, dtype=bool)
    seen[day] = True
    return np.flatnonzero(seen) + lo


def make_grid(strata_list, time_list) -> CoxGrid:
    """Grid from the (stratum, time) event pairs of all partitions."""
    xp = array_namespace(*time_list)
    s = xp.concatenate(strata_list).astype(xp.int64)
    t = xp.concatenate(time_list)
    times = _sorted_unique(t, xp)
    grid = CoxGrid(times, xp.zeros(0, dtype=xp.int64))
    grid.keys = _sorted_unique(grid.key(s, t), xp)
    return grid


def grid_facts(grid: CoxGrid) -> dict:
    """What ``prepare`` needs to know about a grid as host values (computed where the grid is
    a NumPy or CuPy array): whether it is one stratum, the span of whole event days, and
    where each stratum's grid points start."""
    from ._namespace import to_numpy

    times, keys = to_numpy(grid.times), to_numpy(grid.keys)
    G, T = keys.shape[0], times.shape[0]
    one = G == T and (G == 0 or int(keys[-1]) == G)
    days = None
    if T and bool(np.all(times == np.floor(times))) and times[-1] - times[0] <= _DAY_SPAN:
        days = (int(times[0]), int(times[-1]))
    stratum = keys // (T + 1)
    starts = np.flatnonzero(np.concatenate([[True], stratum[1:] != stratum[:-1]])) if G else \
        np.zeros(0, np.int64)
    return {"one_stratum": bool(one), "days": days,
            "bounds": tuple(int(b) for b in starts) + (int(G),)}


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
    chunks: list = None     # cache-sized column blocks (see _chunks)
    r: object = None        # (n,) w·exp(xβ − shift) at the last β
    buffer: object = None   # (1 + p, n) r and r·x, off the CPU (pass 1 and 2 share it)
    _beta: object = None
    shift: float = 0.0      # see risk
    order: object = None    # (n,) the partition's row of each prepared row (robust errors;
    # None when compiled and every row is kept: the rows are the partition's, in order)
    # With several strata: the grid index where each row's stratum starts (a row is at risk
    # on [a, b) within it) and the strata's grid bounds. Sums over the grid are then taken
    # within each stratum, never across strata and subtracted: a stratum of small risks is
    # never the difference of two sums dominated by another stratum's large ones.
    a0: object = None
    bounds: tuple | None = None
    _key: object = None     # the host key of the β of ``r`` (device path)
    # The compiled CPU passes (kernels/cox_cpu.py) keep no copy: ``XT`` is None, ``rows`` is
    # the caller's (n, p) covariates, uncentred, in their own order; ``keep`` the rows at risk
    # at some grid point (empty: all); ``flags`` per kept row (cox_cpu.DEAD, LATE). The
    # per-row arrays (w, a, b, dead, a0, order) are over the kept rows, in that order; ``a``
    # is None when everyone is at risk from the first grid point (no entry, one stratum).
    rows: object = None
    keep: object = None
    mean: object = None
    flags: object = None
    # pass 1's buckets of r x xᵀ at the last β when it takes one pass per step (cox_cpu)
    buckets: object = None
    # pass 1's (shift, dead, alive, late) bins at the last β (cox_cpu.pass1_bins)
    bins: object = None
    # the kept rows re-laid once for the passes (cox_cpu.pack), one array per chunk, or None
    packed: object = None
    # each kept row's grid slot for pass 2 (cox_cpu.row_flags), or None: b and flags
    slot: object = None

    @property
    def compiled(self) -> bool:
        return self.rows is not None

    @property
    def n_covariates(self) -> int:
        return int(self.mean.shape[0] if self.compiled else self.XT.shape[0])

    @property
    def X(self):
        return self.centred() if self.compiled else self.XT.T

    def centred(self):
        """(n kept, p) centred covariates of the kept rows (a copy when compiled)."""
        if not self.compiled:
            return self.XT.T
        rows = self.rows if self.keep.shape[0] == 0 else self.rows[self.keep]
        return rows - self.mean

    def risk(self, beta, key=None):
        """(n,) r = w·exp(xβ − shift) at β (kept for the last β). ``shift`` is 0 unless some
        |xβ| here exceeds SHIFT_ABOVE, when it is the largest xβ: exp never overflows, and
        ordinary fits keep their bits. Off the CPU, ``key`` (a host value naming β, e.g. its
        bytes) says whether β is the last one, and ``shift`` is a 0-d device array: no value
        comes to the host."""
        if self.compiled:
            if self._beta is None or not bool(np.all(self._beta == beta)):
                _compiled().pass1_bins(self, beta, SHIFT_ABOVE)
            return self.r
        xp = array_namespace(self.XT)
        if xp is not np:
            return self._risk_on_device(beta, key, xp)
        if self._beta is None or not bool(xp.all(self._beta == beta)):
            if self.r is None:
                self.r = xp.empty(self.XT.shape[1])
            r = self.r
            xp.matmul(beta, self.XT, out=r)
            self.shift = 0.0
            if r.shape[0]:
                top, bottom = float(r.max()), float(r.min())
                if max(top, -bottom) > SHIFT_ABOVE:
                    self.shift = top
                    r -= top
            xp.exp(r, out=r)
            if not self.unit_weights:
                r *= self.w
            self._beta = beta.copy()
            if xp is not np:
                if self.buffer is None:
                    self.buffer = xp.empty((self.XT.shape[0] + 1, self.XT.shape[1]))
                self.buffer[0] = r
                xp.multiply(self.XT, r[None, :], out=self.buffer[1:])
        return self.r

    def _risk_on_device(self, beta, key, xp):
        if key is not None and key == self._key:
            return self.r
        if self.r is None:
            self.r = xp.empty(self.XT.shape[1])
        r = self.r
        xp.matmul(beta, self.XT, out=r)
        self.shift = xp.zeros(())
        if r.shape[0]:
            top = r.max()
            self.shift = xp.where(xp.maximum(top, -r.min()) > SHIFT_ABOVE, top, 0.0)
            r -= self.shift
        xp.exp(r, out=r)
        if not self.unit_weights:
            r *= self.w
        self._key = key
        if self.buffer is None:
            self.buffer = xp.empty((self.XT.shape[0] + 1, self.XT.shape[1]))
        self.buffer[0] = r
        xp.multiply(self.XT, r[None, :], out=self.buffer[1:])
        return r

    def risk_rows(self, lo, hi, rows=None, out=None):
        """(1 + p, k) r and r·x of columns lo:hi (or of the columns ``rows``) at the last β."""
        r = self.r[lo:hi] if rows is None else self.r[rows]
        x = self.XT[:, lo:hi] if rows is None else self.XT[:, rows]
        if out is None:
            out = np.empty((x.shape[0] + 1, x.shape[1]))
        out[0] = r
        np.multiply(x, r[None, :], out=out[1:])
        return out

    @property
    def unit_weights(self) -> bool:
        if self._unit is None:
            xp = array_namespace(self.w)
            self._unit = bool(xp.all(self.w == 1.0))
        return self._unit

    _unit: object = None


def _segments(keys, xp):
    """Start positions and key values of the runs of equal values in sorted ``keys``."""
    if keys.shape[0] == 0:
        return xp.zeros(0, dtype=xp.int64), xp.zeros(0, dtype=keys.dtype)
    change = xp.ones(keys.shape[0], dtype=bool)
    change[1:] = keys[1:] != keys[:-1]
    starts = xp.nonzero(change)[0]
    return starts, keys[starts]


def _rank_lookup(times, xp, days=False):
    """``t -> searchsorted(times, t, side="right")``; when the event times are whole days over
    a modest span, a table of ranks indexed by day (one gather instead of a binary search per
    row), valid for any t. ``days``: (first, last) event day, or None when that does not
    hold, as known on the host (``grid_facts``); False: find out here."""
    def search(t):
        return xp.searchsorted(times, t, side="right")

    if times.shape[0] == 0:
        return search
    if days is False:
        lo, hi = float(times[0]), float(times[-1])
        whole = bool(xp.all(times == xp.floor(times)))
        days = (int(lo), int(hi)) if whole and hi - lo <= _DAY_SPAN else None
    if days is None:
        return search
    lo_i, hi_i = days
    table = xp.searchsorted(times, xp.arange(lo_i, hi_i + 1, dtype=times.dtype),
                            side="right")
    if xp is np and _compiled() is not None:
        return lambda t: cox_cpu.day_ranks(t, lo_i, table, times.shape[0])

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
    step = 1 << 13
    if xp is np:
        # np.take into one reused block: about twice as fast as X[order] on a 2-core VM
        buf = np.empty((min(step, n), p))
        for i in range(0, n, step):
            j = min(n, i + step)
            block = buf[:j - i]
            np.take(X, order[i:j], axis=0, out=block)
            np.subtract(block.T, mean[:, None], out=out[:, i:j])   # centre while storing
        return out
    for i in range(0, n, step):
        block = X[order[i:i + step]]
        block -= mean
        out[:, i:i + step] = block.T
    return out


def prepare(X, time, event, entry, strata, weights, grid: CoxGrid, mean=None,
            unit=None) -> CoxPart:
    """``unit``: whether every weight is 1, where the caller knows it (else found here)."""
    xp = array_namespace(X)
    n = time.shape[0]
    G = grid.size
    one_stratum = grid.one_stratum
    if one_stratum is None:
        one_stratum = grid.keys.shape[0] == grid.times.shape[0] and \
            (G == 0 or bool(grid.keys[-1] == G))
    a0 = bounds = None
    if one_stratum:
        # one stratum: the keys are the ranks 1 … T of the event times themselves
        rank = _rank_lookup(grid.times, xp, False if grid.one_stratum is None else grid.days)
        b = rank(time)
        a = xp.zeros(n, dtype=b.dtype) if entry is None else rank(entry)
    else:
        b = xp.searchsorted(grid.keys, grid.key(strata, time), side="right")
        # at risk from the first grid point of the person's own stratum at the earliest
        start = strata.astype(xp.int64) * (grid.times.shape[0] + 1)
        a0 = xp.searchsorted(grid.keys, start, side="right")
        if entry is None:
            a = a0
        else:
            a = xp.searchsorted(grid.keys, grid.key(strata, entry), side="right")
        bounds = grid.bounds if grid.bounds is not None else grid_facts(grid)["bounds"]
    if xp is np and _compiled() is not None:
        return _prepare_compiled(X, event, weights, None if entry is None and one_stratum
                                 else a, b, a0, mean, unit, G, bounds)
    alive = (event == 0).astype(b.dtype)
    keep = xp.nonzero(b > a)[0]  # people never at risk at an event time add nothing
    everyone = keep.shape[0] == n   # (then keep is 0 … n−1: no gathers through it)
    key = b * 2 + alive if everyone else b[keep] * 2 + alive[keep]  # by exit, deaths first
    order = xp.argsort(_sort_key(key, 2 * G + 2, xp), kind="stable")
    if not everyone:
        order = keep[order]
    mean = xp.zeros(X.shape[1]) if mean is None else xp.asarray(mean)
    XT = _transpose(X, order, mean, xp)
    if unit is None:
        unit = bool(xp.all(weights == 1.0))
    w = xp.ones(order.shape[0]) if unit else weights[order]
    a = xp.zeros(order.shape[0], dtype=a.dtype) if entry is None and one_stratum else a[order]
    b = b[order]
    starts, seg_key = _segments(b * 2 + alive[order], xp)
    if a0 is not None:
        a0 = a0[order]
    # people who enter after their stratum's first grid point
    late = xp.nonzero(a > 0 if a0 is None else a > a0)[0]
    late = late[xp.argsort(_sort_key(a[late], G + 1, xp), kind="stable")]
    a_starts, a_vals = _segments(a[late], xp)
    part = CoxPart(XT, w, a, b, starts, seg_key // 2 - 1, seg_key % 2 == 0, late, a_starts,
                   a_vals - 1, alive[order] == 0, G, order=order, a0=a0,
                   bounds=bounds if bounds is not None and len(bounds) > 2 else None)
    part._unit = unit
    if xp is np:
        part.chunks = _chunks(starts, n=XT.shape[1], step=_CHUNK_BYTES // (8 * (XT.shape[0] + 1)))
    return part


def _compiled():
    """The compiled CPU passes (kernels/cox_cpu.py), or None where the C extension was not
    built or HPCSTUDY_NO_COMPILED is set."""
    return cox_cpu if cox_cpu.enabled() else None


def _prepare_compiled(X, event, weights, a, b, a0, mean, unit, G, bounds):
    """A CoxPart for the compiled passes: no sort and no copy of X (see CoxPart.rows).
    ``a`` None: everyone is at risk from the first grid point."""
    rows = np.ascontiguousarray(X, dtype=np.float64)
    flags, kept, slot = cox_cpu.row_flags(b, a, a0, event, slots=True)
    everyone = kept == b.shape[0]
    keep = np.zeros(0, np.int64)
    if not everyone:   # people never at risk at an event time add nothing
        keep = np.flatnonzero((flags & cox_cpu.NOT_AT_RISK) == 0)
        flags, b, slot = flags[keep], b[keep], slot[keep]
        a = a[keep] if a is not None else None
        a0 = a0[keep] if a0 is not None else None
    if unit is None:
        unit = bool(np.all(weights == 1.0))
    w = np.ascontiguousarray(weights if everyone else weights[keep], dtype=np.float64)
    mean = np.zeros(X.shape[1]) if mean is None else np.ascontiguousarray(mean,
                                                                          dtype=np.float64)
    late = np.flatnonzero(flags & cox_cpu.LATE) if a is not None else np.zeros(0, np.int64)
    part = CoxPart(None, w, None if a is None else a.astype(np.int64, copy=False),
                   b.astype(np.int64, copy=False), None, None, None, late, None, None,
                   (flags & cox_cpu.DEAD).view(bool), G, order=None if everyone else keep,
                   a0=a0, bounds=bounds if bounds is not None and len(bounds) > 2 else None,
                   rows=rows, keep=keep, mean=mean, flags=flags, slot=slot)
    part._unit = unit
    part.packed = cox_cpu.pack(part)
    return part


# Column blocks of (1 + p) rows this many bytes stay in a core's cache.
_CHUNK_BYTES = 1 << 21


def _chunks(starts, n, step):
    """Blocks of about ``step`` columns, as (lo, hi, first segment, end segment, segment
    starts relative to lo). A block ends at a segment start where one lies in it, so small
    segments are never split; a segment longer than a block (few distinct event times) is
    split, its parts summed into the same slot."""
    out = []
    step = max(int(step), 1)
    lo = 0
    while lo < n:
        hi = min(n, lo + step)
        if hi < n:
            last = int(np.searchsorted(starts, hi, side="right")) - 1  # segment holding hi
            if int(starts[last]) > lo:
                hi = int(starts[last])
        k0 = int(np.searchsorted(starts, lo, side="right")) - 1
        k1 = int(np.searchsorted(starts, hi, side="left"))
        local = starts[k0:k1] - lo
        local[0] = 0
        out.append((lo, hi, k0, k1, local))
        lo = hi
    return out


def _segment_sums(values, starts, xp):
    """Sums over consecutive column segments of a (k, n) array, beginning at ``starts``."""
    if starts.shape[0] == 0:
        return xp.zeros(values.shape[:1] + (0,), dtype=values.dtype)
    if xp is np:
        return np.add.reduceat(values, starts, axis=1)
    csum = xp.concatenate([xp.zeros((values.shape[0], 1), dtype=values.dtype),
                           xp.cumsum(values, axis=1)], axis=1)
    ends = xp.concatenate([starts[1:], xp.full(1, values.shape[1], dtype=starts.dtype)])
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


def _leaving_after(full, xp, bounds=None):
    """Σ over bins ≥ j, for every grid point j (a reverse cumulative sum along the grid);
    with ``bounds`` (strata), over the bins ≥ j of j's own stratum."""
    if bounds is None:
        return xp.cumsum(full[:, ::-1], axis=1)[:, ::-1]
    out = xp.empty_like(full)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        out[:, lo:hi] = xp.cumsum(full[:, lo:hi][:, ::-1], axis=1)[:, ::-1]
    return out


def strata_cumsum(values, bounds, xp):
    """Cumulative sums along axis 0 of ``values`` (G, …), restarted at each stratum bound."""
    if bounds is None:
        return xp.cumsum(values, axis=0)
    out = xp.empty_like(values)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        out[lo:hi] = xp.cumsum(values[lo:hi], axis=0)
    return out


def over_risk_range(csum, part):
    """Σ over each prepared row's grid range [a, b) of a per-grid quantity, from its
    ``strata_cumsum`` ``csum`` (G, …): the sums never cross strata."""
    xp = array_namespace(csum)
    inside = csum[part.b - 1]
    before = csum[xp.maximum(part.a - 1, 0)]
    entered = part.a > part.a0
    if csum.ndim > 1:
        entered = entered[:, None]
    return inside - xp.where(entered, before, 0.0)


def fixed_sums(part: CoxPart):
    """β-independent sums: deaths per grid point (count, Σw) and Σ w·x over deaths."""
    if part.compiled:
        return _compiled().fixed_sums(part)
    xp = array_namespace(part.XT)
    G = part.grid_size
    d = part.seg_dead
    n = part.w.shape[0]
    # deaths per segment from the segment starts (no pass over the rows); Σw the same when
    # every weight is 1
    ends = xp.concatenate([part.starts[1:], xp.full(min(1, part.starts.shape[0]), n)])
    count = (ends - part.starts).astype(xp.float64)
    sw = count if part.unit_weights else _segment_sums(part.w[None, :], part.starts, xp)[0]
    counts = xp.stack([count, sw])[:, d]
    full = _on_grid(counts, part.seg_bins[d], G, xp)
    # one matrix-vector product over all columns (the living weigh 0), not a copy of the
    # deaths' columns: with 90 % deaths that copy was most of X
    xd = part.XT @ xp.where(part.dead, part.w, 0.0)
    return full[0], full[1], xd


def pass1(part: CoxPart, beta, key=None):
    """Risk-set sums at β: (shift, S0 (G,), S1 (G, p), E0 (G,), E1 (G, p)), every sum
    multiplied by exp(−shift) (see ``CoxPart.risk``; off the CPU ``shift`` is a 0-d device
    array). Combine partitions' results with ``add_shifted``."""
    if part.compiled:
        if part.bins is not None and part._beta is not None and \
                np.array_equal(part._beta, beta):   # (fixed_sums left them at β = 0)
            shift, dead, alive, late = part.bins
        else:
            shift, dead, alive, late = _compiled().pass1_bins(part, beta, SHIFT_ABOVE)
        e = np.ascontiguousarray(dead.T)   # (1 + p, G), as below
        s = _leaving_after(e + alive.T, np, part.bounds)
        if part.late.shape[0]:
            s = s - _leaving_after(np.ascontiguousarray(late.T), np, part.bounds)
        return shift, s[0], s[1:].T, e[0], e[1:].T
    xp = array_namespace(part.XT)
    G = part.grid_size
    part.risk(beta, key)
    if xp is np:
        # r and r·x block by block, each block's segments summed while it is in cache
        seg = np.zeros((part.XT.shape[0] + 1, part.starts.shape[0]))
        step = max((hi - lo for lo, hi, *_ in part.chunks), default=0)
        buf = np.empty((part.XT.shape[0] + 1, step))
        for lo, hi, k0, k1, local in part.chunks:
            seg[:, k0:k1] += np.add.reduceat(part.risk_rows(lo, hi, out=buf[:, :hi - lo]),
                                             local, axis=1)
    else:
        seg = _segment_sums(part.buffer, part.starts, xp)
    k = seg.shape[0]
    d = part.seg_dead
    # each grid point has at most one death segment and one survivor segment
    e = xp.zeros((k, G))
    e[:, part.seg_bins[d]] = seg[:, d]
    s = e.copy()
    alive = ~d
    s[:, part.seg_bins[alive]] += seg[:, alive]
    s = _leaving_after(s, xp, part.bounds)
    if part.late.shape[0]:
        # people who entered after grid point j were never at risk there: take them out
        rows = part.risk_rows(0, 0, part.late) if xp is np else part.buffer[:, part.late]
        late = _segment_sums(rows, part.a_starts, xp)
        full = xp.zeros((k, G))
        full[:, part.a_bins] = late
        s = s - _leaving_after(full, xp, part.bounds)
    return part.shift, s[0], s[1:].T, e[0], e[1:].T


def add_shifted(x, y):
    """Sum of two partitions' ``pass1`` results, brought to the larger shift (exactly the plain
    sum when the shifts are equal, as they are unless a linear predictor is huge)."""
    shift = max(x[0], y[0])
    out = [shift]
    for a, b in zip(x[1:], y[1:], strict=True):
        if x[0] != shift:
            a = a * math.exp(x[0] - shift)
        if y[0] != shift:
            b = b * math.exp(y[0] - shift)
        out.append(a + b)
    return tuple(out)


def pass2(part: CoxPart, beta, c, e, shift=0.0, key=None):
    """This partition's share of Σ_j c_j S2_j − Σ_j e_j E2_j: a (p, p) matrix. ``c`` and ``e``
    come from sums at the combined ``shift`` of pass 1."""
    if part.compiled:
        part.risk(beta)   # r at β (pass 1 normally left it there)
        cs = np.cumsum(c) if part.bounds is None else strata_cumsum(c, part.bounds, np)
        cum = np.concatenate([np.zeros(1), cs])
        scale = 1.0 if part.shift == shift else math.exp(part.shift - shift)
        return _compiled().pass2_sum(part, cum, e, scale)
    xp = array_namespace(part.XT)
    r = part.risk(beta, key)
    if part.bounds is None:
        cum = xp.concatenate([xp.zeros(1), xp.cumsum(c)])
        v = cum[part.b] - cum[part.a]
    else:
        v = over_risk_range(strata_cumsum(c, part.bounds, xp), part)
    d = part.dead
    v[d] -= e[part.b[d] - 1]
    if xp is not np:   # exp(0) = 1 exactly: no test of the shift on the host
        v *= xp.exp(part.shift - shift)
    elif part.shift != shift:
        v *= math.exp(part.shift - shift)
    if xp is not np:
        return (part.buffer[1:] * v[None, :]) @ part.XT.T  # reuses pass 1's r·x rows
    # On the CPU: Σ_i r_i v_i x_i x_iᵀ = T Tᵀ with T = X·sqrt(r v) (r v ≥ 0: c ≥ e at every
    # grid point), in blocks of columns; NumPy hands T @ T.T to BLAS syrk (half of a gemm's
    # work), and no (p, n) temporary is made.
    p, n = part.XT.shape
    rv = r * v
    np.maximum(rv, 0.0, out=rv)  # rounding can leave a −0-ish value where r v is 0
    np.sqrt(rv, out=rv)
    out = np.zeros((p, p))
    step = 1 << 16
    tmp = np.empty((p, min(step, n)))
    for i in range(0, n, step):
        j = min(n, i + step)
        t = tmp[:, :j - i]
        np.multiply(part.XT[:, i:j], rv[None, i:j], out=t)
        out += t @ t.T
    return out


def grid_terms(s0, s1, e0, e1, m, dw, ties: str):
    """From the reduced sums: the log-likelihood's risk-set part, the score's risk-set part,
    the outer-product part of the information, and the weights c, e that pass 2 needs.

    Efron: with ``m`` tied deaths of mean weight ``w̄`` at a grid point, the k-th of them sees
    the denominator ``S0 − (k/m)·E0`` (k = 0 … m−1). Breslow: ``S0`` for all of them.
    """
    with np.errstate(all="ignore"):  # an unusable trial β is reported by a NaN log-likelihood
        out = _grid_terms(s0, s1, e0, e1, m, dw, ties)
    return out


# A risk-set sum below this (after the shift) is unusable (its inverse square overflows): the
# trial β spans more than floats hold; its log-likelihood is NaN, so Newton halves the step.
_UNDERFLOW = 1e-150


def _grid_terms(s0, s1, e0, e1, m, dw, ties):
    xp = array_namespace(s0)
    G = s0.shape[0]
    has = m > 0
    if ties == "breslow":
        inv = xp.where(has, 1.0 / xp.where(has, s0, 1.0), 0.0)
        c = dw * inv
        alpha = dw * inv * inv
        loglik = -(dw[has] * xp.log(s0[has])).sum()
        if bool((s0[has] < _UNDERFLOW).any()):
            loglik = loglik * xp.nan
        if xp is np and _compiled() is not None:
            zero = np.zeros(G)
            score, outer = cox_cpu.grid_products(s1, None, c, zero, alpha, zero, zero)
            return loglik, score, outer, c, zero
        score = c @ s1
        outer = (s1 * alpha[:, None]).T @ s1
        return loglik, score, outer, c, xp.zeros(G)
    if xp is np:
        return _efron_cpu(s0, s1, e0, e1, m, dw)
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
    if den.shape[0] and bool((den < _UNDERFLOW).any()):
        loglik = loglik * xp.nan
    c = xp.bincount(jj, weights=meanwt * inv, minlength=G)
    e = xp.bincount(jj, weights=meanwt * f * inv, minlength=G)
    alpha = xp.bincount(jj, weights=meanwt * inv2, minlength=G)
    beta_ = xp.bincount(jj, weights=meanwt * f * inv2, minlength=G)
    gamma = xp.bincount(jj, weights=meanwt * f * f * inv2, minlength=G)
    score = c @ s1 - e @ e1
    cross = (s1 * beta_[:, None]).T @ e1
    outer = (s1 * alpha[:, None]).T @ s1 - cross - cross.T + (e1 * gamma[:, None]).T @ e1
    return loglik, score, outer, c, e


def _efron_cpu(s0, s1, e0, e1, m, dw):
    """Efron's terms on the CPU: grid points with one death need no expansion (their
    denominator is S0); the others are expanded once into one (5, deaths) array and summed
    per grid point by one segmented sum (the expansion is sorted by grid point)."""
    if _compiled() is not None:   # one grid point at a time, no expansion (cox_cpu.py)
        c, e, alpha, beta_, gamma, ll, bad = cox_cpu.efron_terms(s0, e0, m, dw, _UNDERFLOW)
        score, outer = cox_cpu.grid_products(s1, e1, c, e, alpha, beta_, gamma)
        return -ll * np.nan if bad else -ll, score, outer, c, e
    G = s0.shape[0]
    c, e = np.zeros(G), np.zeros(G)
    alpha, beta_, gamma = np.zeros(G), np.zeros(G), np.zeros(G)
    one = np.flatnonzero(m == 1)
    inv1 = 1.0 / s0[one]
    c[one] = dw[one] * inv1
    alpha[one] = c[one] * inv1
    loglik = -(dw[one] * np.log(s0[one])).sum()
    bad = bool((s0[one] < _UNDERFLOW).any())
    many = np.flatnonzero(m > 1)
    if many.shape[0]:
        mi = m[many].astype(np.int64)
        # grid points in blocks of about _EFRON_BLOCK deaths, so that each block's expansion
        # (a dozen arrays) stays in a core's cache; a grid point is never split
        cum = np.cumsum(mi)
        cuts = np.unique(np.searchsorted(cum, np.arange(_EFRON_BLOCK, int(cum[-1]),
                                                        _EFRON_BLOCK), side="right"))
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, many.shape[0]], strict=True):
            if hi > lo:
                ll, bad_k = _efron_block(many[lo:hi], mi[lo:hi], s0, e0, m, dw, c, e, alpha,
                                         beta_, gamma)
                loglik -= ll
                bad = bad or bad_k
    if bad:
        loglik = loglik * np.nan
    return _efron_products(loglik, s1, e1, c, e, alpha, beta_, gamma, many.shape[0] > 0)


def _efron_products(loglik, s1, e1, c, e, alpha, beta_, gamma, ties):
    """The score's and the information's grid parts from Efron's per-grid-point sums."""
    root = np.sqrt(alpha)[:, None] * s1
    outer = root.T @ root  # alpha ≥ 0: syrk
    if not ties:  # no ties: e, beta and gamma are 0
        return loglik, c @ s1, outer, c, e
    score = c @ s1 - e @ e1
    cross = (s1 * beta_[:, None]).T @ e1
    outer = outer - cross - cross.T + (e1 * gamma[:, None]).T @ e1
    return loglik, score, outer, c, e


_EFRON_BLOCK = 1 << 15


def _efron_block(many, mi, s0, e0, m, dw, c, e, alpha, beta_, gamma):
    """Efron's terms of the grid points ``many`` (each with ``mi`` > 1 deaths), written into
    c, e, alpha, beta_, gamma; returns (Σ meanwt·log den, whether some den underflows)."""
    start = np.cumsum(mi) - mi
    jj = np.repeat(np.arange(many.shape[0]), mi)
    mm = m[many][jj]
    f = (np.arange(jj.shape[0]) - start[jj]) / mm
    meanwt = (dw[many] / m[many])[jj]
    den = s0[many][jj] - f * e0[many][jj]
    bad = bool((den < _UNDERFLOW).any())
    ll = (meanwt * np.log(den)).sum()
    inv = 1.0 / den
    W = np.empty((5, jj.shape[0]))
    np.multiply(meanwt, inv, out=W[0])   # for c
    np.multiply(W[0], f, out=W[1])       # e
    np.multiply(W[0], inv, out=W[2])     # alpha
    np.multiply(W[1], inv, out=W[3])     # beta
    np.multiply(W[3], f, out=W[4])       # gamma
    sums = np.add.reduceat(W, start, axis=1)
    c[many], e[many], alpha[many], beta_[many], gamma[many] = sums
    return ll, bad


def weighted_sums(X, w):
    """Σ w and Σ w·x: for centring the covariates across partitions."""
    if array_namespace(X) is not np:
        return w.sum(), w @ X
    # in blocks of rows: one large product makes OpenBLAS start its threads, which spin at
    # 2-3x the CPU time of one core reading X (measured on a shared 2-core VM)
    wx = np.zeros(X.shape[1])
    step = 1 << 15
    for i in range(0, X.shape[0], step):
        wx += w[i:i + step] @ X[i:i + step]
    return w.sum(), wx


__all__ = ["CoxGrid", "CoxPart", "event_pairs", "make_grid", "grid_facts", "prepare",
           "fixed_sums", "pass1", "pass2", "add_shifted", "grid_terms", "weighted_sums",
           "strata_cumsum", "over_risk_range", "SHIFT_ABOVE"]
