"""Disclosure control: the one layer every exported figure passes through.

Rules (the threshold ``min_cell`` is 5 unless a study or project says more):

* a count of persons or events (persons, events, at_risk, n) from 1 to min_cell − 1 is a small
  cell: its row's counts and everything derived from them are withheld (primary suppression);
* no withheld cell may be recoverable from totals: in every set of rows that sums to a total —
  rows sharing the values of any subset of the key columns — either no row or at least two
  rows are withheld (secondary suppression, smallest rows first);
* attrition: every shown count, and every difference between two shown steps, is 0 or at least
  the threshold;
* curves: a point is shown only where the risk set is at least the threshold and at least that
  many events have happened since the last shown point (else n·(1 − S(t)/S(t−)) would reveal a
  small count); the number at risk is rounded to a multiple of the threshold;
* no minimum, maximum or percentile columns; no person identifiers anywhere.

``check_outputs`` re-checks the files independently of how they were made.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from pathlib import Path

COUNT_FIELDS = ("persons", "events", "at_risk", "n")
FORBIDDEN_COLUMNS = {"pnr", "cpr", "cpr_nr", "min", "max", "minimum", "maximum", "median"}
PERCENTILE = re.compile(r"^(p|q|percentile_?)\d{1,2}$")
# not inside a longer number or a decimal fraction
CPR = re.compile(r"(?<![\d.])(0[1-9]|[12]\d|3[01])(0[1-9]|1[0-2])\d{2}-?\d{4}(?![\d.])")
LONG_INTEGER = re.compile(r"(?<![\d.])\d{12,}(?![\d.])")


def _margins(rows: list[dict], keys):
    """(key subset, row indices) of every set of rows that sums to a total: rows sharing the
    values of a subset of the key columns (the empty subset: all rows)."""
    for size in range(len(keys)):
        for subset in itertools.combinations(keys, size):
            groups: dict[tuple, list[int]] = {}
            for i, r in enumerate(rows):
                groups.setdefault(tuple(r.get(k) for k in subset), []).append(i)
            for members in groups.values():
                yield subset, members


def _small(v, min_cell) -> bool:
    return v is not None and 0 < v < min_cell


def suppress(rows: list[dict], min_cell: int, derived: tuple[str, ...] = (),
             keys: tuple[str, ...] | None = None) -> list[dict]:
    """Primary and secondary suppression of a table of rows (dicts)."""
    rows = [dict(r) for r in rows]
    counts = [f for f in COUNT_FIELDS if any(f in r for r in rows)]
    hidden = [any(_small(r.get(f), min_cell) for f in counts) for r in rows]
    if keys is None:
        keys = tuple(k for k in (rows[0] if rows else {}) if k not in counts
                     and k not in derived and k not in ("suppressed",))
    # secondary: every margin (rows sharing a subset of key values) hides 0 or ≥ 2 rows
    changed = True
    while changed:
        changed = False
        for _, members in _margins(rows, keys):
            if len(members) > 1 and sum(hidden[i] for i in members) == 1:
                rest = [i for i in members if not hidden[i]]
                smallest = min(rest, key=lambda i: tuple(rows[i].get(f) or 0 for f in counts))
                hidden[smallest] = True
                changed = True
    for r, h in zip(rows, hidden, strict=True):
        if h:
            for f in (*counts, *derived):
                if f in r:
                    r[f] = None
            r["suppressed"] = True
    return rows


def rounded(rows: list[dict], base: int, recompute=None) -> list[dict]:
    """Shown counts rounded to the nearest multiple of ``base``; ``recompute(row)`` then
    redoes what was derived from them (a rate from exact counts would give them back)."""
    if not base:
        return rows
    out = []
    for r in rows:
        r = dict(r)
        if not r.get("suppressed"):
            for f in COUNT_FIELDS:
                if isinstance(r.get(f), int | float):
                    r[f] = int(base * round(r[f] / base))
            if recompute is not None:
                recompute(r)
        out.append(r)
    return out


def attrition(rows: list[dict], min_cell: int) -> list[dict]:
    """Steps with persons left: shown counts and differences between shown steps are 0 or
    ≥ min_cell."""
    out = []
    last_shown = None
    for r in rows:
        r = dict(r)
        n = r["persons"]
        ok = (n == 0 or n >= min_cell) and (last_shown is None or last_shown - n == 0 or
                                             last_shown - n >= min_cell)
        if ok:
            last_shown = n
        else:
            r["persons"] = None
            r["suppressed"] = True
        out.append(r)
    return out


def curve(rows: list[dict], min_cell: int) -> list[dict]:
    """Thin a curve (rows by group and day) to points that reveal no small count."""
    out = []
    for _, grp in itertools.groupby(rows, key=lambda r: r["group"]):
        pending = 0
        for r in grp:
            pending += r["events"]
            if r["at_risk"] >= min_cell and pending >= min_cell:
                shown = dict(r)
                shown["events"] = pending
                shown["at_risk"] = min_cell * (r["at_risk"] // min_cell)
                out.append(shown)
                pending = 0
    return out


# -- independent re-check of exported files ---------------------------------------------------
def _table_violations(rows: list[dict], min_cell: int, where: str) -> list[str]:
    out = []
    if not rows:
        return out
    cols = list(dict.fromkeys(k for r in rows for k in r))
    for c in cols:
        if c.lower() in FORBIDDEN_COLUMNS or PERCENTILE.match(c.lower()):
            out.append(f"{where}: column {c!r}: minima, maxima, percentiles and identifiers "
                       "may not be exported")
    counts = [c for c in cols if c in COUNT_FIELDS]
    for i, r in enumerate(rows, 1):
        for c in counts:
            v = r.get(c)
            if isinstance(v, int | float) and 0 < v < min_cell:
                out.append(f"{where}: row {i}, column {c!r}: {v:g} is below {min_cell}")
    if counts and "day" not in cols:
        keys = [c for c in cols if c not in COUNT_FIELDS and c != "suppressed" and
                all(not isinstance(r.get(c), float) for r in rows)]
        hidden = [any(r.get(c) is None for c in counts) for r in rows]
        for subset, members in _margins(rows, keys):
            if len(members) > 1 and sum(hidden[i] for i in members) == 1:
                i = next(i for i in members if hidden[i])
                by = ", ".join(f"{k}={rows[i].get(k)}" for k in subset) or "all rows"
                out.append(f"{where}: row {i + 1}: the only withheld cell among rows "
                           f"with {by}: recoverable from their total")
    return out


def _text_violations(text: str, where: str) -> list[str]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if CPR.search(line):
            out.append(f"{where}: line {lineno}: something shaped like a CPR number")
        if LONG_INTEGER.search(line):
            out.append(f"{where}: line {lineno}: a long integer that may identify a person")
    return out


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for n, r in enumerate(rows, 2):
        if None in r or None in r.values():
            raise ValueError(f"line {n} has another number of fields than the header")
        d = {}
        for k, v in r.items():
            if v == "":
                d[k] = None
                continue
            try:
                d[k] = int(v)
            except ValueError:
                try:
                    d[k] = float(v)
                except ValueError:
                    d[k] = v
        out.append(d)
    return out


def _json_tables(obj, path="") -> list[tuple[str, list[dict]]]:
    """Every list of records inside a JSON document, with its path."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _json_tables(v, f"{path}.{k}" if path else k)
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        found.append((path, obj))
    return found


def check_outputs(out: str | Path, min_cell: int | None = None) -> dict[str, list[str]]:
    """Violations per exported file (everything under ``out`` except ``private/``)."""
    out = Path(out)
    if min_cell is None:
        try:
            min_cell = int(json.loads((out / "results.json").read_text())["run"]["min_cell"])
        except (OSError, KeyError, ValueError, TypeError):
            min_cell = 5
    report: dict[str, list[str]] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out)
        if rel.parts[0] == "private":
            continue
        problems: list[str] = []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            report[str(rel)] = [f"{rel}: not a text file: cannot be checked, so not exported"]
            continue
        problems += _text_violations(text, str(rel))
        try:
            rows = _csv_rows(path) if path.suffix == ".csv" else None
            doc = json.loads(text) if path.suffix == ".json" else None
        except (ValueError, csv.Error) as e:   # a file that cannot be read cannot be checked
            report[str(rel)] = problems + [f"{rel}: not readable as {path.suffix[1:]} ({e}): "
                                           "cannot be checked, so not exported"]
            continue
        if path.suffix == ".csv":
            if path.name.startswith("attrition"):
                problems += _attrition_violations(rows, min_cell, str(rel))
            else:
                problems += _table_violations(rows, min_cell, str(rel))
        elif path.suffix == ".json":
            problems += _scalar_violations(doc, min_cell, str(rel))
            for where, rows in _json_tables(doc):
                if where == "run.status_codes":
                    continue
                kind = where.split(".")[-1]
                if kind.startswith("attrition") or where.startswith("attrition"):
                    problems += _attrition_violations(rows, min_cell, f"{rel}:{where}")
                else:
                    problems += _table_violations(rows, min_cell, f"{rel}:{where}")
        report[str(rel)] = problems
    return report


def _scalar_violations(obj, min_cell: int, where: str, path: str = "") -> list[str]:
    """Counts given as single values (a model's n and events)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            here = f"{path}.{k}" if path else k
            if k in COUNT_FIELDS and isinstance(v, int | float) and 0 < v < min_cell:
                out.append(f"{where}:{here}: {v:g} is below {min_cell}")
            elif isinstance(v, dict):
                out += _scalar_violations(v, min_cell, where, here)
    return out


def _attrition_violations(rows: list[dict], min_cell: int, where: str) -> list[str]:
    out = []
    shown = [(i, r["persons"]) for i, r in enumerate(rows, 1) if r.get("persons") is not None]
    for i, n in shown:
        if 0 < n < min_cell:
            out.append(f"{where}: row {i}, column 'persons': {n} is below {min_cell}")
    for (_, a), (j, b) in itertools.pairwise(shown):
        if 0 < a - b < min_cell:
            out.append(f"{where}: row {j}: {a - b} persons left at this step (below "
                       f"{min_cell})")
    return out
