"""The register schemas: column names as the Danish registers spell them, lower case.

Codes (ICD-10, ATC, single-letter kinds) are stored as int32 indices into dictionaries held in
the dataset's manifest, so that array kernels (and GPUs) only ever see integers. Each code
dictionary is sorted, which makes a prefix such as ``DI21*`` one contiguous range of indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

# Calendar facts of the Danish registers, as days since 1970-01-01.
def day(iso: str) -> int:
    """Days since 1970-01-01 of an ISO date: ``day("1995-01-01") == 9131``."""
    return int(np.datetime64(iso, "D").astype(np.int64))


CPR_START = day("1968-04-02")      # the civil registration system opens
LPR_START = day("1977-01-01")      # National Patient Register: inpatients
LPR_OUTPATIENT = day("1995-01-01")  # outpatient and emergency contacts are recorded from here
LMDB_START = day("1995-01-01")     # Prescription Register
DATA_END = day("2023-12-31")       # last day of the synthetic extract (inclusive)

# c_pattype, as in LPR2: 0 inpatient, 1 part-day, 2 outpatient, 3 emergency room.
PATTYPE = {0: "inpatient", 1: "part-day", 2: "outpatient", 3: "emergency"}
# region, the five Danish regions' codes.
REGIONS = {1081: "Nordjylland", 1082: "Midtjylland", 1083: "Syddanmark", 1084: "Hovedstaden",
           1085: "Sjælland"}
SEX = {1: "male", 2: "female"}


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    code_system: str | None = None  # int32 index into manifest["dictionaries"][code_system]
    doc: str = ""


@dataclass(frozen=True)
class Register:
    name: str
    title: str
    columns: tuple[Column, ...]
    sort_by: tuple[str, ...]  # order inside a partition (after routing by pnr)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=False) for c in self.columns])


i32, i64, date = pa.int32(), pa.int64(), pa.date32()

REGISTERS: dict[str, Register] = {r.name: r for r in (
    Register("bef", "population (one row per ever-resident person)", (
        Column("pnr", i64, doc="person pseudonym (int64), never a CPR number"),
        Column("koen", pa.int8(), doc="sex: 1 male, 2 female"),
        Column("foed_dag", date, doc="date of birth"),
        Column("region", pa.int16(), doc="region of residence: 1081-1085"),
    ), ("pnr",)),
    Register("dod", "deaths", (
        Column("pnr", i64), Column("doddato", date, doc="date of death"),
    ), ("pnr", "doddato")),
    Register("dodsaarsag", "causes of death", (
        Column("pnr", i64), Column("doddato", date),
        Column("c_dodtilgrundl", i32, "icd10", "underlying cause of death (ICD-10, Danish form)"),
    ), ("pnr", "doddato")),
    Register("vnds", "migrations", (
        Column("pnr", i64),
        Column("indud_kode", i32, "indud", "I: immigration, U: emigration"),
        Column("haend_dato", date, doc="date of the move"),
    ), ("pnr", "haend_dato")),
    Register("lpr_adm", "hospital contacts (LPR2 shape)", (
        Column("pnr", i64),
        Column("recnum", i64, doc="contact id; links to lpr_diag"),
        Column("d_inddto", date, doc="admission / contact date"),
        Column("d_uddto", date, doc="discharge date"),
        Column("c_pattype", pa.int8(), doc="0 inpatient, 1 part-day, 2 outpatient, 3 emergency"),
        Column("c_adiag", i32, "icd10", "action diagnosis of the contact"),
        Column("c_sgh", i32, doc="hospital code"),
    ), ("pnr", "d_inddto", "recnum")),
    Register("lpr_diag", "diagnoses per contact", (
        Column("recnum", i64, doc="contact id in lpr_adm"),
        Column("c_diag", i32, "icd10", "diagnosis (ICD-10, Danish form)"),
        Column("c_diagtype", i32, "diagtype", "A: action diagnosis, B: secondary"),
    ), ("_pnr", "_d_inddto", "recnum", "c_diagtype")),
    Register("lmdb", "prescription dispensings", (
        Column("pnr", i64),
        Column("eksd", date, doc="dispensing date (not proof of use)"),
        Column("atc", i32, "atc", "ATC code, 7 characters"),
        Column("apk", pa.int16(), doc="number of packs"),
        Column("packsize", pa.int32(), doc="units per pack"),
        Column("volume", pa.float64(), doc="defined daily doses (DDD) per pack"),
    ), ("pnr", "eksd")),
)}

# Columns used only to order rows inside a partition; never written.
HIDDEN_SORT_COLUMNS = {"_pnr", "_d_inddto"}


def column_problem(register: str, table: pa.Table) -> str | None:
    """Why a partition's columns (those read) are not its register's: a column of another type
    or with empty values (every register column is required). None when they are. A file
    written by another tool can pass the manifest's sizes and still hold these, and the
    engines would read a timestamp as days or a string pnr as a crash."""
    reg = REGISTERS.get(register)
    if reg is None:
        return None
    types = {c.name: c.type for c in reg.columns}
    for name, col in zip(table.column_names, table.columns, strict=True):
        want = types.get(name)
        if want is not None and col.type != want:
            return f"column {name!r} is {col.type}, not {want}"
        if col.null_count:
            return f"column {name!r} has {col.null_count} empty value(s)"
    return None


def is_iso_date(value) -> bool:
    """A real calendar day written YYYY-MM-DD (a manifest's period: 2023-02-30 is not one)."""
    import datetime

    try:
        return isinstance(value, str) and len(value) == 10 and \
            datetime.date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False
