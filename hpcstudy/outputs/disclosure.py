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

The export gate (``gate.py``) re-checks the files independently of how they were made, through
``checks.py``.
"""

from __future__ import annotations

import itertools

COUNT_FIELDS = ("persons", "events", "at_risk", "n")


def _small(v, min_cell) -> bool:
    return v is not None and 0 < v < min_cell


def suppress(rows: list[dict], min_cell: int, derived: tuple[str, ...] = (),
             keys: tuple[str, ...] | None = None) -> list[dict]:
    """Primary and secondary suppression of a table of rows (dicts), audited by linear
    programming (``protection.protect``) so that no withheld cell can be narrowed down from
    the totals. ``keys`` are the columns that identify a row; pass them whenever a table has
    any, so that a key that happens to share a count's name never goes unseen."""
    from .protection import COMPLEMENT, margin_groups, protect, sensitive

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
        for members in margin_groups(rows, keys):
            if sum(hidden[i] for i in members) == 1:
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
    """Thin a curve (rows by group and day) to points that reveal no small count. The events
    after the last shown point are the group's total (the cohort table's events) minus the
    shown ones: when they are 1 to min_cell − 1 the last point goes, and its events with
    them (9 events in the cohort table and 5 shown on the curve told 4 after its last point)."""
    out = []
    for _, grp in itertools.groupby(rows, key=lambda r: r["group"]):
        pending, shown_here = 0, []
        for r in grp:
            pending += r["events"]
            if r["at_risk"] >= min_cell and pending >= min_cell:
                shown = dict(r)
                shown["events"] = pending
                shown["at_risk"] = min_cell * (r["at_risk"] // min_cell)
                shown_here.append(shown)
                pending = 0
        if 0 < pending < min_cell and shown_here:
            shown_here.pop()
        out += shown_here
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


def both_levels(term: dict, persons) -> int:
    """Persons with time both in a term's level and in the rest: its persons and persons_other
    minus the model's. 0 for a term fixed at index; for a time-varying state or a band, those
    who switched or crossed it (246 + 874 of 1 118: the 2 who started a statin; outside
    tester, session 7)."""
    p, o = term.get("persons"), term.get("persons_other")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (p, o, persons)):
        return 0
    return p + o - persons


def variable_of(term) -> str | None:
    """The variable a published term is a level of: region of 'region=1082', time_band of
    'time_band 12-399' (a Lexis model's 'period 2005-2009' too)."""
    if not isinstance(term, str):
        return None
    if "=" in term:
        return term.split("=", 1)[0]
    if " " in term:
        return term.split(" ", 1)[0]
    return None


def said(term: str) -> str:
    """A term as a withheld reason names it: a band ('time_band 12-399') by its variable, for
    the gate lets a band's numbers stand only as the term itself (a reason naming the band of
    days 12-399 held every file back: 399 is no number of the study)."""
    return f"this band of {term.split(' ', 1)[0]}" if " " in term else term


def level_problems(terms: list[dict], variable_of, persons, events,
                   min_cell: int) -> dict[str, str]:
    """{term: why} for the indicator terms whose counts the model's totals give back beyond
    their own 2 × 2 tables (outside tester, session 8):

    * a band or time-varying term's persons without any time in its level, the model's persons
      minus its own (for a term fixed at index that is its persons_other, checked already):
      1 113 persons with time 12–399 days after index of 1 115 gave the 2 who left before;
    * the reference level of a variable with several levels: the model's events minus the
      levels' (and, when the levels partition the persons, its persons too): the first time
      band's 2 deaths were 68 − 26 − 40.

    ``variable_of(term)`` names the variable a term is a level of (None: its own)."""
    out: dict[str, str] = {}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (persons, events)):
        return out
    shown = [t for t in terms if isinstance(t.get("persons"), int) and
             isinstance(t.get("events"), int)]
    for t in shown:
        if 0 < persons - t["persons"] < min_cell:
            out[t["term"]] = f"fewer than {min_cell} persons with no time with {said(t['term'])}"
    by_var: dict[str, list[dict]] = {}
    for t in shown:
        var = variable_of(t["term"])
        if var:
            by_var.setdefault(var, []).append(t)
    for var, ts in by_var.items():
        if len(ts) < 2:   # one indicator: its reference is its rest, checked with it
            continue
        split = any(both_levels(t, persons) > 0 for t in ts)
        ref_persons = None if split else persons - sum(t["persons"] for t in ts)
        why = count_problem(ref_persons, events - sum(t["events"] for t in ts), min_cell,
                            f"in the reference level of {var}")
        if why:
            for t in ts:
                out.setdefault(t["term"], why)
    return out


def model(m: dict, min_cell: int) -> dict:
    """A model result with the disclosure rules applied (see docs/secure.md):

    1. the model's persons, events and persons without the event pass ``count_problem``, else
       the model is withheld whole;
    2. an indicator term (exposure, binary covariate, a level of a categorical) passes on the
       persons and events in its level and in the rest, and on the persons with time in both
       (``both_levels``), else it is withheld: estimates and
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
        name = said(t["term"])
        why = (count_problem(t["persons"], t["events"], min_cell, f"with {name}") or
               count_problem(t["persons_other"], t["events_other"], min_cell,
                             f"without {name}"))
        if why:
            withheld[t["term"]] = why
        elif 0 < both_levels(t, m.get("persons")) < min_cell:
            withheld[t["term"]] = f"fewer than {min_cell} persons with time both with and " \
                                  f"without {name}"
    for term, why in level_problems(terms, lambda t: variables.get(t) or variable_of(t),
                                    m.get("persons"), m.get("events"), min_cell).items():
        withheld.setdefault(term, why)
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
                # no pattern or parameter count in the text: only the study's numbers leave
                return {"withheld": "not enough covariate patterns for its parameters (under the "
                                    "minimum residual degrees of freedom) and "
                                    f"{why}: the estimates would give it back"}
    for t in terms:
        if t["term"] in withheld:
            for k in t:
                if k != "term":
                    t[k] = None
            t["withheld"] = withheld[t["term"]]
    return {k: v for k, v in m.items() if not k.startswith("_")} | {"terms": terms}
