"""Counts behind Kaplan–Meier and Aalen–Johansen curves, as sums over partitions.

On a global grid of event times τ_j: the (weighted) number at risk, ``entry < τ_j ≤ exit``,
and the number of events of each cause at τ_j. Both add across partitions.
"""

from __future__ import annotations

from ._namespace import array_namespace


def event_times(time, event):
    """Unique times with an event (any cause) in this partition."""
    xp = array_namespace(time)
    return xp.unique(time[event > 0])


def counts(time, event, entry, weights, grid, causes: int = 1):
    """At risk (G,) and events (causes, G) on ``grid``; ``event`` holds cause codes 0..causes."""
    xp = array_namespace(time)
    G = grid.shape[0]
    b = xp.searchsorted(grid, time, side="right")
    at_risk = _count_greater(b, weights, G, xp)
    if entry is not None:
        a = xp.searchsorted(grid, entry, side="right")
        at_risk = at_risk - _count_greater(a, weights, G, xp)
    ev = event.astype(xp.int64)
    # an event at time t sits at grid index b - 1 (t is on the grid)
    idx = b - 1
    out = xp.stack([xp.bincount(idx[ev == k], weights=weights[ev == k], minlength=G)
                    for k in range(1, causes + 1)])
    return at_risk, out


def _count_greater(pos, weights, G, xp):
    """Σ weights over rows with pos > j, for j = 0 … G−1 (a reverse cumulative sum)."""
    keep = pos > 0
    hist = xp.bincount(pos[keep] - 1, weights=weights[keep], minlength=G)
    return xp.cumsum(hist[::-1])[::-1]
