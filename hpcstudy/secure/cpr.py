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
from pathlib import Path

from ..errors import UserError

_SHAPE = re.compile(r"^(\d{6})-?(\d{4})$")
MIN_KEY_BYTES = 32


def century(yy: int, seventh: int) -> int:
    if seventh <= 3:
        return 1900
    if seventh in (4, 9):
        return 2000 if yy <= 36 else 1900
    return 2000 if yy <= 57 else 1800


def parse(cpr: str) -> tuple[str | None, datetime.date | None, str | None]:
    """(ten digits, birth date, None) for a valid number, or (None, None, reason)."""
    s = str(cpr).strip()
    m = _SHAPE.match(s)
    if not m:
        if not s:
            return None, None, "empty CPR number"
        if re.search(r"[^\d-]", s):
            return None, None, "CPR number holds characters other than digits and a dash"
        return None, None, f"CPR number must have 10 digits, this has {len(re.sub(r'-', '', s))}"
    digits = m.group(1) + m.group(2)
    dd, mm, yy = int(digits[0:2]), int(digits[2:4]), int(digits[4:6])
    year = century(yy, int(digits[6])) + yy
    try:
        born = datetime.date(year, mm, dd)
    except ValueError:
        return None, None, f"CPR number has an impossible birth date ({dd:02d}-{mm:02d}-{year})"
    return digits, born, None


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
