"""Primary cell suppression for exported tables (the full disclosure layer builds on this).

A row in which any count (persons, events, at risk) is above zero but below the threshold has
all its counts and everything derived from them withheld, and says so in ``suppressed``.
"""

from __future__ import annotations

COUNT_FIELDS = ("persons", "events", "at_risk")


def suppress(rows: list[dict], min_cell: int, derived: tuple[str, ...] = ()) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        small = [f for f in COUNT_FIELDS if f in r and r[f] is not None and 0 < r[f] < min_cell]
        if small:
            # every count of the row goes: a zero next to a withheld total still tells
            for f in (*COUNT_FIELDS, *derived):
                if f in r:
                    r[f] = None
            r["suppressed"] = True
        out.append(r)
    return out
