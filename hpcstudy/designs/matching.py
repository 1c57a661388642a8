"""1:k nearest-neighbour matching on the logit of the propensity score: the one global step of a
comparative design. It sees only (logit, arm, person) triples, gathered from all partitions;
the matched persons and their weights go back to the partitions.

The rules, which the brute-force matcher in tests/test_designs.py restates:

* exposed persons are matched in descending order of the score (as MatchIt's
  ``m.order = "largest"``); equal scores in the order of a seeded hash of the person, then pnr;
* each exposed person takes the nearest comparator person still free; at equal distance the
  one first in the comparator order (logit, then the seeded hash, then pnr);
* with ``ratio`` k and without replacement the matching runs in k rounds (every exposed
  person gets a first match before anyone gets a second), as MatchIt does; an exposed person
  unmatched in a round takes no part in later rounds;
* with replacement each exposed person takes its k nearest comparator persons;
* a pair farther apart than the caliper (in the logit's units) is no match.

Comparator persons are kept in sorted order and found by binary search; taken ones are skipped
with path-compressed "next free" pointers, so a match costs O(log n) amortised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def person_hash(pnr: np.ndarray, seed: int) -> np.ndarray:
    """A seeded 64-bit mix of each pnr: the order among equal scores."""
    mix = np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & (2**64 - 1))
    x = pnr.astype(np.uint64) ^ mix
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


@dataclass
class Matches:
    """Matched pairs as positions into the triples given (exposed, comparator), in the order
    they were made; ``round`` is the round (0 … k−1) of each pair."""

    exposed: np.ndarray
    comparator: np.ndarray
    round: np.ndarray


def _find(ptr: list, i: int) -> int:
    root = i
    while ptr[root] != root:
        root = ptr[root]
    while ptr[i] != root:
        ptr[i], i = root, ptr[i]
    return root


def match(logit, exposed, pnr, *, ratio: int = 1, caliper: float | None = None,
          replace: bool = False, seed: int = 1) -> Matches:
    """Match exposed persons (``exposed`` True) to comparator persons on ``logit``."""
    logit = np.asarray(logit, float)
    exposed = np.asarray(exposed, bool)
    pnr = np.asarray(pnr, np.int64)
    h = person_hash(pnr, seed)
    t_idx = np.flatnonzero(exposed)
    c_idx = np.flatnonzero(~exposed)
    # comparator order: logit, hash, pnr; exposed order: descending logit, hash, pnr
    c_idx = c_idx[np.lexsort((pnr[c_idx], h[c_idx], logit[c_idx]))]
    t_idx = t_idx[np.lexsort((pnr[t_idx], h[t_idx], -logit[t_idx]))]
    cl = logit[c_idx]
    n = c_idx.shape[0]
    # right[i]: first free position ≥ i (n: none); left[i + 1]: last free ≤ i, as i + 1 (0: none)
    right = list(range(n + 1))
    left = list(range(n + 1))
    # the first position of each run of equal logits: a free one there is the first in order
    run_start = np.zeros(n, np.int64)
    if n:
        change = np.ones(n, bool)
        change[1:] = cl[1:] != cl[:-1]
        run_start = np.maximum.accumulate(np.where(change, np.arange(n), 0))
    run_end = np.zeros(n, np.int64)   # one past the last position of each run
    if n:
        last = np.ones(n, bool)
        last[:-1] = cl[1:] != cl[:-1]
        ends = np.flatnonzero(last) + 1
        run_end = ends[np.searchsorted(ends, np.arange(n), side="right")]
    cal = np.inf if caliper is None else float(caliper)
    out_t, out_c, out_r = [], [], []
    if replace:
        for t in t_idx:
            for j in _k_nearest(cl, logit[t], ratio, cal, run_start, run_end):
                out_t.append(t)
                out_c.append(c_idx[j])
                out_r.append(0)
    else:
        active = t_idx
        for rnd in range(ratio):
            still = []
            for t in active:
                x = logit[t]
                pos = int(np.searchsorted(cl, x, side="left"))
                j = _nearest_free(cl, right, left, pos, x, run_start, n)
                if j is not None and abs(cl[j] - x) <= cal:
                    out_t.append(t)
                    out_c.append(c_idx[j])
                    out_r.append(rnd)
                    right[j] = j + 1     # taken: skip it from now on
                    left[j + 1] = j
                    still.append(t)
            active = still
            if not active:
                break
    return Matches(np.asarray(out_t, np.int64), np.asarray(out_c, np.int64),
                   np.asarray(out_r, np.int64))


def _nearest_free(cl, right, left, pos, x, run_start, n):
    """The nearest free comparator position; at equal distance the first in the order."""
    r = _find(right, pos)
    lp = _find(left, pos)          # (last free position < pos) + 1; 0: none
    best = None
    if lp > 0:
        # the first free position of that run of equal logits (lp − 1 itself is free)
        j = _find(right, int(run_start[lp - 1]))
        best = (abs(cl[j] - x), j)
    if r < n and (best is None or abs(cl[r] - x) < best[0]):
        best = (abs(cl[r] - x), r)
    return None if best is None else best[1]


def _k_nearest(cl, x, k, cal, run_start, run_end):
    """With replacement: the k nearest positions within the caliper, walking outwards run by
    run; within a run in position order; at equal distance the left run first."""
    n = cl.shape[0]
    pos = int(np.searchsorted(cl, x, side="left"))
    lo = pos - 1                   # last position of the next run on the left
    hi = pos                       # first position of the next run on the right
    out: list[int] = []
    while len(out) < k:
        dl = abs(cl[lo] - x) if lo >= 0 else np.inf
        dr = abs(cl[hi] - x) if hi < n else np.inf
        d = min(dl, dr)
        if d > cal or not np.isfinite(d):
            break
        if dl <= dr:
            a, b = int(run_start[lo]), lo + 1
            lo = a - 1
        else:
            a, b = hi, int(run_end[hi])
            hi = b
        out.extend(range(a, min(b, a + k - len(out))))
    return out
