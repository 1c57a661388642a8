"""The engine's form of the window kernels (events carry their person's dense row) against a
plain loop, with persons without events, a person without a reference day and open ends."""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy_kernels import windows
from hpcstudy_kernels.windows import NO_DATE

from .conftest import host


@pytest.mark.parametrize("lo, hi", [(-365, -1), (0, None), (None, 0), (None, None), (1, 1)])
def test_by_row_matches_a_loop(xp, lo, hi):
    rng = np.random.default_rng(7)
    n = 50
    row = np.sort(rng.integers(0, n - 5, 600))          # the last five rows have no events
    day = rng.integers(0, 800, 600)
    order = np.lexsort((day, row))
    row, day = row[order], day[order]
    ref = rng.integers(100, 700, n)
    ref[3] = NO_DATE
    mask = rng.random(600) < 0.8
    inside = [(ref[r] != NO_DATE and (lo is None or d >= ref[r] + lo) and
               (hi is None or d <= ref[r] + hi) and m) for r, d, m in zip(row, day, mask,
                                                                          strict=True)]
    a = [xp.asarray(v) for v in (row, day, ref, mask)]
    ok = windows.events_in_window(a[0], a[1], a[2], lo, hi, a[3])
    assert host(ok).tolist() == inside
    count = host(windows.count_per_row(a[0], ok, n))
    first = host(windows.first_day_per_row(a[0], a[1], a[2], n, lo, hi, a[3]))
    last = host(windows.nth_per_row(a[0], ok, n, -1))
    second = host(windows.nth_per_row(a[0], ok, n, 2))
    for p in range(n):
        hits = [i for i in range(600) if row[i] == p and inside[i]]
        assert count[p] == len(hits)
        assert first[p] == (day[hits[0]] if hits else NO_DATE)
        assert last[p] == (hits[-1] if hits else -1)
        assert second[p] == (hits[1] if len(hits) > 1 else -1)


def test_no_events(xp):
    e = xp.asarray(np.zeros(0, np.int64))
    ref = xp.asarray(np.array([5, NO_DATE]))
    ok = windows.events_in_window(e, e, ref, -1, 1)
    assert host(windows.nth_per_row(e, ok, 2, 1)).tolist() == [-1, -1]
    assert host(windows.first_day_per_row(e, e, ref, 2)).tolist() == [NO_DATE, NO_DATE]
    assert host(windows.count_per_row(e, ok, 2)).tolist() == [0, 0]
