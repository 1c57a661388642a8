"""An independent re-check of a run's exported files, by kind, for the export gate.

    check_kind(kind, data, min_cell, where) -> list of violations (one line each)
    check_run({name: (kind, data)}, min_cell) -> violations of every file and across files

``kind`` is one of KINDS; ``data`` is a list of row dicts for a table kind, the parsed
``results.json`` for ``results`` and the text for ``plan``. Each violation names the file, the
row (1-based, as in the CSV after its header) and the column, and says why.

The rules are those of ``disclosure`` and ``protection`` (docs/secure.md), written again here
from the published numbers only: nothing here calls the writer's suppression. The checker sees
no withheld value, so of the LP audit it checks what needs none: no withheld cell may be a fixed
linear function of the totals (``protection.determined``), and where a run publishes a total
(a model's persons and events) the withheld cells under it must add up to the threshold.
"""

from __future__ import annotations

import itertools
import re

# margin_groups is the one definition of "a total a reader knows", shared with the writer on
# purpose (two definitions disagreed before); the independence lies elsewhere: these rules are
# written again here and see only the published numbers, never the writer's suppression
from . import manifest as M
from .protection import determined, margin_groups

KINDS = ("results", "cohort", "rates", "lexis", "curves", "attrition", "model", "measure",
         "hospitals", "plan", "table1", "balance", "preference", "table1_adjusted", "run")
HOSPITAL_DERIVED = ("expected", "oe", "lower_95", "upper_95", "limit95_low", "limit95_high",
                    "limit998_low", "limit998_high")
RATE_COLUMNS = ("persons", "events", "person_years", "rate_per_1000py", "lower_95", "upper_95",
                "suppressed")
OWN_COLUMNS = {
    "cohort": (*RATE_COLUMNS, "proportion"), "rates": (*RATE_COLUMNS, "proportion"),
    "lexis": RATE_COLUMNS,
    "measure": ("persons", "events", "proportion", "lower_95", "upper_95", "suppressed",
                "person_years", "rate", "standardised_rate", "standardised_proportion",
                "standardised_lower_95", "standardised_upper_95", "expected", "sir",
                "sir_lower_95", "sir_upper_95"),
    "hospitals": ("persons", "events", *HOSPITAL_DERIVED, "suppressed"),
}
DERIVED = {"cohort": (*RATE_COLUMNS[2:6], "proportion"),
           "rates": (*RATE_COLUMNS[2:6], "proportion"), "lexis": RATE_COLUMNS[2:6],
           "measure": ("proportion", "lower_95", "upper_95", "person_years", "rate",
                       "standardised_rate", "standardised_proportion", "standardised_lower_95",
                       "standardised_upper_95", "expected", "sir", "sir_lower_95",
                       "sir_upper_95"),
           "hospitals": HOSPITAL_DERIVED}
# comparative designs: the columns each row may show only with its persons
DESIGN_DERIVED = {"table1": ("percent", "mean", "sd", "median", "q1", "q3"),
                  "balance": ("smd_before", "smd_after"), "preference": (),
                  "table1_adjusted": ("weighted_persons", "percent", "mean", "sd")}
COUNTS = ("persons", "events", "at_risk", "persons_other", "events_other", "n")
TERM_COUNTS = ("persons", "events", "persons_other", "events_other")
FORBIDDEN_COLUMNS = {"pnr", "cpr", "cpr_nr", "min", "max", "minimum", "maximum", "median"}
PERCENTILE = re.compile(r"^(p|q|percentile_?)\d{1,2}$")
# not inside a longer number or a decimal fraction
CPR = re.compile(r"(?<![\d.])(0[1-9]|[12]\d|3[01])(0[1-9]|1[0-2])\d{2}-?\d{4}(?![\d.])")
LONG_INTEGER = re.compile(r"(?<![\d.])\d{12,}(?![\d.])")


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _small(v, m) -> bool:
    return _num(v) and 0 < v < m


def _pair(p, e, m) -> str | None:
    """Why persons p with events e may not be shown (complement included), or None."""
    if _num(p) and _num(e):
        d = p - e
        if 0 < d < m:
            return f"{p:g} persons and {e:g} events leave {d:g} without the event (below {m})"
        if d == 0 and p > 0:
            return f"all {p:g} persons had the event"
    return None


def _counts(rows, m, where, columns=COUNTS) -> list[str]:
    out = []
    for i, r in enumerate(rows, 1):
        for c in columns:
            if _small(r.get(c), m):
                out.append(f"{where}: row {i}, column {c!r}: {r[c]:g} is below {m}")
        why = _pair(r.get("persons"), r.get("events"), m)
        if why:
            out.append(f"{where}: row {i}, columns 'persons'/'events': {why}")
        why = _pair(r.get("persons_other"), r.get("events_other"), m)
        if why:
            out.append(f"{where}: row {i}, columns 'persons_other'/'events_other': {why}")
    return out


def _numbered(rows: list[dict]) -> bool:
    """Whether a hospitals table (results.json's or its CSV's) numbers its units 1…n."""
    try:
        return [int(r.get("hospital")) for r in rows] == list(range(1, len(rows) + 1))
    except (TypeError, ValueError):
        return False


def _table(kind: str, rows: list[dict], m: int, where: str) -> list[str]:
    out = _counts(rows, m, where)
    own = OWN_COLUMNS[kind]
    keys = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in own]
    if kind == "lexis" and "persons" not in {k for r in rows for k in r}:
        out.append(f"{where}: column 'persons' missing: a Lexis cell must say how many persons "
                   "it describes")
    hidden = [r.get("persons") is None or r.get("events") is None for r in rows]
    for i, (r, h) in enumerate(zip(rows, hidden, strict=True), 1):
        if h:
            shown = [c for c in DERIVED[kind] if r.get(c) is not None]
            if shown:
                out.append(f"{where}: row {i}, column {shown[0]!r}: shown for a withheld row "
                           "(it gives the withheld counts back)")
    if kind == "hospitals" and _numbered(rows) and any(
            h and not later for h, later in zip(hidden, hidden[1:], strict=False)):
        out.append(f"{where}: a withheld unit is numbered before a shown one: its rank or size "
                   "lies between its shown neighbours' (number the withheld units last)")
    # a table withheld whole publishes no count: its totals are other tables' cells, checked there
    for i in [] if all(hidden) else determined(hidden, margin_groups(rows, keys)):
        out.append(f"{where}: row {i + 1}: withheld, but recoverable exactly from the totals "
                   f"over {', '.join(keys) or 'all rows'}")
    return out


def _attrition(rows: list[dict], m: int, where: str, last=None) -> list[str]:
    """Shown counts and the differences between consecutive shown steps; ``last`` is the
    last step's count as another file shows it."""
    out = []
    seq = [(i, r.get("persons")) for i, r in enumerate(rows, 1)]
    if last is not None and seq:
        seq[-1] = (seq[-1][0], last)
    shown = [(i, n) for i, n in seq if _num(n)]
    for i, n in shown:
        if 0 < n < m:
            out.append(f"{where}: row {i}, column 'persons': {n:g} is below {m}")
    for (i, a), (j, b) in itertools.pairwise(shown):
        if 0 < a - b < m:
            out.append(f"{where}: row {j}, column 'persons': {a - b:g} persons left between "
                       f"rows {i} and {j} (below {m})")
    return out


def _curves(rows: list[dict], m: int, where: str) -> list[str]:
    out = []
    for i, r in enumerate(rows, 1):
        for c in ("events", "at_risk"):
            v = r.get(c)
            if _num(v) and v < m:
                out.append(f"{where}: row {i}, column {c!r}: {v:g} is below {m}")
        if _num(r.get("at_risk")) and r["at_risk"] % m:
            out.append(f"{where}: row {i}, column 'at_risk': {r['at_risk']:g} is not a "
                       f"multiple of {m}")
    return out


def _model_terms(rows: list[dict], m: int, where: str) -> list[str]:
    out = _counts(rows, m, where, TERM_COUNTS)
    withheld = [r for r in rows if r.get("withheld")]
    for i, r in enumerate(rows, 1):
        if r.get("withheld"):
            shown = [k for k, v in r.items() if k not in ("term", "withheld") and v is not None]
            if shown:
                out.append(f"{where}: row {i}, column {shown[0]!r}: shown for a withheld term")
        elif any(r.get(c) is None for c in TERM_COUNTS) and \
                any(r.get(c) is not None for c in TERM_COUNTS):
            out.append(f"{where}: row {i}: some of the term's counts are missing")
    if withheld:
        for i, r in enumerate(rows, 1):
            if r.get("term") == "intercept" and not r.get("withheld"):
                out.append(f"{where}: row {i}, column 'coef': the intercept is shown while a "
                           "term is withheld (with the totals it gives the reference counts)")
        if not any(not r.get("withheld") and r.get("term") != "intercept" and
                   r.get("persons") is None for r in rows):
            out.append(f"{where}: a term is withheld and no continuous term remains: the "
                       "other estimates give it back; withhold the model")
    return out


def _model(doc: dict, m: int, where: str) -> list[str]:
    if not isinstance(doc, dict) or "terms" not in doc:
        return []
    out = []
    for c in ("persons", "events"):
        if _small(doc.get(c), m):
            out.append(f"{where}: column {c!r}: {doc[c]:g} is below {m}")
        if c not in doc or doc.get(c) is None:
            out.append(f"{where}: column {c!r}: a model must say its {c}")
    why = _pair(doc.get("persons"), doc.get("events"), m)
    if why:
        out.append(f"{where}: columns 'persons'/'events': {why}")
    from .disclosure import level_problems, variable_of

    terms = [t for t in doc["terms"] if isinstance(t, dict)] if isinstance(doc["terms"], list) \
        else []
    out += [f"{where}.terms: term {t!r}: {why}" for t, why in level_problems(
        terms, variable_of, doc.get("persons"), doc.get("events"), m).items()]
    return out + _model_terms(doc["terms"], m, f"{where}.terms") + \
        _terms_both_levels(doc["terms"], doc.get("persons"), m, f"{where}.terms")


def _terms_both_levels(rows, persons, m: int, where: str) -> list[str]:
    """A term's persons and persons_other may exceed the model's persons (a time-varying
    state, a band: persons with time in both) by 0 or at least the threshold."""
    from .disclosure import both_levels

    if not isinstance(rows, list):
        return []
    return [f"{where}: row {i}: the persons with and without {r.get('term')!r} exceed the "
            f"model's by {both_levels(r, persons)}: a small cell"
            for i, r in enumerate(rows, 1)
            if isinstance(r, dict) and 0 < both_levels(r, persons) < m]


def undeclared_table(rows: list[dict], m: int, where: str) -> list[str]:
    """For a table no run declared (refused whatever it holds): the columns no table may
    have and its small counts, so the researcher sees why such files are not let through."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = [f"{where}: column {c!r}: minima, maxima, percentiles and identifiers may not be "
           "exported" for c in cols
           if c.lower() in FORBIDDEN_COLUMNS or PERCENTILE.match(c.lower())]
    return out + _counts(rows, m, where)


def text_problems(text: str, where: str) -> list[str]:
    """CPR-shaped numbers and long integers in a text, line by line."""
    return _text(text, where)


def _text(text: str, where: str) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if CPR.search(line):
            out.append(f"{where}: line {n}: something shaped like a CPR number")
        if LONG_INTEGER.search(line):
            out.append(f"{where}: line {n}: a long integer that may identify a person")
    return out


ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]{0,39}|unknown")
GROUPED_SHA = re.compile(r"[0-9a-f]{8}( [0-9a-f]{8}){7}")
HARDWARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ()@.,:+/_-]{0,79}")


def run_record(text: str, where: str) -> list[str]:
    """``run.json``: exactly the declared fields (``manifest.RUN_FIELDS``), each of its type
    and shape: names from fixed lists, hardware names in a narrow alphabet through the
    free-text rules (text.py, without the study's vocabulary: a CPU is named with numbers), two
    UTC times the wall time agrees with, no CPR-shaped number or long integer. A field that is
    not declared (a count, a table) is refused whatever it holds."""
    import datetime
    import json

    from . import text as T

    try:
        doc = json.loads(text)
    except ValueError as e:
        return [f"{where}: not JSON ({e})"]
    if not isinstance(doc, dict):
        return [f"{where}: not a run record"]
    out = _text(text, where)
    extra = sorted(set(doc) - set(M.RUN_FIELDS))
    missing = sorted(set(M.RUN_FIELDS) - set(doc))
    if extra:
        out.append(f"{where}: field(s) {extra} are not ones a run record holds")
    if missing:
        out.append(f"{where}: field(s) {missing} missing")
    for k, t in M.RUN_FIELDS.items():
        if k in doc and (not isinstance(doc[k], t) or isinstance(doc[k], bool)):
            out.append(f"{where}: field {k!r} is {doc[k]!r}, not of its type")
    if out:
        return out
    for k, allowed in (("format", (M.RUN_FORMAT,)), ("engine", M.RUN_ENGINES),
                       ("launcher", M.RUN_LAUNCHERS), ("device", M.RUN_DEVICES)):
        if doc[k] not in allowed:
            out.append(f"{where}: {k} {doc[k][:40]!r} is not one of {', '.join(allowed)}")
    if doc["workers"] is not None and not 1 <= doc["workers"] <= 100_000:
        out.append(f"{where}: workers {doc['workers']} is not a number of workers")
    peak = doc["peak_device_memory_mib"]
    if peak is not None and (doc["device"] == "cpu" or not 0 <= peak <= 10 ** 8):
        out.append(f"{where}: peak_device_memory_mib {peak} is not a GPU's peak memory")
    if not VERSION.fullmatch(doc["hpcstudy_version"]):
        out.append(f"{where}: hpcstudy_version {doc['hpcstudy_version'][:40]!r} is not one")
    if not GROUPED_SHA.fullmatch(doc["code_sha256"]):
        out.append(f"{where}: code_sha256 is not a SHA-256 in groups of 8")
    times = []
    for k in ("started", "finished"):
        try:
            if not ISO_UTC.fullmatch(doc[k]):
                raise ValueError
            times.append(datetime.datetime.strptime(doc[k], "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            out.append(f"{where}: {k} {doc[k][:30]!r} is not a UTC time (2026-01-31T12:00:00Z)")
    if len(times) == 2:
        span = (times[1] - times[0]).total_seconds()
        if span < 0 or not max(0, span - 2) <= doc["wall_seconds"] <= span + 2:
            out.append(f"{where}: wall_seconds {doc['wall_seconds']} is not the time from "
                       "started to finished")
    machines = doc["hardware"]
    if not 1 <= len(machines) <= 64:
        out.append(f"{where}: hardware lists {len(machines)} machines")
    for i, m in enumerate(machines[:64]):
        here = f"{where}: hardware[{i}]"
        if not isinstance(m, dict) or set(m) != set(M.MACHINE_FIELDS) or any(
                not isinstance(m[k], t) or isinstance(m[k], bool)
                for k, t in M.MACHINE_FIELDS.items()):
            out.append(f"{here}: not a machine ({', '.join(M.MACHINE_FIELDS)})")
            continue
        if not 1 <= m["cores"] <= 1_000_000:
            out.append(f"{here}: {m['cores']} is not a number of cores")
        if len(m["gpus"]) > 64:
            out.append(f"{here}: {len(m['gpus'])} GPUs on one machine")
        for name in [m["cpu"], *m["gpus"][:64]]:
            if not isinstance(name, str) or not HARDWARE_NAME.fullmatch(name):
                out.append(f"{here}: {str(name)[:40]!r} is not a hardware name")
            else:
                out += T.problems(name, None, here)
    return out


def check_kind(kind: str, data, min_cell: int, where: str) -> list[str]:
    """Violations of one file (or section) of the given kind."""
    m = min_cell
    if kind == "plan":
        return _text(data, where)
    if kind == "run":
        return run_record(data, where)
    if kind == "results":
        return _results(data, m, where)
    if kind in OWN_COLUMNS:
        return _table(kind, data, m, where)
    if kind == "attrition":
        return _attrition(data, m, where)
    if kind == "curves":
        return _curves(data, m, where)
    if kind == "model":
        return _model(data, m, where) if isinstance(data, dict) else \
            _model_terms(data, m, where)
    if kind in DESIGN_DERIVED:   # its own rules, and the catalogue's generic ones
        return list(dict.fromkeys(_design_table(kind, data, m, where) +
                                  _generic(kind, data, m, where)))
    if kind in M.KINDS and isinstance(data, list):
        return _generic(kind, data, m, where)
    raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")


def _generic(kind: str, rows: list[dict], m: int, where: str) -> list[str]:
    """A kind with no rules of its own here yet (a new table in the catalogue): the small-cell
    and complement rules on its count columns, nothing derived shown for a withheld row, and
    no withheld cell recoverable from the totals over its keys. A kind needing more (a
    proportion's complement, an ordered key) gets its own branch in ``check_kind``."""
    k = M.KINDS[kind]
    out = _counts(rows, m, where, k.counts)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    keys = [c for c in cols if c not in k.counts and c not in k.derived and c not in M.FLAGS]
    hidden = [any(r.get(c) is None for c in k.counts if c in r) for r in rows]
    for i, (r, h) in enumerate(zip(rows, hidden, strict=True), 1):
        shown = [c for c in k.derived if r.get(c) is not None]
        if h and shown:
            out.append(f"{where}: row {i}, column {shown[0]!r}: shown for a withheld row "
                       "(it gives the withheld counts back)")
    if any(hidden) and not all(hidden) and k.counts:
        for i in determined(hidden, margin_groups(rows, keys)):
            out.append(f"{where}: row {i + 1}: withheld, but recoverable exactly from the "
                       f"totals over {', '.join(keys) or 'all rows'}")
    return out


def _design_table(kind: str, rows: list[dict], m: int, where: str) -> list[str]:
    """Table 1, balance, preference: no small count; a withheld row shows nothing derived; a
    preference arm's withheld bins are not one alone (the arm's total would give it back)."""
    out = _counts(rows, m, where, ("persons",))
    for i, r in enumerate(rows, 1):
        withheld = r.get("suppressed") in (True, "True", "true")
        if withheld:
            shown = [c for c in (*DESIGN_DERIVED[kind], "persons") if r.get(c) is not None]
            if shown:
                out.append(f"{where}: row {i}, column {shown[0]!r}: shown for a withheld row")
    if kind == "preference":
        hidden = [r.get("persons") is None for r in rows]
        arms: dict = {}
        for i, r in enumerate(rows):
            arms.setdefault(r.get("arm"), []).append(i)
        for i in [] if all(hidden) else determined(hidden, list(arms.values())):
            out.append(f"{where}: row {i + 1}: withheld, but recoverable exactly from the "
                       "arm's total")
    return out


def _adjusted_vs_before(doc: dict, m: int, where: str) -> list[str]:
    """Table 1 after a design against Table 1 before it: the persons a row lost (those the
    design dropped) must not be 1 to min_cell − 1, or the two tables' difference shows them."""
    before = {(r.get("variable"), r.get("level"), r.get("arm")): r.get("persons")
              for r in doc.get("table1") or [] if isinstance(r, dict)}
    out = []
    for i, r in enumerate(doc.get("table1_adjusted") or [], 1):
        if not isinstance(r, dict):
            continue
        b = before.get((r.get("variable"), r.get("level"), r.get("arm")))
        a = r.get("persons")
        if isinstance(a, int) and isinstance(b, int) and 0 < b - a < m:
            out.append(f"{where}:table1_adjusted: row {i}: {b - a} persons fewer than in "
                       "table1: the difference is a small cell")
    return out


def _split_tables(doc: dict) -> list[tuple[str, list[str], list[dict]]]:
    """(section, key columns, rows) of the tables whose rows may split one person's time:
    measures, Lexis rows, rates."""
    out = []
    named = [(f"measures.{k}", "measure", rows) for k, rows in (doc.get("measures") or {}).items()]
    for section, kind, rows in [*named, ("lexis", "lexis", doc.get("lexis")),
                                ("rates", "rates", doc.get("rates"))]:
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            k = M.KINDS[kind]
            keys = [c for c in M.columns_of(rows)
                    if c not in k.counts and c not in k.derived and c not in M.FLAGS]
            out.append((section, keys, rows))
    return out


def split_overlaps(doc: dict, m: int) -> list[tuple[str, tuple, int]]:
    """(section, the shared (key, value) pairs, n) where a table's shown rows sharing some key
    values hold n persons more than another table's shown row of those key values (or the
    whole cohort, for all rows), 0 < n < m. Rows of a time-varying state or a band split persons:
    one who starts a statin has time in both rows, so a measure by statin with 874 and 246
    persons beside a cohort of 1 118 gave 2 persons who started one during follow-up
    (outside tester, session 7). Rows that partition persons (sex, region) hold exactly the
    population, n = 0."""
    tables = _split_tables(doc)
    cohort = [r.get("persons") for r in doc.get("cohort") or [] if isinstance(r, dict)]
    refs: list[tuple[tuple[str, ...], dict]] = []
    if cohort and all(_num(p) for p in cohort):
        refs.append(((), {(): sum(cohort)}))
    for _section, keys, rows in tables:
        refs.append((tuple(keys), {tuple(str(r.get(k)) for k in keys): r.get("persons")
                                   for r in rows}))
    out = []
    for section, keys, rows in tables:
        for ref_keys, ref in refs:
            if not set(ref_keys) < set(keys):
                continue
            groups: dict[tuple, list] = {}
            for r in rows:
                groups.setdefault(tuple(str(r.get(k)) for k in ref_keys), []).append(
                    r.get("persons"))
            for values, persons in groups.items():
                total = ref.get(values)
                if _num(total) and all(_num(p) for p in persons) and \
                        0 < sum(persons) - total < m:
                    out.append((section, tuple(zip(ref_keys, values, strict=True)),
                                int(sum(persons) - total)))
    return out


# keys of time that follow persons through their follow-up: a row holds the persons with time
# in it, so those of consecutive rows are (for one index date, or always for time since index)
# nested like attrition steps
TIME_KEYS = ("interval", "time_band", "period")


def band_steps(doc: dict, m: int) -> list[tuple[str, tuple, int]]:
    """(section, (), n) where consecutive shown rows of a measure
    or Lexis table along a key of time (interval, time_band, period; the cohort's persons
    before the first) differ by 0 < n < m persons: for an index date of 20 December, 1 115
    persons with time in 2010 and 1 113 in 2011 gave the 2 who died or left in the last days
    of 2010 (outside tester, session 8). Rows with person-time only (a fixed horizon's rows
    count persons by index date: they partition them)."""
    cohort = [r.get("persons") for r in doc.get("cohort") or [] if isinstance(r, dict)]
    head = sum(cohort) if cohort and all(_num(p) for p in cohort) else None
    out = []
    for section, keys, rows in _split_tables(doc):
        if section == "rates" or not any("person_years" in r for r in rows):
            continue
        for key in (k for k in TIME_KEYS if k in keys):
            other = [k for k in keys if k != key and len({str(r.get(k)) for r in rows}) > 1]
            groups: dict[tuple, list] = {}
            for r in rows:
                groups.setdefault(tuple(str(r.get(k)) for k in other), []).append(
                    (r.get("persons"), r.get("events")))
            for pairs in groups.values():
                seq = [(p, e) for p, e in ([(head, None)] if not other else []) + pairs
                       if _num(p)]
                for (a, ea), (b, _) in zip(seq, seq[1:], strict=False):
                    # persons, and persons without the event (an outcome that ends follow-up:
                    # 1 084 without it in 2011-Q2 and 1 083 with time in Q3 gave the 1 who
                    # left in Q2; the export register, session 8)
                    steps = [a - b, *([a - ea - b] if _num(ea) else [])]
                    few = [d for d in steps if 0 < abs(d) < m]
                    if few:   # the whole table: its other rows would give a group's back
                        out.append((section, (), int(abs(few[0]))))
                        break
    return out


# the attrition steps a comparative design adds (designs/apply.py): the preference table counts
# the persons of the step before the first of them
DESIGN_STEPS = ("propensity score in the common support", "matched on the propensity score",
                "propensity stratum holds both arms")


def _preference_vs_arms(doc: dict, m: int, where: str) -> list[str]:
    """An arm's withheld preference bins against the arm's persons (the attrition step before
    the design, or the cohort table where the design drops nobody): together they hold the
    arm's persons minus its shown bins, which must be 0 or at least min_cell (180 of 181 shown
    gave 1 person in the withheld bins; outside tester, session 7)."""
    totals: dict = {}
    cohort = {r.get("label"): r.get("persons") for r in doc.get("cohort") or []
              if isinstance(r, dict)}
    for arm, steps in (doc.get("attrition") or {}).items():
        names = [r.get("step") for r in steps if isinstance(r, dict)]
        cut = next((i for i, n in enumerate(names) if n in DESIGN_STEPS), None)
        if cut is None:
            totals[arm] = cohort.get(arm)
        elif cut > 0 and isinstance(steps[cut - 1], dict):
            totals[arm] = steps[cut - 1].get("persons")
    shown: dict = {}
    withheld: dict = {}
    for r in doc.get("preference") or []:
        if isinstance(r, dict):
            a = r.get("arm")
            if _num(r.get("persons")):
                shown[a] = shown.get(a, 0) + r["persons"]
            else:
                withheld[a] = True
    out = []
    for a in withheld:
        t = totals.get(a)
        if _num(t) and 0 < t - shown.get(a, 0) < m:
            out.append(f"{where}:preference: the withheld bins of arm {a!r} hold "
                       f"{t - shown.get(a, 0)} persons (the arm's persons minus its shown "
                       "bins): a small cell")
    return out


def design_arms_vs_cohort(doc: dict, m: int, where: str) -> list[str]:
    """Table 1 and the preference table count each arm before the design (a number's persons,
    a flag's persons over its percent, all bins when none is withheld); the cohort table after
    it. The two may differ by 0 or at least min_cell (181 in Table 1 and 178 matched gave the
    3 unmatched exposed persons; outside tester, session 8)."""
    before: dict = {}
    for r in doc.get("table1") or []:
        if not isinstance(r, dict) or not _num(r.get("persons")):
            continue
        pct = r.get("percent")
        if _num(pct) and pct > 0:
            before.setdefault(r.get("arm"), round(r["persons"] * 100 / pct))
        elif not _num(pct):
            before.setdefault(r.get("arm"), r["persons"])
    bins: dict = {}
    for r in doc.get("preference") or []:
        if isinstance(r, dict):
            bins.setdefault(r.get("arm"), []).append(r.get("persons"))
    for a, ns in bins.items():
        if all(_num(n) for n in ns):   # else _preference_vs_arms
            before.setdefault(a, sum(ns))
    cohort = {r.get("label"): r.get("persons") for r in doc.get("cohort") or []
              if isinstance(r, dict)}
    return [f"{where}:table1: arm {a!r} holds {n} persons before the design and {cohort[a]} in "
            f"the cohort table: the design dropped {n - cohort[a]} persons, a small cell"
            for a, n in before.items() if _num(cohort.get(a)) and _small(n - cohort[a], m)]


def smd_of_withheld(doc: dict, where: str) -> list[str]:
    """An SMD shown for a variable whose Table 1 rows are withheld (before the design for
    smd_before, before or after it for smd_after): a flag's SMD and the arms' sizes give the
    withheld counts (or their difference) back."""
    def hidden(table: str) -> set:
        return {(r.get("variable"), r.get("level")) for r in doc.get(table) or []
                if isinstance(r, dict) and r.get("suppressed") in (True, "True", "true")}

    before, after = hidden("table1"), hidden("table1") | hidden("table1_adjusted")
    out = []
    design = doc.get("design")
    if isinstance(design, dict) and design.get("equipoise_share") is not None:
        from ..designs.disclosure import equipoise_hides

        if equipoise_hides([r for r in doc.get("preference") or [] if isinstance(r, dict)]):
            out.append(f"{where}:design.equipoise_share: shown while a preference bin in "
                       "0.3–0.7 is withheld (the share times the persons gives the bins' sum)")
    for i, r in enumerate(doc.get("balance") or [], 1):
        if not isinstance(r, dict):
            continue
        key = (r.get("variable"), r.get("level"))
        for col, withheld in (("smd_before", before), ("smd_after", after)):
            if key in withheld and r.get(col) is not None:
                out.append(f"{where}:balance: row {i}, column {col!r}: shown for a variable "
                           "Table 1 withholds")
    return out


def _sections(doc: dict) -> list[tuple[str, str, object]]:
    """(kind, path, data) of every section of results.json."""
    out = []
    for g, rows in (doc.get("attrition") or {}).items():
        out.append(("attrition", f"attrition.{g}", rows))
    for k in M.table_sections():
        if k in doc:
            out.append((k, k, doc[k]))
    for k, rows in (doc.get("measures") or {}).items():
        out.append(("measure", f"measures.{k}", rows))
    for k, mod in (doc.get("models") or {}).items():
        out.append(("model", f"models.{k}", mod))
    if "lexis_model" in doc:
        out.append(("model", "lexis_model", doc["lexis_model"]))
    return out


def _results(doc: dict, m: int, where: str) -> list[str]:
    out = []
    for kind, path, data in _sections(doc):
        out += check_kind(kind, data, m, f"{where}:{path}")
    out += _adjusted_vs_before(doc, m, where)
    out += _preference_vs_arms(doc, m, where)
    out += design_arms_vs_cohort(doc, m, where)
    for section, shared, n in split_overlaps(doc, m):
        rows = ", ".join(f"{k}={v}" for k, v in shared) or "of the table"
        out.append(f"{where}:{section}: the rows {rows} hold {n} persons "
                   "more than the population they split (persons with time in two rows, a "
                   "time-varying state or a band): a small cell")
    for section, shared, n in band_steps(doc, m):
        rows = ", ".join(f"{k}={v}" for k, v in shared) or "of the table"
        out.append(f"{where}:{section}: consecutive rows {rows} in time differ by {n} "
                   "persons (those whose follow-up ended in between): a small cell")
    design = doc.get("design")
    if isinstance(design, dict) and "bootstrap" in design:
        from .publish import bootstrap_shown

        if not bootstrap_shown(doc):
            out.append(f"{where}:design.bootstrap: shown while the Cox model's estimate of its "
                       "term is withheld (its SE, interval and failed replicates rest on the "
                       "same counts)")
    out += smd_of_withheld(doc, where)
    out += _across({f"{where}:{p}": (k, d) for k, p, d in _sections(doc)}, m)
    return out


def _across(sections: dict[str, tuple[str, object]], m: int) -> list[str]:
    """Rules between tables: attrition against the cohort table, the model totals against it."""
    out = []
    cohort = next(((w, d) for w, (k, d) in sections.items() if k == "cohort"), None)
    if cohort is None:
        return out
    cw, rows = cohort
    by_label = {r.get("label"): r for r in rows}
    for w, (k, d) in sections.items():
        if k != "attrition" or not d:
            continue
        group = w.rsplit("attrition", 1)[-1].strip("._").removesuffix(".csv")
        row = by_label.get(group) or (rows[0] if len(rows) == 1 else None)
        if row is None:
            continue
        last = d[-1].get("persons")
        if row.get("persons") is None and _num(last):
            out.append(f"{w}: row {len(d)}, column 'persons': shows {last:g}, the persons of "
                       f"{group!r} that {cw} withholds")
        elif _num(row.get("persons")):
            out += [v + f" (the last step as {cw} shows it)"
                    for v in _attrition(d, m, w, last=row["persons"])]
    for w, (k, d) in sections.items():
        if k != "model" or not isinstance(d, dict) or "terms" not in d:
            continue
        if "lexis" in w:
            continue
        for c in ("persons", "events"):
            total = d.get(c)
            if not _num(total):
                continue
            hid = [i for i, r in enumerate(rows, 1) if r.get(c) is None]
            rest = total - sum(r[c] for r in rows if _num(r.get(c)))
            if len(hid) == 1:
                out.append(f"{cw}: row {hid[0]}, column {c!r}: withheld, but {w} gives "
                           f"{rest:g} by subtraction from its total")
            elif hid and 0 < rest < m:
                out.append(f"{cw}: rows {hid}, column {c!r}: withheld, but {w}'s total leaves "
                           f"{rest:g} for them together (below {m})")
    return out


def _cells(kind: str, data) -> dict[tuple, object]:
    """(kind, key values, column) -> value of every count in a table kind."""
    out = {}
    if kind not in OWN_COLUMNS or not isinstance(data, list):
        return out
    own = OWN_COLUMNS[kind]
    for r in data:
        key = tuple(sorted((k, str(v)) for k, v in r.items() if k not in own))
        for c in ("persons", "events"):
            if c in r:
                out[(kind, key, c)] = r[c]
    return out


def check_run(files: dict[str, tuple[str, object]], min_cell: int) -> list[str]:
    """Violations of every file of one run, and between files: attrition against the cohort
    table, model totals against it, and one count shown in one file but withheld in another."""
    out = []
    sections: dict[str, tuple[str, object]] = {}
    seen: dict[tuple, tuple[str, object]] = {}
    for name in sorted(files):
        kind, data = files[name]
        out += check_kind(kind, data, min_cell, name)
        parts = [(k, f"{name}:{p}", d) for k, p, d in _sections(data)] if kind == "results" \
            else [(kind, name, data)]
        for k, w, d in parts:
            if kind != "results":
                sections[w] = (k, d)
            for cell, v in _cells(k, d).items():
                if cell in seen and (seen[cell][1] is None) != (v is None):
                    other = seen[cell][0]
                    shown, hidden = (w, other) if v is not None else (other, w)
                    out.append(f"{shown}: column {cell[2]!r} at {dict(cell[1])}: shows what "
                               f"{hidden} withholds")
                seen.setdefault(cell, (w, v))
    out += _across(sections, min_cell)
    out += _split_across(sections, min_cell)
    out += _curve_tails(sections, files, min_cell)
    return out


def _split_across(sections: dict[str, tuple[str, object]], m: int) -> list[str]:
    """:func:`split_overlaps` between the CSV tables of a run (results.json's own sections are
    checked with it): a cohort.csv and a measure CSV leave together."""
    doc: dict = {"measures": {}}
    names = {}
    for w, (k, d) in sections.items():
        if not isinstance(d, list):
            continue
        if k == "cohort":
            doc["cohort"] = d
        elif k == "measure":
            doc["measures"][w] = d
            names[f"measures.{w}"] = w
        elif k in ("lexis", "rates"):
            doc[k] = d
            names[k] = w
    cohort = [r.get("persons") for r in doc.get("cohort") or [] if isinstance(r, dict)]
    terms = []
    if cohort and all(_num(p) for p in cohort):
        for w, (k, d) in sections.items():
            if k == "model" and isinstance(d, list):
                terms += _terms_both_levels(d, int(sum(cohort)), m, w)
    return terms + [f"{names.get(section, section)}: the rows "
            f"{', '.join(f'{k}={v}' for k, v in shared) or 'of the table'} hold {n} persons "
            "more than the population they split (persons with time in two rows): a small cell"
            for section, shared, n in split_overlaps(doc, m)]


PLAN_GROUP = re.compile(r"^\s*group=(-?\d+) (\S+?):", re.MULTILINE)


def _curve_tails(sections: dict[str, tuple[str, object]], files: dict, m: int) -> list[str]:
    """A group's events in the cohort table minus those its curve shows are the events after
    the curve's last point: 0 or at least the threshold. Groups are paired with cohort rows
    through plan.txt's ``group=CODE LABEL`` lines (or one group with one row)."""
    cohort = next((d for k, d in sections.values() if k == "cohort" and isinstance(d, list)),
                  None)
    plan = next((d for k, d in files.values() if k == "plan" and isinstance(d, str)), "")
    labels = dict(PLAN_GROUP.findall(plan))
    out = []
    for w, (k, d) in sections.items():
        if k != "curves" or not isinstance(d, list) or cohort is None:
            continue
        shown: dict = {}
        for r in d:
            if _num(r.get("events")):
                shown[str(r.get("group"))] = shown.get(str(r.get("group")), 0) + r["events"]
        for g, n in shown.items():
            label = labels.get(g)
            row = next((r for r in cohort if r.get("label") == label), None) if label else \
                (cohort[0] if len(cohort) == 1 and len(shown) == 1 else None)
            if row is None or not _num(row.get("events")):
                continue
            rest = row["events"] - n
            if 0 < rest < m:
                out.append(f"{w}: group {g}: its curve shows {n:g} of the {row['events']:g} "
                           f"events the cohort table gives {row.get('label')!r}: {rest:g} after "
                           f"its last point (below {m})")
    return out
