"""The rate tables' keys ranked by counting (engines/analyses.py, ``_unique_ints``): exactly
``np.unique(k, return_inverse=True)`` for every integer and bool column, at the edges of the
counted span and of the integer types; and a cohort's rates by a covariate come out the same
as from sorting."""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy.engines import analyses
from hpcstudy.engines.analyses import COUNTED_SPAN, _unique_ints

I64 = np.iinfo(np.int64)


def _same_as_numpy(k):
    want, want_inv = np.unique(k, return_inverse=True)
    got, got_inv = _unique_ints(k)
    assert got.dtype == want.dtype
    assert np.array_equal(got, want) and np.array_equal(got_inv, want_inv.reshape(-1))


@pytest.mark.parametrize("k", [
    np.array([True]), np.array([False, True, True, False]), np.array([7], np.int8),
    np.array([-128, 127, 0, -128], np.int8), np.array([3, 3, 3], np.int16),
    np.array([I64.max, I64.max - 5, I64.max - 1]), np.array([I64.min, I64.min + 2]),
    np.array([0, COUNTED_SPAN - 1, 5]), np.array([0, COUNTED_SPAN, 5]),   # the span's edge
    np.array([2 ** 64 - 1, 2 ** 64 - 3], np.uint64), np.array([2 ** 63 + 1, 2 ** 63], np.uint64),
    np.array([-(2 ** 40), -(2 ** 40) + 9, -(2 ** 40)], np.int64),
])
def test_counting_ranks_are_numpys(k):
    _same_as_numpy(k)


def test_random_columns_of_every_width():
    rng = np.random.default_rng(8)
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32):
        info = np.iinfo(dtype)
        for span in (1, 2, 50, COUNTED_SPAN - 1, COUNTED_SPAN + 1):
            lo = int(rng.integers(info.min, max(info.min + 1, info.max - span)))
            hi = min(info.max, lo + span)
            _same_as_numpy(rng.integers(lo, hi, 1000, endpoint=True).astype(dtype))


def test_rates_by_a_key_are_the_sorted_ones(monkeypatch):
    rng = np.random.default_rng(2)
    n = 5000
    part = {"pnr": np.arange(n, dtype=np.int64), "sex": rng.integers(0, 2, n).astype(np.int8),
            "region": rng.choice([1081, 1082, 1085], n).astype(np.int16),
            "event": rng.integers(0, 2, n).astype(np.int8),
            "time": rng.integers(1, 9000, n).astype(np.int32)}
    got = analyses._rate_sums(part, ("sex", "region"))
    monkeypatch.setattr(analyses, "COUNTED_SPAN", 0)   # every key sorted, as before
    assert analyses._rate_sums(part, ("sex", "region")) == got
    assert sorted(got) == [(s, r) for s in (0, 1) for r in (1081, 1082, 1085)]
