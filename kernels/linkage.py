"""Joins on integer keys: pnr within a partition, recnum between lpr_adm and lpr_diag.

All functions take NumPy or CuPy arrays and return arrays of the same library.
"""

from __future__ import annotations

from ._namespace import array_namespace


def lookup(keys, query):
    """Many-to-one: position of each ``query`` value in ``keys`` (unique), or −1 if absent.

    >>> lookup(np.array([30, 10, 20]), np.array([20, 40]))  # array([ 2, -1])
    """
    xp = array_namespace(keys, query)
    order = xp.argsort(keys, kind="stable")
    sk = keys[order]
    pos = xp.searchsorted(sk, query)
    pos_c = xp.minimum(pos, max(sk.shape[0] - 1, 0))
    found = (pos < sk.shape[0]) & (sk[pos_c] == query) if sk.shape[0] else \
        xp.zeros(query.shape[0], dtype=bool)
    out = xp.full(query.shape[0], -1, dtype=xp.int64)
    out[found] = order[pos_c[found]]
    return out


def join(left, right):
    """Many-to-many inner join: index pairs (li, ri) with ``left[li] == right[ri]``, ordered by
    ``li`` then by position in ``right`` (so the result is deterministic)."""
    xp = array_namespace(left, right)
    order = xp.argsort(right, kind="stable")
    sr = right[order]
    lo = xp.searchsorted(sr, left, side="left")
    hi = xp.searchsorted(sr, left, side="right")
    counts = hi - lo
    ends = xp.cumsum(counts)
    # the pairs' count sizes the output: one scalar to the host (CuPy's repeat takes no array
    # of counts, so the left index of each pair is found by a search instead)
    total = int(ends[-1]) if left.shape[0] else 0
    li = xp.searchsorted(ends, xp.arange(total), side="right")
    offset = xp.arange(total) - (ends - counts)[li]
    ri = order[lo[li] + offset]
    return li, ri


def segments(sorted_keys):
    """Start of each run of equal keys, and the key of the run."""
    xp = array_namespace(sorted_keys)
    n = sorted_keys.shape[0]
    if n == 0:
        return xp.zeros(0, dtype=xp.int64), sorted_keys[:0]
    change = xp.ones(n, dtype=bool)
    change[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = xp.nonzero(change)[0]
    return starts, sorted_keys[starts]
