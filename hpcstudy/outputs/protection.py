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
itself below the threshold cannot protect its cells: it is withheld whole, and so is a table
whose audit outgrows ``WORK_LIMIT`` (mostly small cells). The LP bounds are
those of the relaxation; for two-way tables (and one-way ones) they
are the integer bounds, since the margin matrix is totally unimodular; for three or more keys
the integer interval can be narrower, which this audit does not see.

Most protected cells need no linear program: two tables that keep every total and the published
cells, one with the cell's count at 0 and one at ``m`` or more, prove its interval reaches
[0, m] (``_Problem.covered``: the true table after a small move of persons and events along a
pair or rectangle of withheld cells, each table checked whole). Only a cell not shown covered
so goes to the LP, whose verdict is the same (tests/test_protection_moves.py), and only then is
SciPy imported (about half a second): example 2's Lexis table needs none.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

COMPLEMENT = "persons-events"
# How much auditing one table may take before it is withheld whole: the sum, over the linear
# programs built, of their withheld cells times the table's rows (a program's size). A table
# of mostly small cells (a measure by month over 20 000 persons: 196 of 336 cells small)
# would otherwise grow its suppression one cell at a time for many minutes; mi_mortality's
# 114-cell measure at 20 000 persons takes about 4.7 million. Counted in work, not seconds,
# so every machine withholds the same cells.
WORK_LIMIT = 12_000_000


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
    free = _outside_the_totals(np.array(rows)) > 1e-9
    return [c for c, f in zip(h, free, strict=True) if not f]


def _outside_the_totals(A: np.ndarray) -> np.ndarray:
    """Per column (withheld cell) of the margin matrix A: 1 − the squared length of its unit
    vector's projection on A's row space, i.e. the squared length of its row in any
    orthonormal basis of the null space (0: the cell is a fixed function of the totals).
    From the thin SVD of Aᵀ (the rank tolerance of ``scipy.linalg.null_space``), without
    SciPy's import and the full k × k factor: on 0/1 margin matrices the values are ≥ 1/16
    or ≤ 1e-14 (tests/test_protection_moves.py), so a 1e-9 cut gives the verdicts of the
    null space's entries above 1e-9, as before."""
    u, s, _ = np.linalg.svd(A.T, full_matrices=False)
    tol = (s.max() if s.size else 0.0) * max(A.shape) * np.finfo(float).eps
    span = u[:, :int((s > tol).sum())]
    return 1.0 - (span * span).sum(axis=1)


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
        # the withheld cells' true counts (ints; None where a count is missing) and which
        # totals each lies in: what a table that keeps every total is checked against
        self.true = {f: [values[f][i] for i in self.h] for f in self.fields}
        self.member = np.zeros((len(groups), k), dtype=np.int64)
        self.masks = [0] * k   # the same as bits of a Python int (totals of every cell aside)
        for gi, g in enumerate(groups):
            at = [self.pos[i] for i in g if i in self.pos]
            self.member[gi, at] = 1
            if len(at) < k:
                for j in at:
                    self.masks[j] |= 1 << gi
        self.counted = not any(v is None or v != int(v) for f in self.fields
                               for v in self.true[f])
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

    def covered(self, cell: int, field: str, min_cell: int) -> bool:
        """Whether two tables keeping every total and the published cells are found (and
        checked) in which the cell's count is 0 and at least ``min_cell``: then its interval
        reaches [0, min_cell] and no linear program is needed. False says nothing.

        Each table is the true one after a small move: the cell and another in exactly the
        same totals (one loses what the other gains), or a rectangle of four (the cell and z
        lose, a and b gain, where a's and b's totals are the cell's and z's together), as in
        the cycles of a two-way table; persons and events move by their own amounts."""
        if not self.counted:
            return False
        j = self.pos[cell]
        return all(any(self._reaches(j, field, goal, min_cell, loses, gains)
                       for loses, gains in self._moves(j)) for goal in ("zero", "min_cell"))

    def _moves(self, j: int):
        """(cells that lose, cells that gain) of small moves keeping every total, withheld
        cell j among the losers (the reverse move has it gain), found lazily: a cell in
        exactly j's totals; then rectangles j, a, b, z with a and b each sharing a total with
        j (a total of every withheld cell aside), as in a two-way table."""
        if not hasattr(self, "_with_mask"):
            self._with_mask: dict[int, list[int]] = {}
            for c, mc in enumerate(self.masks):
                self._with_mask.setdefault(mc, []).append(c)
        masks = self.masks
        mj = masks[j]
        for a in self._with_mask[mj]:
            if a != j:
                yield (j,), (a,)
        near = [a for a, ma in enumerate(masks) if a != j and ma & mj]
        for x, a in enumerate(near):
            ma = masks[a]
            for b in near[x + 1:]:
                mb = masks[b]
                # a + b − j must be a 0/1 vector (z's totals): no total in a and b but not
                # in j, none in j but in neither
                if (ma & mb & ~mj) or (mj & ~ma & ~mb):
                    continue
                for z in self._with_mask.get(ma ^ mb ^ mj, ()):
                    if z not in (j, a, b):
                        yield (j, z), (a, b)

    def _reaches(self, j: int, field: str, goal: str, m: int, loses, gains) -> bool:
        """Whether moving persons and events along (loses, gains), or its reverse, gives a
        table where the field of cell j is 0 (``goal`` zero) or at least m; the table found
        is checked whole (totals kept, counts ≥ 0, events ≤ persons)."""
        t = self.true
        p = t["persons"][j] if "persons" in t else None
        e = t["events"][j] if "events" in t else None
        both = p is not None and e is not None
        if field == "persons":
            trials = [(-1, p, e if both else 0)] if goal == "zero" else \
                [(1, m - p, 0), (1, m - p, m - p)]
        elif field == "events":
            trials = [(-1, 0, e), (-1, e, e)] if goal == "zero" else \
                [(1, max(0, m - p) if both else 0, m - e), (1, m - e, m - e)]
        else:   # the complement persons − events
            d = p - e
            trials = [(-1, d, 0), (1, 0, d)] if goal == "zero" else \
                [(1, m - d, 0), (-1, 0, m - d)]
        moved = (*loses, *gains)
        for sign, sp, se in trials:   # sign −1: the losers (j among them) lose; +1: gain
            if sp < 0 or se < 0:
                continue
            new = {}
            for f, step in (("persons", sp), ("events", se)):
                if f in t:
                    new[f] = {x: t[f][x] + (sign if x in loses else -sign) * step
                              for x in moved}
            if any(v < 0 for vals in new.values() for v in vals.values()):
                continue
            if both and any(new["events"][x] > new["persons"][x] for x in moved):
                continue
            v = {f: new[f][j] for f in new}
            got = v["persons"] - v["events"] if field == COMPLEMENT else v[field]
            if (got == 0 if goal == "zero" else got >= m) and self._table_ok(new):
                return True
        return False

    def _table_ok(self, moved: dict) -> bool:
        """The true table with the ``moved`` cells' new counts keeps every total, and every
        count is ≥ 0 with events ≤ persons (the check of a table found)."""
        new = {}
        for f, vals in moved.items():
            v = np.array(self.true[f], dtype=np.int64)
            for x, val in vals.items():
                v[x] = val
            if v.min() < 0 or not np.array_equal(self.member @ v, self.member @ np.array(
                    self.true[f], dtype=np.int64)):
                return False
            new[f] = v
        return not ("persons" in new and "events" in new and
                    (new["events"] > new["persons"]).any())

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
            if prob.covered(i, f, min_cell):   # shown without a linear program
                continue
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
            if sensitive(rows[i], f, min_cell) and not prob.covered(i, f, min_cell):
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
    k = work = 0

    def audited(trial):
        nonlocal work
        work += sum(trial) * len(rows)
        return _Problem(values, trial, groups)

    while k < len(queue):
        i = queue[k]
        while True:
            if work > WORK_LIMIT:   # too many small cells to protect one by one
                return [True] * len(rows)
            prob = audited(hidden)
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
                p2 = audited(trial)
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
