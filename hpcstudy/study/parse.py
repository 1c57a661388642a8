"""YAML → Study, strictly: every mapping is checked against the keys its context allows
(keys.py), every value against its type and range, and combinations that would be silently
ignored are refused. Every problem is collected, each as ``file:line: field: what — fix``;
harmless oddities are warnings, carried on ``Study.warnings``.

    study, problems = parse(loads(text, "s.yaml"), "s.yaml")
"""

from __future__ import annotations

import copy
import csv
import datetime
import difflib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from .keys import (
    BUILTIN_COVARIATES,
    DAYS,
    FILTER_RANGES,
    GROUP_LABELS,
    KEYS,
    MISPLACED,
    NAME,
    RESERVED_NAMES,
    STUDY_NAME,
    VARIANT_NAME,
)
from .language import (
    ATC,
    CHARLSON_WINDOW,
    DATE,
    DIAGNOSIS_TYPES,
    ICD10,
    PATIENT_TYPES,
    REGISTER_SYSTEM,
    REGISTERS,
    SOURCES,
    SYSTEM_REGISTER,
    Analyses,
    Codelist,
    Comparator,
    Covariate,
    Criterion,
    Events,
    Hospitals,
    IndexRule,
    Lexis,
    Measure,
    ModelSpec,
    Outcome,
    Population,
    Problem,
    Study,
    Variant,
    Window,
)
from .yamlio import Node, Seq

EVENT_KEYS = ("codelist", "register", "diagnosis_type", "patient_type", "filter")
NAME_RULES = {
    NAME: "use a letter, then letters, digits or _ (at most 64): it becomes a column name",
    STUDY_NAME: "use letters, digits, _ . - (at most 100), starting with a letter or digit: "
                "it names the outputs",
    VARIANT_NAME: "use letters, digits, _ - (at most 64), starting with a letter or digit: "
                  "it names a folder",
}


class StudyErrors(UserError):
    """Every problem found in a study, one line each (exit code 2)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


def show(value) -> str:
    """A value as the user wrote it, short (never the whole of a huge structure)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if value is True or value is False:
        return str(value).lower()
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return repr(value)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def closest(word, options) -> str | None:
    m = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return m[0] if m else None


@dataclass
class _Ctx:
    file: str
    base_dir: Path = Path(".")
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)   # (context, key) met: for tests
    broken: set[str] = field(default_factory=set)   # codelists with a problem of their own

    def where(self, node, key=None) -> str:
        if isinstance(node, Node):
            line = node.line_of(key) if key is not None else node.line
        elif isinstance(node, Seq) and isinstance(key, int) and key < len(node.lines):
            line = node.lines[key]
        else:
            line = getattr(node, "line", 0)
        return f"{self.file}:{line}"

    def err(self, node, key, path: str, message: str, fix: str = "") -> None:
        self.problems.append(Problem(self.where(node, key), path, message, fix))

    def warn(self, node, key, path: str, message: str, fix: str = "") -> None:
        self.warnings.append(Problem(self.where(node, key), path, message, fix))

    def mapping(self, node, context: str, path: str, parent=None, key=None,
                example: str = "") -> Node | None:
        """``node`` if it is a mapping whose keys ``context`` allows (each unknown key is a
        problem); None, with a problem, if it is not a mapping."""
        if not isinstance(node, dict):
            self.err(parent if parent is not None else node, key, path,
                     f"must be a mapping, not {show(node)}", f"e.g. {example}" if example else "")
            return None
        allowed = KEYS[context]
        for k in node:
            if k in allowed:
                self.seen.add((context, k))
                continue
            hint = MISPLACED.get((context, k))
            near = closest(k, allowed) if not hint else None
            unknown = f"unknown column of {context[7:]}" if context.startswith("filter_") \
                else "unknown field"
            self.err(node, k, f"{path}.{k}" if path else str(k), unknown,
                     hint or (f"did you mean {near!r}?" if near else
                              f"allowed here: {', '.join(allowed)}"))
        return node

    # -- typed values -------------------------------------------------------------------
    def integer(self, node, key, path, lo: int, hi: int, default):
        if key not in node:
            return default
        v = node[key]
        if not is_int(v) or not lo <= v <= hi:
            example = default if is_int(default) and lo <= default <= hi else lo
            self.err(node, key, path, f"must be a whole number from {lo} to {hi}, not {show(v)}",
                     f"e.g. {key}: {example}")
            return default
        return v

    def boolean(self, node, key, path, default: bool) -> bool:
        if key not in node:
            return default
        v = node[key]
        if not isinstance(v, bool):
            self.err(node, key, path, f"must be true or false, not {show(v)}",
                     f"write {key}: true or {key}: false")
            return default
        return v

    def name(self, node, key, path, what: str, default=None, rule=NAME) -> str | None:
        if key not in node:
            return default
        v = node[key]
        if not isinstance(v, str) or not rule.fullmatch(v):
            self.err(node, key, path, f"{show(v)} is not a plain {what}", NAME_RULES[rule])
            return None
        _exportable(self, node, key, path, v)   # names are column names, terms, steps
        return v


def _names_list(cx: _Ctx, node, key, path, allowed: set[str], what: str,
                refuse: dict[str, str] | None = None) -> tuple[str, ...] | None:
    """A list of names, each in ``allowed`` and given once; ``refuse`` maps a name to why not."""
    v = node.get(key)
    if not isinstance(v, list):
        cx.err(node, key, path, f"must be a list of {what}, not {show(v)}",
               f"e.g. {key}: [{', '.join(sorted(allowed)[:2])}]")
        return None
    out: list[str] = []
    for i, x in enumerate(v):
        if not isinstance(x, str):
            cx.err(v, i, path, f"{show(x)} is not a name of {what}",
                   "write the names, e.g. [age, sex]")
        elif refuse and x in refuse:
            cx.err(v, i, path, f"{x!r} cannot be used here", refuse[x])
        elif x not in allowed:
            near = closest(x, allowed)
            cx.err(v, i, path, f"{x!r} is used but not defined (not one of the {what})",
                   f"did you mean {near!r}?" if near else
                   f"define it under covariates:, or use one of {', '.join(sorted(allowed))}")
        elif x in out:
            cx.err(v, i, path, f"{x!r} given twice", "give it once")
        else:
            out.append(x)
    return tuple(out) if len(out) == len(v) else None


def _window(cx: _Ctx, node, key, path, default: Window | None = None) -> Window | None:
    if key not in node:
        return default
    value = node[key]
    if not (isinstance(value, list) and len(value) == 2 and
            all(v is None or is_int(v) for v in value)):
        # a short list is shown as written: "[null, -0.5]", not "a list", which it is
        shown = ("[" + ", ".join(show(v) for v in value) + "]" if isinstance(value, list)
                 and len(value) <= 4 and not any(isinstance(v, list | dict) for v in value)
                 else show(value))
        cx.err(node, key, path, f"must be [from, to] in whole days relative to index, not "
               f"{shown}", "e.g. [-365, -1] for the year before; null leaves an end open")
        return default
    lo, hi = value
    if any(v is not None and abs(v) > DAYS for v in value):
        cx.err(node, key, path, f"days must lie within ±{DAYS} (200 years)",
               "use null for an open end")
        return default
    if lo is not None and hi is not None and lo > hi:
        cx.err(node, key, path, f"reversed window [{lo}, {hi}]", f"write [{hi}, {lo}]")
        return default
    return Window(lo, hi)


def _date(cx: _Ctx, node, key, path, value) -> str | None:
    if not isinstance(value, str) or not DATE.match(value):
        cx.err(node, key, path, f"{show(value)} is not a date", "write YYYY-MM-DD")
        return None
    try:
        d = datetime.date.fromisoformat(value)
    except ValueError:
        cx.err(node, key, path, f"{value} is not a calendar date",
               "check the month (01–12) and the day")
        return None
    if not 1850 <= d.year <= 2200:
        cx.err(node, key, path, f"{value} is outside 1850–2200", "check the year")
        return None
    return value


# -- codelists --------------------------------------------------------------------------------
def _codelists(cx: _Ctx, doc) -> list[Codelist]:
    if "codelists" not in doc:
        return []
    node = doc["codelists"]
    if not isinstance(node, dict):
        cx.err(doc, "codelists", "codelists", f"must be a mapping of name: {{system, codes}}, "
               f"not {show(node)}", "e.g. codelists: {mi: {system: icd10, codes: [I21*]}}")
        return []
    out = []
    for name, spec in node.items():
        path = f"codelists.{name}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            cx.err(node, name, path, f"{show(name)} is not a plain codelist name",
                   "start with a letter; then letters, digits and _")
            continue
        _exportable(cx, node, name, path, name)   # attrition steps name the codelist
        spec = cx.mapping(spec, "codelist", path, node, name, "{system: icd10, codes: [I21*]}")
        if spec is None:
            cx.broken.add(name)
            continue
        system = spec.get("system")
        if system not in ("icd10", "atc"):
            cx.broken.add(name)
            cx.err(spec, "system" if "system" in spec else None, f"{path}.system",
                   f"unknown code system {show(system)}" if "system" in spec else "missing",
                   "use icd10 or atc")
            continue
        codes: list[str] = []
        file = None
        if "file" in spec:
            file = spec["file"]
            if not isinstance(file, str) or not file:
                cx.err(spec, "file", f"{path}.file", f"must be a path, not {show(file)}",
                       "e.g. file: mi_codes.csv")
                file = None
            else:
                codes = _codes_from_csv(cx, spec, path, file)
        inline: list[str] = []
        if "codes" in spec:
            v = spec["codes"]
            if not isinstance(v, list):
                cx.err(spec, "codes", f"{path}.codes", f"must be a list of codes, not {show(v)}",
                       "e.g. codes: [I21*]")
                v = []
            for i, c in enumerate(v):
                if not isinstance(c, str):
                    cx.err(v, i, f"{path}.codes", f"code {show(c)} is not text",
                           "quote it, e.g. 'I21'")
                elif c.strip() in inline:
                    cx.warn(v, i, f"{path}.codes", f"code {c!r} repeated", "drop the repeat")
                else:
                    inline.append(c.strip())
        # the file's codes first; a code written in both places is one code (so a study
        # written back with its file's codes inline reads back the same)
        codes += [c for c in inline if c not in codes]
        if not codes:
            if not any(p.field.startswith(path) for p in cx.problems):
                cx.err(spec, None, path, "has no codes", "give codes: [...] or file: codes.csv")
            cx.broken.add(name)
            continue
        pattern = ICD10 if system == "icd10" else ATC
        bad = False
        for c in codes:
            norm = c.replace(".", "").upper()
            other = _other_system(system, norm)
            if not pattern.match(norm) and other is None:
                lines = spec["codes"] if isinstance(spec.get("codes"), Seq) else None
                at = inline.index(c) if c in inline and lines is not None else None
                cx.err(lines if at is not None else spec, at if at is not None else "codes",
                       f"{path}.codes", f"malformed {system} code {c!r}",
                       "ICD-10 like I21, I21.9, DI219 or I21*; ATC like C10AA or C10AA01")
                bad = True
            elif other is not None:
                lines = spec["codes"] if isinstance(spec.get("codes"), Seq) else None
                at = inline.index(c) if c in inline and lines is not None else None
                cx.err(lines if at is not None else spec, at if at is not None else "codes",
                       f"{path}.codes", f"{c!r} is an {OTHER_SYSTEM_NAME[other]} code, not "
                       f"{OTHER_SYSTEM_NAME[system]}",
                       f"write system: {other}, or give {OTHER_SYSTEM_NAME[system]} codes")
                bad = True
        if bad:
            cx.broken.add(name)
        else:
            out.append(Codelist(name, system, tuple(codes), file))
    return out


# ATC's anatomical main groups: a code under system: atc starting otherwise is no ATC code
ATC_MAIN_GROUPS = frozenset("ABCDGHJLMNPRSV")
# letter, two digits, two letters (C10AA, A10BK01): an ATC code; no ICD-10 code has that form
ATC_LEVEL4 = re.compile(r"^[A-Z][0-9]{2}[A-Z]{2}([0-9]{2})?\*?$")
# an ICD-10 category or subcode in digits (I21, I219, DI219): what an ATC slot never holds
ICD10_PLAIN = re.compile(r"^D?[A-Z][0-9]{2}[0-9]*\*?$")
OTHER_SYSTEM_NAME = {"icd10": "ICD-10", "atc": "ATC"}


def _other_system(system: str, norm: str) -> str | None:
    """The system a well-formed code evidently belongs to instead of ``system`` (an ATC code
    written under icd10 matches no diagnosis, silently), or None."""
    if system == "icd10" and ATC_LEVEL4.match(norm):
        return "atc"
    if system == "atc" and ICD10_PLAIN.match(norm) and (
            norm[:1] not in ATC_MAIN_GROUPS or not ATC.match(norm)):
        return "icd10"
    return None


def _codes_from_csv(cx: _Ctx, spec: Node, path: str, file: str) -> list[str]:
    f = cx.base_dir / file
    if f.is_dir():
        cx.err(spec, "file", f"{path}.file", f"{f} is a folder, not a CSV file",
               "give a CSV path relative to the study file")
        return []
    if not f.is_file():
        cx.err(spec, "file", f"{path}.file", f"{f} does not exist",
               "give a CSV path relative to the study file")
        return []
    try:
        with open(f, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or ())
    except UnicodeDecodeError:
        cx.err(spec, "file", f"{path}.file", f"{f} is not UTF-8 text", "save it as UTF-8 CSV")
        return []
    except (OSError, csv.Error) as e:
        cx.err(spec, "file", f"{path}.file", f"{f} cannot be read as CSV ({e})",
               "give a CSV file with a header row and a code column")
        return []
    if "code" not in header:
        cx.err(spec, "file", f"{path}.file", f"{f} has no 'code' column",
               "the CSV needs a header row with a column named code")
        return []
    if header.count("code") > 1:   # DictReader would keep the last one without a word
        cx.err(spec, "file", f"{path}.file", f"{f} has {header.count('code')} columns named "
               "code", "keep one code column (rename the others)")
        return []
    out: list[str] = []
    for r in rows:
        c = (r.get("code") or "").strip()
        if c and c not in out:
            out.append(c)
    return out


def _exportable(cx: _Ctx, node: Node, key: str, path: str, text: str,
                limit: int | None = None) -> None:
    """Free text every output repeats (the description, a step's label) in the characters,
    length and words the export gate lets leave: a description with an emoji ran, and then
    held back results.json, plan.txt and the report at export (outputs/text.py's rules; its
    digits are the gate's to judge against the study's numbers)."""
    from ..outputs.text import MAX_VALUE, problems

    for p in problems(text, None, "", MAX_VALUE if limit is None else limit):
        cx.err(node, key, path, p.removeprefix(": "),
               "the export gate would hold back every file that repeats it: write it in "
               "letters, ASCII digits and punctuation, without number words")


# -- events -----------------------------------------------------------------------------------
def _events(cx: _Ctx, node: Node, path: str, names: dict[str, Codelist],
            register: str | None = None) -> Events | None:
    """The event definition in ``node`` (keys already checked by the caller). ``register``
    fixes the register (a cause of death)."""
    ok = True
    cl = node.get("codelist")
    if "codelist" not in node:
        cx.err(node, None, f"{path}.codelist", "missing", "name one of the codelists: "
               + (", ".join(names) or "(none defined yet)"))
        return None
    if isinstance(cl, str) and cl in cx.broken:
        return None     # its own problem is reported where it is defined
    if not isinstance(cl, str) or cl not in names:
        near = closest(cl, names) if isinstance(cl, str) else None
        cx.err(node, "codelist", f"{path}.codelist", f"codelist {show(cl)} is not defined",
               f"did you mean {near!r}?" if near else "define it under codelists:")
        return None
    reg = node.get("register", register or SYSTEM_REGISTER[names[cl].system])
    if reg not in REGISTERS:
        cx.err(node, "register", f"{path}.register", f"unknown register {show(reg)}",
               f"use one of {', '.join(REGISTERS)}")
        return None
    if register is not None and reg != register:
        cx.err(node, "register", f"{path}.register", f"a cause of death is in register "
               f"{register}, not {reg}", "leave register: out")
        return None
    if names[cl].system != REGISTER_SYSTEM[reg]:
        cx.err(node, "codelist", f"{path}.codelist", f"{cl} holds {names[cl].system} codes "
               f"but register {reg} records {REGISTER_SYSTEM[reg]}",
               "use a codelist of that system")
        ok = False
    dtypes = _choice_list(cx, node, "diagnosis_type", f"{path}.diagnosis_type",
                          DIAGNOSIS_TYPES, DIAGNOSIS_TYPES)
    ptypes = _choice_list(cx, node, "patient_type", f"{path}.patient_type",
                          tuple(PATIENT_TYPES), ())
    for k in ("diagnosis_type", "patient_type"):
        if getattr(SOURCES[reg], k) is None and k in node:
            cx.err(node, k, f"{path}.{k}", f"{k.replace('_', ' ')}s exist only in lpr, not "
                   f"{reg}", f"drop {k}:")
            ok = False
    filters = _filters(cx, node, path, reg)
    if not ok or dtypes is None or ptypes is None or filters is None:
        return None
    return Events(cl, reg, dtypes, ptypes, filters)


def _choice_list(cx: _Ctx, node, key, path, choices: tuple[str, ...], default):
    """One choice or a list of them, in the choices' order; None on a problem."""
    if key not in node:
        return default
    v = node[key]
    vals = [v] if isinstance(v, str) else v
    if not isinstance(vals, list) or not vals:
        cx.err(node, key, path, f"must be one of {', '.join(choices)} or a list of them, not "
               f"{show(v)}", f"e.g. {key}: [{choices[0]}]")
        return None
    bad = [x for x in vals if x not in choices]
    if bad:
        cx.err(node, key, path, f"unknown value {show(bad[0])}",
               f"use {', '.join(choices)}" + (f" (did you mean {closest(bad[0], choices)!r}?)"
                                             if closest(bad[0], choices) else ""))
        return None
    return tuple(c for c in choices if c in vals)


def _filters(cx: _Ctx, node, path, reg) -> tuple | None:
    if "filter" not in node:
        return ()
    fl = node["filter"]
    if not SOURCES[reg].filters:
        cx.err(node, "filter", f"{path}.filter", f"register {reg} has no columns to filter on",
               "drop filter:")
        return None
    fl = cx.mapping(fl, f"filter_{reg}", f"{path}.filter", node, "filter",
                    "filter: {c_sgh: [1301]}")
    if fl is None:
        return None
    out = []
    ok = len(fl) > 0 and all(k in KEYS[f"filter_{reg}"] for k in fl)
    if not fl:
        cx.err(node, "filter", f"{path}.filter", "is empty", "name a column and its values")
    for col, vals in fl.items():
        if col not in KEYS[f"filter_{reg}"]:
            continue
        lo, hi = FILTER_RANGES[col]
        vs = vals if isinstance(vals, list) else [vals]
        if not vs or not all(is_int(x) and lo <= x <= hi for x in vs):
            cx.err(fl, col, f"{path}.filter.{col}", f"must be whole numbers from {lo} to {hi}, "
                   f"not {show(vals)}", f"e.g. {col}: [{lo}]")
            ok = False
            continue
        out.append((col, tuple(sorted(set(vs)))))
    return tuple(out) if ok else None


# -- index rules ------------------------------------------------------------------------------
def _index(cx: _Ctx, node, path: str, context: str, names, parent, key) -> IndexRule | None:
    node = cx.mapping(node, context, path, parent, key, "{first_event: {codelist: x}}")
    if node is None:
        return None
    if "date" not in KEYS[context] and "date" in node:
        return None     # said by cx.mapping
    nth = cx.integer(node, "nth", f"{path}.nth", 1, 1000, 1)
    washout = cx.integer(node, "washout_days", f"{path}.washout_days", 0, DAYS, 0)
    if "date" in node and "first_event" in node:
        cx.err(node, "date", path, "give first_event: or date:, not both",
               "date: is one day for everyone; first_event: a day per person")
        return None
    if "date" in node:
        for k in ("between", "nth", "washout_days"):
            if k in node:
                cx.err(node, k, f"{path}.{k}", "applies only to first_event:, not to a fixed "
                       "date", f"drop {k}:")
        d = _date(cx, node, "date", f"{path}.date", node["date"])
        return IndexRule("date", date=d) if d and not any(k in node for k in (
            "between", "nth", "washout_days")) else None
    if "first_event" not in node:
        cx.err(parent, key, path, "needs first_event: or date:",
               "e.g. first_event: {codelist: statins} with between: [2010-01-01, 2020-12-31]")
        return None
    ev_node = cx.mapping(node["first_event"], "events", f"{path}.first_event", node,
                         "first_event", "{codelist: statins}")
    ev = _events(cx, ev_node, f"{path}.first_event", names) if ev_node is not None else None
    between = None
    if "between" in node:
        b = node["between"]
        if not (isinstance(b, list) and len(b) == 2):
            cx.err(node, "between", f"{path}.between", f"must be [first date, last date], not "
                   f"{show(b)}", "e.g. [2010-01-01, 2020-12-31]")
        else:
            lo = _date(cx, node, "between", f"{path}.between", b[0])
            hi = _date(cx, node, "between", f"{path}.between", b[1])
            if lo and hi and lo > hi:
                cx.err(node, "between", f"{path}.between", f"reversed: {lo} is after {hi}",
                       f"write [{hi}, {lo}]")
            elif lo and hi:
                between = (lo, hi)
        if between is None:
            return None
    if ev is None:
        return None
    return IndexRule("first_event", events=ev, between=between, nth=nth, washout_days=washout)


def _comparator(cx: _Ctx, doc, names, index: IndexRule | None) -> Comparator | None:
    node = doc["comparator"]
    if "exposure" not in doc:
        cx.err(doc, "comparator", "comparator", "a comparator needs an exposure:",
               "rename index: to exposure: (with a name:)")
    if node == "non_users":
        cx.seen.add(("comparator", "non_users"))
        comp = Comparator("non_users")
    else:
        node = cx.mapping(node, "comparator", "comparator", doc, "comparator",
                          "{non_users: true} or {active: {first_event: {codelist: x}}}")
        if node is None:
            return None
        if ("non_users" in node) == ("active" in node):
            cx.err(node, None, "comparator", "needs exactly one of non_users: or active:",
                   "non_users: true compares with persons not exposed; active: {...} with "
                   "users of something else")
            return None
        censor = cx.boolean(node, "censor_on_exposure", "comparator.censor_on_exposure", True)
        from ..designs import language as design_language

        both = design_language.both_arms(cx, node)
        if "both_arms" in node and "active" not in node:
            cx.err(node, "both_arms", "comparator.both_arms", "applies only to an active "
                   "comparator (a non-user never holds the exposure at index)",
                   "drop both_arms:")
        if "active" in node:
            if "censor_on_exposure" in node:
                cx.err(node, "censor_on_exposure", "comparator.censor_on_exposure",
                       "applies only to non_users (an active comparator's persons are "
                       "followed as their own group)", "drop censor_on_exposure:")
            idx = _index(cx, node["active"], "comparator.active", "index", names, node,
                         "active")
            if idx is not None and idx.kind != "first_event":
                cx.err(node, "active", "comparator.active", "an active comparator needs "
                       "first_event: (its users' index dates)", "e.g. active: {first_event: "
                       "{codelist: other_drug}, between: [...]}")
                return None
            return Comparator("active", idx, True, both) if idx else None
        if node["non_users"] is not True:
            cx.err(node, "non_users", "comparator.non_users", f"must be true, not "
                   f"{show(node['non_users'])}", "to drop the comparator, use index: instead "
                   "of exposure: and comparator:")
            return None
        comp = Comparator("non_users", None, censor)
    if index is not None and (index.kind != "first_event" or index.between is None):
        cx.err(doc, "exposure", "exposure.between", "a non-user comparator draws its index "
               "dates from the exposure's between: window",
               "give exposure: first_event: with between: [first, last]")
        return None
    return comp


# -- criteria and covariates -------------------------------------------------------------------
def _criteria(cx: _Ctx, doc, names, index: IndexRule | None) -> list[Criterion]:
    node = doc.get("criteria", [])
    if not isinstance(node, list):
        cx.err(doc, "criteria", "criteria", f"must be a list of include:/exclude: entries, not "
               f"{show(node)}", "e.g. - exclude: {codelist: mi, window: [null, 0]}")
        return []
    out = []
    for i, item in enumerate(node):
        path = f"criteria[{i}]"
        item = cx.mapping(item, "criterion", path, node, i,
                          "- exclude: {codelist: mi, window: [null, 0]}")
        if item is None:
            continue
        acts = [a for a in ("include", "exclude") if a in item]
        if len(acts) != 1:
            cx.err(item, None, path, "must have exactly one of include: or exclude:",
                   "e.g. - exclude: {codelist: mi, window: [null, 0]}")
            continue
        action = acts[0]
        label = ""
        if "label" in item:
            lb = item["label"]
            if not isinstance(lb, str) or not lb.strip() or "\n" in lb or len(lb) > 200:
                cx.err(item, "label", f"{path}.label", f"must be one line of text, not "
                       f"{show(lb)}", "e.g. label: no MI before index")
            else:
                label = lb.strip()
                _exportable(cx, item, "label", f"{path}.label", label)
        p = f"{path}.{action}"
        spec = cx.mapping(item[action], "criterion_events", p, item, action,
                          "{codelist: mi, window: [null, 0]}")
        if spec is None:
            continue
        ev = _events(cx, spec, p, names)
        win = _window(cx, spec, "window", f"{p}.window", Window(None, 0))
        k = cx.integer(spec, "min_count", f"{p}.min_count", 1, 1_000_000, 1)
        if ev is None or win is None:
            continue
        if win.hi is None or win.hi > 0:
            cx.warn(spec, "window" if "window" in spec else None, f"{p}.window",
                    f"eligibility looks after the index day (window {win.to_list()}): who is "
                    "in the cohort then depends on the future", "end the window at 0 or before")
        if (action == "exclude" and index is not None and index.events == ev and
                (win.lo is None or win.lo <= 0) and (win.hi is None or win.hi >= 0)):
            cx.err(spec, "window" if "window" in spec else None, f"{p}.window",
                   "excludes every person: the index event itself lies in the window (day 0)",
                   "end the window at -1 (none before the index event)")
            continue
        out.append(Criterion(action, ev, win, k, label))
    return out


def _covariates(cx: _Ctx, doc, names) -> list[Covariate]:
    node = doc.get("covariates", [])
    if not isinstance(node, list):
        cx.err(doc, "covariates", "covariates", f"must be a list, not {show(node)}",
               "e.g. covariates: [age, sex]")
        return []
    out: list[Covariate] = []
    for i, item in enumerate(node):
        path = f"covariates[{i}]"
        if isinstance(item, str):
            if item not in BUILTIN_COVARIATES:
                near = closest(item, BUILTIN_COVARIATES)
                cx.err(node, i, path, f"unknown built-in covariate {item!r}",
                       f"did you mean {near!r}?" if near else
                       f"built-ins: {', '.join(BUILTIN_COVARIATES)}; others are mappings "
                       "{name, codelist, window}")
                continue
            win = Window(*CHARLSON_WINDOW) if item == "charlson" else None
            cov = Covariate(item, item, window=win)
        else:
            item = cx.mapping(item, "covariate", path, node, i,
                              "{name: diabetes, codelist: diabetes, window: [null, 0]}")
            if item is None:
                continue
            cov = _covariate(cx, item, path, names)
            if cov is None:
                continue
        if any(c.name == cov.name for c in out):
            cx.err(node, i, path, f"covariate {cov.name!r} defined twice", "rename one")
            continue
        if cov.window is not None and (cov.window.hi is None or cov.window.hi > 0):
            cx.warn(node if isinstance(item, str) else item,
                    i if isinstance(item, str) else "window", f"{path}.window",
                    f"a covariate at index counts events after the index day (window "
                    f"{cov.window.to_list()})", "end the window at 0 or before")
        out.append(cov)
    return out


def _covariate(cx: _Ctx, item: Node, path: str, names) -> Covariate | None:
    if "name" not in item:
        cx.err(item, None, f"{path}.name", "missing", "give each covariate a name:")
        return None
    name = cx.name(item, "name", f"{path}.name", "covariate name")
    if name is None:
        return None
    events_given = [k for k in EVENT_KEYS if k in item]
    if name in RESERVED_NAMES:
        cx.err(item, "name", f"{path}.name", f"{name!r} is a column of the outputs",
               "choose another name")
        return None
    kind = item.get("kind")
    if "kind" in item and kind != "charlson":
        cx.err(item, "kind", f"{path}.kind", f"unknown kind {show(kind)}",
               "kind: charlson is the only kind; a 0/1 flag needs codelist:, a count count:")
        return None
    if kind == "charlson" or (name == "charlson" and not events_given and "count" not in item):
        extra = [k for k in ("count", *EVENT_KEYS, "time_varying") if k in item]
        if extra:
            cx.err(item, extra[0], f"{path}.{extra[0]}", "a Charlson index takes only name: "
                   "and window: (its codes are fixed)", f"drop {extra[0]}:")
            return None
        win = _window(cx, item, "window", f"{path}.window", Window(*CHARLSON_WINDOW))
        return Covariate(name, "charlson", None, win) if win else None
    if name in BUILTIN_COVARIATES:
        cx.err(item, "name", f"{path}.name", f"{name!r} is a built-in covariate",
               f"write it as a plain - {name}, or choose another name")
        return None
    if "index_contact" in item:
        attr = item["index_contact"]
        if attr not in CONTACT_ATTRIBUTES:
            near = closest(attr, CONTACT_ATTRIBUTES) if isinstance(attr, str) else None
            cx.err(item, "index_contact", f"{path}.index_contact", f"{show(attr)} is not an "
                   "attribute of a contact", f"did you mean {near!r}?" if near else
                   "write c_sgh (the hospital), c_pattype (the patient type) or diagnoses "
                   "(with codelist:, a 0/1 flag)")
            return None
        if attr == "diagnoses":
            return _contact_diagnoses(cx, item, path, name, names)
        extra = [k for k in ("count", "window", "time_varying", *EVENT_KEYS) if k in item]
        if extra:
            cx.err(item, extra[0], f"{path}.{extra[0]}", "an attribute of the index contact "
                   "takes only name: and index_contact:", f"drop {extra[0]}:")
            return None
        return Covariate(name, "index_contact", attribute=attr)
    win = _window(cx, item, "window", f"{path}.window", Window(None, 0))
    if "time_varying" in item and "count" in item:
        cx.err(item, "time_varying", f"{path}.time_varying", "only a 0/1 covariate (codelist:) "
               "can vary in time: a count is measured at index", "drop time_varying:, or use "
               "codelist: for a flag")
        return None
    if "count" in item:
        target = item["count"]
        if "codelist" in item:
            cx.err(item, "codelist", f"{path}.codelist", "give count: or codelist:, not both",
                   "count: mi counts events; codelist: mi is a 0/1 flag")
            return None
        if target == "hospital_contacts":
            for k in ("register", "diagnosis_type"):
                if k in item:
                    cx.err(item, k, f"{path}.{k}", "hospital contacts are lpr contacts, each "
                           "counted once", f"drop {k}:")
                    return None
            ptypes = _choice_list(cx, item, "patient_type", f"{path}.patient_type",
                                  tuple(PATIENT_TYPES), ())
            filters = _filters(cx, item, path, "lpr")
            if ptypes is None or filters is None or win is None:
                return None
            return Covariate(name, "count", Events(None, "lpr", ("A",), ptypes, filters), win)
        if not isinstance(target, str) or target not in names:
            near = closest(target, [*names, "hospital_contacts"]) if isinstance(
                target, str) else None
            cx.err(item, "count", f"{path}.count", f"{show(target)} is not a codelist",
                   f"did you mean {near!r}?" if near else
                   "count a codelist, or hospital_contacts")
            return None
        as_codelist = Node(item)
        as_codelist["codelist"] = target
        as_codelist.lines["codelist"] = item.line_of("count")
        ev = _events(cx, as_codelist, path, names)
        return Covariate(name, "count", ev, win) if ev and win else None
    ev = _events(cx, item, path, names)
    varying = cx.boolean(item, "time_varying", f"{path}.time_varying", False)
    if varying and win is not None and (win.hi is None or win.hi > 0):
        cx.err(item, "window", f"{path}.window", "a time-varying covariate's window is its "
               "value at index: it must end on or before day 0 (after index the first event "
               "switches it on)", "e.g. window: [null, 0]")
        return None
    return Covariate(name, "flag", ev, win, varying) if ev and win else None


# the lpr contact's columns (the catalogue's), and its diagnoses (a 0/1 flag for a codelist)
CONTACT_ATTRIBUTES = (*sorted(SOURCES["lpr"].filters), "diagnoses")


def _contact_diagnoses(cx: _Ctx, item: Node, path: str, name: str, names) -> Covariate | None:
    """``{name, index_contact: diagnoses, codelist, diagnosis_type}``: 1 when a diagnosis of
    the index contact is in the codelist."""
    extra = [k for k in item if k not in ("name", "index_contact", "codelist",
                                          "diagnosis_type")]
    if extra:
        cx.err(item, extra[0], f"{path}.{extra[0]}", "the index contact's diagnoses take "
               "only name:, codelist: and diagnosis_type:", f"drop {extra[0]}:")
        return None
    if "codelist" not in item:
        cx.err(item, "index_contact", f"{path}.codelist", "missing: which diagnoses of the "
               "index contact?", "add codelist: (an icd10 codelist), e.g. codelist: diabetes")
        return None
    ev = _events(cx, item, path, names, register="lpr")
    return Covariate(name, "index_contact", ev, attribute="diagnoses") if ev else None


# -- outcome, analyses ---------------------------------------------------------------------------
def _outcome(cx: _Ctx, doc, names) -> Outcome | None:
    if "outcome" not in doc:
        cx.err(doc, None, "outcome", "missing", "e.g. outcome: {name: mi, codelist: mi}")
        return None
    node = cx.mapping(doc["outcome"], "outcome", "outcome", doc, "outcome",
                      "{name: mi, codelist: mi}")
    if node is None:
        return None
    name = cx.name(node, "name", "outcome.name", "outcome name", "outcome")
    death = cx.boolean(node, "death", "outcome.death", False)
    if "death" in node and not isinstance(node["death"], bool):
        return None
    win = _window(cx, node, "window", "outcome.window", Window(1, None))
    if win is not None and (win.lo is None or win.lo < 0):
        cx.err(node, "window", "outcome.window", "an outcome counts from the index day on: "
               "the window must start at 0 or later", "e.g. [1, null] or [0, 30]")
        win = None
    if death:
        ev = None
        if "codelist" in node:
            ev = _events(cx, node, "outcome", names, register="death")
            if ev is None:
                return None
        else:
            extra = [k for k in EVENT_KEYS if k in node]
            if extra:
                cx.err(node, extra[0], f"outcome.{extra[0]}", "all-cause death takes no event "
                       "definition", "add codelist: for cause-specific death, or drop it")
                return None
        return Outcome(name, ev, True, win) if name and win else None
    ev = _events(cx, node, "outcome", names)
    return Outcome(name, ev, False, win) if ev and name and win else None


def _model(cx: _Ctx, node, key, covariates: dict[str, Covariate],
           has_comparator: bool) -> ModelSpec | None:
    spec = node[key]
    path = f"analyses.{key}"
    if spec is True:
        spec = Node()
    elif spec is False:
        return None
    spec = cx.mapping(spec, key, path, node, key, f"{key}: {{adjust: [age, sex]}}")
    if spec is None:
        return None
    refuse = {"group": "the exposure group is always in the model (with a comparator)"}
    if key == "logistic":
        refuse.update({n: "it varies in time, and a logistic model takes one value per "
                       "person: use cox: or poisson: (they split follow-up where it switches)"
                       for n, c in covariates.items() if c.time_varying})
    out: dict[str, tuple] = {}
    bands = _model_bands(cx, spec, key, path, covariates)
    if bands is None:
        return None
    split = {"age_band": f"give {path}.age_bands: (attained-age limits, e.g. "
                         "[40, 60, 80, 150]) to use the term age_band",
             "time_band": f"give {path}.time_bands: (days since index, e.g. [0, 30, 365]) to "
                          "use the term time_band"}
    if key == "cox":
        split["time_band"] = ("time since index is the Cox model's own time scale: its bands "
                              "are the baseline hazard's; use poisson: for rates by time_band")
    if key == "logistic":
        split = {k: "it varies in time, and a logistic model takes one value per person: use "
                 "poisson: (or cox: for age_band)" for k in split}
    for part in ("adjust", "strata"):
        if part in spec:
            allowed = set(covariates) | (set(bands) if part == "adjust" else set())
            no = {**{k: v for k, v in split.items() if k not in allowed}, **refuse}
            if part == "strata":
                no.update({k: "a split of follow-up is a term: adjust for it"
                           for k in ("age_band", "time_band")})
            vals = _names_list(cx, spec, part, f"{path}.{part}", allowed, "covariates", no)
            if vals is None:
                return None
            out[part] = vals
    for k, v in bands.items():
        out[f"{k}s"] = v
        if k not in out.get("adjust", ()):
            cx.warn(spec, f"{k}s", f"{path}.{k}s", f"changes nothing without {k} in adjust:",
                    f"add {k} to adjust:, or drop {k}s:")
    both = set(out.get("adjust", ())) & set(out.get("strata", ()))
    if both:
        cx.err(spec, "strata", f"{path}.strata", f"{sorted(both)[0]!r} is both adjusted for "
               "and a stratum", "keep it in one of adjust: or strata:")
        return None
    if key == "cox" and not has_comparator and not out.get("adjust"):
        cx.err(node, key, path, "a Cox model of a single cohort without adjust: has no terms",
               "add adjust: [...] or a comparator:")
        return None
    return ModelSpec(**out)


def _model_bands(cx: _Ctx, spec, key: str, path: str, covariates) -> dict | None:
    """{"age_band": limits, "time_band": limits} of a model's split terms (None: a problem)."""
    out: dict[str, tuple] = {}
    ok = True
    for k, term in (("age_bands", "age_band"), ("time_bands", "time_band")):
        if k not in spec or key == "logistic" or (key == "cox" and k == "time_bands"):
            continue   # refused as a key out of place, with its reason (keys.MISPLACED)
        v = spec[k]
        top, whole = (150, False) if k == "age_bands" else (DAYS, True)
        good = isinstance(v, list) and len(v) >= 2 and all(
            (is_int(x) if whole else is_number(x)) and 0 <= x <= top for x in v) and \
            all(b > a for a, b in zip(v, v[1:], strict=False))
        if not good:
            cx.err(spec, k, f"{path}.{k}", f"must be an increasing list of at least two "
                   f"{'whole days' if whole else 'ages'} within 0–{top}, not {show(v)}",
                   "e.g. [0, 30, 365]" if whole else "e.g. [40, 60, 80, 150]")
            ok = False
            continue
        if k == "age_bands" and not any(c.kind == "age" for c in covariates.values()):
            cx.err(spec, k, f"{path}.{k}", "age bands need the age covariate (age at index "
                   "gives each person's birth day)", "add age under covariates:")
            ok = False
            continue
        out[term] = tuple(int(x) for x in v) if whole else tuple(float(x) for x in v)
    return out if ok else None


def _analyses(cx: _Ctx, doc, covariates: dict[str, Covariate],
              has_comparator: bool) -> Analyses:
    if "analyses" not in doc:
        return Analyses()
    node = cx.mapping(doc["analyses"], "analyses", "analyses", doc, "analyses",
                      "analyses: {cox: {adjust: [age, sex]}}")
    if node is None:
        return Analyses()
    groupable = {"group", *(n for n, c in covariates.items() if c.kind != "age")}
    continuous = {n: f"{n!r} is continuous (age in decimal years); band it with lexis: "
                  "age_bands" for n, c in covariates.items() if c.kind == "age"}
    rates_by: tuple[str, ...] | None = ("group",)
    if "rates" in node:
        r = node["rates"]
        if r is False:
            rates_by = None
            cx.warn(node, "rates", "analyses.rates", "changes nothing: the cohort table (rates "
                    "per group) is always written, and no other rates are unless asked for",
                    "drop rates: false")
        else:
            r = cx.mapping(r, "rates", "analyses.rates", node, "rates", "{by: [group, sex]}")
            if r is not None and "by" not in r:
                cx.err(r, None, "analyses.rates.by", "missing", "e.g. rates: {by: [group, sex]}")
            elif r is not None:
                varying = {n: "it varies in time: rates by its state are a measure, "
                           f"measures: [{{name: by_{n}, by: [{n}]}}]"
                           for n, c in covariates.items() if c.time_varying}
                by = _names_list(cx, r, "by", "analyses.rates.by", groupable | {"index_year"},
                                 "covariates, group or index_year", {**continuous, **varying})
                if by == ("group",) or by == ():
                    cx.err(r, "by", "analyses.rates.by", "rates by group alone are the cohort "
                           "table, written always: this would write nothing more",
                           "add a covariate, e.g. by: [group, sex]")
                elif by is not None:
                    rates_by = by
    curves = False
    if isinstance(node.get("curves"), dict):
        hints = [MISPLACED[("curves", k)] for k in node["curves"] if ("curves", k) in MISPLACED]
        cx.err(node, "curves", "analyses.curves", "must be true or false, not a mapping",
               hints[0] if hints else "curves: true")
    else:
        curves = cx.boolean(node, "curves", "analyses.curves", False)
    models = {k: _model(cx, node, k, covariates, has_comparator)
              for k in ("cox", "logistic", "poisson") if k in node}
    lexis = _lexis(cx, node, covariates) if "lexis" in node else None
    measures = []
    if "measures" in node:
        ms = node["measures"]
        if not isinstance(ms, list):
            cx.err(node, "measures", "analyses.measures", f"must be a list of {{name, by}}, not "
                   f"{show(ms)}", "e.g. measures: [{name: mortality, by: [region]}]")
            ms = []
        for i, m in enumerate(ms):
            path = f"analyses.measures[{i}]"
            m = cx.mapping(m, "measure", path, ms, i, "{name: mortality, by: [region]}")
            if m is None:
                continue
            if "name" not in m:
                cx.err(m, None, f"{path}.name", "missing", "name it: it names the table")
                continue
            name = cx.name(m, "name", f"{path}.name", "measure name")
            if name is None:
                continue
            if any(x.name == name for x in measures):
                cx.err(m, "name", f"{path}.name", f"measure {name!r} named twice",
                       "rename one")
                continue
            has_age = any(c.kind == "age" for c in covariates.values())
            keys = groupable | {"index_year"} | ({"age_band"} if has_age else set()) | \
                ({"time_band"} if "time_bands" in m else set())
            by = _names_list(cx, m, "by", f"{path}.by", keys,
                             "covariates, group, index_year" + (", age_band" if has_age
                                                                 else "") +
                             (", time_band" if "time_bands" in m else ""),
                             continuous) if "by" in m else ()
            measure = _measure_time(cx, m, path, name, has_age)
            if by is not None and measure is not None:
                measures.append(replace(measure, by=by))
    hospitals = _hospitals(cx, node, covariates) if "hospitals" in node else None
    return Analyses(rates_by=rates_by, curves=curves, cox=models.get("cox"),
                    logistic=models.get("logistic"), poisson=models.get("poisson"),
                    lexis=lexis, measures=tuple(measures), hospitals=hospitals)


def _index_contact_needs_contacts(cx: _Ctx, doc, covariates, index, comparator) -> None:
    """An attribute of the index contact needs every group's index to be a hospital contact."""
    uses = [(i, c) for i, c in enumerate(covariates) if c.kind == "index_contact"]
    if not uses or index is None:
        return
    rules = [index] + ([comparator.index] if comparator and comparator.index else [])
    lpr = all(r.kind == "first_event" and r.events.register == "lpr" for r in rules)
    if not lpr or (comparator is not None and comparator.kind == "non_users"):
        i, c = uses[0]
        node = doc["covariates"]
        cx.err(node, i, f"covariates[{i}].index_contact", f"{c.name!r} is an attribute of the "
               "index contact, but an index here is no hospital contact (a date, a "
               "prescription or a non-user's random day)", "use an index rule first_event: "
               "{codelist: ...} on lpr diagnoses for every group, or drop the covariate")


def _hospitals(cx: _Ctx, node, covariates: dict[str, Covariate]) -> Hospitals | None:
    h = cx.mapping(node["hospitals"], "hospitals", "analyses.hospitals", node, "hospitals",
                   "{by: hospital, adjust: [age, sex, charlson]}")
    if h is None:
        return None
    units = {n for n, c in covariates.items() if c.kind in ("index_contact", "region") and
             c.attribute != "diagnoses"}
    by = h.get("by")
    if "by" not in h:
        cx.err(h, None, "analyses.hospitals.by", "missing", "e.g. by: hospital, with the "
               "covariate {name: hospital, index_contact: c_sgh}")
        return None
    if not isinstance(by, str) or by not in units:   # by: [] crashed (unhashable)
        cx.err(h, "by", "analyses.hospitals.by", f"{show(by)} is not a covariate of units",
               f"use one of {', '.join(sorted(units))}" if units else
               "add the covariate {name: hospital, index_contact: c_sgh} and write by: hospital")
        return None
    adjust: tuple[str, ...] = ()
    if "adjust" in h:
        refuse = {by: "it is the unit compared: the expected counts come from a model of all "
                      "units together"}
        refuse.update({n: "it varies in time; the risk model takes values at index"
                       for n, c in covariates.items() if c.time_varying})
        got = _names_list(cx, h, "adjust", "analyses.hospitals.adjust", set(covariates),
                          "covariates", refuse)
        if got is None:
            return None
        adjust = got
    identify = h.get("identify", "code")
    if identify not in ("code", "rank", "none"):
        cx.err(h, "identify", "analyses.hospitals.identify", f"{show(identify)} is not code, "
               "rank or none", "identify: rank shows each unit's rank by O/E instead of its "
               "code")
        return None
    return Hospitals(by, adjust, identify)


STANDARDS = re.compile(r"esp2013|danish_(19[6-9][0-9]|20[0-9][0-9])")


def _measure_time(cx: _Ctx, m, path: str, name: str, has_age: bool) -> Measure | None:
    """A measure's interval, standardisation and age bands (``by`` is filled in after)."""
    ok = True
    # by: -1 is an error of its own (below); here it crashed ("int is not iterable")
    by_keys = m.get("by") if isinstance(m.get("by"), list) else ()
    interval = m.get("interval")
    if "interval" in m and interval not in ("month", "quarter", "year"):
        cx.err(m, "interval", f"{path}.interval", f"{show(interval)} is not month, quarter "
               "or year", "e.g. interval: year")
        ok = False
    std = m.get("standardise")
    if "standardise" in m and not (isinstance(std, str) and STANDARDS.fullmatch(std)):
        cx.err(m, "standardise", f"{path}.standardise", f"{show(std)} is not a standard "
               "population", "write esp2013 (European Standard Population 2013) or danish_YYYY "
               "(the Danish population on 1 January YYYY, from bef), e.g. danish_2015")
        ok = False
    indirect = cx.boolean(m, "indirect", f"{path}.indirect", False)
    bands = None
    if "age_bands" in m:
        v = m["age_bands"]
        if not (isinstance(v, list) and len(v) >= 2 and all(is_number(x) for x in v)) or \
                not all(0 <= x <= 150 for x in v) or \
                any(b <= a for a, b in zip(v, v[1:], strict=False)):
            cx.err(m, "age_bands", f"{path}.age_bands", f"must be an increasing list of at "
                   f"least two ages within 0–150, not {show(v)}", "e.g. [0, 40, 60, 80, 150]")
            ok = False
        else:
            bands = tuple(float(x) for x in v)
            if std == "esp2013" and not all(x % 5 == 0 and x <= 90 for x in v[:-1]):
                cx.err(m, "age_bands", f"{path}.age_bands", "the European Standard Population "
                       "2013 has 5-year bands to 90 and over: each limit but the last must be "
                       "a multiple of 5 up to 90", "e.g. [0, 40, 60, 80, 150]")
                ok = False
    times = None
    if "time_bands" in m:
        v = m["time_bands"]
        if not (isinstance(v, list) and len(v) >= 2 and all(is_int(x) for x in v)) or \
                not all(0 <= x <= DAYS for x in v) or \
                any(b <= a for a, b in zip(v, v[1:], strict=False)):
            cx.err(m, "time_bands", f"{path}.time_bands", "must be an increasing list of at "
                   f"least two whole days within 0–{DAYS}, not {show(v)}",
                   "e.g. [0, 30, 365, 1826]")
            ok = False
        else:
            times = tuple(v)
            if "time_band" not in by_keys:
                cx.warn(m, "time_bands", f"{path}.time_bands", "changes nothing without "
                        "by: [time_band]", "add time_band to by:, or drop it")
    uses_age = bool(std or indirect) or "age_band" in by_keys
    if uses_age and not has_age:
        key = "standardise" if std else "indirect" if indirect else "by"
        cx.err(m, key, f"{path}.{key}", "age bands need the age covariate (age at index gives "
               "each person's birth day)", "add age under covariates:")
        ok = False
    if bands is not None and not uses_age:
        cx.warn(m, "age_bands", f"{path}.age_bands", "changes nothing without standardise:, "
                "indirect: or by: [age_band]", "drop it, or use it")
    if not ok:
        return None
    # where a problem found on the data (bands that miss the cohort's ages) points
    at = next((k for k in ("age_bands", "standardise", "indirect") if k in m), None)
    return Measure(name, (), interval, std, indirect, bands, times, where=cx.where(m, at))


def _lexis(cx: _Ctx, node, covariates) -> Lexis | None:
    lx = cx.mapping(node["lexis"], "lexis", "analyses.lexis", node, "lexis",
                    "{age_bands: [0, 40, 60, 80, 110], periods: [2000, 2010, 2020]}")
    if lx is None:
        return None
    out = {}
    for key, lo, hi, check, e in (("age_bands", 0, 150, is_number, "[0, 40, 60, 80, 110]"),
                                  ("periods", 1900, 2100, is_int, "[2000, 2005, 2010, 2015]")):
        v = lx.get(key)
        if key not in lx:
            cx.err(lx, None, f"analyses.lexis.{key}", "missing", f"e.g. {key}: {e}")
        elif not (isinstance(v, list) and len(v) >= 2 and all(check(x) for x in v)):
            what = "numbers (years of age)" if key == "age_bands" else "whole years"
            cx.err(lx, key, f"analyses.lexis.{key}", f"must be a list of at least two {what}, "
                   f"not {show(v)}", f"e.g. {e}")
        elif not all(lo <= x <= hi for x in v) or any(b <= a for a, b in
                                                      zip(v, v[1:], strict=False)):
            cx.err(lx, key, f"analyses.lexis.{key}",
                   f"must increase strictly, within {lo}–{hi}", f"e.g. {e}")
        else:
            out[key] = v
    if not any(c.kind == "age" for c in covariates.values()):
        cx.err(node, "lexis", "analyses.lexis", "Lexis bands need the age covariate",
               "add age under covariates:")
        return None
    if len(out) < 2:
        return None
    return Lexis(tuple(float(a) for a in out["age_bands"]), tuple(out["periods"]))


def _follow_up_time(cx: _Ctx, fu, max_days, index: IndexRule | None,
                    outcome: Outcome | None) -> tuple[int, str | None]:
    """follow_up's start_day (a lag) and end_date (a calendar end), checked against the
    maximum follow-up, the outcome window and the index window."""
    start = cx.integer(fu, "start_day", "follow_up.start_day", 0, DAYS, 0)
    if max_days is not None and start >= max_days:
        cx.err(fu, "start_day", "follow_up.start_day", f"a lag of {start} days is not shorter "
               f"than the maximum follow-up ({max_days} days): nobody would be followed",
               f"make start_day less than {max_days}, or raise max_days")
    hi = outcome.window.hi if outcome is not None and outcome.window is not None else None
    if hi is not None and start > hi:
        cx.err(fu, "start_day", "follow_up.start_day", f"a lag of {start} days starts after "
               f"the outcome window ends (day {hi}): no outcome could count",
               f"make start_day at most {hi}, or widen outcome.window")
    end = _date(cx, fu, "end_date", "follow_up.end_date", fu["end_date"]) \
        if "end_date" in fu else None
    if end is not None and index is not None:
        first = index.date if index.kind == "date" else \
            (index.between[0] if index.between else None)
        if first is not None and end < first:
            cx.err(fu, "end_date", "follow_up.end_date", f"{end} is before the index window "
                   f"starts ({first}): nobody would be followed",
                   f"give an end date on or after {first}")
    return start, end


def _population(cx: _Ctx, doc) -> Population:
    if "population" not in doc:
        return Population()
    node = cx.mapping(doc["population"], "population", "population", doc, "population",
                      "population: {age: [40, 90]}")
    if node is None:
        return Population()
    age = node.get("age")
    if "age" in node:
        if not (isinstance(age, list) and len(age) == 2 and all(is_number(a) for a in age)):
            cx.err(node, "age", "population.age", f"must be [lowest, highest) in years, not "
                   f"{show(age)}", "e.g. [40, 90]")
            age = None
        elif not 0 <= age[0] < age[1] <= 150:
            cx.err(node, "age", "population.age", f"impossible age range {list(age)}",
                   "the lower limit must be ≥ 0 and below the upper, at most 150")
            age = None
    sex = node.get("sex", "any")
    if sex not in ("any", "male", "female"):
        cx.err(node, "sex", "population.sex", f"{show(sex)} is not any, male or female",
               "use any, male or female")
        sex = "any"
    from ..registers.schema import REGIONS

    regions = node.get("regions", [])
    if not isinstance(regions, list):
        cx.err(node, "regions", "population.regions", f"must be a list of region codes, not "
               f"{show(regions)}", f"e.g. regions: [{regions if is_int(regions) else 1084}]")
        regions = []
    bad = [r for r in regions if not is_int(r) or r not in REGIONS]
    if bad:
        cx.err(node, "regions", "population.regions", f"unknown region code {show(bad[0])}",
               f"regions are {', '.join(map(str, REGIONS))}")
    elif len(set(regions)) < len(regions):
        cx.err(node, "regions", "population.regions", "a region is given twice",
               "give each region once")
    years = node.get("residence_years", 0)
    if not is_number(years) or not 0 <= years <= 150:
        cx.err(node, "residence_years", "population.residence_years",
               f"must be a number of years from 0 to 150, not {show(years)}",
               "e.g. residence_years: 2")
        years = 0
    return Population(tuple(age) if age else None, sex,
                      tuple(sorted(r for r in regions if is_int(r) and r in REGIONS)),
                      float(years))


# -- variants -----------------------------------------------------------------------------------
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*")


def variant_nodes(doc: Node, cx: _Ctx) -> list[tuple[int, Node]]:
    """(position, node) of each well-formed variant; problems for the others."""
    if "variants" not in doc:
        return []
    vs = doc["variants"]
    if not isinstance(vs, list):
        cx.err(doc, "variants", "variants", f"must be a list of {{name, set}}, not {show(vs)}",
               "e.g. - {name: washout_2y, set: {exposure.washout_days: 730}}")
        return []
    out: list[tuple[int, Node]] = []
    for i, v in enumerate(vs):
        path = f"variants[{i}]"
        v = cx.mapping(v, "variant", path, vs, i,
                       "{name: washout_2y, set: {exposure.washout_days: 730}}")
        if v is None:
            continue
        if "name" not in v or "set" not in v:
            cx.err(v, None, path, "needs name: (letters, digits, _ -) and set: {field: value}",
                   "e.g. {name: washout_2y, set: {exposure.washout_days: 730}}")
            continue
        name = cx.name(v, "name", f"{path}.name", "variant name", rule=VARIANT_NAME)
        if name is None:
            continue
        if any(x["name"] == name for _, x in out):
            cx.err(v, "name", f"{path}.name", f"variant {name!r} named twice", "rename one")
            continue
        if name == doc.get("name"):   # submit writes the study as written to OUT/<its name>
            cx.err(v, "name", f"{path}.name", f"variant {name!r} is named as the study itself",
                   "give the variant a name of its own, e.g. what it changes")
            continue
        s = v["set"]
        if not isinstance(s, dict) or not s:
            cx.err(v, "set", f"{path}.set", f"must be a mapping of dotted.path: value, not "
                   f"{show(s)}", "e.g. set: {exposure.washout_days: 730}")
            continue
        good = True
        for p in s:
            if not isinstance(p, str) or not _PATH.fullmatch(p):
                cx.err(s, p, f"{path}.set", f"{show(p)} is not a dotted path",
                       "e.g. exposure.washout_days or criteria.0.window")
                good = False
            elif p.split(".")[0] in ("name", "variants"):
                cx.err(s, p, f"{path}.set.{p}", "a variant cannot change the study's name or "
                       "variants", "its name is the study's name and the variant's")
                good = False
            elif p.split(".")[0] not in KEYS["study"]:
                near = closest(p.split(".")[0], KEYS["study"])
                cx.err(s, p, f"{path}.set.{p}", "unknown field",
                       f"did you mean {near!r}?" if near else "")
                good = False
        if good:
            out.append((i, v))
    return out


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def apply_variant(doc: Node, variant: Node, file: str) -> tuple[Node, list[Problem]]:
    """A copy of ``doc`` with the variant's ``set`` applied (dotted paths; a number picks a
    list item; null removes a field), and the problems with its paths."""
    doc = copy.deepcopy(doc)
    settings = variant["set"]
    problems = []
    for path, value in settings.items():
        where = f"{file}:{settings.line_of(path)}"
        keys = path.split(".")
        node: Any = doc
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            here = ".".join(keys[:depth + 1])
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    problems.append(Problem(where, f"set.{path}",
                                            f"{'.'.join(keys[:depth]) or 'it'} is a list of "
                                            f"{len(node)}: no item {k}",
                                            f"items count from 0 to {len(node) - 1}"))
                    break
                if last:
                    node[int(k)] = value
                    break
                node = node[int(k)]
            elif isinstance(node, dict):
                if k.isdigit():
                    problems.append(Problem(where, f"set.{path}",
                                            f"{'.'.join(keys[:depth])} is a mapping, not a "
                                            "list", "name its field, not a number"))
                    break
                if last:
                    if value is None:
                        node.pop(k, None)
                    else:
                        node[k] = value
                        node.lines[k] = settings.line_of(path)
                    break
                if k not in node:
                    child = Node()
                    child.line = settings.line_of(path)
                    node[k] = child
                    node.lines[k] = child.line
                node = node[k]
            else:
                problems.append(Problem(where, f"set.{path}",
                                        f"{'.'.join(keys[:depth])} is {show(node)}, which has "
                                        f"no field {k}", f"set {here.rsplit('.', 1)[0]} whole"))
                break
    if isinstance(doc.get("name"), str):
        doc["name"] = f"{doc['name']}.{variant['name']}"
    return doc, problems


def find_variant(doc: Node, name: str, file: str) -> Node:
    """The variant called ``name``, or a UserError naming the study's variants."""
    cx = _Ctx(file)
    found = {v["name"]: v for _, v in variant_nodes(doc, cx)}
    if name in found:
        return found[name]
    written = [v.get("name") for v in doc.get("variants") or [] if isinstance(v, dict)]
    if name in written:          # there, but malformed: say how
        raise StudyErrors(cx.problems)
    raise UserError(f"study has no variant {name!r}", where=file,
                    fix=f"variants: {', '.join(found) or 'none'}")


# -- the study ----------------------------------------------------------------------------------
def parse(doc: Node, file: str = "<study>", base_dir: str | Path = ".", *,
          check_variants: bool = True, keys_seen: set | None = None
          ) -> tuple[Study | None, list[Problem]]:
    """A Study from YAML data (with its warnings on ``study.warnings``), or None and every
    problem found. Each variant is applied and checked too (``check_variants``).
    ``keys_seen`` receives the (context, key) pairs the study uses (for coverage tests)."""
    cx = _Ctx(file, base_dir=Path(base_dir))
    try:
        return _parse(cx, doc, check_variants)
    finally:
        if keys_seen is not None:
            keys_seen |= cx.seen


def _parse(cx: _Ctx, doc: Node, check_variants: bool) -> tuple[Study | None, list[Problem]]:
    file = cx.file
    cx.mapping(doc, "study", "", example="name: my_study")
    if "name" not in doc:
        cx.err(doc, None, "name", "missing", "give name: letters, digits, _ . - (it names the "
               "outputs)")
    name = cx.name(doc, "name", "name", "study name", rule=STUDY_NAME)
    description = doc.get("description", "")
    if not isinstance(description, str):
        cx.err(doc, "description", "description", f"must be text, not {show(description)}",
               "quote it")
        description = ""
    # (a line of plan.txt: "description: …", at most MAX_LINE characters)
    _exportable(cx, doc, "description", "description", description, 300 - len("description: "))
    seed = cx.integer(doc, "seed", "seed", 0, 2**63 - 1, 1)
    codelists = _codelists(cx, doc)
    names = {c.name: c for c in codelists}
    population = _population(cx, doc)
    exposure_name = "exposed"
    index = None
    if "exposure" in doc and "index" in doc:
        cx.err(doc, "index", "index", "give either exposure: or index:, not both",
               "exposure: compares exposed with a comparator; index: is one cohort")
    elif "exposure" in doc:
        ex = doc["exposure"]
        index = _index(cx, ex, "exposure", "exposure", names, doc, "exposure")
        if isinstance(ex, dict):
            exposure_name = cx.name(ex, "name", "exposure.name", "exposure name", "exposed")
            if exposure_name in RESERVED_NAMES | GROUP_LABELS | set(BUILTIN_COVARIATES):
                cx.err(ex, "name", "exposure.name", f"{exposure_name!r} is taken by the outputs",
                       "choose another name, e.g. statin")
                exposure_name = None
        if "comparator" not in doc:
            cx.err(doc, "exposure", "exposure", "an exposure needs a comparator:",
                   "add comparator: {non_users: true} (or {active: ...}), or write index: for "
                   "one cohort")
    elif "index" in doc:
        index = _index(cx, doc["index"], "index", "index", names, doc, "index")
    else:
        cx.err(doc, None, "index", "a study needs exposure: or index:",
               "e.g. index: {date: 2010-01-01} or exposure: {first_event: {codelist: x}}")
    comparator = _comparator(cx, doc, names, index) if "comparator" in doc else None
    criteria = tuple(_criteria(cx, doc, names, index))
    covariates = tuple(_covariates(cx, doc, names))
    if exposure_name in {c.name for c in covariates}:
        cx.err(doc["exposure"], "name", "exposure.name", f"{exposure_name!r} is also a "
               "covariate's name", "give the exposure another name")
    _index_contact_needs_contacts(cx, doc, covariates, index, comparator)
    outcome = _outcome(cx, doc, names)
    max_days, start_day, end_date, as_treated = None, 0, None, None
    if "follow_up" in doc:
        fu = doc["follow_up"]
        if fu == "as_treated":    # the shorthand for {as_treated: true}
            fu = Node({"as_treated": True})
            fu.line = doc.line_of("follow_up")
        fu = cx.mapping(fu, "follow_up", "follow_up", doc, "follow_up",
                        "follow_up: {max_days: 3650}")
        if fu is not None:
            max_days = cx.integer(fu, "max_days", "follow_up.max_days", 1, DAYS, None)
            start_day, end_date = _follow_up_time(cx, fu, max_days, index, outcome)
            if "as_treated" in fu:
                from ..designs import language as design_language

                as_treated = design_language.as_treated(cx, fu, index, comparator, names)
    analyses = _analyses(cx, doc, {c.name: c for c in covariates}, comparator is not None)
    propensity = None
    if "propensity" in doc:
        from ..designs import language as design_language

        propensity = design_language.propensity(cx, doc, {c.name: c for c in covariates},
                                                "comparator" in doc, analyses.cox is not None)
    min_cell, round_to = 5, 0
    if "disclosure" in doc:
        disc = cx.mapping(doc["disclosure"], "disclosure", "disclosure", doc, "disclosure",
                          "disclosure: {min_cell: 5}")
        if disc is not None:
            min_cell = cx.integer(disc, "min_cell", "disclosure.min_cell", 1, 1000, 5)
            round_to = cx.integer(disc, "round_to", "disclosure.round_to", 0, 1000, 0)
    variants = variant_nodes(doc, cx)
    if cx.problems or index is None or outcome is None or name is None or \
            exposure_name is None:
        return None, cx.problems
    study = Study(name=name, index=index, outcome=outcome, description=description,
                  seed=seed, exposure_name=exposure_name, codelists=tuple(codelists),
                  population=population, comparator=comparator, criteria=criteria,
                  covariates=covariates, follow_up_days=max_days,
                  follow_up_start=start_day, follow_up_end=end_date, analyses=analyses,
                  min_cell=min_cell, round_to=round_to, propensity=propensity,
                  as_treated=as_treated,
                  variants=tuple(Variant(v["name"], tuple((k, _plain(x)) for k, x in
                                                          v["set"].items()))
                                 for _, v in variants),
                  source=file)
    used = _codelists_used(study)
    if check_variants:
        for i, v in variants:
            applied = _check_variant(cx, doc, i, v, study)
            used |= _codelists_used(applied) if applied is not None else set(names)
        if cx.problems:
            return None, cx.problems
        for c in codelists:
            if c.name not in used:
                cx.warn(doc["codelists"], c.name, f"codelists.{c.name}", "is never used",
                        "drop it, or use it")
    return replace(study, warnings=tuple(cx.warnings)), []


def _check_variant(cx: _Ctx, doc: Node, i: int, v: Node, base: Study) -> Study | None:
    """Apply variant ``v`` and check the result; its problems join the study's."""
    applied, problems = apply_variant(doc, v, cx.file)
    study, more = parse(applied, cx.file, cx.base_dir, check_variants=False,
                        keys_seen=cx.seen)
    for p in problems + more:
        cx.problems.append(Problem(p.where, f"variants[{i}] {v['name']}: {p.field}", p.message,
                                   p.fix))
    if study is not None and replace(study, name=base.name) == base:
        cx.warn(v, "set", f"variants[{i}].set", f"variant {v['name']!r} changes nothing",
                "set a value different from the study's")
    return study


def _codelists_used(s: Study) -> set[str]:
    rules = [s.index] + ([s.comparator.index] if s.comparator and s.comparator.index else [])
    events = [r.events for r in rules] + [c.events for c in s.criteria] + \
        [c.events for c in s.covariates] + [s.outcome.events]
    add_on = set(s.as_treated.add_on) if s.as_treated is not None else set()
    return {e.codelist for e in events if e is not None} | add_on
