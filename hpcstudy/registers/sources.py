"""The event sources a study may name (``register: lpr | lmdb | death``): which registers and
columns each one means. The one place this is written: the study language (what may be named
and filtered), the compiler (what is read), approvals (which registers a study touches) and
both engines (how a source's events are found) all read it from here.

    lpr     one event per hospital contact (lpr_adm), its codes in lpr_diag linked by recnum
    lmdb    one event per dispensing (lmdb), its ATC code on the same row
    death   one event per death with its underlying cause (dodsaarsag)

A new source is one more :class:`EventSource` in ``SOURCES`` (and its register in
registers/schema.py); nothing else lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FilterColumn:
    """A column of a source's event table that a study may filter on (``filter: {col: …}``)."""

    values: str                  # what its values are, for people
    meaning: str
    bounds: tuple[int, int]      # the whole numbers it may hold, both included


@dataclass(frozen=True)
class EventSource:
    """Dated events of persons in one register (and, for a linked code table, a second)."""

    name: str                    # what a study writes: register: <name>
    title: str
    system: str                  # the code system of its codes (icd10 | atc)
    table: str                   # register with one row per event: pnr and date
    pnr: str
    date: str
    code_table: str              # register holding the code column (== table unless linked)
    code: str
    link: str | None = None      # column joining code_table to table (lpr: recnum)
    tie: str | None = None       # orders a person's events of one day (None: row order)
    diagnosis_type: str | None = None   # code_table's column of diagnosis types (lpr)
    patient_type: str | None = None     # table's column of patient types (lpr)
    filters: dict[str, FilterColumn] = field(default_factory=dict)

    @property
    def tables(self) -> tuple[str, ...]:
        """The registers this source reads."""
        return (self.table,) if self.code_table == self.table else (self.table, self.code_table)

    @property
    def linked(self) -> bool:
        return self.code_table != self.table

    def reads(self, diagnosis_types: bool = False, patient_types: bool = False
              ) -> dict[str, set[str]]:
        """Columns read whenever the source is used (filters add theirs), with the diagnosis
        or patient type column where a stream selects on it (``diagnosis_types``,
        ``patient_types``): a stream of every type needs neither."""
        out = {self.table: {self.pnr, self.date}}
        out.setdefault(self.code_table, set()).add(self.code)
        for col, where, needed in ((self.link, self.table, True),
                                   (self.link, self.code_table, True),
                                   (self.tie, self.table, True),
                                   (self.diagnosis_type, self.code_table, diagnosis_types),
                                   (self.patient_type, self.table, patient_types)):
            if col is not None and needed:
                out[where].add(col)
        return out

    def __hash__(self) -> int:   # filters is a dict; the name identifies a source
        return hash(self.name)


# Values of lpr's c_diagtype and c_pattype, by the names a study uses.
DIAGNOSIS_TYPES = ("A", "B")                 # action, secondary: codes 0, 1 in the plan
PATIENT_TYPES = {"inpatient": 0, "part-day": 1, "outpatient": 2, "emergency": 3}

SOURCES: dict[str, EventSource] = {s.name: s for s in (
    EventSource("lpr", "hospital diagnoses (lpr_adm + lpr_diag)", "icd10",
                table="lpr_adm", pnr="pnr", date="d_inddto",
                code_table="lpr_diag", code="c_diag", link="recnum", tie="recnum",
                diagnosis_type="c_diagtype", patient_type="c_pattype",
                filters={"c_pattype": FilterColumn("0–3", "patient type code", (0, 3)),
                         "c_sgh": FilterColumn("hospital code", "the hospital",
                                               (0, 2**31 - 1))}),
    EventSource("lmdb", "prescriptions", "atc", table="lmdb", pnr="pnr", date="eksd",
                code_table="lmdb", code="atc",
                filters={"apk": FilterColumn("number of packs", "packs dispensed", (0, 32_767)),
                         "packsize": FilterColumn("units per pack", "pack size",
                                                  (0, 2**31 - 1))}),
    EventSource("death", "causes of death (dodsaarsag)", "icd10", table="dodsaarsag",
                pnr="pnr", date="doddato", code_table="dodsaarsag", code="c_dodtilgrundl"),
)}

# The source a codelist's events come from when a study names no register.
DEFAULT_SOURCE = {"icd10": "lpr", "atc": "lmdb"}
HOSPITAL = "c_sgh"   # the lpr contact's column that names its hospital (see filters above)


def event_registers() -> set[str]:
    """Every register some event source reads."""
    return {t for s in SOURCES.values() for t in s.tables}
