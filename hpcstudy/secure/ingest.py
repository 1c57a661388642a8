"""``hpcstudy ingest``: add a raw, CPR-keyed register extract to a partitioned dataset.

Steps, in this order (nothing is written before the columns and the quarantine path are known
to be right):

1. open the extract (CSV, Parquet, SAS7BDAT or SAS XPORT), check its columns against the
   register's raw schema (the register's columns with ``cpr`` in place of ``pnr``) and check
   that the quarantine file can be written;
2. skip it if a file with the same SHA-256 was already ingested into this register;
3. read it in batches (memory does not grow with the extract): check every row (control
   characters, CPR number with the century rules, dates inside the data period, codes, value
   ranges, cross-field rules such as CPR birth date = ``foed_dag`` and discharge ≥ admission),
   pseudonymise CPR → pnr with the project's key (HMAC-SHA256), hash the normalised row, and
   spill the good rows by partition to a scratch folder; failing rows go to the quarantine CSV
   with their line and reason;
4. per partition: drop rows already in the dataset (the same content, however the file was
   written) and quarantine a second row for one person (``bef``, ``dod``, ``dodsaarsag``) or
   one contact (``lpr_adm``'s ``recnum``);
5. close and sync the quarantine file, then, only if rows remain, in a hard-linked staging copy
   of the dataset: grow the code dictionaries (kept sorted, so existing files are re-encoded
   when a new code arrives), add the rows to their partitions, update the manifest, and commit.
"""

from __future__ import annotations

import csv
import ctypes
import functools
import glob
import hashlib
import os
import re
import secrets
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..errors import UserError
from ..outputs import targets
from ..registers import store
from ..registers.schema import (
    CPR_START,
    DATA_END,
    LMDB_START,
    LPR_OUTPATIENT,
    LPR_START,
    REGIONS,
    REGISTERS,
    day,
)
from . import cpr as C

DATE_COLUMNS = {"foed_dag", "doddato", "haend_dato", "d_inddto", "d_uddto", "eksd"}
CODE_PATTERNS = {"icd10": r"^D[A-Z][0-9]{2}[0-9A-Z]{0,4}$",
                 "atc": r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$",
                 "indud": r"^[IU]$", "diagtype": r"^[AB]$"}
ALLOWED = {"koen": {1, 2}, "region": set(REGIONS), "c_pattype": {0, 1, 2, 3}}
# Smallest sensible value of a count or an id (a pack count of 0 is no dispensing).
MINIMUM = {"recnum": 0, "c_sgh": 0, "apk": 1, "packsize": 1, "volume": 0}
FIXED_DICTIONARIES = {"indud": ("I", "U"), "diagtype": ("A", "B")}
EARLIEST = day("1850-01-01")
# Where a register's dates begin: LPR from 1977, LMDB from 1995, the rest with the data period.
REGISTER_START = {"d_inddto": LPR_START, "eksd": LMDB_START}
# One row per person in these registers; lpr_adm has one row per contact (recnum).
ONE_PER_PERSON = {"bef", "dod", "dodsaarsag"}
MAX_PARTITIONS = 4096
# C0, DEL, C1 and the invisible format characters (zero-width, bidi overrides, BOM).
CONTROL = r"[\x00-\x1f\x7f-\x9f\x{200b}-\x{200f}\x{202a}-\x{202e}\x{2060}-\x{2064}\x{feff}\x{fffe}]"
CSV_BLOCK_BYTES = 1 << 20   # pyarrow reads a few blocks ahead: 4 MB blocks held ~150 MB
BATCH_ROWS = 131_072
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim     # glibc only; elsewhere a no-op
    except (OSError, AttributeError):
        return None


def give_back_memory() -> None:
    """Return freed memory to the system between batches and partitions: Arrow's allocator
    and glibc's heap otherwise keep it, and the peak would grow with the extract."""
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def raw_columns(register: str) -> list[str]:
    return ["cpr" if c == "pnr" else c for c in REGISTERS[register].column_names]


def today() -> int:
    return int(np.datetime64("today", "D").astype(np.int64))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# -- reading the extract in batches ------------------------------------------------------------
@dataclass
class Batch:
    """Some rows of an extract as text: one string array per raw column (as written), the line
    (CSV) or row number (other formats) of each, and rows that could not be split into fields."""

    text: dict[str, pa.Array]
    lines: np.ndarray
    broken: list[tuple[int | None, str, str]] = field(default_factory=list)


class Extract:
    """An opened extract: its columns are known; :meth:`batches` reads it."""

    def __init__(self, path: Path, register: str):
        self.path = path
        self.register = register
        self.suffix = path.suffix.lower()
        if self.suffix not in (".csv", ".parquet", ".sas7bdat", ".xpt"):
            raise UserError(f"{path}: unknown format {self.suffix!r}",
                            fix="give a .csv, .parquet, .sas7bdat or .xpt extract")
        try:
            names = getattr(self, "_open_" + self.suffix[1:])()
        except UserError:
            raise
        except (OSError, ValueError, UnicodeDecodeError, pa.ArrowException) as e:
            raise UserError(f"{path}: cannot be read as {self.suffix[1:]} ({_one_line(e)})",
                            fix="give an intact extract") from e
        self.names = names                       # as written in the file
        normal = [str(c).strip(" \ufeff").lower() for c in names]
        want = raw_columns(register)
        where = f"{path}:1" if self.suffix == ".csv" else str(path)
        twice = sorted({c for c in normal if normal.count(c) > 1})
        if twice:
            raise UserError(f"the column {twice[0]!r} appears twice", where=where,
                            fix=f"{register} extracts have the columns {', '.join(want)}")
        missing, extra = sorted(set(want) - set(normal)), sorted(set(normal) - set(want))
        if missing or extra:
            raise UserError(f"columns do not match register {register}"
                            + (f"; missing {missing}" if missing else "")
                            + (f"; unexpected {extra}" if extra else ""), where=where,
                            fix=f"{register} extracts have the columns {', '.join(want)}")
        self.column_of = dict(zip(normal, names, strict=True))

    # CSV: the header is read here, the rows by pyarrow's streaming reader as bytes, so that a
    # row with bad bytes or the wrong number of fields is quarantined, not the file refused.
    def _open_csv(self) -> list[str]:
        with open(self.path, "rb") as f:
            head = f.readline(1 << 20)
        if not head.strip():
            raise UserError("the file is empty or its first line is blank",
                            where=f"{self.path}:1", fix="the first line names the columns")
        try:
            text = head.decode("utf-8-sig").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise UserError(f"the header is not UTF-8 ({e.reason} at byte {e.start})",
                            where=f"{self.path}:1", fix="save the extract as UTF-8") from e
        self.delimiter = ";" if text.count(";") > text.count(",") else ","
        return next(csv.reader([text], delimiter=self.delimiter))

    def _open_parquet(self) -> list[str]:
        self.parquet = pq.ParquetFile(self.path)
        return list(self.parquet.schema_arrow.names)

    def _open_sas(self, fmt: str) -> list[str]:
        self.sas_format = fmt
        with pd.read_sas(self.path, format=fmt, encoding="latin-1", chunksize=1) as r:
            first = next(iter(r), None)
        if first is None:
            return [c for c in pd.read_sas(self.path, format=fmt, encoding="latin-1").columns]
        return list(first.columns)

    def _open_sas7bdat(self) -> list[str]:
        return self._open_sas("sas7bdat")

    def _open_xpt(self) -> list[str]:
        return self._open_sas("xport")

    def batches(self) -> Iterator[Batch]:
        try:
            yield from getattr(self, "_batches_" + self.suffix[1:])()
        except UserError:
            raise
        except (OSError, ValueError, UnicodeDecodeError, pa.ArrowException) as e:
            raise UserError(f"{self.path}: cannot be read as {self.suffix[1:]} "
                            f"({_one_line(e)})", fix="give an intact extract") from e

    def _batches_csv(self) -> Iterator[Batch]:
        broken: list[tuple[int | None, str, str]] = []
        width = len(self.names)

        def ragged(row) -> str:
            broken.append((row.number, row.text, f"the line has {row.actual_columns} fields, "
                           f"the header {width}"))
            return "skip"

        reader = pcsv.open_csv(
            self.path,
            read_options=pcsv.ReadOptions(column_names=[f"c{i}" for i in range(width)],
                                          skip_rows=1, use_threads=False,
                                          block_size=CSV_BLOCK_BYTES),
            parse_options=pcsv.ParseOptions(delimiter=self.delimiter, ignore_empty_lines=False,
                                            invalid_row_handler=ragged),
            convert_options=pcsv.ConvertOptions(
                column_types={f"c{i}": pa.binary() for i in range(width)},
                strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[]))
        next_line, skipped = 2, set()
        for rb in reader:
            n = rb.num_rows
            # Lines of the rows in this batch: the next lines not taken by a broken row, and a
            # row whose quoted value holds line breaks takes that many more lines.
            skipped = {x for x in skipped if x >= next_line}
            skipped.update(b[0] for b in broken if b[0] is not None)
            extra = np.zeros(n, np.int64)
            for i in range(width):
                c = rb.column(i)
                extra += _np(pc.count_substring(c, "\n")) + _np(pc.count_substring(c, "\r")) \
                    - _np(pc.count_substring(c, "\r\n"))
            if not extra.any() and not any(next_line <= x < next_line + n for x in skipped):
                lines = np.arange(next_line, next_line + n, dtype=np.int64)
                next_line += n
            else:
                lines = []
                for k in range(n):
                    while next_line in skipped:
                        next_line += 1
                    lines.append(next_line)
                    next_line += 1 + int(extra[k])
            text = {}
            for i, name in enumerate(self.names):
                text[name] = _decode(rb.column(i))
            out = Batch(text, np.array(lines, np.int64), broken[:])
            broken.clear()
            blank = np.ones(n, bool)
            for a in text.values():
                blank &= (pc.utf8_length(a).to_numpy(zero_copy_only=False) == 0)
            if blank.any():             # an empty line, or one of empty fields: no data
                out.broken += [(int(x), "", "an empty line (no values)")
                               for x in out.lines[blank]]
                keep = pa.array(~blank)
                out.text = {k: v.filter(keep) for k, v in text.items()}
                out.lines = out.lines[~blank]
            yield out
        if broken:
            yield Batch({n: pa.array([], pa.string()) for n in self.names},
                        np.zeros(0, np.int64), broken[:])

    def _batches_parquet(self) -> Iterator[Batch]:
        start = 1
        for rb in self.parquet.iter_batches(batch_size=BATCH_ROWS, columns=self.names):
            text = {name: _as_text(rb.column(i)) for i, name in enumerate(self.names)}
            yield Batch(text, np.arange(start, start + rb.num_rows, dtype=np.int64))
            start += rb.num_rows

    def _batches_sas(self) -> Iterator[Batch]:
        start = 1
        with pd.read_sas(self.path, format=self.sas_format, encoding="latin-1",
                         chunksize=BATCH_ROWS) as reader:
            for df in reader:
                text = {}
                for name in self.names:
                    v = df[name]
                    if name.strip().lower() in DATE_COLUMNS and pd.api.types.is_numeric_dtype(v):
                        text[name] = pa.array(_sas_dates(v.to_numpy(dtype=float)), pa.string())
                    else:
                        text[name] = pa.array([_value_text(x) for x in v], pa.string())
                yield Batch(text, np.arange(start, start + len(df), dtype=np.int64))
                start += len(df)

    _batches_sas7bdat = _batches_sas
    _batches_xpt = _batches_sas


def _decode(a: pa.Array) -> pa.Array:
    """Bytes as text; a value that is not UTF-8 becomes its Latin-1 reading marked with
    U+FFFD, so the row is quarantined (by the control-character check) rather than the file."""
    try:
        return pc.cast(a, pa.string())
    except pa.ArrowInvalid:
        out = []
        for b in a.to_pylist():
            try:
                out.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                out.append("\ufffe" + b.decode("latin-1"))
        return pa.array(out, pa.string())


def _as_text(a: pa.Array) -> pa.Array:
    """A typed Parquet column as the text a CSV would hold (dates ISO, whole floats as ints)."""
    t = a.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.fill_null(pc.cast(a, pa.string()), "")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pc.fill_null(_decode(pc.cast(a, pa.binary())), "")
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pc.fill_null(pc.cast(pc.cast(a, pa.date32()), pa.string()), "")
    if pa.types.is_dictionary(t):
        return _as_text(a.dictionary_decode())
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pa.array([_value_text(x) for x in a.to_pylist()], pa.string())
    return pc.fill_null(pc.cast(a, pa.string()), "")


def _sas_dates(v: np.ndarray) -> list[str]:
    """SAS dates (days since 1960-01-01) or datetimes (seconds since then) as ISO dates.
    Any date from 1850 to 2200 is within ±100 000 days; a datetime is beyond ±10⁶ seconds."""
    out = []
    for x in v:
        if np.isnan(x):
            out.append("")
            continue
        days = int(np.floor(x / 86400)) if abs(x) > 1e6 else int(x)
        out.append(str(np.datetime64("1960-01-01", "D") + days))
    return out


def _value_text(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, bytes):
        v = v.decode("latin-1")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d")
    return str(v)


# -- row checks ---------------------------------------------------------------------------------
@dataclass
class Rules:
    """What a row is checked against: the data period and, for lpr_diag, the known contacts."""

    start: int                      # first day of the data period
    end: int                        # last day of the data period (or today, if earlier)
    contacts: np.ndarray | None = None   # sorted recnums of lpr_adm, for lpr_diag


def _show(raw: str) -> str:
    return repr(raw) if len(raw) <= 40 else repr(raw[:40]) + "…"


def _iso(d: int) -> str:
    return str(np.datetime64(int(d), "D"))


def _odd_digit(s: str) -> str:
    ch = next((c for c in s if c.isdigit() and not "0" <= c <= "9"), None)
    return f" (the non-ASCII digit {ch!r}, U+{ord(ch):04X}; only 0-9 count)" if ch else ""


class _Reasons:
    """One reason per failing row: the first check a row fails names it."""

    def __init__(self, n: int):
        self.ok = np.ones(n, bool)
        self.why: dict[int, str] = {}

    def fail(self, mask: np.ndarray, say) -> None:
        idx = np.flatnonzero(mask & self.ok)
        for i in idx:
            self.why[int(i)] = say(int(i))
        self.ok[idx] = False


class _Lazy:
    """``values[i]`` of an Arrow array, made a Python string only for the rows that fail."""

    def __init__(self, a: pa.Array):
        self.a = a

    def __getitem__(self, i: int) -> str:
        return self.a[i].as_py()


def _np(a: pa.Array) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def _match(a: pa.Array, pattern: str) -> np.ndarray:
    return _np(pc.fill_null(pc.match_substring_regex(a, pattern), False))


def check_batch(batch: Batch, register: str, key: bytes, rules: Rules):
    """(typed columns of the good rows, their positions in the batch, {position: reason})."""
    reg = REGISTERS[register]
    n = batch.lines.size
    r = _Reasons(n)
    raw = {("pnr" if c == "cpr" else c): batch.text[c] for c in batch.text}
    trimmed = {c: pc.utf8_trim(a, " ") for c, a in raw.items()}
    for c, a in raw.items():
        where = _match(a, CONTROL)
        if where.any():
            vals = _Lazy(a)

            def say(i, c=c, vals=vals):
                ch = next(x for x in vals[i] if unicodedata.category(x) in ("Cc", "Cf")
                          or x == "\ufffe")
                if ch == "\ufffe":
                    return f"{'cpr' if c == 'pnr' else c}: the value is not UTF-8 text"
                return (f"{'cpr' if c == 'pnr' else c}: holds the control character "
                        f"U+{ord(ch):04X} ({unicodedata.name(ch, 'control')})")
            r.fail(where, say)
    typed: dict[str, np.ndarray] = {}
    born = None
    if "pnr" in raw:
        valid, digits, born = C.parse_many(trimmed["pnr"])
        vals = _Lazy(raw["pnr"])
        r.fail(~valid, lambda i: f"cpr: {C.parse(vals[i])[2]}")
        r.fail(born > rules.end, lambda i: f"cpr: the birth date in the CPR number "
               f"({_iso(born[i])}) is after {_iso(rules.end)}, the end of the data "
               "period (or today)")
        typed["_digits"] = digits
    for col in reg.columns:
        name = col.name
        if name == "pnr":
            continue
        a, vals = trimmed[name], None
        if name in DATE_COLUMNS:
            shape = _match(a, r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
            safe = pc.if_else(pa.array(shape), a, "1970-01-01")

            def part(x, y, safe=safe):
                return pc.cast(pc.utf8_slice_codeunits(safe, x, y), pa.int64()).to_numpy()
            days, real = C.civil_days(part(0, 4), part(5, 7), part(8, 10))
            vals = _Lazy(a)
            r.fail(~(shape & real), lambda i, name=name, vals=vals: (
                f"{name}: {_show(vals[i])} is not a date (YYYY-MM-DD){_odd_digit(vals[i])}"))
            lo = EARLIEST if name == "foed_dag" else max(rules.start,
                                                         REGISTER_START.get(name, rules.start))
            hi = today() if name == "d_uddto" else rules.end
            r.fail((days < lo) | (days > hi), lambda i, name=name, vals=vals, lo=lo, hi=hi: (
                f"{name}: {vals[i]} is outside {_iso(lo)} to {_iso(hi)} (the data period"
                + (", and LPR begins 1977" if name == "d_inddto" else "")
                + (", and LMDB begins 1995" if name == "eksd" else "") + ")"))
            typed[name] = days
        elif col.code_system:
            code = pc.replace_substring(pc.ascii_upper(a), ".", "")
            if col.code_system == "icd10":
                code = pc.if_else(pc.or_(pc.starts_with(code, "D"), pc.equal(code, "")), code,
                                  pc.binary_join_element_wise("D", code, ""))
            good = _match(code, CODE_PATTERNS[col.code_system])
            vals = _Lazy(a)
            r.fail(~good, lambda i, name=name, vals=vals, s=col.code_system: (
                f"{name}: {_show(vals[i])} is not a valid {s} code"))
            typed[name] = code
        else:
            is_float = pa.types.is_floating(col.type)
            pattern = r"^[-+]?([0-9]{1,15}(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,3})?$" \
                if is_float else r"^[-+]?[0-9]{1,18}$"
            shape = _match(a, pattern)
            safe = pc.if_else(pa.array(shape), a, "0")
            v = pc.cast(safe, pa.float64() if is_float else pa.int64()).to_numpy()
            vals = _Lazy(a)
            r.fail(~shape, lambda i, name=name, vals=vals: (
                f"{name}: {_show(vals[i])} is not a number{_odd_digit(vals[i])}"))
            if is_float:
                lo_ok = np.isfinite(v)
            else:
                info = np.iinfo(col.type.to_pandas_dtype())
                lo_ok = (v >= info.min) & (v <= info.max)
            r.fail(~lo_ok, lambda i, name=name, vals=vals, t=col.type: (
                f"{name}: {vals[i]} does not fit the column ({t})"))
            if name in ALLOWED:
                r.fail(~np.isin(v, list(ALLOWED[name])), lambda i, name=name, vals=vals: (
                    f"{name}: {vals[i]} is not one of {sorted(ALLOWED[name])}"))
            if name in MINIMUM:
                r.fail(v < MINIMUM[name], lambda i, name=name, vals=vals: (
                    f"{name}: {vals[i]} is below {MINIMUM[name]}"))
            typed[name] = v
    # Cross-field rules.
    if register == "bef":
        fd = typed["foed_dag"]
        r.fail(fd != born, lambda i: (f"foed_dag: {_iso(fd[i])} is not the birth date in the "
                                      f"CPR number ({_iso(born[i])})"))
    elif born is not None:
        for name in [c for c in reg.column_names if c in DATE_COLUMNS]:
            d = typed[name]
            r.fail(d < born, lambda i, name=name, d=d: (
                f"{name}: {_iso(d[i])} is before the person's birth ({_iso(born[i])}, "
                "from the CPR number)"))
    if register == "lpr_adm":
        into, out = typed["d_inddto"], typed["d_uddto"]
        r.fail(out < into, lambda i: (f"d_uddto: discharge {_iso(out[i])} is before admission "
                                      f"(d_inddto {_iso(into[i])})"))
        kind = typed["c_pattype"]
        r.fail((kind >= 2) & (into < LPR_OUTPATIENT), lambda i: (
            f"c_pattype: {kind[i]} (outpatient or emergency) on {_iso(into[i])}, but such "
            "contacts are recorded only from 1995-01-01"))
    if register == "lpr_diag":
        rec, known = typed["recnum"], rules.contacts
        pos = np.clip(np.searchsorted(known, rec), 0, max(known.size - 1, 0))
        linked = (known[pos] == rec) if known.size else np.zeros(n, bool)
        r.fail(~linked, lambda i: (f"recnum {rec[i]} has no contact in lpr_adm "
                                   "(ingest lpr_adm first)"))
        typed["_pos"] = pos
    keep = np.flatnonzero(r.ok)
    take = pa.array(keep)
    out: dict[str, np.ndarray] = {}
    for name, v in typed.items():
        if name == "_digits":
            out["pnr"] = C.pseudonyms(v.take(take).to_pylist(), key)
        elif isinstance(v, np.ndarray):
            out[name] = v[keep]
        else:
            out[name] = _np(v.take(take)).astype(object)
    return out, keep, r.why


# -- row hashes: the content of a normalised, pseudonymised row ---------------------------------
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def code_hash(codes) -> np.ndarray:
    """A stable 64-bit number per code text (BLAKE2b), independent of the dictionary."""
    return np.array([int.from_bytes(hashlib.blake2b(c.encode(), digest_size=8).digest(), "big")
                     for c in codes], np.uint64)


def _code_numbers(codes: np.ndarray) -> np.ndarray:
    if codes.size == 0:
        return np.zeros(0, np.uint64)
    uniq, inv = np.unique(codes.astype(str), return_inverse=True)
    return code_hash(uniq)[inv]


def row_hashes(register: str, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit lanes (128 bits) per row over the register's columns in schema order; codes
    enter as numbers of their text (``values[c]`` uint64 for code columns), floats by their
    bits. The same row gives the same hash whatever file, format or column order it came in."""
    n = len(next(iter(values.values())))
    lanes = []
    for seed in (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03):
        h = np.full(n, seed, np.uint64)
        for col in REGISTERS[register].columns:
            v = values[col.name]
            if v.dtype == np.float64:
                v = np.where(v == 0, 0.0, v).view(np.uint64)
            h = _mix(h ^ np.asarray(v).astype(np.int64).view(np.uint64) ^ np.uint64(seed))
        lanes.append(h)
    return lanes[0], lanes[1]


def _hash_new(register: str, typed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    values = {}
    for col in REGISTERS[register].columns:
        v = typed[col.name]
        values[col.name] = _code_numbers(v) if col.code_system else v
    return row_hashes(register, values)


def _hash_stored(register: str, cols: dict[str, np.ndarray], manifest: dict):
    values = {}
    for col in REGISTERS[register].columns:
        v = cols[col.name]
        if col.code_system:
            table = code_hash(manifest["dictionaries"][col.code_system])
            v = table[v] if v.size else np.zeros(0, np.uint64)
        values[col.name] = v
    return row_hashes(register, values)


def already_present(new: tuple[np.ndarray, np.ndarray], old: tuple[np.ndarray, np.ndarray]):
    """Which new rows the dataset already holds, counting copies: the k-th copy of a row in the
    extract is present when the dataset holds at least k copies of it."""
    n_old, n_new = old[0].size, new[0].size
    if n_new == 0 or n_old == 0:
        return np.zeros(n_new, bool)
    a, b = np.concatenate([old[0], new[0]]), np.concatenate([old[1], new[1]])
    order = np.lexsort((np.arange(a.size), b, a))      # old copies first within a group
    sa, sb = a[order], b[order]
    start = np.r_[True, (sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1])]
    group = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    is_old = order < n_old
    old_in_group = np.bincount(group, weights=is_old, minlength=first.size).astype(np.int64)
    rank = np.arange(a.size) - first[group] - old_in_group[group]
    present = np.zeros(a.size, bool)
    present[order] = ~is_old & (rank < old_in_group[group])
    return present[n_old:]


# -- the quarantine file ------------------------------------------------------------------------
def neutral(cell: str) -> str:
    """A cell that a spreadsheet will show, never run: control characters written as ``\\xNN``,
    and a leading ``=``, ``+``, ``-``, ``@``, tab or CR disarmed with a ``'``."""
    s = str(cell)
    lead = "'" if s.startswith(FORMULA_START) else ""
    if re.search(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufffe]", s):
        s = "".join(c if unicodedata.category(c) not in ("Cc", "Cf") and c != "\ufffe"
                    else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}") for c in s)
    return lead + s


def check_quarantine_path(q: Path, input_path: Path, data: Path) -> None:
    """Refuse a quarantine path that cannot be written, before anything is done."""
    fix = f"give --quarantine a file path, e.g. {q.parent / (input_path.name + '.quarantine.csv')}"
    if q.is_dir():
        raise UserError(f"--quarantine {q} is a directory", fix=fix)
    if q.exists() and not q.is_file():
        raise UserError(f"--quarantine {q} is not a regular file", fix=fix)
    if q.exists() and q.resolve() == input_path.resolve():
        raise UserError(f"--quarantine {q} is the extract itself", fix=fix)
    parent = q.parent
    if not parent.is_dir():
        raise UserError(f"--quarantine {q}: the directory {parent} does not exist", fix=fix)
    if not os.access(parent, os.W_OK | os.X_OK) or (q.exists() and not os.access(q, os.W_OK)):
        raise UserError(f"--quarantine {q} cannot be written", fix=fix)
    d = data.resolve()
    if q.resolve() == d or d in q.resolve().parents:
        raise UserError(f"--quarantine {q} lies inside the dataset {data}", fix=fix)


def clean_leftovers(folder: Path, prefix: str) -> None:
    """Remove what an ingest killed before it could clean up left in ``folder`` (its scratch
    folder or half-written quarantine, named ``PREFIX<pid>…``), once that process is gone."""
    if not folder.is_dir():
        return
    for path in folder.glob(glob.escape(prefix) + "*"):
        pid = re.match(r"(\d+)", path.name[len(prefix):])
        if pid is None or _alive(int(pid.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class Quarantine:
    """Rejected rows, streamed to a hidden file beside ``path``; :meth:`finish` syncs it and
    moves it into place (only if it holds rows)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.partial = path.parent / f".{path.name}.partial-{os.getpid()}"
        self.rows = 0
        try:
            self.file = open(self.partial, "w", newline="", encoding="utf-8")
        except OSError as e:
            raise UserError(f"--quarantine {path} cannot be written ({e.strerror})",
                            fix="give --quarantine a writable file path") from e
        self.writer = csv.writer(self.file)
        self.writer.writerow([*columns, "line", "reason"])

    def add(self, cells: list[str], line: int | None, reason: str) -> None:
        self.writer.writerow([neutral(c) for c in cells] + ["" if line is None else line,
                                                             neutral(reason)])
        self.rows += 1

    def finish(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if not self.rows:
            self.partial.unlink()
            return
        os.replace(self.partial, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.partial.unlink(missing_ok=True)


# -- the spill: good rows by partition, between the two passes ------------------------------------
# What pass 2 needs of each good row, stored as plain fixed-width records: read back with no
# Parquet decoding overhead (which, for one partition of a 10 M-row extract, was most of the
# peak memory). ``key`` is the pnr, or the recnum in lpr_adm and lpr_diag.
KEYS = np.dtype([("line", "<i8"), ("h1", "<u8"), ("h2", "<u8"), ("key", "<i8")])


class Spill:
    """Good rows of pass 1 by partition, in a scratch folder: ``pP.keys`` (:data:`KEYS`
    records) and ``pP.parquet`` (the typed columns and the row as written), in the same order."""

    def __init__(self, folder: Path, register: str):
        self.folder = folder
        self.register = register
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.key_files: dict[int, object] = {}

    def add(self, p: int, table: pa.Table, keys: np.ndarray) -> None:
        w = self.writers.get(p)
        if w is None:
            w = self.writers[p] = pq.ParquetWriter(self.folder / f"p{p}.parquet", table.schema,
                                                   compression="lz4")
            self.key_files[p] = open(self.folder / f"p{p}.keys", "wb")
        w.write_table(table)
        self.key_files[p].write(keys.tobytes())

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        for f in self.key_files.values():
            f.close()

    def keys(self, p: int) -> np.ndarray | None:
        path = self.folder / f"p{p}.keys"
        return np.fromfile(path, KEYS) if path.is_file() else None

    def columns(self, p: int) -> list[str]:
        return pq.read_schema(self.folder / f"p{p}.parquet").names

    def read(self, p: int, columns: list[str] | None = None) -> pa.Table | None:
        path = self.folder / f"p{p}.parquet"
        return pq.read_table(path, columns=columns) if path.is_file() else None


def _spill_table(register: str, typed: dict, raw: dict) -> pa.Table:
    cols = {}
    for col in REGISTERS[register].columns:
        v = typed[col.name]
        if col.code_system:
            cols[col.name] = pa.array(v.astype(str), pa.string())
        elif pa.types.is_date32(col.type):
            cols[col.name] = pa.array(v.astype(np.int32), pa.int32())
        else:                           # checked to fit: store in the column's own width
            cols[col.name] = pa.array(v.astype(col.type.to_pandas_dtype()), col.type)
    for extra in ("_pnr", "_d_inddto"):
        if extra in typed:
            cols[extra] = pa.array(typed[extra])
    for name, a in raw.items():
        cols["raw:" + name] = a
    return pa.table(cols)


# -- the dataset ----------------------------------------------------------------------------------
def _new_dataset(staging: Path, partitions: int) -> dict:
    for name in REGISTERS:
        (staging / name).mkdir()
    manifest = store.empty_manifest(
        partitions, {"icd10": (), "atc": (), **FIXED_DICTIONARIES},
        source={"kind": "ingest"},
        period={"start": str(np.datetime64(CPR_START, "D")),
                "end": str(np.datetime64(DATA_END, "D"))})
    for name in REGISTERS:
        for p in range(partitions):
            empty = {c.name: np.empty(0, np.int64) for c in REGISTERS[name].columns}
            if name == "lpr_diag":
                empty |= {"_pnr": np.empty(0, np.int64), "_d_inddto": np.empty(0, np.int64)}
            store.add_file(manifest, name, store.write_partition(staging, name, p, empty))
    manifest["ingested"] = []
    return manifest


def _read_partition(root: Path, register: str, p: int,
                    columns: list[str] | None = None) -> dict[str, np.ndarray]:
    t = store.read_partition(root / register / store.part_name(p), columns)
    out = {}
    for c in t.column_names:
        col = t.column(c)
        out[c] = col.cast("int32").to_numpy().astype(np.int64) if str(col.type) == "date32[day]" \
            else col.to_numpy()
    return out


def _rewrite(staging: Path, manifest: dict, register: str, p: int, cols: dict) -> None:
    path = staging / register / store.part_name(p)
    path.unlink()  # a hard link to the old dataset's file: never write through it
    entry = store.write_partition(staging, register, p, cols)
    files = manifest["registers"][register]["files"]
    old = next(i for i, f in enumerate(files) if f["path"] == entry["path"])
    manifest["registers"][register]["rows"] += entry["rows"] - files[old]["rows"]
    files[old] = entry


def _lpr_keys(root: Path | None, partitions: int):
    """recnum → (pnr, admission day) of every contact already in the dataset, sorted by
    recnum."""
    if root is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    rec, pnr, when = [], [], []
    for p in range(partitions):
        t = _read_partition(root, "lpr_adm", p, ["recnum", "pnr", "d_inddto"])
        rec.append(t["recnum"])
        pnr.append(t["pnr"])
        when.append(t["d_inddto"])
    rec, pnr, when = np.concatenate(rec), np.concatenate(pnr), np.concatenate(when)
    order = np.argsort(rec, kind="stable")
    return rec[order], pnr[order], when[order]


def _period(manifest: dict | None) -> tuple[int, int]:
    per = (manifest or {}).get("period") or {}
    try:
        start, end = day(per.get("start", "1968-04-02")), day(per.get("end", "2023-12-31"))
    except ValueError:
        start, end = CPR_START, DATA_END
    return start, min(end, today())


@dataclass
class Summary:
    added: int = 0
    present: int = 0
    quarantined: int = 0
    codes: dict[str, set] = field(default_factory=dict)


def ingest(register: str, input_path: Path, data: Path, key_file: Path,
           quarantine: Path | None = None, partitions: int = 8) -> dict:
    """Add an extract to ``data``; return a summary (rows added, already present, quarantined,
    or skipped)."""
    if register not in REGISTERS:
        raise UserError(f"unknown register {register!r}", fix=f"use one of {', '.join(REGISTERS)}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise UserError(f"--partitions {partitions} is out of range",
                        fix=f"give a number from 1 to {MAX_PARTITIONS}")
    input_path, data = Path(input_path), Path(data)
    if not input_path.is_file():
        raise UserError(f"{input_path} does not exist", fix="give the extract's path")
    key = C.load_key(key_file)
    quarantine = Path(quarantine) if quarantine else \
        input_path.with_name(input_path.name + ".quarantine.csv")
    check_quarantine_path(quarantine, input_path, data)
    extract = Extract(input_path, register)
    sha = store.sha256_file(input_path)
    existing = (data / store.MANIFEST).is_file()
    manifest = store.Dataset.open(data).manifest if existing else None
    if manifest and any(x.get("sha256") == sha and x.get("register") == register
                        for x in manifest.get("ingested", [])):
        return {"register": register, "file": str(input_path), "skipped": True,
                "reason": "this file was ingested before: nothing changed"}
    P = int(manifest["partitions"]) if manifest else partitions
    start, end = _period(manifest)
    rules = Rules(start, end)
    keys = None
    if register in ("lpr_adm", "lpr_diag"):
        keys = _lpr_keys(data if existing else None, P)
        rules.contacts = keys[0]
    parent = data.resolve().parent
    clean_leftovers(parent, f".{data.name}.ingest-")   # an older hpcstudy's scratch names
    clean_leftovers(quarantine.parent, f".{quarantine.name}.partial-")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # named as the commit's leftovers are, so the next command on --data tidies it
        scratch = targets.leftover(data.resolve(), "scratch")
        scratch = scratch.with_name(f"{scratch.name}.{secrets.token_hex(4)}")
        scratch.mkdir()
    except OSError as e:
        raise store.write_refusal(e)(f"cannot write a scratch folder in {parent} "
                                     f"({e.strerror})", fix="choose a writable --data") from e
    q = None
    try:
        q = Quarantine(quarantine, raw_columns(register))
        summary = Summary()
        spill = Spill(scratch, register)
        recnums: list[tuple[np.ndarray, np.ndarray]] = []
        try:
            _first_pass(extract, register, key, rules, keys, P, spill, q, summary, recnums)
        finally:
            spill.close()
        clashes = _recnum_clashes(recnums) if register == "lpr_adm" else {}
        accepted = _second_pass(register, data if existing else None, manifest, P, spill, q,
                                summary, clashes, keys)
        if existing and not summary.added:
            q.finish()                  # nothing new: the dataset stays as it is, byte for byte
        else:
            _commit(register, data, existing, manifest, P, spill, accepted, keys, summary,
                    q, {"register": register, "file": input_path.name, "sha256": sha},
                    reads=(input_path, key_file))
    except BaseException:
        if q is not None:
            q.abort()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"register": register, "file": str(input_path), "skipped": False,
            "rows": summary.added, "already_present": summary.present,
            "quarantined": summary.quarantined,
            "quarantine": str(quarantine) if summary.quarantined else None}


def _first_pass(extract: Extract, register: str, key: bytes, rules: Rules, keys, P: int,
                spill: Spill, q: Quarantine, summary: Summary, recnums: list) -> None:
    """Check every row; quarantine the failing ones; spill the good ones by partition."""
    order = [extract.column_of[c] for c in raw_columns(register)]
    for batch in extract.batches():
        rejected = [(line, [text] + [""] * (len(order) - 1), reason)
                    for line, text, reason in batch.broken]
        typed, keep = {}, np.zeros(0, np.int64)
        if batch.lines.size:
            batch.text = {c: batch.text[extract.column_of[c]] for c in raw_columns(register)}
            typed, keep, why = check_batch(batch, register, key, rules)
            rejected += [(int(batch.lines[i]), [batch.text[c][i].as_py()
                                                for c in raw_columns(register)], why[i])
                         for i in why]
        # in line order, whatever the batches: the same extract gives the same quarantine file
        for line, cells, reason in sorted(rejected, key=lambda x: (x[0] is None, x[0] or 0)):
            q.add(cells, line, reason)
        summary.quarantined += len(rejected)
        if not keep.size:
            continue
        lines = batch.lines[keep]
        if register == "lpr_diag":
            pos = typed.pop("_pos")
            typed["_pnr"], typed["_d_inddto"] = keys[1][pos], keys[2][pos]
            route = typed["_pnr"]
        else:
            route = typed["pnr"]
        if register == "lpr_adm":
            recnums.append((typed["recnum"], lines))
        hashes = _hash_new(register, typed)
        keys_of = np.empty(lines.size, KEYS)
        keys_of["line"], keys_of["h1"], keys_of["h2"] = lines, hashes[0], hashes[1]
        keys_of["key"] = typed["recnum" if register in ("lpr_adm", "lpr_diag") else "pnr"]
        take = pa.array(keep)
        raw = {c: batch.text[c].take(take) for c in raw_columns(register)}
        table = _spill_table(register, typed, raw)
        part = store.partition_of(route, P)
        for p in np.unique(part):
            mine = part == p
            spill.add(int(p), table.filter(pa.array(mine)), keys_of[mine])
        del batch, typed, table, raw, hashes, keys_of
        give_back_memory()


def _recnum_clashes(recnums: list) -> dict[int, str]:
    """Lines of lpr_adm rows whose recnum an earlier line of the extract already used."""
    if not recnums:
        return {}
    rec = np.concatenate([r for r, _ in recnums])
    line = np.concatenate([x for _, x in recnums])
    order = np.lexsort((line, rec))
    rs, ls = rec[order], line[order]
    later = np.r_[False, rs[1:] == rs[:-1]]
    start = np.maximum.accumulate(np.where(~later, np.arange(rs.size), 0))
    return {int(ls[i]): f"recnum {rs[i]}: line {ls[start[i]]} already has this contact "
            "(one row per contact)" for i in np.flatnonzero(later)}


def _second_pass(register: str, data: Path | None, manifest: dict | None, P: int, spill: Spill,
                 q: Quarantine, summary: Summary, clashes: dict[int, str], keys) -> dict:
    """Per partition: drop rows the dataset already holds, quarantine a second row for one
    person or contact; return, per partition with rows, None when every row is accepted, else
    the accepted rows as a bit mask (``np.packbits``, and its length): 1 bit a row."""
    accepted: dict[int, tuple[np.ndarray, int] | None] = {}
    codes = [c.name for c in REGISTERS[register].columns if c.code_system
             and c.code_system not in FIXED_DICTIONARIES]
    raw_names = ["raw:" + c for c in raw_columns(register)]
    for p in range(P):
        new = spill.keys(p)
        if new is None:
            continue
        line, h1, h2, key = (np.ascontiguousarray(new[c]) for c in ("line", "h1", "h2", "key"))
        del new
        why: dict[int, str] = {}
        if register == "lpr_adm":
            for i in np.flatnonzero(np.isin(line, list(clashes))):
                why[int(i)] = clashes[int(line[i])]
        if register in ONE_PER_PERSON:
            pnr = key
            order = np.argsort(pnr, kind="stable")     # lines ascend within a partition
            ps = pnr[order]
            later = np.r_[False, ps[1:] == ps[:-1]]
            first = np.maximum.accumulate(np.where(~later, np.arange(ps.size), 0))
            for k in np.flatnonzero(later):
                why[int(order[k])] = (f"cpr: the same person as line {line[order[first[k]]]} "
                                      f"(one {register} row per person)")
        if data is not None and manifest["registers"][register]["files"][p]["rows"]:
            old = _read_partition(data, register, p)
            if register == "lpr_diag":
                old["_pnr"] = np.zeros(old["recnum"].size, np.int64)
            old_h = _hash_stored(register, old, manifest)
            open_ = np.ones(line.size, bool)
            open_[list(why)] = False
            present = np.zeros(line.size, bool)
            present[open_] = already_present((h1[open_], h2[open_]), old_h)
            summary.present += int(present.sum())
            if register in ONE_PER_PERSON:
                there = np.isin(pnr, old["pnr"]) & open_ & ~present
                for i in np.flatnonzero(there):
                    why[int(i)] = (f"cpr: this person is already in {register} with other "
                                   "values (one row per person)")
        else:
            present = np.zeros(line.size, bool)
        if register == "lpr_adm" and keys is not None and keys[0].size:
            rec = key
            open_ = ~present
            open_[list(why)] = False
            pos = np.clip(np.searchsorted(keys[0], rec), 0, keys[0].size - 1)
            for i in np.flatnonzero(open_ & (keys[0][pos] == rec)):
                why[int(i)] = (f"recnum {rec[i]}: the dataset already has this contact with "
                               "other values (one row per contact)")
        ok = ~present
        ok[list(why)] = False
        if why:
            raw = spill.read(p, raw_names).take(pa.array(sorted(why)))
            cells = [raw.column(c).to_pylist() for c in raw_names]
            for k, i in enumerate(sorted(why)):
                q.add([col[k] for col in cells], int(line[i]), why[i])
            summary.quarantined += len(why)
        accepted[p] = None if ok.all() else (np.packbits(ok), ok.size)
        summary.added += int(ok.sum())
        give_back_memory()
        if codes and ok.any():
            t = spill.read(p, codes)
            for c in codes:
                system = REGISTERS[register].column(c).code_system
                summary.codes.setdefault(system, set()).update(
                    pc.unique(t.column(c).filter(pa.array(ok))).to_pylist())
    return accepted


def _commit(register: str, data: Path, existing: bool, manifest: dict | None, P: int,
            spill: Spill, accepted: dict, keys, summary: Summary,
            q: Quarantine, record: dict, reads=()) -> None:
    """Write the accepted rows into a staging copy of the dataset and commit it; the
    quarantine file is synced and in place before the commit."""
    with store.staged_output(data, overwrite=True, kind="dataset", reads=reads) as staging:
        if existing:
            for src in data.rglob("*"):
                dst = staging / src.relative_to(data)
                if src.is_dir():
                    dst.mkdir(parents=True, exist_ok=True)
                else:
                    os.link(src, dst)
            (staging / store.MANIFEST).unlink()
        else:
            manifest = _new_dataset(staging, P)
        _grow_dictionaries(staging, manifest, summary.codes)
        for p, mask in sorted(accepted.items()):
            ok = None if mask is None else np.unpackbits(mask[0], count=mask[1]).astype(bool)
            if ok is not None and not ok.any():
                continue
            t = spill.read(p, [c for c in spill.columns(p) if c in REGISTERS[register]
                               .column_names or c in ("_pnr", "_d_inddto")])
            if ok is not None:
                t = t.filter(pa.array(ok))
            new = _encode(manifest, register, t)
            del t
            old = _read_partition(staging, register, p)
            if register == "lpr_diag":
                rec, pnr_of, day_of = keys
                pos = np.searchsorted(rec, old["recnum"]) if old["recnum"].size \
                    else np.zeros(0, np.int64)
                old["_pnr"], old["_d_inddto"] = pnr_of[pos], day_of[pos]
            if old["recnum" if register == "lpr_diag" else "pnr"].size:
                cols = {k: np.concatenate([old[k], new[k]]) for k in new}
            else:
                cols = new                  # a partition's first rows: no copy
            del new, old
            _rewrite(staging, manifest, register, p, cols)
            del cols
            give_back_memory()
        manifest["source"] = {"kind": "ingest"}
        manifest.setdefault("ingested", []).append(
            {**record, "rows": summary.added, "already_present": summary.present,
             "quarantined": summary.quarantined})
        (staging / store.MANIFEST).write_text(store.manifest_json(manifest))
        q.finish()


def _grow_dictionaries(staging: Path, manifest: dict, new_codes: dict[str, set]) -> None:
    """Add new codes, keep every dictionary sorted, re-encode stored data that it moves."""
    for system, codes in new_codes.items():
        old = manifest["dictionaries"][system]
        merged = sorted(set(old) | codes)
        if merged == old:
            continue
        remap = np.searchsorted(np.array(merged, dtype=object), np.array(old, dtype=object)) \
            if old else np.zeros(0, np.int64)
        manifest["dictionaries"][system] = merged
        if not old:
            continue
        for name, reg in REGISTERS.items():
            code_cols = [c.name for c in reg.columns if c.code_system == system]
            if not code_cols:
                continue
            for p in range(int(manifest["partitions"])):
                if not manifest["registers"][name]["files"][p]["rows"]:
                    continue
                cols = _read_partition(staging, name, p)
                for c in code_cols:
                    cols[c] = remap[cols[c]].astype(np.int32)
                if name == "lpr_diag":
                    cols["_pnr"] = np.zeros(cols["recnum"].shape[0], np.int64)
                    cols["_d_inddto"] = np.arange(cols["recnum"].shape[0])  # keeps the order
                _rewrite(staging, manifest, name, p, cols)


def _encode(manifest: dict, register: str, t: pa.Table) -> dict[str, np.ndarray]:
    out = {}
    for col in REGISTERS[register].columns:
        v = t.column(col.name)
        if col.code_system:
            words = pa.array(manifest["dictionaries"][col.code_system], pa.string())
            out[col.name] = pc.index_in(v, value_set=words).to_numpy().astype(np.int32)
        else:
            out[col.name] = v.to_numpy()
    for extra in ("_pnr", "_d_inddto"):
        if extra in t.column_names:
            out[extra] = t.column(extra).to_numpy()
    return out
