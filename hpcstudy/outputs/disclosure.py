"""Primary cell suppression for exported tables (the full disclosure layer builds on this).

A row whose count of persons (or events) is below the threshold has its small counts and
everything derived from them withheld, and says so in ``suppressed``.
"""

from __future__ import annotations

COUNT_FIELDS = ("persons", "events", "at_risk")


def suppress(rows: list[dict], min_cell: int, derived: tuple[str, ...] = ()) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        small = [f for f in COUNT_FIELDS if f in r and r[f] is not None and 0 < r[f] < min_cell]
        if small:
            for f in (*small, *derived):
                if f in r:
                    r[f] = None
            r["suppressed"] = True
        out.append(r)
    return out
