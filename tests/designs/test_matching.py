"""The matcher against a brute-force restatement of its rules, on small data with many ties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcstudy.designs.matching import match, person_hash


def brute(logit, exposed, pnr, ratio, caliper, replace, seed):
    """O(n_t · n_c) greedy matching by the documented rules."""
    h = person_hash(pnr, seed)
    t = sorted(np.flatnonzero(exposed), key=lambda i: (-logit[i], h[i], pnr[i]))
    c = sorted(np.flatnonzero(~exposed), key=lambda i: (logit[i], h[i], pnr[i]))
    rank = {j: r for r, j in enumerate(c)}
    cal = np.inf if caliper is None else caliper
    pairs = []
    if replace:
        for i in t:
            near = sorted((abs(logit[j] - logit[i]), rank[j], j) for j in c)
            pairs += [(i, j, 0) for d, _, j in near[:ratio] if d <= cal]
        return pairs
    free = set(c)
    active = t
    for rnd in range(ratio):
        still = []
        for i in active:
            cands = [(abs(logit[j] - logit[i]), rank[j], j) for j in free]
            if cands:
                d, _, j = min(cands)
                if d <= cal:
                    pairs.append((i, j, rnd))
                    free.discard(j)
                    still.append(i)
        active = still
    return pairs


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), levels=st.integers(1, 12), ratio=st.integers(1, 3),
       caliper=st.sampled_from([None, 0.05, 0.3, 2.0]), replace=st.booleans(),
       seed=st.integers(0, 5), share=st.floats(0.1, 0.9), data_seed=st.integers(0, 10**6))
def test_matcher_equals_brute_force(n, levels, ratio, caliper, replace, seed, share,
                                    data_seed):
    rng = np.random.default_rng(data_seed)
    # few distinct scores: many exact ties, the hard case for tie-breaking
    logit = np.round(rng.normal(size=n) * levels) / levels
    exposed = rng.random(n) < share
    pnr = rng.permutation(10 * n + 1)[:n].astype(np.int64)
    m = match(logit, exposed, pnr, ratio=ratio, caliper=caliper, replace=replace, seed=seed)
    got = list(zip(m.exposed.tolist(), m.comparator.tolist(), m.round.tolist(), strict=True))
    assert got == [(int(a), int(b), r) for a, b, r in brute(logit, exposed, pnr, ratio,
                                                             caliper, replace, seed)]


def test_without_replacement_each_comparator_once_and_caliper_holds():
    rng = np.random.default_rng(3)
    logit = rng.normal(size=2000)
    exposed = rng.random(2000) < 0.3
    m = match(logit, exposed, np.arange(2000), ratio=2, caliper=0.01)
    assert len(set(m.comparator.tolist())) == len(m.comparator)
    assert np.all(np.abs(logit[m.exposed] - logit[m.comparator]) <= 0.01)
    assert not exposed[m.comparator].any() and exposed[m.exposed].all()


def test_seed_changes_only_the_order_among_ties():
    logit = np.zeros(10)
    exposed = np.array([True] * 3 + [False] * 7)
    a = match(logit, exposed, np.arange(10), seed=1)
    b = match(logit, exposed, np.arange(10), seed=2)
    assert len(a.exposed) == len(b.exposed) == 3
    assert (a.exposed.tolist(), a.comparator.tolist()) != (b.exposed.tolist(),
                                                          b.comparator.tolist())
    again = match(logit, exposed, np.arange(10), seed=1)
    assert a.comparator.tolist() == again.comparator.tolist()


@pytest.mark.parametrize("replace", [False, True])
def test_no_comparators_or_no_exposed_match_nobody(replace):
    m = match(np.zeros(4), np.ones(4, bool), np.arange(4), replace=replace)
    assert len(m.exposed) == 0
    m = match(np.zeros(4), np.zeros(4, bool), np.arange(4), replace=replace)
    assert len(m.exposed) == 0
