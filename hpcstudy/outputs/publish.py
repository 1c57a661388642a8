"""Disclosure control of a run's results: every rule applied to the raw results dict, giving
what may leave OUT/private (results.json, the tables). The rules themselves are
hpcstudy/outputs/disclosure.py; this module applies them section by section, and re-derives a
rate or proportion from rounded counts (``round_to``) so a shown ratio never betrays the exact
count behind it.
"""

from __future__ import annotations

import json

import numpy as np

from . import disclosure as D


def _rate_again(row: dict) -> None:
    from ..models.rates import poisson_ci

    if "proportion" in row:   # a fixed-horizon outcome's cohort or rates table
        _proportion_again(row)
        return

    py = row.get("person_years")
    if py:
        lo, hi = poisson_ci(row["events"], py)
        row.update(rate_per_1000py=1000 * row["events"] / py, lower_95=1000 * lo,
                   upper_95=1000 * hi)


def _proportion_again(row: dict) -> None:
    from ..models.rates import wilson_ci

    if row.get("persons"):
        lo, hi = wilson_ci(row["events"], row["persons"])
        row.update(proportion=row["events"] / row["persons"], lower_95=lo, upper_95=hi)


def _measure_again(row: dict) -> None:
    from ..models.rates import poisson_ci

    if "proportion" in row:
        _proportion_again(row)
    elif row.get("person_years"):
        lo, hi = poisson_ci(row["events"], row["person_years"])
        row.update(rate=1000 * row["events"] / row["person_years"], lower_95=1000 * lo,
                   upper_95=1000 * hi)


def _oe_again(row: dict) -> None:
    from ..models.rates import poisson_ci

    if row.get("expected"):
        lo, hi = poisson_ci(row["events"], row["expected"])
        row.update(oe=row["events"] / row["expected"], lower_95=lo, upper_95=hi)


def exported(results: dict, min_cell: int, round_to: int = 0) -> dict:
    """The results with every disclosure rule applied (what may leave OUT/private)."""
    r = _disclosed(results, min_cell)
    if round_to:
        for g in r["attrition"]:
            r["attrition"][g] = D.rounded(r["attrition"][g], round_to)
        for key in ("cohort", "rates", "lexis"):
            if key in r:
                r[key] = D.rounded(r[key], round_to, _rate_again)
        for k in r.get("measures", {}):
            r["measures"][k] = D.rounded(r["measures"][k], round_to, _measure_again)
        if "curves" in r:
            r["curves"] = D.rounded(r["curves"], round_to)
        if "hospitals" in r:
            r["hospitals"] = D.rounded(r["hospitals"], round_to, _oe_again)
        for m in [*r.get("models", {}).values(), r.get("lexis_model", {})]:
            for row in [m, *m.get("terms", [])]:
                for f in D.TERM_COUNTS:
                    if isinstance(row.get(f), int):
                        row[f] = int(round_to * round(row[f] / round_to))
        _design_rounded(r, round_to)
    return r


def _nearest(v: float, base: int) -> int:
    return int(base * round(v / base))


def _design_rounded(r: dict, base: int) -> None:
    """The comparative design's tables under ``round_to``: Table 1's and the preference
    table's persons rounded, a flag's percent recomputed from its rounded persons over its
    arm's rounded persons; the adjusted Table 1's persons and weighted persons rounded, a
    flag's percent their ratio again; balance SMDs to two decimals. Exact percents or SMDs
    beside rounded counts would give the exact counts back (46.4088 % = 84/181 beside 180;
    outside tester, session 8)."""
    if "preference" in r:
        r["preference"] = D.rounded(r["preference"], base)
    for key, count in (("table1", "persons"), ("table1_adjusted", "weighted_persons")):
        rows = []
        for row in r.get(key, []):
            row = dict(row)
            if not row.get("suppressed"):
                pct, ones = row.get("percent"), row.get(count)
                if pct and ones:   # a flag: its arm's (weighted) persons from its percent
                    arm = ones * 100 / pct
                    row["percent"] = 100 * _nearest(ones, base) / _nearest(arm, base) \
                        if _nearest(arm, base) else None
                for f in ("persons", "weighted_persons"):
                    if isinstance(row.get(f), int | float):
                        row[f] = _nearest(row[f], base) if f == "persons" else \
                            float(_nearest(row[f], base))
            rows.append(row)
        if key in r:
            r[key] = rows
    for row in r.get("balance", []):
        for f in ("smd_before", "smd_after"):
            if isinstance(row.get(f), float):
                row[f] = round(row[f], 2)


def numbered(rows: list[dict]) -> bool:
    """Whether a hospitals table numbers its units 1…n (identify: rank or none) instead of
    showing their codes."""
    return [r.get("hospital") for r in rows] == list(range(1, len(rows) + 1))


def withheld_last(rows: list[dict]) -> list[dict]:
    """A numbered hospitals table with its withheld units after the shown ones (renumbered):
    numbered by O/E or by size among the shown ones, a withheld unit's place bounded its
    withheld counts (ranked after a shown O/E of 2.49, a unit of 4 deaths had at least one;
    numbered between two units of 28 persons, one had 28; outside tester, session 8). The
    withheld rows hold no value, so their order among themselves says nothing."""
    if not numbered(rows):
        return rows
    order = [x for x in rows if not x.get("suppressed")] + \
        [x for x in rows if x.get("suppressed")]
    return [{**x, "hospital": i} for i, x in enumerate(order, 1)]


def _disclosed(results: dict, min_cell: int) -> dict:
    r = json.loads(json.dumps(results, default=jsonable))
    rate = ("person_years", "rate_per_1000py", "proportion", "lower_95", "upper_95")
    r["cohort"] = D.suppress(r["cohort"], min_cell, rate, keys=("label",))
    shown = {c["label"]: c["persons"] is not None for c in r["cohort"]}
    for g in r["attrition"]:
        # the last step is the cohort table's persons of the group: one number, one verdict
        last = shown.get(g, next(iter(shown.values())) if len(shown) == 1 else None)
        r["attrition"][g] = D.attrition(r["attrition"][g], min_cell, last)
    if "rates" in r:
        r["rates"] = D.suppress(r["rates"], min_cell, rate, keys=_keys(r["rates"],
                                                                       _rate_columns()))
    if "lexis" in r:
        r["lexis"] = D.suppress(r["lexis"], min_cell, rate, keys=_lexis_keys())
    from ..measures.compute import COLUMNS as MEASURE_COLUMNS

    for k in r.get("measures", {}):
        r["measures"][k] = [_standardised_shown(row, min_cell) for row in r["measures"][k]]
        r["measures"][k] = D.suppress(r["measures"][k], min_cell, MEASURE_COLUMNS[2:-1],
                                      keys=_keys(r["measures"][k], MEASURE_COLUMNS))
    if "curves" in r:
        r["curves"] = D.curve(r["curves"], min_cell)
    if "hospitals" in r:
        from ..measures.hospitals import COLUMNS as HOSPITAL_COLUMNS

        r["hospitals"] = withheld_last(D.suppress(r["hospitals"], min_cell,
                                                  HOSPITAL_COLUMNS[2:-1], keys=("hospital",)))
    for k, m in list(r.get("models", {}).items()):
        r["models"][k] = D.model(m, min_cell)
    if "lexis_model" in r:
        r["lexis_model"] = D.model(r["lexis_model"], min_cell)
    _withhold_split_overlaps(r, min_cell)
    if isinstance(r.get("design"), dict):
        for k in SCORE_VALUES:
            r["design"].pop(k, None)
        if "bootstrap" in r["design"] and not bootstrap_shown(r):
            r["design"].pop("bootstrap")
    return r


def _withhold_split_overlaps(r: dict, min_cell: int) -> None:
    """Withhold every row of a group of a measure, Lexis or rates table whose persons add up
    to 1 to min_cell − 1 more than the population they split (checks.split_overlaps), or
    whose consecutive rows in time differ by 1 to min_cell − 1 (checks.band_steps): with its
    rows withheld the sum, and so the persons with time in two rows, is unknown."""
    from .checks import _split_tables, band_steps, split_overlaps

    while True:
        found = split_overlaps(r, min_cell) or band_steps(r, min_cell)
        if not found:
            return
        section, shared, _ = found[0]
        keys, rows = next((k, rows) for s, k, rows in _split_tables(r) if s == section)
        for row in rows:
            if all(str(row.get(k)) == v for k, v in shared):
                for f in row:
                    if f not in keys and f != "suppressed":
                        row[f] = None
                row["suppressed"] = True


def bootstrap_shown(results: dict) -> bool:
    """Whether the bootstrap interval of the exposure's HR may be shown: only beside the Cox
    model's own estimate of that term. Its SE, interval and failed replicates (those with no
    event in an arm: e^−k of them for k events) rest on the same counts, and a matched arm with
    3 events showed 12 of 50 replicates failed and an interval while the term was withheld
    (outside tester, session 7)."""
    b = results.get("design", {}).get("bootstrap")
    cox = (results.get("models") or {}).get("cox")
    if not isinstance(b, dict) or not isinstance(cox, dict):
        return False
    return any(isinstance(t, dict) and t.get("term") == b.get("term") and t.get("coef") is not None
               for t in cox.get("terms") or [])


# values of persons' propensity scores or weights (a percentile, the arms' extremes, the SD
# of the logit): with a score of one rare flag they are ratios of counts, so the truncation
# point 957/180 gave the 1 exposed person with the flag back (outside tester, session 7)
SCORE_VALUES = ("truncated_at", "common_support", "caliper_logit")


# a measure row's estimates built from its age bands' counts (direct and indirect
# standardisation)
BAND_ESTIMATES = ("standardised_rate", "standardised_proportion", "standardised_lower_95",
                  "standardised_upper_95", "expected", "sir", "sir_lower_95", "sir_upper_95")


def _standardised_shown(row: dict, min_cell: int) -> dict:
    """The row without its age bands' counts, and without the standardised estimates when a
    band's persons, events or persons without the event are 1 to min_cell − 1: the Fay–Feuer
    interval's ends give Σ wᵢkᵢ, Σ wᵢ²kᵢ and max wᵢ (wᵢ = the standard's weight over the
    band's persons), and the expected count Σ rᵢ·persons, so a band's count comes back (the
    upper end of a row of 25 persons, 0 deaths gave its 4 persons aged 30–60; outside tester,
    session 7)."""
    row = dict(row)
    bands = row.pop("_bands", None) or []
    if any(D.count_problem(p, e, min_cell) for p, e in bands if p):
        for f in BAND_ESTIMATES:
            if f in row:
                row[f] = None
    return row


def _keys(rows: list[dict], columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k for k in (rows[0] if rows else {}) if k not in columns)


def jsonable(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(type(o))




_jsonable = jsonable   # the older name


def _rate_columns() -> tuple[str, ...]:
    from ..engines.analyses import RATE_COLUMNS

    return RATE_COLUMNS


def _lexis_keys() -> tuple[str, ...]:
    from ..engines.analyses import LEXIS_KEYS

    return LEXIS_KEYS
