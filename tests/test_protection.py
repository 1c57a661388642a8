"""The LP audit of suppressed tables: known intervals, the 4 × 5 table of issue 10, and random
tables whose suppression is verified by a linear program written here (and by enumeration on
tiny ones), not by the code under test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from hpcstudy.outputs import disclosure as D
from hpcstudy.outputs import protection as P

ISSUE_TABLE = [[8, 40, 1, 12, 12], [1, 12, 1, 12, 8], [40, 1, 20, 1, 6], [8, 40, 8, 6, 6]]


def rows_of(table):
    return [{"r": i, "c": j, "persons": v} for i, row in enumerate(table)
            for j, v in enumerate(row)]


def two_way_interval(table, hidden, cell):
    """min and max of a hidden cell of a two-way table given its row, column and grand totals
    (the test's own LP: one variable per hidden cell)."""
    R, C = len(table), len(table[0])
    h = [(i, j) for i in range(R) for j in range(C) if hidden[i][j]]
    A, b = [], []
    for i in range(R):
        A.append([1.0 if a == i else 0.0 for a, _ in h])
        b.append(sum(table[i][j] for j in range(C) if hidden[i][j]))
    for j in range(C):
        A.append([1.0 if c == j else 0.0 for _, c in h])
        b.append(sum(table[i][j] for i in range(R) if hidden[i][j]))
    k = h.index(cell)
    c = np.zeros(len(h))
    c[k] = 1
    lo = linprog(c, A_eq=A, b_eq=b, bounds=(0, None), method="highs").fun
    hi = -linprog(-c, A_eq=A, b_eq=b, bounds=(0, None), method="highs").fun
    return round(lo, 6), round(hi, 6)


def enumerate_interval(table, hidden, cell):
    """The same by listing every integer completion of a 2 × C table: choose the hidden cells
    of row 0, the column totals then fix row 1."""
    C = len(table[0])
    cols = [table[0][j] + table[1][j] for j in range(C)]
    rows = [sum(table[0]), sum(table[1])]
    free = [j for j in range(C) if hidden[0][j]]
    vals = []
    for xs in itertools.product(*(range(cols[j] + 1) for j in free)):
        t0 = list(table[0])
        for j, x in zip(free, xs, strict=True):
            t0[j] = x
        t1 = [cols[j] - t0[j] if hidden[1][j] else table[1][j] for j in range(C)]
        if any(not hidden[1][j] and t0[j] + t1[j] != cols[j] for j in range(C)):
            continue
        if min(t1) < 0 or sum(t0) != rows[0] or sum(t1) != rows[1]:
            continue
        vals.append((t0, t1)[cell[0]][cell[1]])
    return min(vals), max(vals)


def test_the_issue_table_was_pinned_by_the_old_pattern():
    # the pattern the two-per-margin heuristic left (issue 10): x at (2, 1) is exactly 1
    old = [[1, 0, 1, 0, 0], [1, 1, 1, 0, 0], [0, 1, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert two_way_interval(ISSUE_TABLE, old, (2, 1)) == (1, 1)
    hidden = [bool(x) for row in old for x in row]
    assert 11 in P.determined(hidden, P.margin_groups(rows_of(ISSUE_TABLE), ("r", "c")))
    assert any(i == 11 for i, _ in P.exposed(rows_of(ISSUE_TABLE), hidden, ("r", "c"), 5))


def test_the_issue_table_comes_out_protected():
    out = D.suppress(rows_of(ISSUE_TABLE), 5, keys=("r", "c"))
    hidden = [[out[i * 5 + j]["persons"] is None for j in range(5)] for i in range(4)]
    for i, j in itertools.product(range(4), range(5)):
        if 0 < ISSUE_TABLE[i][j] < 5:
            assert hidden[i][j]
            lo, hi = two_way_interval(ISSUE_TABLE, hidden, (i, j))
            assert lo <= 0 and hi >= 5, ((i, j), lo, hi)


def test_known_intervals():
    # a 2 × 2 table, all hidden: x00 = t, x01 = x10 = 13 − t, x11 = 7 + t, so t ∈ [0, 13]
    rows = rows_of([[1, 12], [12, 8]])
    iv = P.intervals(rows, [True] * 4, ("r", "c"))
    assert iv[(0, "persons")] == pytest.approx((0, 13))
    assert iv[(3, "persons")] == pytest.approx((7, 20))
    # one row, two hidden of three with the total known: each in [0, 1 + 6]
    rows = [{"c": j, "persons": v} for j, v in enumerate([1, 6, 30])]
    iv = P.intervals(rows, [True, True, False], ("c",))
    assert iv[(0, "persons")] == pytest.approx((0, 7))
    # persons and events together: events ≤ persons narrows what the totals alone allow
    rows = [{"c": 0, "persons": 3, "events": 3}, {"c": 1, "persons": 20, "events": 2}]
    iv = P.intervals(rows, [True, True], ("c",))
    assert iv[(0, "events")] == pytest.approx((0, 5))   # events ≤ 5 overall
    assert iv[(0, "persons-events")] == pytest.approx((0, 18))


def test_a_cell_pinned_by_nonnegativity_is_found():
    # hidden cells 1 and 9 in one row, total 10: 1 ∈ [0, 10]; but 1 and 0 with total 1 pins
    rows = [{"c": 0, "persons": 1}, {"c": 1, "persons": 0}, {"c": 2, "persons": 40}]
    assert P.exposed(rows, [True, True, False], ("c",), 5)
    out = D.suppress(rows, 5, keys=("c",))
    hidden = [r["persons"] is None for r in out]
    assert all(hidden)  # only the whole row can hide it


tables = st.integers(2, 4).flatmap(lambda r: st.integers(2, 5).flatmap(
    lambda c: st.lists(st.lists(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 12, 20, 40]),
                                min_size=c, max_size=c), min_size=r, max_size=r)))


@settings(max_examples=30, deadline=None)
@given(table=tables, min_cell=st.sampled_from([3, 5, 10]))
@example(table=ISSUE_TABLE, min_cell=5)
def test_no_suppressed_cell_is_narrower_than_the_rule(table, min_cell):
    R, C = len(table), len(table[0])
    out = D.suppress(rows_of(table), min_cell, keys=("r", "c"))
    hidden = [[out[i * C + j]["persons"] is None for j in range(C)] for i in range(R)]
    for i, j in itertools.product(range(R), range(C)):
        v = table[i][j]
        if not hidden[i][j]:
            assert v == 0 or v >= min_cell
            continue
        if all(map(all, hidden)):
            continue  # withheld whole (its total is small, or nothing less protects it)
        lo, hi = two_way_interval(table, hidden, (i, j))
        if 0 < v < min_cell:  # (a complementary cell, 0 or ≥ min_cell, may be narrow)
            assert lo <= 0 and hi >= min_cell, ((i, j), v, lo, hi)


@settings(max_examples=25, deadline=None)
@given(table=st.lists(st.lists(st.integers(0, 7), min_size=3, max_size=3), min_size=2,
                      max_size=2), min_cell=st.sampled_from([3, 5]))
def test_tiny_tables_checked_by_enumeration(table, min_cell):
    out = D.suppress(rows_of(table), min_cell, keys=("r", "c"))
    hidden = [[out[i * 3 + j]["persons"] is None for j in range(3)] for i in range(2)]
    for i, j in itertools.product(range(2), range(3)):
        if hidden[i][j] and 0 < table[i][j] < min_cell:
            lo, hi = enumerate_interval(table, hidden, (i, j))
            if not all(map(all, hidden)):
                assert lo == 0 and hi >= min_cell, ((i, j), lo, hi)


def test_a_few_hundred_cells_are_audited(benchmark_size=(12, 25)):
    rng = np.random.default_rng(3)
    R, C = benchmark_size
    table = rng.choice([1, 2, 3, 8, 15, 30, 60], size=(R, C), p=[.03, .03, .02, .2, .3, .3, .12])
    out = D.suppress(rows_of(table.tolist()), 5, keys=("r", "c"))
    hidden = [[out[i * C + j]["persons"] is None for j in range(C)] for i in range(R)]
    for i, j in itertools.product(range(R), range(C)):
        if 0 < table[i, j] < 5:
            lo, hi = two_way_interval(table.tolist(), hidden, (i, j))
            assert lo <= 0 and hi >= 5
