"""The study language: what a researcher writes, as frozen dataclasses.

A study is a YAML file (or the same objects built in Python). ``parse`` (in parse.py) turns
YAML into a :class:`Study` and collects *every* error, each with ``file:line``, the field and a
fix; ``Study.to_dict`` turns it back, losslessly: YAML → Study → YAML → Study is the identity.
keys.py lists every key allowed; docs/studies.md is the guide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..registers.sources import (  # noqa: F401 - DIAGNOSIS_TYPES, PATIENT_TYPES: public names
    DEFAULT_SOURCE,
    DIAGNOSIS_TYPES,
    PATIENT_TYPES,
    SOURCES,
)
from .keys import BUILTIN_COVARIATES  # noqa: F401 - part of this module's public names

# a chapter (C), a part of a block (C5), a category (C50) or a subcode (C509), Danish or WHO
ICD10 = re.compile(r"^D?[A-Z]([0-9]{1,2}[0-9A-Z]{0,4})?\*?$")
ATC = re.compile(r"^[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?\*?$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The event sources and their vocabularies live in registers/sources.py (one catalogue).
REGISTERS = {name: src.title for name, src in SOURCES.items()}
SYSTEM_REGISTER = DEFAULT_SOURCE
REGISTER_SYSTEM = {name: src.system for name, src in SOURCES.items()}
# Columns a study may filter events on, per register (codes and dates are handled otherwise).
FILTER_COLUMNS = {name: tuple(src.filters) for name, src in SOURCES.items()}
CHARLSON_WINDOW = (-3650, 0)


@dataclass(frozen=True)
class Codelist:
    name: str
    system: str                 # icd10 | atc
    codes: tuple[str, ...]      # as written (the file's first); "*" ends a prefix; WHO accepted
    file: str | None = None     # CSV the codes were read from, relative to the study

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

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"system": self.system, "codes": list(self.codes)}
        if self.file is not None:
            d["file"] = self.file
        return d


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
    diagnosis_types: tuple[str, ...] = DIAGNOSIS_TYPES
    patient_types: tuple[str, ...] = ()
    filters: tuple[tuple[str, tuple], ...] = ()

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"register": self.register}
        if self.codelist:
            d["codelist"] = self.codelist
        if self.register == "lpr" and tuple(self.diagnosis_types) != DIAGNOSIS_TYPES:
            d["diagnosis_type"] = list(self.diagnosis_types)
        d.update(self._extra())
        return d

    def _extra(self) -> dict:
        d: dict[str, Any] = {}
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
    kind: str                                # first_event | date
    events: Events | None = None
    between: tuple[str, str] | None = None   # calendar window for the index date
    nth: int = 1
    washout_days: int = 0
    date: str | None = None

    def to_dict(self) -> dict:
        if self.kind == "date":
            return {"date": self.date}
        d: dict[str, Any] = {"first_event": self.events.to_dict()}
        if self.between:
            d["between"] = list(self.between)
        if self.nth != 1:
            d["nth"] = self.nth
        if self.washout_days:
            d["washout_days"] = self.washout_days
        return d


@dataclass(frozen=True)
class Comparator:
    kind: str                                # non_users | active
    index: IndexRule | None = None           # for active comparators
    censor_on_exposure: bool = True          # non-users leave when they start the exposure
    both_arms: str = "remove"                # active: persons in both arms (remove|first|keep)


@dataclass(frozen=True)
class Criterion:
    action: str                              # include | exclude
    events: Events
    window: Window
    min_count: int = 1
    label: str = ""

    def to_dict(self) -> dict:
        d: dict[str, Any] = {self.action: {**self.events.to_dict(),
                                           "window": self.window.to_list()}}
        if self.min_count != 1:
            d[self.action]["min_count"] = self.min_count
        if self.label:
            d["label"] = self.label
        return d


@dataclass(frozen=True)
class Covariate:
    name: str
    kind: str            # age | sex | region | calendar_year | charlson | flag | count
    events: Events | None = None
    window: Window | None = None
    time_varying: bool = False   # a flag that switches on at its first event after index
    attribute: str | None = None   # kind index_contact: c_sgh, c_pattype or diagnoses (events:
                                   # the codelist among the contact's diagnoses, a 0/1 flag)

    def to_dict(self) -> str | dict:
        if self.kind in ("age", "sex", "region", "calendar_year"):
            return self.kind
        if self.kind == "index_contact" and self.attribute == "diagnoses":
            ev = self.events.to_dict()
            ev.pop("register")
            return {"name": self.name, "index_contact": "diagnoses", **ev}
        if self.kind == "index_contact":
            return {"name": self.name, "index_contact": self.attribute}
        if self.kind == "charlson":
            if self.name == "charlson" and self.window == Window(*CHARLSON_WINDOW):
                return "charlson"
            d: dict[str, Any] = {"name": self.name}
            if self.name != "charlson":
                d["kind"] = "charlson"
            return {**d, "window": self.window.to_list()}
        if self.kind == "count" and self.events.codelist is None:   # all hospital contacts
            return {"name": self.name, "count": "hospital_contacts", **self.events._extra(),
                    "window": self.window.to_list()}
        if self.kind == "count":
            ev = self.events.to_dict()
            return {"name": self.name, "count": ev.pop("codelist"), **ev,
                    "window": self.window.to_list()}
        return {"name": self.name, **self.events.to_dict(), "window": self.window.to_list(),
                **({"time_varying": True} if self.time_varying else {})}


@dataclass(frozen=True)
class Outcome:
    name: str
    events: Events | None = None             # None with death=True: all-cause death
    death: bool = False
    window: Window = Window(1, None)         # when, after index, the outcome counts

    def to_dict(self) -> dict:
        o: dict[str, Any] = {"name": self.name}
        if self.death:
            o["death"] = True
            if self.events:
                o["codelist"] = self.events.codelist
        else:
            o.update(self.events.to_dict())
        if self.window != Window(1, None):
            o["window"] = self.window.to_list()
        return o


@dataclass(frozen=True)
class ModelSpec:
    adjust: tuple[str, ...] = ()
    strata: tuple[str, ...] = ()
    age_bands: tuple[float, ...] | None = None   # the term age_band: attained-age limits
    time_bands: tuple[int, ...] | None = None    # the term time_band: days since index

    def to_dict(self) -> dict | bool:
        d: dict[str, Any] = {k: list(getattr(self, k)) for k in ("adjust", "strata")
                             if getattr(self, k)}
        for k in ("age_bands", "time_bands"):
            if getattr(self, k) is not None:
                d[k] = list(getattr(self, k))
        return d or True


@dataclass(frozen=True)
class Lexis:
    age_bands: tuple[float, ...]
    periods: tuple[int, ...]


@dataclass(frozen=True)
class Measure:
    """Events over person-time (or over persons, for a fixed-horizon outcome) by groups and
    calendar intervals, optionally age-standardised (docs/measures.md)."""

    name: str
    by: tuple[str, ...]
    interval: str | None = None              # month | quarter | year
    standardise: str | None = None           # esp2013 | danish_YYYY (direct)
    indirect: bool = False                   # SIR/SMR against the whole cohort's age rates
    age_bands: tuple[float, ...] | None = None   # band limits; default the ESP's 5-year bands
    time_bands: tuple[int, ...] | None = None    # days since index: limits of time_band
    where: str = field(default="", compare=False)  # file:line, for errors found on the data

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "by": list(self.by)}
        if self.interval:
            d["interval"] = self.interval
        if self.standardise:
            d["standardise"] = self.standardise
        if self.indirect:
            d["indirect"] = True
        if self.age_bands is not None:
            d["age_bands"] = list(self.age_bands)
        if self.time_bands is not None:
            d["time_bands"] = list(self.time_bands)
        return d

    @property
    def by_age(self) -> bool:
        """Whether follow-up is split by attained age (standardisation or an age_band key)."""
        return bool(self.standardise or self.indirect or "age_band" in self.by)


@dataclass(frozen=True)
class Hospitals:
    """Observed vs risk-adjusted expected outcomes per unit (docs/measures.md)."""

    by: str
    adjust: tuple[str, ...] = ()
    identify: str = "code"                   # code | rank | none

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"by": self.by, "adjust": list(self.adjust)}
        if self.identify != "code":
            d["identify"] = self.identify
        return d


@dataclass(frozen=True)
class Analyses:
    rates_by: tuple[str, ...] | None = ("group",)   # None or ("group",): the cohort table only
    curves: bool = False
    cox: ModelSpec | None = None
    logistic: ModelSpec | None = None
    poisson: ModelSpec | None = None
    lexis: Lexis | None = None
    measures: tuple[Measure, ...] = ()
    hospitals: Hospitals | None = None

    def to_dict(self) -> dict:
        a: dict[str, Any] = {}
        if self.rates_by is None:
            a["rates"] = False
        elif self.rates_by != ("group",):
            a["rates"] = {"by": list(self.rates_by)}
        if self.curves:
            a["curves"] = True
        for key in ("cox", "logistic", "poisson"):
            m = getattr(self, key)
            if m is not None:
                a[key] = m.to_dict()
        if self.lexis:
            a["lexis"] = {"age_bands": list(self.lexis.age_bands),
                          "periods": list(self.lexis.periods)}
        if self.measures:
            a["measures"] = [m.to_dict() for m in self.measures]
        if self.hospitals:
            a["hospitals"] = self.hospitals.to_dict()
        return a


@dataclass(frozen=True)
class Variant:
    """A sensitivity analysis: fields to set, by dotted path (``exposure.washout_days``), on
    the study. ``settings`` holds the values as plain data (None removes a field)."""

    name: str
    settings: tuple[tuple[str, Any], ...]

    def __hash__(self) -> int:   # values may be lists; equal variants have equal names
        return hash(self.name)

    def to_dict(self) -> dict:
        return {"name": self.name, "set": dict(self.settings)}


@dataclass
class Problem:
    """One error or warning: where (file:line), which field, what, how to fix."""

    where: str
    field: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        s = f"{self.where}: {self.field}: {self.message}"
        return f"{s} — {self.fix}" if self.fix else s


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
    follow_up_start: int = 0                 # lag: days after index before follow-up starts
    follow_up_end: str | None = None         # calendar end of follow-up (YYYY-MM-DD)
    analyses: Analyses = Analyses()
    min_cell: int = 5
    round_to: int = 0                        # round shown counts to this multiple (0: off)
    variants: tuple[Variant, ...] = ()       # sensitivity analyses (see parse.apply_variant)
    propensity: Any = None                   # hpcstudy.designs.spec.Propensity, or None
    as_treated: Any = None                   # hpcstudy.designs.spec.AsTreated; None: ITT
    # where it was read from, and what `check` warned about: not part of what the study is
    source: str = field(default="<python>", compare=False)
    warnings: tuple[Problem, ...] = field(default=(), compare=False, repr=False)

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    def codelist(self, name: str) -> Codelist:
        for c in self.codelists:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        """The study as plain data, in the YAML layout ``parse`` reads; reading it back gives
        an equal Study."""
        d: dict[str, Any] = {"name": self.name}
        if self.description:
            d["description"] = self.description
        d["seed"] = self.seed
        if self.codelists:
            d["codelists"] = {c.name: c.to_dict() for c in self.codelists}
        p = self.population
        pop: dict[str, Any] = {}
        if p.age:
            pop["age"] = list(p.age)
        if p.sex != "any":
            pop["sex"] = p.sex
        if p.regions:
            pop["regions"] = list(p.regions)
        if p.residence_years:
            pop["residence_years"] = p.residence_years
        if pop:
            d["population"] = pop
        if self.comparator is not None:
            d["exposure"] = {"name": self.exposure_name, **self.index.to_dict()}
            c: dict[str, Any] = {}
            if self.comparator.kind == "active":
                c["active"] = self.comparator.index.to_dict()
                if self.comparator.both_arms != "remove":
                    c["both_arms"] = self.comparator.both_arms
            else:
                c["non_users"] = True
                if not self.comparator.censor_on_exposure:
                    c["censor_on_exposure"] = False
            d["comparator"] = c
        else:
            d["index"] = self.index.to_dict()
        if self.criteria:
            d["criteria"] = [c.to_dict() for c in self.criteria]
        if self.covariates:
            d["covariates"] = [c.to_dict() for c in self.covariates]
        d["outcome"] = self.outcome.to_dict()
        fu = {**({"max_days": self.follow_up_days} if self.follow_up_days else {}),
              **({"start_day": self.follow_up_start} if self.follow_up_start else {}),
              **({"end_date": self.follow_up_end} if self.follow_up_end else {})}
        if self.as_treated is not None:
            fu["as_treated"] = self.as_treated.to_dict(
                self.comparator is not None and self.comparator.kind == "active")
        if fu:
            d["follow_up"] = fu
        a = self.analyses.to_dict()
        if a:
            d["analyses"] = a
        if self.propensity is not None:
            d["propensity"] = self.propensity.to_dict()
        disclosure = {**({"min_cell": self.min_cell} if self.min_cell != 5 else {}),
                      **({"round_to": self.round_to} if self.round_to else {})}
        if disclosure:
            d["disclosure"] = disclosure
        if self.variants:
            d["variants"] = [v.to_dict() for v in self.variants]
        return d
