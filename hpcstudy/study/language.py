"""The study language: what a researcher writes, as frozen dataclasses.

A study is a YAML file (or the same objects built in Python). ``parse`` turns YAML into a
:class:`Study` and collects *every* error, each with ``file:line``, the field and a fix;
``Study.to_dict`` turns it back (YAML ↔ model round-trips). docs/studies.md is the guide.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .yamlio import Node, Seq  # noqa: F401 - Seq used in isinstance checks

# a chapter (C), a part of a block (C5), a category (C50) or a subcode (C509), Danish or WHO
ICD10 = re.compile(r"^D?[A-Z]([0-9]{1,2}[0-9A-Z]{0,4})?\*?$")
ATC = re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?\*?$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
REGISTERS = {"lpr": "hospital diagnoses (lpr_adm + lpr_diag)", "lmdb": "prescriptions",
             "death": "causes of death (dodsaarsag)"}
SYSTEM_REGISTER = {"icd10": "lpr", "atc": "lmdb"}
PATIENT_TYPES = {"inpatient": 0, "part-day": 1, "outpatient": 2, "emergency": 3}
BUILTIN_COVARIATES = ("age", "sex", "region", "calendar_year", "charlson")
# Columns a study may filter events on, per register (codes and dates are handled otherwise).
FILTER_COLUMNS = {"lpr": ("c_pattype", "c_sgh"), "lmdb": ("apk", "packsize"), "death": ()}


@dataclass(frozen=True)
class Codelist:
    name: str
    system: str                 # icd10 | atc
    codes: tuple[str, ...]      # as written; "*" ends a prefix; WHO ICD-10 is accepted
    file: str | None = None

    def prefixes(self) -> tuple[str, ...]:
        """Codes in the data's form (Danish ``D`` prefix for ICD-10), without the ``*``.
        Every code matches its subcodes too: ``I21`` matches ``DI219``, as registers hold
        codes at four or more characters."""
        out = []
        for c in self.codes:
            c = c.rstrip("*").replace(".", "").upper()
            if self.system == "icd10" and not (c.startswith("D") and c[1:2].isalpha()):
                c = "D" + c
            out.append(c)
        return tuple(out)


@dataclass(frozen=True)
class Window:
    """Days relative to the index date, both ends included; None leaves an end open."""

    lo: int | None
    hi: int | None

    def to_list(self):
        return [self.lo, self.hi]


@dataclass(frozen=True)
class Events:
    """Register events matching a codelist (the engine links lpr_diag through recnum)."""

    codelist: str | None        # None: every event of the register (e.g. all contacts)
    register: str               # lpr | lmdb | death
    diagnosis_types: tuple[str, ...] = ("A", "B")
    patient_types: tuple[str, ...] = ()
    filters: tuple[tuple[str, tuple], ...] = ()

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"register": self.register}
        if self.codelist:
            d["codelist"] = self.codelist
        if self.register == "lpr" and tuple(self.diagnosis_types) != ("A", "B"):
            d["diagnosis_type"] = list(self.diagnosis_types)
        if self.patient_types:
            d["patient_type"] = list(self.patient_types)
        if self.filters:
            d["filter"] = {k: list(v) for k, v in self.filters}
        return d


@dataclass(frozen=True)
class Population:
    age: tuple[float, float] | None = None   # [lower, upper) in years at index
    sex: str = "any"                         # any | male | female
    regions: tuple[int, ...] = ()
    residence_years: float = 0.0             # continuous residence before index


@dataclass(frozen=True)
class IndexRule:
    kind: str                                # first_event | date | random_date
    events: Events | None = None
    between: tuple[str, str] | None = None   # calendar window for the index date
    nth: int = 1
    washout_days: int = 0
    date: str | None = None


@dataclass(frozen=True)
class Comparator:
    kind: str                                # non_users | active
    index: IndexRule | None = None           # for active comparators
    censor_on_exposure: bool = True          # non-users leave when they start the exposure


@dataclass(frozen=True)
class Criterion:
    action: str                              # include | exclude
    events: Events
    window: Window
    min_count: int = 1
    label: str = ""


@dataclass(frozen=True)
class Covariate:
    name: str
    kind: str            # age | sex | region | calendar_year | charlson | flag | count
    events: Events | None = None
    window: Window | None = None


@dataclass(frozen=True)
class Outcome:
    name: str
    events: Events | None = None             # None with death=True: all-cause death
    death: bool = False
    window: Window = Window(1, None)         # when, after index, the outcome counts


@dataclass(frozen=True)
class ModelSpec:
    adjust: tuple[str, ...] = ()
    strata: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lexis:
    age_bands: tuple[float, ...]
    periods: tuple[int, ...]


@dataclass(frozen=True)
class Measure:
    name: str
    by: tuple[str, ...]


@dataclass(frozen=True)
class Analyses:
    rates_by: tuple[str, ...] | None = ("group",)
    curves: bool = False
    cox: ModelSpec | None = None
    logistic: ModelSpec | None = None
    poisson: ModelSpec | None = None
    lexis: Lexis | None = None
    measures: tuple[Measure, ...] = ()


@dataclass(frozen=True)
class Study:
    name: str
    index: IndexRule
    outcome: Outcome
    description: str = ""
    seed: int = 1
    exposure_name: str = "exposed"
    codelists: tuple[Codelist, ...] = ()
    population: Population = Population()
    comparator: Comparator | None = None
    criteria: tuple[Criterion, ...] = ()
    covariates: tuple[Covariate, ...] = ()
    follow_up_days: int | None = None
    analyses: Analyses = Analyses()
    min_cell: int = 5
    round_to: int = 0                        # round shown counts to this multiple (0: off)
    variants: tuple[str, ...] = ()           # names of the study's variants (see apply_variant)
    source: str = "<python>"

    def codelist(self, name: str) -> Codelist:
        for c in self.codelists:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        """The study as plain data, in the YAML layout ``parse`` reads."""
        return _study_to_dict(self)


# -- parsing ---------------------------------------------------------------------------------
@dataclass
class Problem:
    where: str
    field: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        s = f"{self.where}: {self.field}: {self.message}"
        return f"{s} — {self.fix}" if self.fix else s


@dataclass
class _Ctx:
    file: str
    problems: list[Problem] = field(default_factory=list)
    base_dir: Path = Path(".")

    def err(self, node, key, path: str, message: str, fix: str = "") -> None:
        line = node.line_of(key) if isinstance(node, Node) else getattr(node, "line", 0)
        self.problems.append(Problem(f"{self.file}:{line}", path, message, fix))


TOP_KEYS = {"name", "description", "seed", "codelists", "population", "exposure", "index",
            "comparator", "criteria", "covariates", "outcome", "follow_up", "analyses",
            "disclosure", "variants"}


def variant_names(doc: Node, file: str) -> tuple[list[str], list[Problem]]:
    """Names of a study's variants, and problems with their shape."""
    problems: list[Problem] = []
    vs = doc.get("variants")
    if vs is None:
        return [], problems
    names: list[str] = []
    if not isinstance(vs, list):
        return [], [Problem(f"{file}:{doc.line_of('variants')}", "variants",
                            "must be a list of {name, set}",
                            "e.g. - {name: washout_2y, set: {exposure.washout_days: 730}}")]
    for i, v in enumerate(vs):
        line = vs.lines[i] if isinstance(vs, Seq) else doc.line_of("variants")
        ok = isinstance(v, Node) and isinstance(v.get("name"), str) and \
            re.fullmatch(r"[A-Za-z0-9_-]+", v["name"]) and isinstance(v.get("set"), Node)
        if not ok:
            problems.append(Problem(f"{file}:{line}", f"variants[{i}]",
                                    "needs name: (letters, digits, _ -) and set: {field: value}",
                                    "e.g. {name: washout_2y, set: {exposure.washout_days: 730}}"))
            continue
        if v["name"] in names:
            problems.append(Problem(f"{file}:{line}", f"variants[{i}]",
                                    f"variant {v['name']!r} named twice"))
        names.append(v["name"])
    return names, problems


def apply_variant(doc: Node, name: str, file: str) -> Node:
    """The study document with one variant's ``set`` applied (dotted paths into the study)."""
    from ..errors import UserError

    names, problems = variant_names(doc, file)
    if name not in names:
        raise UserError(f"study has no variant {name!r}", where=file,
                        fix=f"variants: {', '.join(names) or 'none'}")
    v = next(x for x in doc["variants"] if isinstance(x, Node) and x.get("name") == name)
    for path, value in v["set"].items():
        keys = str(path).split(".")
        node = doc
        for k in keys[:-1]:
            if not isinstance(node.get(k), Node):
                child = Node()
                child.line = v["set"].line_of(path)
                node[k] = child
            node = node[k]
        node[keys[-1]] = value
        node.lines[keys[-1]] = v["set"].line_of(path)
    doc["name"] = f"{doc.get('name')}.{name}"
    return doc


def parse(doc: Node, file: str = "<study>", base_dir: str | Path = ".") -> tuple[Study | None,
                                                                               list[Problem]]:
    """A Study from YAML data, or None and the list of every problem found."""
    cx = _Ctx(file, base_dir=Path(base_dir))
    _unknown(cx, doc, TOP_KEYS, "")
    variants, vproblems = variant_names(doc, file)
    cx.problems += vproblems
    name = doc.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        cx.err(doc, "name", "name", "missing or not a plain name",
               "give name: letters, digits, _ . - (it names the output files)")
    seed = doc.get("seed", 1)
    if not isinstance(seed, int) or seed < 0:
        cx.err(doc, "seed", "seed", f"must be a non-negative integer, not {seed!r}")
    codelists = _codelists(cx, doc.get("codelists", Node()), doc)
    names = {c.name: c for c in codelists}
    population = _population(cx, doc.get("population", Node()))
    exposure_name = "exposed"
    if "exposure" in doc and "index" in doc:
        cx.err(doc, "index", "index", "give either exposure: or index:, not both",
               "exposure: compares exposed with a comparator; index: is one cohort")
    if "exposure" in doc:
        ex = doc["exposure"]
        if isinstance(ex, Node) and "name" in ex:
            exposure_name = str(ex["name"])
        index = _index(cx, ex, "exposure", names, allow_name=True)
    elif "index" in doc:
        index = _index(cx, doc["index"], "index", names)
    else:
        cx.err(doc, None, "index", "a study needs exposure: or index:",
               "e.g. index: {date: 2010-01-01} or exposure: {first_event: {codelist: x}}")
        index = None
    comparator = None
    if "comparator" in doc:
        if "exposure" not in doc:
            cx.err(doc, "comparator", "comparator", "a comparator needs an exposure:",
                   "rename index: to exposure:")
        comparator = _comparator(cx, doc["comparator"], names)
    criteria = tuple(_criteria(cx, doc.get("criteria", Seq()), names))
    covariates = tuple(_covariates(cx, doc.get("covariates", Seq()), names))
    outcome = _outcome(cx, doc.get("outcome"), doc, names)
    fu = doc.get("follow_up", Node())
    max_days = None
    if isinstance(fu, Node):
        _unknown(cx, fu, {"max_days"}, "follow_up")
        max_days = fu.get("max_days")
        if max_days is not None and (not isinstance(max_days, int) or max_days <= 0):
            cx.err(fu, "max_days", "follow_up.max_days", f"must be a positive number of days, "
                   f"not {max_days!r}")
            max_days = None
    else:
        cx.err(doc, "follow_up", "follow_up", "must be a mapping",
               "e.g. follow_up: {max_days: 3650}")
    defined = {"group"} | {c.name for c in covariates}
    analyses = _analyses(cx, doc.get("analyses", Node()), defined, comparator is not None)
    min_cell, round_to = 5, 0
    disc = doc.get("disclosure", Node())
    if isinstance(disc, Node):
        _unknown(cx, disc, {"min_cell", "round_to"}, "disclosure")
        min_cell = disc.get("min_cell", 5)
        if not isinstance(min_cell, int) or min_cell < 1:
            cx.err(disc, "min_cell", "disclosure.min_cell", f"must be a positive integer, not "
                   f"{min_cell!r}")
            min_cell = 5
        round_to = disc.get("round_to", 0)
        if not isinstance(round_to, int) or round_to < 0:
            cx.err(disc, "round_to", "disclosure.round_to", "must be 0 (off) or a positive "
                   "integer", "e.g. round_to: 5")
            round_to = 0
    if cx.problems or index is None or outcome is None:
        return None, cx.problems
    study = Study(name=name, index=index, outcome=outcome,
                  description=str(doc.get("description", "")), seed=seed,
                  exposure_name=exposure_name, codelists=tuple(codelists),
                  population=population, comparator=comparator, criteria=criteria,
                  covariates=covariates, follow_up_days=max_days, analyses=analyses,
                  min_cell=min_cell, round_to=round_to, variants=tuple(variants),
                  source=file)
    return study, []


def _unknown(cx: _Ctx, node, allowed: set[str], path: str) -> None:
    if not isinstance(node, Node):
        return
    for k in node:
        if k not in allowed:
            near = _closest(str(k), allowed)
            cx.err(node, k, f"{path}.{k}" if path else str(k), "unknown field",
                   f"did you mean {near!r}?" if near else f"allowed: {', '.join(sorted(allowed))}")


def _closest(word: str, options) -> str | None:
    import difflib

    m = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return m[0] if m else None


def _codelists(cx: _Ctx, node, doc) -> list[Codelist]:
    out = []
    if not isinstance(node, Node):
        cx.err(doc, "codelists", "codelists", "must be a mapping of name: {system, codes}")
        return out
    for name, spec in node.items():
        path = f"codelists.{name}"
        if not isinstance(spec, Node):
            cx.err(node, name, path, "must be a mapping", "e.g. {system: icd10, codes: [I21*]}")
            continue
        _unknown(cx, spec, {"system", "codes", "file"}, path)
        system = spec.get("system")
        if system not in ("icd10", "atc"):
            cx.err(spec, "system", f"{path}.system", f"unknown code system {system!r}",
                   "use icd10 or atc")
            continue
        codes: list[str] = []
        if "file" in spec:
            codes = _codes_from_csv(cx, spec, path)
        if "codes" in spec:
            if not isinstance(spec["codes"], list):
                cx.err(spec, "codes", f"{path}.codes", "must be a list of codes")
            else:
                codes += [str(c) for c in spec["codes"]]
        if not codes:
            cx.err(spec, None, path, "has no codes", "give codes: [...] or file: codes.csv")
        pattern = ICD10 if system == "icd10" else ATC
        for i, c in enumerate(codes):
            norm = c.replace(".", "").upper().strip()
            if not pattern.match(norm):
                line_node = spec["codes"] if isinstance(spec.get("codes"), Seq) else spec
                line = line_node.lines[i] if isinstance(line_node, Seq) and \
                    i < len(line_node.lines) else spec.line_of("codes")
                cx.problems.append(Problem(
                    f"{cx.file}:{line}", f"{path}.codes", f"malformed {system} code {c!r}",
                    "ICD-10 like I21, I21.9, DI219 or I21*; ATC like C10AA or C10AA01"))
        out.append(Codelist(str(name), system, tuple(c.strip() for c in codes),
                            spec.get("file")))
    return out


def _codes_from_csv(cx: _Ctx, spec: Node, path: str) -> list[str]:
    f = cx.base_dir / str(spec["file"])
    if not f.is_file():
        cx.err(spec, "file", f"{path}.file", f"{f} does not exist",
               "give a CSV path relative to the study file")
        return []
    with open(f, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "code" not in rows[0]:
        cx.err(spec, "file", f"{path}.file", f"{f} has no 'code' column",
               "the CSV needs a header row with a column named code")
        return []
    return [r["code"].strip() for r in rows if r["code"].strip()]


def _window(cx: _Ctx, node, key, path, default: Window | None = None) -> Window | None:
    value = node.get(key) if isinstance(node, Node) else None
    if value is None:
        return default
    if not (isinstance(value, list) and len(value) == 2 and
            all(v is None or isinstance(v, int) for v in value)):
        cx.err(node, key, path, f"must be [from, to] in days relative to index, not {value!r}",
               "e.g. [-365, -1] for the year before; null leaves an end open")
        return default
    lo, hi = value
    if lo is not None and hi is not None and lo > hi:
        cx.err(node, key, path, f"reversed window [{lo}, {hi}]", f"write [{hi}, {lo}]")
        return default
    return Window(lo, hi)


def _events(cx: _Ctx, node, path, names: dict[str, Codelist], allow_all=False) -> Events | None:
    if not isinstance(node, Node):
        cx.err(node, None, path, "must be a mapping with codelist: (and register:)")
        return None
    cl = node.get("codelist")
    register = node.get("register")
    if cl is None and not allow_all:
        cx.err(node, None, f"{path}.codelist", "missing", "name one of the codelists:")
        return None
    if cl is not None and cl not in names:
        near = _closest(str(cl), names)
        cx.err(node, "codelist", f"{path}.codelist", f"codelist {cl!r} is not defined",
               f"did you mean {near!r}?" if near else "define it under codelists:")
        return None
    if register is None:
        if cl is None:
            cx.err(node, None, f"{path}.register", "missing", "lpr, lmdb or death")
            return None
        register = SYSTEM_REGISTER[names[cl].system]
    if register not in REGISTERS:
        cx.err(node, "register", f"{path}.register", f"unknown register {register!r}",
               f"use one of {', '.join(REGISTERS)}")
        return None
    if cl is not None:
        want = "atc" if register == "lmdb" else "icd10"
        if names[cl].system != want:
            cx.err(node, "codelist", f"{path}.codelist", f"{cl} holds {names[cl].system} codes "
                   f"but register {register} records {want}", "use a codelist of that system")
    dtypes = node.get("diagnosis_type", ["A", "B"])
    if isinstance(dtypes, str):
        dtypes = [dtypes]
    if not isinstance(dtypes, list) or not set(dtypes) <= {"A", "B"} or not dtypes:
        cx.err(node, "diagnosis_type", f"{path}.diagnosis_type", f"{dtypes!r} is not A and/or B")
        dtypes = ["A", "B"]
    ptypes = node.get("patient_type", [])
    if isinstance(ptypes, str):
        ptypes = [ptypes]
    bad = [p for p in ptypes if p not in PATIENT_TYPES]
    if bad:
        cx.err(node, "patient_type", f"{path}.patient_type", f"unknown patient type(s) {bad}",
               f"use {', '.join(PATIENT_TYPES)}")
        ptypes = []
    if register != "lpr" and ("diagnosis_type" in node or "patient_type" in node):
        cx.err(node, "diagnosis_type" if "diagnosis_type" in node else "patient_type", path,
               f"diagnosis and patient types exist only in lpr, not {register}")
    filters = []
    fl = node.get("filter", Node())
    if isinstance(fl, Node):
        for col, vals in fl.items():
            if col not in FILTER_COLUMNS[register]:
                cx.err(fl, col, f"{path}.filter.{col}", f"unknown column {col!r} of {register}",
                       f"filterable columns: {', '.join(FILTER_COLUMNS[register]) or 'none'}")
                continue
            vals = vals if isinstance(vals, list) else [vals]
            filters.append((str(col), tuple(int(v) for v in vals)))
    _unknown(cx, node, {"codelist", "register", "diagnosis_type", "patient_type", "filter",
                        "window", "min_count", "between", "nth", "washout_days", "name", "count",
                        "death", "first_event"}, path)
    return Events(cl, register, tuple(dtypes), tuple(ptypes), tuple(filters))


def _date(cx, node, key, path, value) -> str | None:
    if not isinstance(value, str) or not DATE.match(value):
        cx.err(node, key, path, f"{value!r} is not a date", "write YYYY-MM-DD")
        return None
    import datetime

    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        cx.err(node, key, path, f"{value} is not a calendar date")
        return None
    return value


def _between(cx, node, path) -> tuple[str, str] | None:
    b = node.get("between")
    if b is None:
        return None
    if not (isinstance(b, list) and len(b) == 2):
        cx.err(node, "between", f"{path}.between", "must be [first date, last date]")
        return None
    lo = _date(cx, node, "between", f"{path}.between", b[0])
    hi = _date(cx, node, "between", f"{path}.between", b[1])
    if lo and hi and lo > hi:
        cx.err(node, "between", f"{path}.between", f"reversed: {lo} is after {hi}",
               f"write [{hi}, {lo}]")
        return None
    return (lo, hi) if lo and hi else None


def _index(cx: _Ctx, node, path, names, allow_name=False) -> IndexRule | None:
    if not isinstance(node, Node):
        cx.err(node, None, path, "must be a mapping")
        return None
    allowed = {"first_event", "date", "between", "nth", "washout_days"} | (
        {"name"} if allow_name else set())
    _unknown(cx, node, allowed, path)
    washout = node.get("washout_days", 0)
    if not isinstance(washout, int) or washout < 0:
        cx.err(node, "washout_days", f"{path}.washout_days", "must be a whole number of days ≥ 0")
        washout = 0
    nth = node.get("nth", 1)
    if not isinstance(nth, int) or nth < 1:
        cx.err(node, "nth", f"{path}.nth", "must be 1 (first), 2, …")
        nth = 1
    if "date" in node:
        d = _date(cx, node, "date", f"{path}.date", node["date"])
        return IndexRule("date", date=d) if d else None
    if "first_event" in node:
        ev = _events(cx, node["first_event"], f"{path}.first_event", names)
        between = _between(cx, node, path)
        if ev is None:
            return None
        return IndexRule("first_event", events=ev, between=between, nth=nth,
                         washout_days=washout)
    cx.err(node, None, path, "needs first_event: or date:",
           "e.g. first_event: {codelist: statins} with between: [2010-01-01, 2020-12-31]")
    return None


def _comparator(cx: _Ctx, node, names) -> Comparator | None:
    if node == "non_users":
        return Comparator("non_users")
    if not isinstance(node, Node):
        cx.err(node, None, "comparator", "must be non_users or {active: {...}}")
        return None
    _unknown(cx, node, {"non_users", "active", "censor_on_exposure"}, "comparator")
    censor = node.get("censor_on_exposure", True)
    if "active" in node:
        idx = _index(cx, node["active"], "comparator.active", names)
        return Comparator("active", idx, censor) if idx else None
    if "non_users" in node:
        return Comparator("non_users", None, censor)
    cx.err(node, None, "comparator", "needs non_users or active:")
    return None


def _criteria(cx: _Ctx, node, names) -> list[Criterion]:
    out = []
    if not isinstance(node, list):
        cx.err(node, None, "criteria", "must be a list of include:/exclude: entries")
        return out
    for i, item in enumerate(node):
        path = f"criteria[{i}]"
        if not isinstance(item, Node) or len(set(item) & {"include", "exclude"}) != 1:
            cx.problems.append(Problem(f"{cx.file}:{node.lines[i]}", path,
                                       "must have exactly one of include: or exclude:",
                                       "e.g. - exclude: {codelist: mi, window: [null, 0]}"))
            continue
        action = "include" if "include" in item else "exclude"
        spec = item[action]
        ev = _events(cx, spec, f"{path}.{action}", names)
        win = _window(cx, spec, "window", f"{path}.{action}.window", Window(None, 0))
        k = spec.get("min_count", 1) if isinstance(spec, Node) else 1
        if not isinstance(k, int) or k < 1:
            cx.err(spec, "min_count", f"{path}.{action}.min_count", "must be an integer ≥ 1")
            k = 1
        if ev and win:
            out.append(Criterion(action, ev, win, k, str(item.get("label", ""))))
    return out


def _covariates(cx: _Ctx, node, names) -> list[Covariate]:
    out: list[Covariate] = []
    if not isinstance(node, list):
        cx.err(node, None, "covariates", "must be a list")
        return out
    seen = set()
    for i, item in enumerate(node):
        path = f"covariates[{i}]"
        line = node.lines[i] if isinstance(node, Seq) else 0
        if isinstance(item, str):
            if item not in BUILTIN_COVARIATES:
                near = _closest(item, BUILTIN_COVARIATES)
                cx.problems.append(Problem(f"{cx.file}:{line}", path,
                                           f"unknown built-in covariate {item!r}",
                                           f"did you mean {near!r}?" if near else
                                           f"built-ins: {', '.join(BUILTIN_COVARIATES)}"))
                continue
            win = Window(-3650, 0) if item == "charlson" else None
            cov = Covariate(item, item, window=win)
        elif isinstance(item, Node):
            name = item.get("name")
            if not isinstance(name, str):
                cx.err(item, None, f"{path}.name", "missing", "give each covariate a name")
                continue
            if "count" in item:
                target = item["count"]
                if target == "hospital_contacts":
                    ev = Events(None, "lpr", ("A",))
                elif target in names:
                    ev = _events(cx, Node({"codelist": target}), f"{path}.count", names)
                else:
                    cx.err(item, "count", f"{path}.count", f"{target!r} is not a codelist",
                           "count a codelist, or hospital_contacts")
                    continue
                kind = "count"
            elif item.get("kind") == "charlson" or name == "charlson":
                ev, kind = None, "charlson"
            else:
                ev = _events(cx, item, path, names)
                kind = "flag"
            win = _window(cx, item, "window", f"{path}.window", Window(None, 0))
            if ev is None and kind != "charlson":
                continue
            cov = Covariate(name, kind, ev, win)
        else:
            cx.problems.append(Problem(f"{cx.file}:{line}", path, "must be a name or mapping"))
            continue
        if cov.name in seen:
            cx.problems.append(Problem(f"{cx.file}:{line}", path,
                                       f"covariate {cov.name!r} defined twice"))
        seen.add(cov.name)
        out.append(cov)
    return out


def _outcome(cx: _Ctx, node, doc, names) -> Outcome | None:
    if not isinstance(node, Node):
        cx.err(doc, "outcome" if "outcome" in doc else None, "outcome",
               "missing or not a mapping", "e.g. outcome: {name: mi, codelist: mi}")
        return None
    name = node.get("name", "outcome")
    win = _window(cx, node, "window", "outcome.window", Window(1, None))
    if node.get("death") is True:
        _unknown(cx, node, {"name", "death", "window", "codelist", "register"}, "outcome")
        ev = None
        if "codelist" in node:
            ev = _events(cx, Node({**node, "register": "death"}), "outcome", names)
        return Outcome(str(name), ev, True, win or Window(1, None))
    ev = _events(cx, node, "outcome", names)
    _unknown(cx, node, {"name", "codelist", "register", "diagnosis_type", "patient_type",
                        "filter", "window", "death"}, "outcome")
    return Outcome(str(name), ev, False, win or Window(1, None)) if ev else None


def _model(cx: _Ctx, node, key, defined: set[str]) -> ModelSpec | None:
    spec = node.get(key)
    if spec is None:
        return None
    if spec is True:
        return ModelSpec()
    if not isinstance(spec, Node):
        cx.err(node, key, f"analyses.{key}", "must be true or {adjust: [...]}")
        return None
    _unknown(cx, spec, {"adjust", "strata"}, f"analyses.{key}")
    out = {}
    for part in ("adjust", "strata"):
        vals = spec.get(part, [])
        if not isinstance(vals, list):
            cx.err(spec, part, f"analyses.{key}.{part}", "must be a list of covariate names")
            vals = []
        for v in vals:
            if v not in defined:
                near = _closest(str(v), defined)
                cx.err(spec, part, f"analyses.{key}.{part}",
                       f"covariate {v!r} is used but not defined",
                       f"did you mean {near!r}?" if near else "add it under covariates:")
        out[part] = tuple(str(v) for v in vals if v in defined)
    return ModelSpec(**out)


def _analyses(cx: _Ctx, node, defined: set[str], has_comparator: bool) -> Analyses:
    if not isinstance(node, Node):
        cx.err(node, None, "analyses", "must be a mapping")
        return Analyses()
    _unknown(cx, node, {"rates", "curves", "cox", "logistic", "poisson", "lexis", "measures"},
             "analyses")
    rates_by: tuple[str, ...] | None = ("group",)
    if "rates" in node:
        r = node["rates"]
        if r is False:
            rates_by = None
        elif isinstance(r, Node):
            by = r.get("by", ["group"])
            for v in by:
                if v not in defined:
                    cx.err(r, "by", "analyses.rates.by", f"{v!r} is not a covariate or group")
            rates_by = tuple(v for v in by if v in defined)
    lexis = None
    if "lexis" in node:
        lx = node["lexis"]
        ages, periods = (lx.get("age_bands"), lx.get("periods")) if isinstance(lx, Node) else \
            (None, None)
        if not (isinstance(ages, list) and len(ages) >= 2 and ages == sorted(ages)):
            cx.err(node, "lexis", "analyses.lexis.age_bands",
                   "must be increasing band limits in years", "e.g. [0, 40, 60, 80, 110]")
        elif not (isinstance(periods, list) and len(periods) >= 2 and periods == sorted(periods)):
            cx.err(node, "lexis", "analyses.lexis.periods",
                   "must be increasing calendar years", "e.g. [2000, 2005, 2010, 2015, 2020]")
        else:
            lexis = Lexis(tuple(float(a) for a in ages), tuple(int(p) for p in periods))
    measures = []
    for i, m in enumerate(node.get("measures", []) or []):
        if not isinstance(m, Node) or "name" not in m:
            cx.err(node, "measures", f"analyses.measures[{i}]", "needs name: and by: [...]")
            continue
        by = m.get("by", [])
        extra = {"index_year"}
        for v in by:
            if v not in defined | extra:
                cx.err(m, "by", f"analyses.measures[{i}].by",
                       f"{v!r} is not a covariate, group or index_year")
        measures.append(Measure(str(m["name"]), tuple(v for v in by if v in defined | extra)))
    curves = node.get("curves", False)
    return Analyses(rates_by=rates_by, curves=bool(curves),
                    cox=_model(cx, node, "cox", defined),
                    logistic=_model(cx, node, "logistic", defined),
                    poisson=_model(cx, node, "poisson", defined), lexis=lexis,
                    measures=tuple(measures))


def _population(cx: _Ctx, node) -> Population:
    if not isinstance(node, Node):
        cx.err(node, None, "population", "must be a mapping")
        return Population()
    _unknown(cx, node, {"age", "sex", "regions", "residence_years"}, "population")
    age = node.get("age")
    if age is not None:
        if not (isinstance(age, list) and len(age) == 2 and
                all(isinstance(a, int | float) for a in age)):
            cx.err(node, "age", "population.age", f"must be [lowest, highest) in years, "
                   f"not {age!r}")
            age = None
        elif age[0] >= age[1] or age[0] < 0:
            cx.err(node, "age", "population.age", f"impossible age range {age}",
                   "the lower limit must be ≥ 0 and below the upper")
            age = None
    sex = node.get("sex", "any")
    if sex not in ("any", "male", "female"):
        cx.err(node, "sex", "population.sex", f"{sex!r} is not any, male or female")
        sex = "any"
    regions = node.get("regions", [])
    from ..registers.schema import REGIONS

    bad = [r for r in regions if r not in REGIONS]
    if bad:
        cx.err(node, "regions", "population.regions", f"unknown region code(s) {bad}",
               f"regions are {', '.join(map(str, REGIONS))}")
    years = node.get("residence_years", 0)
    if not isinstance(years, int | float) or years < 0:
        cx.err(node, "residence_years", "population.residence_years", "must be ≥ 0")
        years = 0
    return Population(tuple(age) if age else None, sex, tuple(r for r in regions
                                                              if r in REGIONS), float(years))


# -- back to data ----------------------------------------------------------------------------
def _index_to_dict(rule: IndexRule) -> dict:
    if rule.kind == "date":
        return {"date": rule.date}
    d: dict[str, Any] = {"first_event": rule.events.to_dict()}
    if rule.between:
        d["between"] = list(rule.between)
    if rule.nth != 1:
        d["nth"] = rule.nth
    if rule.washout_days:
        d["washout_days"] = rule.washout_days
    return d


def _study_to_dict(s: Study) -> dict:
    d: dict[str, Any] = {"name": s.name}
    if s.description:
        d["description"] = s.description
    d["seed"] = s.seed
    if s.codelists:
        d["codelists"] = {c.name: {"system": c.system, "codes": list(c.codes)}
                          for c in s.codelists}
    pop = {}
    if s.population.age:
        pop["age"] = list(s.population.age)
    if s.population.sex != "any":
        pop["sex"] = s.population.sex
    if s.population.regions:
        pop["regions"] = list(s.population.regions)
    if s.population.residence_years:
        pop["residence_years"] = s.population.residence_years
    if pop:
        d["population"] = pop
    if s.comparator is not None:
        d["exposure"] = {"name": s.exposure_name, **_index_to_dict(s.index)}
        c: dict[str, Any] = {}
        if s.comparator.kind == "active":
            c["active"] = _index_to_dict(s.comparator.index)
        else:
            c["non_users"] = True
        if not s.comparator.censor_on_exposure:
            c["censor_on_exposure"] = False
        d["comparator"] = c
    else:
        d["index"] = _index_to_dict(s.index)
    if s.criteria:
        d["criteria"] = [{c.action: {**c.events.to_dict(), "window": c.window.to_list(),
                                     **({"min_count": c.min_count} if c.min_count != 1 else {})}}
                         for c in s.criteria]
    if s.covariates:
        covs = []
        for c in s.covariates:
            if c.kind in BUILTIN_COVARIATES and c.name == c.kind:
                covs.append(c.name)
            elif c.kind == "count":
                target = c.events.codelist or "hospital_contacts"
                covs.append({"name": c.name, "count": target, "window": c.window.to_list()})
            else:
                covs.append({"name": c.name, **c.events.to_dict(), "window": c.window.to_list()})
        d["covariates"] = covs
    o: dict[str, Any] = {"name": s.outcome.name}
    if s.outcome.death:
        o["death"] = True
        if s.outcome.events:
            o["codelist"] = s.outcome.events.codelist
    else:
        o.update(s.outcome.events.to_dict())
    if s.outcome.window != Window(1, None):
        o["window"] = s.outcome.window.to_list()
    d["outcome"] = o
    if s.follow_up_days:
        d["follow_up"] = {"max_days": s.follow_up_days}
    a: dict[str, Any] = {}
    an = s.analyses
    if an.rates_by is None:
        a["rates"] = False
    elif an.rates_by != ("group",):
        a["rates"] = {"by": list(an.rates_by)}
    if an.curves:
        a["curves"] = True
    for key in ("cox", "logistic", "poisson"):
        m = getattr(an, key)
        if m is not None:
            a[key] = {k: list(getattr(m, k)) for k in ("adjust", "strata") if getattr(m, k)} \
                or True
    if an.lexis:
        a["lexis"] = {"age_bands": list(an.lexis.age_bands), "periods": list(an.lexis.periods)}
    if an.measures:
        a["measures"] = [{"name": m.name, "by": list(m.by)} for m in an.measures]
    if a:
        d["analyses"] = a
    disclosure = {**({"min_cell": s.min_cell} if s.min_cell != 5 else {}),
                  **({"round_to": s.round_to} if s.round_to else {})}
    if disclosure:
        d["disclosure"] = disclosure
    return d

