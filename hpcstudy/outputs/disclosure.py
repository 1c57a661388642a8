"""Disclosure control: the one layer every exported figure passes through.

Rules (the threshold ``min_cell`` is 5 unless a study or project says more; docs/secure.md
gives each with the attack it closes):

* a count of persons or events (persons, events, at_risk, n) from 1 to min_cell − 1 is a small
  cell: its row's counts and everything derived from them are withheld (primary suppression);
  where a row has persons and events, persons − events is a count too, withheld from 1 to
  min_cell − 1 and when it is 0 with persons > 0 (everyone had the event: a 100 % proportion
  tells the outcome of every member of the group); 0 events is shown, as 0 is everywhere;
* no withheld cell may be recoverable from totals: in every set of rows that sums to a total —
  rows sharing the values of any subset of the key columns — either no row or at least two
  rows are withheld (secondary suppression, smallest rows first), and then the linear
  programming audit of ``protection`` withholds more until every withheld small count can lie
  anywhere in [0, min_cell] given all those totals;
* attrition: every shown count, and every difference between consecutive shown steps (across
  withheld ones), is 0 or at least the threshold; the last step, which the cohort table also
  publishes, is pinned (or withheld) with it;
* curves: a point is shown only where the risk set is at least the threshold and at least that
  many events have happened since the last shown point (else n·(1 − S(t)/S(t−)) would reveal a
  small count); the number at risk is rounded to a multiple of the threshold;
* models (``model``): totals, the 2 × 2 table behind each indicator term, the intercept and
  saturated designs — see its docstring: what a coefficient and its standard error reveal is
  the cells they are computed from (1/se² of a Poisson intercept is the reference events);
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
    """Primary and secondary suppression of a table of rows (dicts), audited by linear
    programming (``protection.protect``) so that no withheld cell can be narrowed down from
    the totals. ``keys`` are the columns that identify a row; pass them whenever a table has
    any, so that a key that happens to share a count's name never goes unseen."""
    from .protection import COMPLEMENT, protect, sensitive

    rows = [dict(r) for r in rows]
    if keys is None:
        keys = tuple(k for k in (rows[0] if rows else {}) if k not in COUNT_FIELDS
                     and k not in derived and k not in ("suppressed",))
    counts = [f for f in COUNT_FIELDS if f not in keys and any(f in r for r in rows)]
    checked = [*counts, COMPLEMENT] if {"persons", "events"} <= set(counts) else counts
    hidden = [any(sensitive(r, f, min_cell) for f in checked) for r in rows]
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
    if any(hidden):
        hidden = protect(rows, hidden, keys, min_cell)
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


def attrition(rows: list[dict], min_cell: int, last_elsewhere: bool | None = None) -> list[dict]:
    """Steps with persons left: shown counts, and differences between consecutive shown steps
    (across withheld ones: 707, –, –, 703 gives 4), are 0 or ≥ min_cell.

    ``last_elsewhere`` says whether another table publishes the last step's count (the cohort
    table's persons of the group): True pins it as shown and withholds earlier steps that sit
    1 to min_cell − 1 above it; False withholds it here too; None: no other table has it."""
    out = [dict(r) for r in rows]

    def ok(a, b):
        return a - b == 0 or a - b >= min_cell

    shown: list[int] = []
    for i, r in enumerate(out):
        n = r["persons"]
        last = i == len(out) - 1
        if last and last_elsewhere is True:
            while shown and not ok(out[shown[-1]]["persons"], n):
                _withhold(out[shown.pop()])
            continue
        if (last and last_elsewhere is False) or not (n == 0 or n >= min_cell) or \
                (shown and not ok(out[shown[-1]]["persons"], n)):
            _withhold(r)
        else:
            shown.append(i)
    return out


def _withhold(row: dict) -> None:
    row["persons"] = None
    row["suppressed"] = True


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


# -- models -------------------------------------------------------------------------------------
TERM_COUNTS = ("persons", "events", "persons_other", "events_other")
MIN_RESIDUAL_DF = 10  # ACRO's minimum residual degrees of freedom for a regression


def count_problem(persons, events, min_cell: int, what: str = "") -> str | None:
    """Why a (persons, events) cell may not be published, or None: persons, events and
    persons − events are each 0 or ≥ min_cell, and not everyone had the event."""
    at = f" {what}" if what else ""
    if persons is not None and 0 < persons < min_cell:
        return f"fewer than {min_cell} persons{at}"
    if events is not None and 0 < events < min_cell:
        return f"fewer than {min_cell} events{at}"
    if persons is not None and events is not None:
        d = persons - events
        if 0 < d < min_cell:
            return f"fewer than {min_cell} persons without the event{at}"
        if d == 0 and persons > 0:
            return f"every person{at} had the event"
    return None


def model(m: dict, min_cell: int) -> dict:
    """A model result with the disclosure rules applied (see docs/secure.md):

    1. the model's persons, events and persons without the event pass ``count_problem``, else
       the model is withheld whole;
    2. an indicator term (exposure, binary covariate, a level of a categorical) passes on the
       persons and events in its level and in the rest, else it is withheld: estimates and
       counts null, ``withheld`` says why; the other levels of the same categorical go with it
       (the levels and the total would give it back);
    3. when a term is withheld the intercept goes too (with the totals its estimate and SE give
       the reference level's counts back), and when no continuous term remains published the
       whole model is withheld (with indicators only, estimates and SEs are functions of the
       cross-classified counts: 1/se² of a Poisson intercept is the reference events);
    4. a model whose columns all take few values (indicators, or counts such as {1, 2}) with
       fewer than MIN_RESIDUAL_DF residual degrees of freedom (covariate patterns − parameters:
       saturated or nearly) is withheld whole unless every covariate pattern passes
       ``count_problem``.
    """
    if "error" in m or "withheld" in m:
        return m
    why = count_problem(m.get("persons"), m.get("events"), min_cell)
    if why:
        return {"withheld": f"the model has {why}"}
    variables = m.get("_variables", {})
    terms = [dict(t) for t in m["terms"]]
    withheld: dict[str, str] = {}
    for t in terms:
        if t.get("persons") is None:
            continue
        why = (count_problem(t["persons"], t["events"], min_cell, f"with {t['term']}") or
               count_problem(t["persons_other"], t["events_other"], min_cell,
                             f"without {t['term']}"))
        if why:
            withheld[t["term"]] = why
    for t in terms:
        var = variables.get(t["term"])
        if var and t["term"] not in withheld and any(variables.get(w) == var for w in withheld):
            withheld[t["term"]] = f"another level of {var} is withheld"
    names = [t["term"] for t in terms]
    if withheld and "intercept" in names:
        withheld["intercept"] = "a term is withheld: with the totals it would give the " \
                                "reference level's counts back"
    continuous = [t for t in terms if t.get("persons") is None and t["term"] != "intercept"
                  and t["term"] not in withheld]
    if withheld and not continuous:
        first = next(iter(withheld.items()))
        return {"withheld": f"term {first[0]!r} is withheld ({first[1]}) and the model has no "
                            "continuous term: its other estimates would give it back"}
    patterns = m.get("_patterns")
    # patterns are counted only where every column takes few values (indicators, or counts
    # such as {1, 2}): then the model is a table of those cells, whatever the terms are called
    if patterns is not None and len(patterns) - len(terms) < MIN_RESIDUAL_DF:
        for p, e in patterns:
            why = count_problem(p, e, min_cell, "in a covariate pattern")
            if why:
                return {"withheld": f"{len(patterns)} covariate patterns for {len(terms)} "
                                    f"parameters (fewer than {MIN_RESIDUAL_DF} residual degrees "
                                    f"of freedom) and {why}: the estimates would give it back"}
    for t in terms:
        if t["term"] in withheld:
            for k in t:
                if k != "term":
                    t[k] = None
            t["withheld"] = withheld[t["term"]]
    return {k: v for k, v in m.items() if not k.startswith("_")} | {"terms": terms}


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
    # a model's terms do not add up to a total: their rules are in checks.py
    if counts and "day" not in cols and "term" not in cols:
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
