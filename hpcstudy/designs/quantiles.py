"""Exact quantiles of values spread over partitions, without moving the values.

    quantile(parts, q, values, *args)        # == np.quantile(all values, q), bit for bit
    percentile(parts, p, values, *args)      # == np.percentile(all values, p)
    smooth_quantiles(parts, qs, k, values, *args)   # == balance.smooth_quantile per series

``values(part, *args)`` gives the partition's values (a 1-D array of any real dtype, read as
float64): one array for ``quantile``/``percentile``; a list of arrays (series, e.g. one per
covariate and arm) for ``smooth_quantiles``. All values are those of ``np.concatenate`` of the
partitions' arrays, in partition order.

How: each partition sorts its values once, as ``uint64`` keys whose order is the floats' order
(the sign bit flipped for positive numbers, all bits for negative ones; NaN last), and keeps them
where it lives. Each wanted rank is then found by rounds over a key interval known to hold it:
the client sends ``BINS + 1`` cut points, each partition answers how many of its keys lie below
each (a ``searchsorted``) and the least and greatest key of the interval; the client keeps the
bin holding the rank. An interval narrows by ``BINS`` a round or collapses to one key, so a rank
takes at most ⌈64 / log2 BINS⌉ + 1 rounds (typically 5 to 9) of ``BINS + 3`` numbers per rank,
whatever the number of values. The ranks after a found one (np.quantile's upper neighbour, the
rest of a smoothed quantile's window of ``k``) come in one more round: the count of keys up to
it and the least ``k - 1`` keys above it. Under a ``distributed`` client the partitions' answers
are combined on the workers (sums, least, greatest: in any order the same), so the client gets
one answer a round, not one a partition. np.quantile's interpolation is then done on the host
with NumPy's own arithmetic (``_lerp``), and a smoothed quantile's ``k`` values are averaged
as ``ndarray.mean`` averages the slice of the sorted values: the same bits. The values that do
reach the client are those a published figure is made of: a quantile's two neighbours, a
smoothed quantile's ``k`` values.

Per-partition code uses only the namespace of the partition's arrays (a GPU or the stand-in).
Exact means bit-identical to NumPy on the gathered float64 values, with two exceptions: a value
set holding both -0.0 and 0.0 may give a zero of the other sign than NumPy's (the keys order
-0.0 first; NumPy's sort leaves the two in its own order), and NaN results are the canonical NaN
(np.quantile with any NaN gives NaN, as here). An empty value set is refused (``ValueError``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import numpy as np

from hpcstudy_kernels._namespace import array_namespace

BINS = 16
_SIGN = 1 << 63
NAN_KEY = (1 << 64) - 1   # every NaN's key: after +inf
_MAX_ROUNDS = 80
# typed scalars for device code: a Python int past int64 (or mixed with uint64 arrays) is
# promoted differently by CuPy and NumPy 1.x
_U_SIGN, _U_NAN, _U_0, _U_1, _U_63 = (np.uint64(v) for v in (_SIGN, NAN_KEY, 0, 1, 63))


# -- keys ---------------------------------------------------------------------------------------
def _keys(x):
    """uint64 keys of float64 values, in the values' order (NaN last, -0.0 before 0.0)."""
    xp = array_namespace(x)
    bits = x.view(xp.uint64)
    key = xp.where((bits >> _U_63) == _U_1, ~bits, bits | _U_SIGN)
    return xp.where(xp.isnan(x), _U_NAN, key)


def key_of(x) -> np.ndarray:
    """Host keys of host float64 values (for tests and the client)."""
    return _keys(np.asarray(x, np.float64).reshape(-1))


def value_of(keys) -> np.ndarray:
    """The float64 values of host keys (NaN for NAN_KEY)."""
    k = np.asarray(keys, np.uint64)
    bits = np.where(k >= np.uint64(_SIGN), k ^ np.uint64(_SIGN), ~k)
    out = bits.view(np.float64).copy()
    out[k == np.uint64(NAN_KEY)] = np.nan
    return out


# -- per partition ------------------------------------------------------------------------------
def _sorted_keys(part, values: Callable, args: tuple, many: bool):
    got = values(part, *args)
    series = got if many else [got]
    out = []
    for v in series:
        xp = array_namespace(v)
        out.append(xp.sort(_keys(xp.reshape(v, (-1,)).astype(xp.float64))))
    return out


def _sizes(keys):
    """Per series: [values, non-NaN values, least key, greatest non-NaN key] (uint64)."""
    rows = []
    for k in keys:
        xp = array_namespace(k)
        n = k.shape[0]
        if n == 0:
            rows.append(xp.stack([xp.zeros((), dtype=xp.uint64), xp.zeros((), dtype=xp.uint64),
                                  xp.full((), _U_NAN, dtype=xp.uint64),
                                  xp.zeros((), dtype=xp.uint64)]))
            continue
        valid = xp.sum(k != _U_NAN).astype(xp.int64)
        has = valid > 0
        rows.append(xp.stack([xp.full((), n, dtype=xp.uint64), valid.astype(xp.uint64),
                              xp.where(has, k[0], _U_NAN).astype(xp.uint64),
                              xp.where(has, k[xp.maximum(valid - 1, 0)], _U_0).astype(xp.uint64)]))
    return xp.stack(rows)


def _merge_sizes(a, b):
    return np.column_stack([a[:, 0] + b[:, 0], a[:, 1] + b[:, 1], np.minimum(a[:, 2], b[:, 2]),
                            np.maximum(a[:, 3], b[:, 3])])


def _counts(keys, edges, spans):
    """Per request (a row of ``edges``: cut points, the first and last bounding the interval
    [edges[0], edges[-1] - 1]): the keys below each cut point, then the interval's least and
    greatest key (NAN_KEY and 0 where it holds none). ``spans``: (series, first row, end row)."""
    out = []
    for s, a, b in spans:
        k, e = keys[s], edges[a:b]
        xp = array_namespace(k, e)
        pos = xp.reshape(xp.searchsorted(k, xp.reshape(e, (-1,))), e.shape)
        n = k.shape[0]
        first, end = pos[:, 0], pos[:, -1]
        if n == 0:
            lo = xp.full(first.shape, _U_NAN, dtype=xp.uint64)
            hi = xp.zeros(first.shape, dtype=xp.uint64)
        else:
            some = first < end
            lo = xp.where(some, k[xp.minimum(first, n - 1)], _U_NAN).astype(xp.uint64)
            hi = xp.where(some, k[xp.maximum(end - 1, 0)], _U_0).astype(xp.uint64)
        out.append(xp.concatenate([pos.astype(xp.uint64), lo[:, None], hi[:, None]], axis=1))
    return out[0] if len(out) == 1 else xp.concatenate(out, axis=0)


def _merge_counts(a, b):
    out = a + b
    out[:, -2] = np.minimum(a[:, -2], b[:, -2])
    out[:, -1] = np.maximum(a[:, -1], b[:, -1])
    return out


def _after(keys, starts, spans, m: int):
    """Per request (a key a in ``starts``): the keys ≤ a, then the ``m`` least keys above a
    (NAN_KEY past the partition's last): one row of 1 + m numbers."""
    out = []
    for s, i, j in spans:
        k = keys[s]
        xp = array_namespace(k, starts)
        n = k.shape[0]
        at = xp.searchsorted(k, starts[i:j], side="right")
        if n == 0 or m == 0:
            nxt = xp.full((j - i, m), _U_NAN, dtype=xp.uint64)
        else:
            ix = at[:, None] + xp.arange(m)[None, :]
            nxt = xp.where(ix < n, k[xp.minimum(ix, n - 1)], _U_NAN).astype(xp.uint64)
        out.append(xp.concatenate([at.astype(xp.uint64)[:, None], nxt], axis=1))
    return out[0] if len(out) == 1 else xp.concatenate(out, axis=0)


def _merge_after(a, b):
    """Counts added; of the two partitions' least keys above a, the least ``m``."""
    m = a.shape[1] - 1
    least = np.sort(np.concatenate([a[:, 1:], b[:, 1:]], axis=1), axis=1)[:, :m]
    return np.concatenate([a[:, :1] + b[:, :1], least], axis=1)


# -- on the client ------------------------------------------------------------------------------
def _reduce(parts, fn, *args, combine):
    """``parts.map_reduce(fn, *args, combine=combine)``; under a ``distributed`` client the
    results are combined on the workers, in a tree, so this process receives one result, not
    one a partition (counts, least and greatest keys: the order of combining does not matter)."""
    client = getattr(parts, "client", None)
    if client is None or len(parts.parts) < 2:
        return parts.map_reduce(fn, *args, combine=combine)
    level = [client.submit(parts._task(fn, True, i), p, *args, pure=False)
             for i, p in enumerate(parts.parts)]
    while len(level) > 1:
        pairs = [client.submit(combine, a, b, pure=False)
                 for a, b in zip(level[::2], level[1::2], strict=False)]
        level = pairs + level[len(pairs) * 2:]
    return level[0].result()


class _Search:
    """The partitions' sorted keys (left where they live) and their sizes."""

    def __init__(self, parts, values, args, many):
        self.keys = parts.map(_sorted_keys, values, tuple(args), many)
        sizes = np.asarray(_reduce(self.keys, _sizes, combine=_merge_sizes), np.uint64)
        self.n = [int(x) for x in sizes[:, 0]]
        self.valid = [int(x) for x in sizes[:, 1]]
        self.lo = [int(x) for x in sizes[:, 2]]
        self.hi = [int(x) for x in sizes[:, 3]]
        self.rounds = 0

    def keys_at(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """The key of each (series, rank); ranks in [0, n) of their series."""
        done: dict = {}
        todo: dict = {}
        for s, r in wanted:
            if r >= self.valid[s]:
                done[(s, r)] = NAN_KEY
            elif self.lo[s] == self.hi[s]:
                done[(s, r)] = self.lo[s]
            else:
                todo[(s, r)] = (self.lo[s], self.hi[s])
        while todo:
            self.rounds += 1
            if self.rounds > _MAX_ROUNDS:   # each round narrows BINS-fold: never reached
                raise RuntimeError("quantile search did not converge")
            requests = sorted({(s, *iv) for (s, _), iv in todo.items()})
            row = {req: i for i, req in enumerate(requests)}
            edges = np.array([[lo + (j * (hi - lo + 1)) // BINS for j in range(BINS + 1)]
                              for _, lo, hi in requests], dtype=np.uint64)
            got = _reduce(self.keys, _counts, edges, _spans(requests), combine=_merge_counts)
            got = np.asarray(got, np.uint64)
            nxt = {}
            for (s, r), (lo, hi) in todo.items():
                i = row[(s, lo, hi)]
                least, most = int(got[i, -2]), int(got[i, -1])
                if least == most:   # the interval holds one key, so the rank's
                    done[(s, r)] = least
                    continue
                below = [int(c) for c in got[i, :-2]]
                j = bisect.bisect_right(below, r) - 1
                new = (max(int(edges[i, j]), least), min(int(edges[i, j + 1]) - 1, most))
                if new[0] == new[1]:
                    done[(s, r)] = new[0]
                else:
                    nxt[(s, r)] = new
            todo = nxt
        return done

    def windows(self, wanted: set[tuple[int, int, int]]) -> dict[tuple, np.ndarray]:
        """The sorted keys of ranks r … r + m - 1 of each (series, r, m): rank r's key by
        rounds, then, in one more, the least m - 1 keys above it and how many are not."""
        first = self.keys_at({(s, r) for s, r, _ in wanted})
        m = max(w for _, _, w in wanted) - 1
        out, more = {}, []
        for s, r, w in wanted:
            key = first[(s, r)]
            if w == 1 or key == NAN_KEY:   # NaN sorts last: all after it are NaN too
                out[(s, r, w)] = np.full(w, key, np.uint64)
            else:
                more.append((s, r, w))
        if more:
            requests = sorted({(s, first[(s, r)]) for s, r, _ in more})
            row = {req: i for i, req in enumerate(requests)}
            starts = np.array([a for _, a in requests], dtype=np.uint64)
            got = np.asarray(_reduce(self.keys, _after, starts, _spans(requests), m,
                                     combine=_merge_after), np.uint64)
            self.rounds += 1
            for s, r, w in more:
                a = first[(s, r)]
                at_most_a, above = int(got[row[(s, a)], 0]), got[row[(s, a)], 1:]
                n_a = min(at_most_a - r, w)   # rank r is a's first in the window
                out[(s, r, w)] = np.concatenate([np.full(n_a, a, np.uint64), above[:w - n_a]])
        return out


def _spans(requests) -> tuple:
    """(series, first row, end row) of each series' run in ``requests`` (sorted by series)."""
    spans, start = [], 0
    for i in range(1, len(requests) + 1):
        if i == len(requests) or requests[i][0] != requests[start][0]:
            spans.append((requests[start][0], start, i))
            start = i
    return tuple(spans)


def _lerp(a: np.float64, b: np.float64, t: np.float64) -> np.float64:
    """NumPy's linear interpolation in np.quantile (numpy.lib._function_base_impl._lerp),
    on scalars: the same operations in the same order."""
    diff = b - a
    out = a + diff * t
    if t >= 0.5:
        out = b - diff * (1 - t)
    return out


def _quantile(parts, q: np.ndarray, values, args, what: str, top: int):
    if q.size and not np.all((q >= 0) & (q <= 1)):   # as NumPy (NaN too)
        raise ValueError(f"{what} must be in the range [0, {top}]")
    search = _Search(parts, values, args, many=False)
    n = search.n[0]
    if n == 0:
        raise ValueError("quantile of no values")
    vi = ((n - 1) * q).reshape(-1)
    if np.issubdtype(vi.dtype, np.integer):   # NumPy takes such ranks without interpolating
        prev = nxt = vi.astype(np.intp)
        gamma = None
    else:
        above = vi >= n - 1
        prev = np.where(above, -1, np.floor(vi)).astype(np.intp)
        nxt = np.where(above, -1, prev + 1).astype(np.intp)
        gamma = vi - prev   # as NumPy: a rank past the last is -1 there (so gamma = n)
    # each q's two neighbours: rank prev and the one after it (the last: itself)
    wanted = {(0, int(a) % n, 1 if int(a) % n == int(b) % n else 2)
              for a, b in zip(prev, nxt, strict=True)}
    got = search.windows(wanted) if search.valid[0] == n else {}
    if search.valid[0] < n:   # NumPy: any NaN makes every quantile NaN
        out = np.full(vi.shape, np.nan)
    else:
        val = {}
        for _, r, w in wanted:
            val.update(zip(range(r, r + w), value_of(got[(0, r, w)]), strict=True))
        if gamma is None:
            out = np.array([val[int(a) % n] for a in prev], dtype=np.float64)
        else:
            out = np.array([_lerp(val[int(a) % n], val[int(b) % n], g)
                            for a, b, g in zip(prev, nxt, gamma, strict=True)],
                           dtype=np.float64)
    out = out.reshape(q.shape)
    return out[()] if out.ndim == 0 else out


def quantile(parts, q, values: Callable, *args):
    """``np.quantile(np.concatenate([values(p, *args) for p in parts]), q)`` (linear), exact,
    receiving O(rounds × BINS) numbers per partition."""
    return _quantile(parts, np.asanyarray(q), values, args, "Quantiles", 1)


def percentile(parts, p, values: Callable, *args):
    """``np.percentile`` of the partitions' values, exact (q = p / 100 as NumPy divides)."""
    return _quantile(parts, np.asanyarray(np.true_divide(p, 100)), values, args, "Percentiles",
                     100)


def smooth_positions(n: int, q: float, k: int) -> tuple[int, int] | None:
    """The sorted positions [lo, lo + k) that balance.smooth_quantile averages (None: n = 0)."""
    if n == 0:
        return None
    k = max(1, min(k, n))
    lo = int(round(q * (n - 1) - (k - 1) / 2))
    lo = min(max(lo, 0), n - k)
    return lo, k


def smooth_quantiles(parts, qs, k: int, values: Callable, *args) -> list[list[float]]:
    """Per series of ``values(part, *args)`` (a list of arrays) and per q in ``qs``: the mean of
    the ``k`` sorted values around the q-quantile's position (balance.smooth_quantile), exact;
    NaN for an empty series."""
    search = _Search(parts, values, args, many=True)
    windows = {}
    for s, n in enumerate(search.n):
        for q in qs:
            pos = smooth_positions(n, q, k)
            if pos is not None:
                windows[(s, q)] = (s, *pos)
    got = search.windows(set(windows.values())) if windows else {}
    out = []
    for s in range(len(search.n)):
        out.append([float(value_of(got[windows[(s, q)]]).mean()) if (s, q) in windows
                    else float("nan") for q in qs])
    return out
