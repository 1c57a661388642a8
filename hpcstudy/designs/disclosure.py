"""Secondary suppression of the design's Table 1 rows (before and after the design), shared by
both engines' writers: a withheld row must not follow from the totals a reader could know.

The totals are those the output re-checker assumes (``outputs.protection.margin_groups``:
every set of rows sharing some of the key columns, e.g. a variable's arms, an arm's rows). While
some withheld row is still determined by them, the smallest shown row sharing a total with it
(ties: the first) is withheld too.
"""

from __future__ import annotations

import numpy as np

from ..outputs.protection import determined, margin_groups

KEYS = ("variable", "level", "arm")
TABLE1 = ("percent", "mean", "sd", "median", "q1", "q3")
TABLE1_ADJUSTED = ("weighted_persons", "percent", "mean", "sd")


def secondary(rows: list[dict], derived: tuple[str, ...]) -> list[dict]:
    """``rows`` with more rows withheld until no withheld row is determined by the totals."""
    hidden = [r.get("suppressed") is True for r in rows]
    if not any(hidden):
        return rows
    groups = margin_groups(rows, KEYS)
    while True:
        det = determined(hidden, groups)
        if not det:
            break
        i = det[0]
        near = {j for g in groups if i in g for j in g if not hidden[j]} or \
            {j for j, h in enumerate(hidden) if not h}
        if not near:
            break
        hidden[min(near, key=lambda j: (rows[j].get("persons") or 0, j))] = True
    out = []
    for r, h in zip(rows, hidden, strict=True):
        if h and not r.get("suppressed"):
            r = {**r, "persons": None, **dict.fromkeys(derived), "suppressed": True}
        out.append(r)
    return out


def dropped_few(before, after, min_cell: int) -> bool:
    """Whether the design (trimming, matching, strata) dropped 1 to ``min_cell`` − 1 persons
    of an arm: Table 1 and the preference table count the arms before it, the cohort table
    after it (181 in Table 1 and 178 matched: 3 exposed persons unmatched; outside tester,
    session 8). ``before`` and ``after`` are the persons per arm code."""
    return any(0 < int(b) - int(a) < min_cell for b, a in zip(before, after, strict=True))


def withhold_all(rows: list[dict], derived: tuple[str, ...]) -> list[dict]:
    """Every row of a design table withheld (its count and what derives from it)."""
    return [{**r, "persons": None, **dict.fromkeys(derived), "suppressed": True}
            for r in rows]


def withheld_variables(*tables) -> set[tuple[str, str]]:
    """(variable, level) of every Table 1 row withheld in any of ``tables`` (None: none)."""
    return {(r["variable"], r["level"]) for t in tables for r in t or ()
            if r.get("suppressed")}


def smd_summary(names: list[str], smds, shown: list[bool], weighted: bool,
                limit: float) -> tuple[list[str], float | None]:
    """The imbalance warning and the largest |SMD| after the design, from SMDs a reader may
    see only: an SMD of a flag and the arms' sizes give its counts back, so a variable whose
    Table 1 rows are withheld is named without its value and left out of the maximum (an
    outside tester read the withheld matched counts' difference off smd_after, session 6)."""
    vals = [abs(float(s)) for s in smds]
    warnings = []
    if vals and max(vals) > limit:
        i = max(range(len(vals)), key=lambda j: (vals[j], -j))
        how = f"is {vals[i]:.3f}" if shown[i] else \
            "is above the limit (its value is withheld with its Table 1 rows)"
        warnings.append(f"covariates are not balanced {'after' if weighted else 'without'} "
                        f"adjustment: |SMD| of {names[i]} {how} (> {limit})")
    seen = [v for v, s in zip(vals, shown, strict=True) if s]
    return warnings, (max(seen) if weighted and seen else None)


EQUIPOISE = (0.3, 0.7)


def persons_text(n: int, min_cell: int) -> str:
    """A count of persons for an error message (which the audit log keeps): itself when 0 or
    at least ``min_cell``, else "fewer than min_cell" ("matched 4 of the 181 exposed persons"
    was a small cell in the log; outside tester, session 7)."""
    return str(n) if n == 0 or n >= min_cell else f"fewer than {min_cell}"


def preference_hidden(cells, min_cell: int) -> list[list[bool]]:
    """Which (arm, bin) cells of the preference table to withhold, ``cells`` being the persons
    per arm (rows: exposed, comparator) and bin. The small ones; while a withheld cell is alone
    in its bin, the bin's other cell, and while one is alone in its arm, the arm's next
    smallest. Then, as ``protection.protect`` would for any table, more until no withheld count
    can be narrowed below [0, min_cell] by the arms' totals (the cohort table's) and the bins'
    totals: the second step closes what the first misses, for an empty bin withheld beside a
    small one protects nothing (an arm of 181 with 180 shown left 1 person in its two withheld
    bins; outside tester, session 7). The withheld cells are then whole bins J, and with the
    withheld persons S_a of each arm and T_j of each bin, the exposed count of bin j can be
    anything in [max(0, S_1 − Σ_{k≠j} T_k), min(T_j, S_1)] (the comparator's is T_j minus it):
    closed-form, so 1 000 bins cost no linear programs."""
    c = np.asarray(cells, dtype=np.int64)
    hidden = (c > 0) & (c < min_cell)
    while True:
        before = hidden.copy()
        hidden[:, hidden.sum(axis=0) == 1] = True
        for arm in range(c.shape[0]):
            shown = np.flatnonzero(~hidden[arm])
            if hidden[arm].sum() == 1 and shown.size:
                hidden[arm, shown[np.argmin(c[arm][shown])]] = True
        if (hidden == before).all():
            break
    small = (c > 0) & (c < min_cell)
    total = c.sum(axis=0)
    while hidden.any() and not _bins_protected(c, hidden[0], small, total, min_cell):
        rest = np.flatnonzero(~hidden[0] & (total > 0))
        if rest.size == 0 or (small & hidden).any(axis=0)[total < min_cell].any():
            hidden[:] = True    # nothing can protect it (a bin's own total is small)
            break
        hidden[:, rest[np.argmin(total[rest])]] = True
    return hidden.tolist()


def _bins_protected(c, bins, small, total, m: int) -> bool:
    """Whether every small cell of the withheld bins can be 0 and can be m, and no withheld
    cell is pinned, given the arms' and bins' totals (see :func:`preference_hidden`)."""
    t = total[bins]
    s1 = int(c[0][bins].sum())
    rest = t.sum() - t
    lo1, hi1 = np.maximum(0, s1 - rest), np.minimum(t, s1)
    lo0, hi0 = t - hi1, t - lo1
    ok = ((~small[0][bins]) | ((lo1 <= 0) & (hi1 >= m))) & \
        ((~small[1][bins]) | ((lo0 <= 0) & (hi0 >= m)))
    return bool(ok.all()) and bool(((hi1 > lo1) | (t == 0)).all())


def equipoise_shown(preference: list[dict], share: float) -> float | None:
    """The share of persons in equipoise (preference score 0.3–0.7), unless a withheld bin of
    the preference table lies (partly) in that range: the share times the persons is the sum of
    those bins, which gives withheld bins back (two withheld cells of one bin: its small
    total). Found by an outside tester, session 6."""
    return None if equipoise_hides(preference) else share


def equipoise_hides(preference: list[dict]) -> bool:
    """Whether a withheld preference bin overlaps the equipoise range, or the range's ends
    are not bin edges: then the share times the persons counts persons no bin sums (with 3
    bins, 957 of 959 gave the 2 persons above 0.7 of the 15 in bin 0.67–1; outside tester,
    session 8)."""
    edges = set()
    for r in preference:
        if not isinstance(r.get("bin"), str):
            continue
        try:
            lo, hi = (float(x) for x in r["bin"].split("-"))
        except ValueError:
            return True
        edges.update((lo, hi))
        if r.get("suppressed") in (True, "True", "true") and hi > EQUIPOISE[0] \
                and lo <= EQUIPOISE[1]:
            return True
    return not all(any(abs(e - x) < 1e-9 for e in edges) for x in EQUIPOISE)


def equipoise_warning(share: float, shown: float | None) -> list[str]:
    """The warning of few persons in equipoise, with its share only where the share is shown."""
    if share >= 0.5:
        return []
    how = f"only {100 * share:.0f} %" if shown is not None else "fewer than half"
    return [f"{how} of persons are in equipoise (preference score 0.3–0.7): the arms differ "
            "much"]
