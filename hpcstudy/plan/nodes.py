"""The plan: a checked study compiled into typed, frozen nodes, independent of any engine.

The plan is the engines' only input: everything they need (the groups and their index rules,
eligibility, covariates, outcome, follow-up, analyses, seed and the data's period, read from
the data manifest) is a node here. ``Plan.study`` is kept for provenance (what the writers
record, what approvals name); no engine reads it.

An engine turns each node into arrays with one function per node type, found in a registry
keyed by the type (:class:`hpcstudy.plan.dispatch.Registry`); a node type an engine has no
function for is "not supported by this engine". Adding a feature is adding a node type here,
building it in compile.py and registering one function per engine (docs/architecture.md, "How a
feature becomes a plan node").

Every node says its dimension: ``events`` (many rows per person) or ``person`` (one value per
person). Codes are resolved against the data's dictionaries into half-open ranges of int32
indices (the kernels' view) and kept as text prefixes (the reference engine's view).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..study.language import Hospitals, Measure, Study, Window


@dataclass(frozen=True)
class CodeSet:
    """Codes of one system: text prefixes and the matching index ranges in the dictionary."""

    system: str
    prefixes: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]

    @property
    def empty(self) -> bool:
        return all(lo >= hi for lo, hi in self.ranges)


@dataclass(frozen=True)
class EventStream:
    """Dated events of persons from one event source (registers/sources.py; dimension: events)."""

    register: str                        # a name in registers.sources.SOURCES
    codes: CodeSet | None                # None: every row of the register
    diagnosis_types: tuple[int, ...]     # lpr: 0 = A, 1 = B
    patient_types: tuple[int, ...]       # lpr: c_pattype values; empty = all
    filters: tuple[tuple[str, tuple], ...] = ()
    dimension = "events"


@dataclass(frozen=True)
class DataPeriod:
    """The first and last day the data covers (days since 1970, both included), from the data
    manifest's ``period``: the end of the data ends every follow-up."""

    start: int
    end: int


# -- index rules (dimension: person): how a group's index date is found ---------------------
@dataclass(frozen=True)
class IndexPlan:
    """Base of the index rules; ``kind`` names the rule for people and render()."""

    kind: ClassVar[str] = ""
    stream: EventStream | None
    start: int | None                    # days since 1970, inclusive
    end: int | None
    nth: int = 1
    washout_days: int = 0
    dimension = "person"


@dataclass(frozen=True)
class FirstEventIndex(IndexPlan):
    """The nth event of a stream in [start, end], with no event in the washout days before."""

    kind: ClassVar[str] = "first_event"


@dataclass(frozen=True)
class FixedDateIndex(IndexPlan):
    """One calendar day for everyone (start == end)."""

    kind: ClassVar[str] = "date"


@dataclass(frozen=True)
class RandomDateIndex(IndexPlan):
    """A uniform day in [start, end] per person, from the plan's seed and the pnr."""

    kind: ClassVar[str] = "random_date"


@dataclass(frozen=True)
class GroupPlan:
    code: int                            # value of the `group` column
    label: str
    index: IndexPlan
    never_before: EventStream | None = None  # non-users: no such event on or before index
    censor_at: EventStream | None = None     # follow-up ends at the first such event
    episodes: Any = None     # as-treated follow-up: hpcstudy.designs.spec.EpisodePlan


# -- eligibility at index (dimension: person): each keeps some persons, one attrition step --
@dataclass(frozen=True)
class Eligibility:
    """Base of the eligibility steps; ``label`` is the attrition step's name."""

    dimension = "person"


@dataclass(frozen=True)
class IndexWithinData(Eligibility):
    """The index day is no later than the data's last day."""

    end: int

    @property
    def label(self) -> str:
        return "index within the data"


@dataclass(frozen=True)
class AliveAtIndex(Eligibility):
    """Born on or before and not dead before the index day."""

    @property
    def label(self) -> str:
        return "alive on the index day"


@dataclass(frozen=True)
class ResidentAtIndex(Eligibility):
    """Living in Denmark on the index day (from the migrations register)."""

    @property
    def label(self) -> str:
        return "resident in Denmark at index"


@dataclass(frozen=True)
class AgeRange(Eligibility):
    """Age at index in [lo, hi) years."""

    lo: float
    hi: float

    @property
    def label(self) -> str:
        return f"age in [{self.lo}, {self.hi})"


@dataclass(frozen=True)
class SexIs(Eligibility):
    """Men only or women only."""

    sex: str                             # male | female

    @property
    def label(self) -> str:
        return f"sex {self.sex}"


@dataclass(frozen=True)
class RegionIn(Eligibility):
    """Living in one of the regions (bef's region code)."""

    regions: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"region in {list(self.regions)}"


@dataclass(frozen=True)
class ResidentFor(Eligibility):
    """Resident in Denmark without a break for at least ``years`` before index."""

    years: float

    @property
    def label(self) -> str:
        return f"resident ≥ {self.years:g} years"


@dataclass(frozen=True)
class CriterionPlan(Eligibility):
    """Include (or exclude) persons with at least ``min_count`` events in the window."""

    action: str
    stream: EventStream
    window: Window
    min_count: int
    label: str


# -- covariates (dimension: person): one column of the per-person table each -----------------
@dataclass(frozen=True)
class ColumnPlan:
    """Base of the covariate columns; ``kind`` names the column's kind for the analyses."""

    kind: ClassVar[str] = ""
    name: str
    stream: EventStream | None = None
    window: Window | None = None
    charlson: tuple[tuple[str, int, EventStream], ...] = ()
    time_varying: bool = False   # a flag: also the day it switches on (column NAME@from)
    attribute: str | None = None  # index_contact: the lpr_adm column read from the contact
    dimension = "person"


@dataclass(frozen=True)
class AgeColumn(ColumnPlan):
    """Age at index in years (float)."""

    kind: ClassVar[str] = "age"


@dataclass(frozen=True)
class SexColumn(ColumnPlan):
    """1 for a woman, 0 for a man."""

    kind: ClassVar[str] = "sex"


@dataclass(frozen=True)
class RegionColumn(ColumnPlan):
    """The region code (bef's region)."""

    kind: ClassVar[str] = "region"


@dataclass(frozen=True)
class CalendarYearColumn(ColumnPlan):
    """The calendar year of the index day."""

    kind: ClassVar[str] = "calendar_year"


@dataclass(frozen=True)
class FlagColumn(ColumnPlan):
    """1 if the person has an event of the stream in the window, else 0."""

    kind: ClassVar[str] = "flag"


@dataclass(frozen=True)
class CountColumn(ColumnPlan):
    """The number of events of the stream in the window."""

    kind: ClassVar[str] = "count"


@dataclass(frozen=True)
class CharlsonColumn(ColumnPlan):
    """The Charlson index of the categories with an lpr event in the window."""

    kind: ClassVar[str] = "charlson"


@dataclass(frozen=True)
class IndexContactColumn(ColumnPlan):
    """An attribute (``attribute``: a column of lpr_adm) of the contact that gave the index."""

    kind: ClassVar[str] = "index_contact"


@dataclass(frozen=True)
class OutcomePlan:
    name: str
    stream: EventStream | None
    death: bool
    window: Window


# -- steps over a whole table of every group (dimension: person) ------------------------------
@dataclass(frozen=True)
class TableStep:
    """Base of the steps over the whole table of every group."""


@dataclass(frozen=True)
class BothArms(TableStep):
    """Persons indexed in both arms of an active comparison: ``rule`` is remove, first or
    keep."""

    rule: str


@dataclass(frozen=True)
class DesignPlan(TableStep):
    """The comparative design: a propensity score and its use (matching, weighting,
    stratification); ``propensity`` is hpcstudy.designs.spec.Propensity."""

    propensity: Any


# -- analyses of the per-person table (results.json sections) ---------------------------------
@dataclass(frozen=True)
class Analysis:
    """Base of the analyses; each fills its sections of the results."""


@dataclass(frozen=True)
class RatesPlan(Analysis):
    """Rates per 1000 person-years by the key columns ``by`` (by group alone: the cohort
    table's)."""

    by: tuple[str, ...]


@dataclass(frozen=True)
class ModelPlan(Analysis):
    """A regression of the outcome on the group and ``adjust``: cox, logistic or poisson."""

    model: str
    adjust: tuple[str, ...] = ()
    strata: tuple[str, ...] = ()
    age_bands: tuple[float, ...] | None = None   # limits of the term age_band (split rows)
    time_bands: tuple[int, ...] | None = None    # limits of the term time_band (days)


@dataclass(frozen=True)
class CurvesPlan(Analysis):
    """Kaplan–Meier and cumulative incidence (death competing) by group."""


@dataclass(frozen=True)
class LexisPlan(Analysis):
    """Rates by group, age band and calendar period, and a Poisson model of them."""

    age_bands: tuple[float, ...]
    periods: tuple[int, ...]


@dataclass(frozen=True)
class MeasurePlan(Analysis):
    """A measure of occurrence (proportion or rate, standardised or not) by ``spec.by``."""

    spec: Measure

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def by(self) -> tuple[str, ...]:
        return self.spec.by


@dataclass(frozen=True)
class HospitalsPlan(Analysis):
    """Observed against expected outcomes per hospital, from a risk model (``spec``)."""

    spec: Hospitals


@dataclass(frozen=True)
class Plan:
    study: Study = field(repr=False, compare=False)   # provenance only; engines never read it
    name: str
    description: str
    source: str = field(repr=False)      # the study's file (where errors point)
    seed: int
    exposure_name: str                   # the group's term in the models
    groups: tuple[GroupPlan, ...]
    population: tuple[Eligibility, ...]  # every person's steps, in order
    criteria: tuple[CriterionPlan, ...]  # the study's criteria, after the population
    columns: tuple[ColumnPlan, ...]
    outcome: OutcomePlan
    follow_up_days: int | None
    period: DataPeriod
    analyses: tuple[Analysis, ...]
    min_cell: int
    round_to: int
    reads: dict                          # register -> sorted columns read
    follow_up_start: int = 0             # lag: follow-up starts on index + this many days
    follow_up_end: int | None = None     # calendar end of follow-up (day, inclusive)
    both_arms: BothArms | None = None    # an active comparison: persons in both arms
    design: DesignPlan | None = None     # a comparative design on the person table
    warnings: tuple[str, ...] = ()       # the study's warnings, without file:line

    @property
    def data_end(self) -> int:
        return self.period.end

    @property
    def has_comparator(self) -> bool:
        return len(self.groups) > 1

    @property
    def eligibility(self) -> tuple[Eligibility, ...]:
        """Every step after the index date, in order: the population's, then the criteria."""
        return (*self.population, *self.criteria)

    def analysis(self, kind: type, **match):
        """The first analysis node of type ``kind`` (with the given fields), or None."""
        return next((a for a in self.analyses if isinstance(a, kind) and
                     all(getattr(a, k) == v for k, v in match.items())), None)

    @property
    def lexis(self) -> LexisPlan | None:
        return self.analysis(LexisPlan)

    @property
    def measures(self) -> tuple[Measure, ...]:
        return tuple(a.spec for a in self.analyses if isinstance(a, MeasurePlan))

    @property
    def hospitals(self) -> Hospitals | None:
        h = self.analysis(HospitalsPlan)
        return None if h is None else h.spec

    @property
    def propensity(self):
        """The design's propensity spec (hpcstudy.designs.spec.Propensity), or None."""
        return None if self.design is None else self.design.propensity

    @property
    def rates_by(self) -> tuple[str, ...] | None:
        r = self.analysis(RatesPlan)
        return None if r is None else r.by
