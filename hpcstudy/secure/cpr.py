"""CPR numbers: validation and keyed pseudonymisation.

A CPR number is DDMMYY-SSSS (the dash optional). The century comes from the 7th digit:
0–3 → 1900s; 4 or 9 → 2000s when YY ≤ 36, else 1900s; 5–8 → 2000s when YY ≤ 57, else 1800s.
Modulus 11 is not a validity test: numbers failing it have been issued since 2007.

A pseudonym is HMAC-SHA256(key, the ten digits) cut to a positive int64 (62 bits): the same
person always gets the same pnr under one key, and nobody without the key can go back.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UserError

# ASCII digits only: Python's \d also takes full-width and Arabic-Indic digits, which would give
# a second pseudonym for one person (or crash the HMAC's ASCII encoding).
SHAPE = r"^([0-9]{6})-?([0-9]{4})$"
_SHAPE = re.compile(SHAPE)
MIN_KEY_BYTES = 32


def century(yy: int, seventh: int) -> int:
    if seventh <= 3:
        return 1900
    if seventh in (4, 9):
        return 2000 if yy <= 36 else 1900
    return 2000 if yy <= 57 else 1800


def parse(cpr: str) -> tuple[str | None, datetime.date | None, str | None]:
    """(ten digits, birth date, None) for a valid number, or (None, None, reason)."""
    s = str(cpr).strip(" ")
    m = _SHAPE.match(s)
    if not m:
        if not s:
            return None, None, "empty CPR number"
        odd = next((ch for ch in s if unicodedata.category(ch) in ("Cc", "Cf")), None)
        if odd is not None:
            return None, None, f"CPR number holds the control character U+{ord(odd):04X}"
        wide = next((ch for ch in s if ch.isdigit() and not "0" <= ch <= "9"), None)
        if wide is not None:
            return None, None, (f"CPR number holds the non-ASCII digit {wide!r} "
                                f"(U+{ord(wide):04X}, {unicodedata.name(wide, 'digit')}); "
                                "only 0-9 are CPR digits")
        if re.search(r"[^0-9-]", s):
            return None, None, "CPR number holds characters other than digits and a dash"
        n = sum(ch in "0123456789" for ch in s)
        if n == 10:
            return None, None, "CPR number has a dash in the wrong place (DDMMYY-SSSS)"
        return None, None, f"CPR number must have 10 digits, this has {n}"
    digits = m.group(1) + m.group(2)
    dd, mm, yy = int(digits[0:2]), int(digits[2:4]), int(digits[4:6])
    year = century(yy, int(digits[6])) + yy
    try:
        born = datetime.date(year, mm, dd)
    except ValueError:
        return None, None, f"CPR number has an impossible birth date ({dd:02d}-{mm:02d}-{year})"
    return digits, born, None


def civil_days(year: np.ndarray, month: np.ndarray, day: np.ndarray):
    """(days since 1970-01-01, valid) of calendar dates given as integer arrays."""
    y = np.clip(year, 1, 9999)
    m = np.clip(month, 1, 12)
    first = ((y - 1970) * 12 + (m - 1)).astype("datetime64[M]")
    length = ((first + 1).astype("datetime64[D]") - first.astype("datetime64[D]")).astype(np.int64)
    valid = (year == y) & (month == m) & (day >= 1) & (day <= length)
    days = first.astype("datetime64[D]").astype(np.int64) + np.where(valid, day, 1) - 1
    return days, valid


def parse_many(values: pa.Array) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Vectorised :func:`parse` of space-trimmed strings: (valid, ten digits, birth day).

    ``valid[i]`` is exactly ``parse(values[i])[2] is None``; the birth day (days since
    1970-01-01) and the digits are meaningful only where valid.
    """
    shape = pc.fill_null(pc.match_substring_regex(values, SHAPE), False).to_numpy(
        zero_copy_only=False)
    digits = pc.replace_substring(values, "-", "")
    safe = pc.if_else(pa.array(shape), digits, "0101700000")

    def field(a: int, b: int) -> np.ndarray:
        return pc.cast(pc.utf8_slice_codeunits(safe, a, b), pa.int64()).to_numpy()

    dd, mm, yy, seventh = field(0, 2), field(2, 4), field(4, 6), field(6, 7)
    cent = np.where(seventh <= 3, 1900, np.where(
        (seventh == 4) | (seventh == 9), np.where(yy <= 36, 2000, 1900),
        np.where(yy <= 57, 2000, 1800)))
    born, real = civil_days(cent + yy, mm, dd)
    return shape & real, digits, born


def load_key(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"key file {p} does not exist",
                        fix="give the project's pseudonymisation key file with --key-file")
    key = p.read_bytes()
    if len(key) < MIN_KEY_BYTES:
        raise UserError(f"key file {p} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are "
                        "needed", fix="make one with: head -c 64 /dev/urandom > KEYFILE")
    return key


def pseudonym(digits: str, key: bytes) -> int:
    mac = hmac.new(key, digits.encode("ascii"), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") & ((1 << 62) - 1)


def pseudonyms(digits: list[str], key: bytes) -> np.ndarray:
    """:func:`pseudonym` of many ten-digit strings, as an int64 array."""
    macs = b"".join(hmac.digest(key, d.encode("ascii"), "sha256")[:8] for d in digits)
    return (np.frombuffer(macs, ">u8").astype(np.uint64) & np.uint64((1 << 62) - 1)).astype(
        np.int64)
