"""Study → Plan: resolve codelists against the data's dictionaries, dates to days, and list
what will be read. Problems that need the data (a codelist that matches nothing, an index
window outside the data) are reported here, with the study's file and field."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..registers import codes as C
from ..registers.schema import day
from ..registers.sources import DIAGNOSIS_TYPES, SOURCES
from ..registers.store import Dataset
from ..study import charlson
from ..study.language import PATIENT_TYPES, Codelist, Events, IndexRule, Problem, Study, Window
from .nodes import (
    AgeColumn,
    AgeRange,
    AliveAtIndex,
    BothArms,
    CalendarYearColumn,
    CharlsonColumn,
    CodeSet,
    CountColumn,
    CriterionPlan,
    CurvesPlan,
    DataPeriod,
    DesignPlan,
    EventStream,
    FirstEventIndex,
    FixedDateIndex,
    FlagColumn,
    GroupPlan,
    HospitalsPlan,
    IndexContactColumn,
    IndexPlan,
    IndexWithinData,
    LexisPlan,
    MeasurePlan,
    ModelPlan,
    OutcomePlan,
    Plan,
    RandomDateIndex,
    RatesPlan,
    RegionColumn,
    RegionIn,
    ResidentAtIndex,
    ResidentFor,
    SexColumn,
    SexIs,
)

# Columns of the population registers read by every plan (event sources add theirs).
BASE_READS = {
    "bef": ("pnr", "koen", "foed_dag", "region"),
    "dod": ("pnr", "doddato"),
    "vnds": ("pnr", "indud_kode", "haend_dato"),
}
COLUMNS = {"age": AgeColumn, "sex": SexColumn, "region": RegionColumn,
           "calendar_year": CalendarYearColumn, "flag": FlagColumn, "count": CountColumn,
           "charlson": CharlsonColumn, "index_contact": IndexContactColumn}


class _Compiler:
    def __init__(self, study: Study, dictionaries: dict[str, list[str]], period: DataPeriod):
        self.study = study
        self.dicts = dictionaries
        self.period = period
        self.problems: list[Problem] = []
        self.reads: dict[str, set[str]] = {k: set(v) for k, v in BASE_READS.items()}

    def codeset(self, system: str, prefixes: tuple[str, ...]) -> CodeSet:
        d = self.dicts[system]
        ranges = tuple(C.prefix_range(d, p) for p in prefixes)
        return CodeSet(system, prefixes, ranges)

    def stream(self, ev: Events, where: str) -> EventStream:
        source = SOURCES[ev.register]
        by_type = tuple(ev.diagnosis_types) != DIAGNOSIS_TYPES
        for reg, cols in source.reads(by_type, bool(ev.patient_types)).items():
            self.reads.setdefault(reg, set()).update(cols)
        for col, _ in ev.filters:
            self.reads.setdefault(source.table, set()).add(col)
        codes = None
        if ev.codelist is not None:
            cl: Codelist = self.study.codelist(ev.codelist)
            codes = self.codeset(cl.system, cl.prefixes())
        return EventStream(ev.register, codes,
                           tuple({"A": 0, "B": 1}[t] for t in ev.diagnosis_types),
                           tuple(PATIENT_TYPES[p] for p in ev.patient_types), ev.filters)

    def index(self, rule: IndexRule, where: str) -> IndexPlan:
        if rule.kind == "date":
            d = day(rule.date)
            if d > self.period.end:
                self.problem(where, "date", f"{rule.date} is after the data end",
                             "choose a date within the data's period")
            return FixedDateIndex(None, d, d)
        s = self.stream(rule.events, where)
        start = day(rule.between[0]) if rule.between else None
        end = day(rule.between[1]) if rule.between else None
        if s.codes is not None and s.codes.empty:
            self.problem(where, "first_event.codelist",
                         f"codelist {rule.events.codelist!r} matches no code in the data, so "
                         "the index rule can never match",
                         "check the codes against the data's code dictionary")
        if start is not None and start > self.period.end:
            self.problem(where, "between", "the index window starts after the data end",
                         "move it into the data's period")
        return FirstEventIndex(s, start, end, rule.nth, rule.washout_days)

    def problem(self, where, fld, message, fix=""):
        self.problems.append(Problem(source_line(self.study.source, f"{where}.{fld}"),
                                     f"{where}.{fld}", message, fix))


def variant_line(source: str, name: str) -> str:
    """``file:line`` of the ``set:`` of the variant ``name`` (what a variant's problem found
    against the data comes from), else the file alone."""
    from ..study.yamlio import Node, load

    try:
        doc = load(Path(source))
    except (OSError, UserError, ValueError):
        return source
    for v in (doc.get("variants") if isinstance(doc, Node) else None) or []:
        if isinstance(v, Node) and v.get("name") == name:
            return f"{source}:{v.line_of('set')}"
    return source


def source_line(source: str, path: str) -> str:
    """``file:line`` of the deepest key along the dotted ``path`` that the study file writes
    (a problem found against the data is about what the file says there); the file alone
    where it cannot be read again, or for a study built in Python."""
    from ..study.yamlio import Node, Seq, load

    try:
        node = load(Path(source))
    except (OSError, UserError, ValueError):
        return source
    line = getattr(node, "line", 0)
    for part in path.split("."):
        key, _, index = part.partition("[")       # criteria[0]: a list's item
        if not isinstance(node, Node) or key not in node:
            break
        line, node = node.line_of(key), node[key]
        if index:
            i = int(index.rstrip("]"))
            if not isinstance(node, Seq) or i >= len(node):
                break
            line, node = (node.lines[i] if i < len(node.lines) else line), node[i]
    return f"{source}:{line}" if line else source


def data_period(manifest: dict) -> DataPeriod:
    """The data's period from its manifest (``period: {start, end}``, ISO dates)."""
    p = manifest["period"]
    return DataPeriod(day(p["start"]), day(p["end"]))


def compile_study(study: Study, data: Dataset | dict) -> tuple[Plan, list[Problem]]:
    """A Plan for ``study`` on the data (a Dataset, or its manifest as a dict): codelists
    resolved against its dictionaries, follow-up ended by its period; and the problems that
    need the data."""
    manifest = data.manifest if isinstance(data, Dataset) else data
    c = _Compiler(study, manifest["dictionaries"], data_period(manifest))
    exposed = c.index(study.index, "exposure" if study.comparator else "index")
    groups = [GroupPlan(1, study.exposure_name if study.comparator else "cohort", exposed)]
    comp = study.comparator
    if comp is not None:
        if comp.kind == "active":
            other = c.index(comp.index, "comparator.active")
            groups.append(GroupPlan(0, "comparator", other))
        else:
            window = RandomDateIndex(None, exposed.start, exposed.end)
            if exposed.start is None:
                c.problem("exposure", "between", "a non-user comparator needs the exposure's "
                          "between: window (its index dates are drawn from it)",
                          "add between: [first, last] to exposure:")
            groups.append(GroupPlan(0, "non_users", window, never_before=exposed.stream,
                                    censor_at=exposed.stream if comp.censor_on_exposure
                                    else None))
    if study.as_treated is not None:
        from ..designs import episodes

        groups = episodes.plan_groups(c, study, groups)
    criteria = tuple(CriterionPlan(cr.action, c.stream(cr.events, f"criteria[{i}]"), cr.window,
                                   cr.min_count, cr.label or _label(cr, i))
                     for i, cr in enumerate(study.criteria))
    cols = []
    for cov in study.covariates:
        if cov.kind == "index_contact":   # measures/contact.py matches the diagnosis types
            src = SOURCES["lpr"]
            c.reads.setdefault(src.code_table, set()).add(src.diagnosis_type)
        if cov.kind == "charlson":
            lpr = Events(None, "lpr")
            c.stream(lpr, "covariates")
            cats = tuple((name, w, EventStream("lpr", c.codeset("icd10", prefixes), (0, 1), ()))
                         for name, w, prefixes in charlson.CATEGORIES)
            cols.append(CharlsonColumn(cov.name, window=cov.window or Window(-3650, 0),
                                       charlson=cats))
        elif cov.kind in ("flag", "count"):
            cols.append(COLUMNS[cov.kind](cov.name, c.stream(cov.events, "covariates"),
                                          cov.window, time_varying=cov.time_varying))
        elif cov.kind == "index_contact" and cov.attribute == "diagnoses":   # a 0/1 flag
            cols.append(IndexContactColumn(cov.name, c.stream(cov.events, "covariates"),
                                           attribute=cov.attribute))
        elif cov.kind == "index_contact":   # read from the index rule's lpr contacts
            c.reads.setdefault(SOURCES["lpr"].table, set()).add(cov.attribute)
            cols.append(IndexContactColumn(cov.name, attribute=cov.attribute))
        else:
            cols.append(COLUMNS[cov.kind](cov.name))
    if study.propensity is not None:   # flags the design adds on request
        from ..designs import components

        cols, study = components.expand(c, study, cols)
    o = study.outcome
    stream = c.stream(o.events, "outcome") if o.events else None
    if stream is not None and stream.codes is not None and stream.codes.empty:
        c.problem("outcome", "codelist", f"codelist {o.events.codelist!r} matches no code in "
                  "the data: no outcome can ever occur", "check the codes")
    outcome = OutcomePlan(o.name, stream, o.death, o.window)
    reads = {k: tuple(sorted(v)) for k, v in sorted(c.reads.items())}
    both = BothArms(comp.both_arms) if comp is not None and comp.kind == "active" else None
    design = DesignPlan(study.propensity) if study.propensity is not None else None
    # without file:line: a path and a line number are free text the export gate cannot vouch for
    warnings = tuple(str(w).split(": ", 1)[1] for w in study.warnings)
    plan = Plan(study, study.name, study.description, study.source, study.seed,
                study.exposure_name, tuple(groups), _population(study, c.period), criteria,
                tuple(cols), outcome, study.follow_up_days, c.period, _analyses(study),
                study.min_cell, study.round_to, reads, study.follow_up_start,
                day(study.follow_up_end) if study.follow_up_end else None, both, design,
                warnings)
    return plan, c.problems


def _population(study: Study, period: DataPeriod) -> tuple:
    """The steps every person of every group passes after their index date, in order."""
    p = study.population
    steps = [IndexWithinData(period.end), AliveAtIndex(), ResidentAtIndex()]
    if p.age:
        steps.append(AgeRange(p.age[0], p.age[1]))
    if p.sex != "any":
        steps.append(SexIs(p.sex))
    if p.regions:
        steps.append(RegionIn(tuple(p.regions)))
    if p.residence_years:
        steps.append(ResidentFor(p.residence_years))
    return tuple(steps)


def _analyses(study: Study) -> tuple:
    """The analyses in the order their sections appear in the results."""
    a = study.analyses
    out: list = []
    if a.rates_by is not None:
        out.append(RatesPlan(tuple(a.rates_by)))
    for model in ("cox", "logistic", "poisson"):
        m = getattr(a, model)
        if m is not None:
            out.append(ModelPlan(model, tuple(m.adjust),
                                 tuple(m.strata) if model == "cox" else (),
                                 *(None if b is None else tuple(b) for b in
                                   (m.age_bands, m.time_bands))))
    if a.curves:
        out.append(CurvesPlan())
    if a.lexis is not None:
        out.append(LexisPlan(tuple(a.lexis.age_bands), tuple(a.lexis.periods)))
    out += [MeasurePlan(m) for m in a.measures]
    if a.hospitals is not None:
        out.append(HospitalsPlan(a.hospitals))
    return tuple(out)


def _label(cr, i) -> str:
    what = cr.events.codelist or cr.events.register
    lo = "start" if cr.window.lo is None else cr.window.lo
    hi = "end" if cr.window.hi is None else cr.window.hi
    n = f"≥{cr.min_count} " if cr.min_count > 1 else ""
    return f"{cr.action} {n}{what} in [{lo}, {hi}]"
