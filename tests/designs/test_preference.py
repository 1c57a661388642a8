"""The preference-score table's secondary suppression, cell by cell: no withheld cell may follow
from its arm's total or from its bin's total over the arms."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hpcstudy.designs import balance
from hpcstudy.models.partitions import LocalPartitions


def table(arm1: list[int], arm0: list[int]) -> dict:
    """Persons per bin of 4 (with an exposed share of ½ the preference score is the score)."""
    ps, group = [], []
    for arm, counts in ((1, arm1), (0, arm0)):
        for j, n in enumerate(counts):
            ps += [(j + 0.5) / 4] * n
            group += [arm] * n
    plan = SimpleNamespace(propensity=SimpleNamespace(bins=4), min_cell=5)
    parts = LocalPartitions([{"ps": np.array(ps), "group": np.array(group)}])
    rows, _ = balance.preference(plan, parts, 0.5, {1: "a", 0: "b"})
    return {(r["arm"], int(float(r["bin"].split("-")[0]) * 4)): r["persons"] for r in rows}


@pytest.mark.parametrize("arm1,arm0,withheld", [
    # a small cell in each arm, in different bins: each bin's other cell goes too; then the
    # 3 would lie in [1, 13] given the totals (never 0: someone is there), so bin 2 goes too
    ([2, 10, 10, 10], [20, 10, 8, 3],
     {("a", 0), ("b", 0), ("a", 2), ("b", 2), ("a", 3), ("b", 3)}),
    # one small cell in a bin of 2 persons: the bin's total (2) bounds it below 5 whatever else
    # is withheld, so the whole table goes (protection.protect, as for any table)
    ([2, 10, 10, 10], [0, 10, 8, 12], {(a, j) for a in "ab" for j in range(4)}),
    # nothing small: nothing withheld
    ([5, 10, 10, 10], [0, 10, 8, 12], set()),
])
def test_secondary_suppression_by_hand(arm1, arm0, withheld):
    got = table(arm1, arm0)
    assert {k for k, v in got.items() if v is None} == withheld
    shown = {("a", j): n for j, n in enumerate(arm1)} | {("b", j): n for j, n in enumerate(arm0)}
    assert all(got[k] == shown[k] for k in got if k not in withheld)
