"""Counting a partition's clusters (persons) decides whether a GLM's errors are clustered:
the count by runs of a sorted column must be the number of distinct values, sorted or not."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcstudy.devices import get_device
from hpcstudy.models.base import _n_distinct, wants_robust
from hpcstudy.models.partitions import LocalPartitions


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.integers(-3, 6), max_size=30), order=st.booleans(),
       device=st.sampled_from(["cpu", "standin"]))
def test_distinct_values_sorted_or_not(values, order, device):
    dev = get_device(device)
    c = np.array(sorted(values) if order else values, dtype=np.int64)
    assert _n_distinct(dev.xp, dev.to_device(c)) == len(set(values))


def test_a_person_in_two_rows_makes_the_errors_robust():
    one = {"weights": np.ones(4), "cluster": np.array([1, 2, 3, 4])}
    twice = {"weights": np.ones(4), "cluster": np.array([1, 2, 2, 4])}
    unsorted = {"weights": np.ones(4), "cluster": np.array([4, 2, 3, 2])}
    assert not wants_robust(None, LocalPartitions([one, one]))
    assert wants_robust(None, LocalPartitions([one, twice]))
    assert wants_robust(None, LocalPartitions([unsorted]))


@settings(max_examples=80, deadline=None)
@given(head=st.lists(st.integers(0, 30), max_size=80), tail=st.lists(st.integers(0, 40),
                                                                       max_size=80))
def test_few_values_is_sixteen_distinct_or_fewer_wherever_they_are(head, tail):
    # the first rows decide only when they already hold more than 16 values
    from hpcstudy.engines.analyses import FEW_VALUES, _few_values

    col = np.array(head + tail, dtype=float)
    assert _few_values(np, col) == (len(set(head + tail)) <= FEW_VALUES)
