"""Suppression that totals cannot undo: an audit of a suppressed table by linear programming.

A table is a list of rows with key columns and counts. Everyone who reads it is assumed to know
every total over rows sharing the values of a subset of the key columns (``margin_groups``,
the one definition the writer's suppression and the checker share), whether or not the run
publishes that total: other files, other tables and other runs often do. Given those totals,
the published cells and that counts are non-negative (and, where a row has both, that
``events ≤ persons``), each withheld cell can only lie in an interval ``[lo, hi]``; linear
programming finds it, as tau-ARGUS and R's sdcTable do (``scipy.optimize.linprog``, HiGHS).

Protection levels (the rule the audit enforces; ``m`` is the threshold):

* a withheld count ``v`` that is itself sensitive — ``0 < v < m``, or a complement
  ``persons − events`` equal to 0 (everyone in the row had the event) — needs an interval that
  reaches down to 0 and up to ``m``: lower protection ``v``, upper protection ``m − v``. A reader
  can then tell neither whether anybody is in the cell nor whether it is small;
* every other withheld cell (a complementary suppression) must not be pinned: it may not be a
  fixed linear function of the totals, whatever their values (``determined``), so the output
  checker, which cannot see withheld values, reaches the same verdict.

``protect`` suppresses more cells until every withheld cell is protected: for the first exposed
cell (in row order) it tries the published rows that share the most totals with it, smallest
first, and keeps the first that improves its protection (always the same choice for the same
table); when none does alone, it takes the first of them and goes on. A table whose total is
itself below the threshold cannot protect its cells: it is withheld whole. The LP bounds are
those of the relaxation; for two-way tables (and one-way ones) they
are the integer bounds, since the margin matrix is totally unimodular; for three or more keys
the integer interval can be narrower, which this audit does not see.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

COMPLEMENT = "persons-events"


def margin_groups(rows: Sequence[dict], keys: Sequence[str]) -> list[list[int]]:
    """Row indices of every set of rows that sums to a total (rows sharing the values of a
    proper subset of the key columns; the empty subset is all rows), without repeats. A "total"
    of one row is that row itself, which its own suppression covers wherever it appears."""
    # a key with one value in the table is no key: with it, every total would be a single row
    keys = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    seen, out = set(), []
    for size in range(len(keys)):
        for subset in itertools.combinations(keys, size):
            groups: dict[tuple, list[int]] = {}
            for i, r in enumerate(rows):
                groups.setdefault(tuple(r.get(k) for k in subset), []).append(i)
            for members in groups.values():
                t = tuple(members)
                if len(t) > 1 and t not in seen:
                    seen.add(t)
                    out.append(list(t))
    return out


def determined(hidden: Sequence[bool], groups: list[list[int]]) -> list[int]:
    """Withheld cells that are a fixed linear function of the totals of ``groups`` and the
    published cells, whatever the values: the cell's unit vector lies in the row space of the
    margin matrix restricted to withheld cells. Needs no withheld value."""
    h = [i for i, x in enumerate(hidden) if x]
    if not h:
        return []
    pos = {c: k for k, c in enumerate(h)}
    rows = []
    for g in groups:
        row = np.zeros(len(h))
        for i in g:
            if i in pos:
                row[pos[i]] = 1.0
        if row.any():
            rows.append(row)
    if not rows:
        return []
    from scipy.linalg import null_space  # here: a run with nothing withheld never needs scipy

    A = np.array(rows)
    N = null_space(A)  # directions the withheld cells can move in without changing a total
    free = np.abs(N).max(axis=1) > 1e-9 if N.size else np.zeros(len(h), bool)
    return [c for c, f in zip(h, free, strict=True) if not f]


class _Problem:
    """The LP of one table: variables are the withheld cells' counts (one block per field)."""

    def __init__(self, values: dict[str, list], hidden: Sequence[bool],
                 groups: list[list[int]]):
        self.fields = [f for f in ("persons", "events") if f in values] or list(values)
        self.h = [i for i, x in enumerate(hidden) if x]
        k = len(self.h)
        self.pos = {c: j for j, c in enumerate(self.h)}
        self.nvar = k * len(self.fields)
        eq_rows, eq_rhs = [], []
        for fi, f in enumerate(self.fields):
            v = values[f]
            for g in groups:
                hid = [i for i in g if i in self.pos]
                if not hid:
                    continue
                row = np.zeros(self.nvar)
                for i in hid:
                    row[fi * k + self.pos[i]] = 1.0
                eq_rows.append(row)
                eq_rhs.append(sum(float(v[i] or 0) for i in hid))
        # the totals are what they are: the right-hand side is the hidden cells' true sum
        self.A_eq = np.array(eq_rows) if eq_rows else None
        self.b_eq = np.array(eq_rhs) if eq_rhs else None
        self.A_ub = self.b_ub = None
        if set(self.fields) == {"persons", "events"} and k:
            ub = np.zeros((k, self.nvar))
            for j in range(k):
                ub[j, self.fields.index("events") * k + j] = 1.0
                ub[j, self.fields.index("persons") * k + j] = -1.0
            self.A_ub, self.b_ub = ub, np.zeros(k)

    def _objective(self, cell: int, field: str) -> np.ndarray:
        k = len(self.h)
        c = np.zeros(self.nvar)
        j = self.pos[cell]
        if field == COMPLEMENT:
            c[self.fields.index("persons") * k + j] = 1.0
            c[self.fields.index("events") * k + j] = -1.0
        else:
            c[self.fields.index(field) * k + j] = 1.0
        return c

    def interval(self, cell: int, field: str) -> tuple[float, float]:
        from scipy.optimize import linprog  # here: most tables withhold nothing

        c = self._objective(cell, field)
        lo = linprog(c, A_ub=self.A_ub, b_ub=self.b_ub, A_eq=self.A_eq, b_eq=self.b_eq,
                     bounds=(0, None), method="highs")
        hi = linprog(-c, A_ub=self.A_ub, b_ub=self.b_ub, A_eq=self.A_eq, b_eq=self.b_eq,
                     bounds=(0, None), method="highs")
        low = lo.fun if lo.status == 0 else 0.0
        high = -hi.fun if hi.status == 0 else math.inf  # status 3: unbounded
        return float(low), float(high)


def sensitive(row: dict, field: str, min_cell: int) -> bool:
    """Is this count of the row one the threshold protects (see the module docstring)?"""
    if field == COMPLEMENT:
        p, e = row.get("persons"), row.get("events")
        if p is None or e is None:
            return False
        d = p - e
        return (0 < d < min_cell) or (d == 0 and p > 0)
    v = row.get(field)
    return v is not None and 0 < v < min_cell


def _fields(rows: Sequence[dict]) -> list[str]:
    fields = [f for f in ("persons", "events") if any(f in r for r in rows)]
    if len(fields) == 2:
        fields.append(COMPLEMENT)
    return fields


def intervals(rows: Sequence[dict], hidden: Sequence[bool], keys: Sequence[str],
              cells: Sequence[int] | None = None) -> dict[tuple[int, str], tuple[float, float]]:
    """{(row, field): feasible interval} of the withheld cells (all, or ``cells``), given every
    margin total and the published rows. ``rows`` hold the true counts."""
    fields = _fields(rows)
    groups = margin_groups(rows, keys)
    values = {f: [r.get(f) for r in rows] for f in fields if f != COMPLEMENT}
    prob = _Problem(values, hidden, groups)
    out = {}
    for i in (cells if cells is not None else prob.h):
        for f in fields:
            out[(i, f)] = prob.interval(i, f)
    return out


def _shortfall(prob: _Problem, rows, i: int, fields, min_cell: int, det: set[int]) -> float:
    """How far cell i is from its protection level (0 when protected)."""
    short = 0.0
    primary = False
    for f in fields:
        if sensitive(rows[i], f, min_cell):
            primary = True
            lo, hi = prob.interval(i, f)
            short += max(0.0, lo) + max(0.0, min_cell - hi)
    if not primary and i in det:
        short += 1.0
    return short


def exposed(rows: Sequence[dict], hidden: Sequence[bool], keys: Sequence[str],
            min_cell: int) -> list[tuple[int, str]]:
    """(row, why) of every withheld cell below its protection level."""
    fields = _fields(rows)
    groups = margin_groups(rows, keys)
    values = {f: [r.get(f) for r in rows] for f in fields if f != COMPLEMENT}
    prob = _Problem(values, hidden, groups)
    det = set(determined(hidden, groups))
    out = []
    for i in prob.h:
        for f in fields:
            if sensitive(rows[i], f, min_cell):
                lo, hi = prob.interval(i, f)
                if lo > 1e-9 or hi < min_cell - 1e-9:
                    out.append((i, f"{f} lies in [{lo:g}, {hi:g}] given the totals, "
                                   f"not [0, {min_cell}]"))
        if i in det and not any(sensitive(rows[i], f, min_cell) for f in fields):
            out.append((i, "recoverable exactly from the totals"))
    return out


def protect(rows: Sequence[dict], hidden: Sequence[bool], keys: Sequence[str],
            min_cell: int) -> list[bool]:
    """``hidden`` with more cells withheld until every withheld cell is protected."""
    hidden = list(hidden)
    fields = _fields(rows)
    groups = margin_groups(rows, keys)
    values = {f: [r.get(f) for r in rows] for f in fields if f != COMPLEMENT}
    member_of: dict[int, set[int]] = {}
    for gi, g in enumerate(groups):
        for i in g:
            member_of.setdefault(i, set()).add(gi)

    def size(i):
        return tuple(float(rows[i].get(f) or 0) for f in fields if f != COMPLEMENT)

    # hiding a cell only widens every other cell's interval (its fixed value becomes one more
    # unknown), so a cell once protected stays protected: each needs looking at until it is
    queue = [i for i, h in enumerate(hidden) if h]
    k = 0
    while k < len(queue):
        i = queue[k]
        while True:
            prob = _Problem(values, hidden, groups)
            det = set(determined(hidden, groups))
            short = _shortfall(prob, rows, i, fields, min_cell, det)
            if short <= 1e-9:
                break
            candidates = [j for j in range(len(rows)) if not hidden[j] and
                          member_of.get(j, set()) & member_of.get(i, set())]
            if not candidates:  # nothing can protect it: withhold the whole table
                return [True] * len(rows)
            candidates.sort(key=lambda j: (-len(member_of[j] & member_of[i]), size(j), j))
            chosen = None
            for j in candidates[:12]:  # beyond the nearest few, trying costs more than it saves
                trial = list(hidden)
                trial[j] = True
                p2 = _Problem(values, trial, groups)
                d2 = set(determined(trial, groups))
                if _shortfall(p2, rows, i, fields, min_cell, d2) < short - 1e-9:
                    chosen = j
                    break
            # no single cell helps (it takes a cycle of them): take the nearest smallest
            j = chosen if chosen is not None else candidates[0]
            hidden[j] = True
            queue.append(j)
        k += 1
    return hidden
