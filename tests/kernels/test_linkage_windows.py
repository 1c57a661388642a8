"""Linkage, window and follow-up kernels against plain Python loops."""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy_kernels import followup, linkage, windows
from hpcstudy_kernels.windows import NO_DATE

from .conftest import host


def test_lookup_many_to_one(xp):
    keys = xp.asarray([30, 10, 20, 50])
    q = xp.asarray([20, 40, 50, 10, 10])
    assert host(linkage.lookup(keys, q)).tolist() == [2, -1, 3, 1, 1]
    assert host(linkage.lookup(keys[:0], q)).tolist() == [-1] * 5


def test_join_many_to_many_matches_a_loop(xp):
    rng = np.random.default_rng(0)
    left, right = rng.integers(0, 30, 200), rng.integers(0, 30, 150)
    li, ri = linkage.join(xp.asarray(left), xp.asarray(right))
    want = [(i, j) for i in range(200) for j in range(150) if left[i] == right[j]]
    assert list(zip(host(li).tolist(), host(ri).tolist(), strict=True)) == want


@pytest.fixture
def events():
    rng = np.random.default_rng(1)
    person = np.sort(rng.integers(0, 60, 800))
    date = rng.integers(0, 1000, 800)
    order = np.lexsort((date, person))
    person, date = person[order], date[order]
    persons = np.arange(0, 70, 1)  # some persons without events
    ref = rng.integers(100, 900, 70)
    ref[5] = NO_DATE
    return person, date, persons, ref


def reference(person, date, persons, ref, lo, hi):
    out = {}
    for k, p in enumerate(persons):
        if ref[k] == NO_DATE:
            out[p] = []
            continue
        out[p] = [i for i in range(len(person)) if person[i] == p
                  and (lo is None or date[i] >= ref[k] + lo)
                  and (hi is None or date[i] <= ref[k] + hi)]
    return out


@pytest.mark.parametrize("lo, hi", [(-365, -1), (0, None), (None, 0), (-30, 30), (1, 180)])
def test_window_operations_match_a_loop(xp, events, lo, hi):
    person, date, persons, ref = events
    want = reference(person, date, persons, ref, lo, hi)
    args = [xp.asarray(a) for a in (person, date, persons, ref)]
    first = host(windows.first_in_window(*args, lo=lo, hi=hi))
    last = host(windows.last_in_window(*args, lo=lo, hi=hi))
    count = host(windows.count_in_window(*args, lo=lo, hi=hi))
    second = host(windows.nth_in_window(*args, n=2, lo=lo, hi=hi))
    values = xp.asarray(np.arange(len(person)) % 17 * 1.5)
    biggest = host(windows.extreme_in_window(values, *args, lo=lo, hi=hi, largest=True))
    total = host(windows.sum_in_window(values, *args, lo=lo, hi=hi))
    vals = host(values)
    for k, p in enumerate(persons):
        ids = want[p]
        assert count[k] == len(ids)
        assert first[k] == (date[ids[0]] if ids else NO_DATE)
        assert last[k] == (date[ids[-1]] if ids else NO_DATE)
        assert second[k] == (ids[1] if len(ids) > 1 else -1)
        assert (np.isnan(biggest[k]) if not ids else biggest[k] == max(vals[ids]))
        assert total[k] == pytest.approx(sum(vals[ids]))


def test_mask_and_washout(xp, events):
    person, date, persons, ref = events
    mask = date % 2 == 0
    args = [xp.asarray(a) for a in (person, date, persons, ref)]
    got = host(windows.washout(*args, days=200, mask=xp.asarray(mask)))
    for k, p in enumerate(persons):
        recent = [i for i in range(len(person)) if person[i] == p and mask[i]
                  and ref[k] != NO_DATE and ref[k] - 200 <= date[i] <= ref[k] - 1]
        assert got[k] == (not recent)


def test_ties_on_a_date_keep_stored_order(xp):
    person = xp.asarray([1, 1, 1])
    date = xp.asarray([10, 10, 12])
    idx = host(windows.nth_in_window(person, date, xp.asarray([1]), xp.asarray([0]), n=1))
    assert idx.tolist() == [0]


def test_follow_up_takes_the_first_end_with_priority_on_ties(xp):
    index = xp.asarray([0, 0, 0, 0, 10])
    outcome = xp.asarray([50, NO_DATE, 30, 40, NO_DATE])
    death = xp.asarray([60, 20, 30, NO_DATE, NO_DATE])
    emigration = xp.asarray([NO_DATE, NO_DATE, NO_DATE, 35, NO_DATE])
    exit_, cause, days = followup.follow_up(index, [outcome, death, emigration], max_days=365)
    assert host(exit_).tolist() == [50, 20, 30, 35, 375]
    assert host(cause).tolist() == [1, 2, 1, 3, 0]
    assert host(days).tolist() == [50, 20, 30, 35, 365]
