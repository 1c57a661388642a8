"""Follow-up from an index date to the first of several competing end dates."""

from __future__ import annotations

from ._namespace import array_namespace
from .windows import NO_DATE


def follow_up(index, ends, max_days=None):
    """Exit day and cause per person.

    ``ends`` is a list of day arrays (``NO_DATE`` where the end does not happen), in priority
    order: on the same day the earlier entry wins (put the outcome first, then death, then
    censoring). The cause is 1 + the position in ``ends`` of the end that came first, or 0 when
    follow-up reached ``max_days`` first. An end on or before the index day is treated as the
    index day itself (zero follow-up) and should be excluded by the study before.

    Returns (exit_day, cause, days_followed).
    """
    xp = array_namespace(index)
    idx = index.astype(xp.int64)
    exit_ = xp.full(idx.shape[0], NO_DATE, dtype=xp.int64)
    cause = xp.zeros(idx.shape[0], dtype=xp.int8)
    if max_days is not None:
        exit_ = idx + max_days
    for k, end in enumerate(ends):
        e = xp.maximum(end.astype(xp.int64), idx)
        earlier = e < exit_
        exit_ = xp.where(earlier, e, exit_)
        cause = xp.where(earlier, k + 1, cause).astype(xp.int8)
    return exit_, cause, exit_ - idx
