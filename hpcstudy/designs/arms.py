"""Persons in both arms of an active comparison (``comparator.both_arms``), one partition at a
time: every register partition holds whole persons, so a person's two rows meet here.

* ``remove`` (default, as OHDSI CohortMethod): the person leaves both arms;
* ``first``: the person stays in the arm entered first; entered on the same day: removed;
* ``keep``: the person stays in both; the models' errors are then clustered by person.
"""

from __future__ import annotations

import numpy as np

STEP = {"remove": "not also in the other arm", "first": "in the arm entered first"}


def in_both(pnr, group) -> np.ndarray:
    """Rows whose person also has a row in the other arm (group 1 vs 0)."""
    one = pnr[group == 1]
    zero = pnr[group == 0]
    both = np.intersect1d(one, zero)
    return np.isin(pnr, both)


def resolve(table: dict, attrition: dict, labels: dict[int, str], mode: str):
    """The table with ``mode`` applied and an attrition step per arm (not for keep)."""
    if mode == "keep":
        return table, attrition
    pnr, group, index = table["pnr"], table["group"], table["index_date"]
    both = in_both(pnr, group)
    drop = both.copy()
    if mode == "first":
        rows = np.flatnonzero(both)
        order = np.lexsort((group[rows], pnr[rows]))   # per person: the comparator row first
        r0, r1 = rows[order][0::2], rows[order][1::2]   # group 0 row, group 1 row
        first0 = index[r0] < index[r1]
        first1 = index[r1] < index[r0]
        drop[r0[first0]] = False
        drop[r1[first1]] = False
    keep = ~drop
    out = {k: v[keep] for k, v in table.items()}
    att = {g: list(steps) for g, steps in attrition.items()}
    for code, label in labels.items():
        att[label].append((STEP[mode], int((out["group"] == code).sum())))
    return out, att


def overlap_part(part) -> list:
    """[persons with a row in both arms] of one partition (summed over partitions)."""
    return [int(np.unique(part["pnr"][in_both(part["pnr"], part["group"])]).shape[0])]
