"""Lexis splitting: each person's follow-up cut at the bands of several time scales at once
(attained age, calendar period, time since index), in one pass over the rows.

A time scale is an *axis*: per person an ``offset`` (birth day, 0 for the calendar, the index
day) and a sorted array of ``cuts`` shared by everyone; person ``i`` is cut at
``offset[i] + cuts``. Follow-up is the half-open interval ``[start, stop)`` in days. Array code
in the namespace of its inputs (NumPy or CuPy).
"""

from __future__ import annotations

from hpcstudy_kernels import array_namespace


def split(start, stop, axes: list[tuple]) -> dict:
    """Episodes of ``[start, stop)`` cut at every axis's cuts.

    Returns ``row`` (the person's position), ``t0``, ``t1`` (the episode, ``t1`` exclusive)
    and ``bands``: per axis, the band of the episode (``-1`` before the first cut, ``j`` for
    ``[cuts[j], cuts[j+1])``). Zero-length episodes are dropped; every person with
    ``stop > start`` keeps at least one."""
    xp = array_namespace(start, stop)
    start = start.astype(xp.float64)
    stop = stop.astype(xp.float64)
    n = start.shape[0]
    ids = xp.arange(n)
    rows, vals = [ids, ids], [start, stop]
    for offset, cuts in axes:
        off = offset.astype(xp.float64)
        cuts = xp.asarray(cuts, dtype=xp.float64)
        lo = xp.searchsorted(cuts, start - off, side="right")   # first cut after the start
        hi = xp.searchsorted(cuts, stop - off, side="left")     # cuts before the stop
        k = xp.maximum(hi - lo, 0)
        if int(k.sum()) == 0:
            continue
        # repeat without xp.repeat(array counts), which not every array library has
        ends = xp.cumsum(k)
        slot = xp.arange(int(ends[-1]))
        r = xp.searchsorted(ends, slot, side="right")
        j = slot - (ends - k)[r] + lo[r]
        rows.append(r)
        vals.append(off[r] + cuts[j])
    row = xp.concatenate(rows)
    val = xp.concatenate(vals)
    order = xp.lexsort(xp.stack([val, row]))
    row, val = row[order], val[order]
    keep = (row[:-1] == row[1:]) & (val[1:] > val[:-1])
    r, t0, t1 = row[:-1][keep], val[:-1][keep], val[1:][keep]
    mid = (t0 + t1) / 2      # the band of an episode from its middle: no rounding at its ends
    bands = [xp.searchsorted(xp.asarray(cuts, dtype=xp.float64),
                             mid - offset.astype(xp.float64)[r], side="right") - 1
             for offset, cuts in axes]
    return {"row": r, "t0": t0, "t1": t1, "bands": bands}
