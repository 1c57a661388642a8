"""The plan: a checked study compiled into typed, frozen nodes, independent of any engine.

Every node says its dimension: ``events`` (many rows per person) or ``person`` (one value per
person). Codes are resolved against the data's dictionaries into half-open ranges of int32
indices (the kernels' view) and kept as text prefixes (the reference engine's view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..study.language import Study, Window


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
    """Dated events of persons from one register (dimension: events)."""

    register: str                        # lpr | lmdb | death
    codes: CodeSet | None                # None: every row of the register
    diagnosis_types: tuple[int, ...]     # lpr: 0 = A, 1 = B
    patient_types: tuple[int, ...]       # lpr: c_pattype values; empty = all
    filters: tuple[tuple[str, tuple], ...] = ()
    dimension = "events"


@dataclass(frozen=True)
class IndexPlan:
    """How a group's index date is found (dimension: person)."""

    kind: str                            # first_event | date | random_date
    stream: EventStream | None
    start: int | None                    # days since 1970, inclusive
    end: int | None
    nth: int = 1
    washout_days: int = 0
    dimension = "person"


@dataclass(frozen=True)
class GroupPlan:
    code: int                            # value of the `group` column
    label: str
    index: IndexPlan
    never_before: EventStream | None = None  # non-users: no such event on or before index
    censor_at: EventStream | None = None     # follow-up ends at the first such event
    episodes: Any = None     # as-treated follow-up: hpcstudy.designs.spec.EpisodePlan


@dataclass(frozen=True)
class CriterionPlan:
    action: str
    stream: EventStream
    window: Window
    min_count: int
    label: str
    dimension = "person"


@dataclass(frozen=True)
class ColumnPlan:
    """One covariate column of the per-person table (dimension: person)."""

    name: str
    kind: str  # age | sex | region | calendar_year | flag | count | charlson
    stream: EventStream | None = None
    window: Window | None = None
    charlson: tuple[tuple[str, int, EventStream], ...] = ()
    time_varying: bool = False   # a flag: also the day it switches on (column NAME@from)
    attribute: str | None = None  # index_contact: the lpr_adm column read from the contact
    dimension = "person"


@dataclass(frozen=True)
class OutcomePlan:
    name: str
    stream: EventStream | None
    death: bool
    window: Window


@dataclass(frozen=True)
class Plan:
    study: Study
    groups: tuple[GroupPlan, ...]
    criteria: tuple[CriterionPlan, ...]
    columns: tuple[ColumnPlan, ...]
    outcome: OutcomePlan
    follow_up_days: int | None
    data_end: int
    reads: dict                          # register -> sorted columns read
    follow_up_start: int = 0             # lag: follow-up starts on index + this many days
    follow_up_end: int | None = None     # calendar end of follow-up (day, inclusive)

    @property
    def has_comparator(self) -> bool:
        return len(self.groups) > 1
