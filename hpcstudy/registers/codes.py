"""Code dictionaries: ICD-10 (Danish form, ``D`` prefix), ATC, and one-letter kinds.

A dictionary is a sorted tuple of strings; a stored code is its index (int32). Because the
tuple is sorted, every prefix (``DI21`` → DI21, DI210 … DI219) is one half-open range of
indices, so matching a codelist is two binary searches, not a string scan.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

# ICD-10 three-character categories used by the generator. Each gets the category itself
# and its ten four-character subcodes (DI21, DI210 … DI219), as the LPR records them.
ICD10_CATEGORIES = (
    # conditions with planted effects
    "I21", "I63", "I50", "E11", "J44",
    # cancers (C chapter)
    "C18", "C19", "C20", "C25", "C34", "C43", "C50", "C61", "C64", "C67", "C71", "C91",
    # near misses: codes a careless codelist would catch or miss
    "I20", "I22", "I24", "I25", "I10", "I48", "I61", "I64", "G45", "E10", "E13", "E66", "E78",
    "J45", "J18", "D12", "D05", "C44",
    # background
    "A09", "B34", "F10", "F03", "F32", "F41", "G43", "H26", "K21", "K35", "K40", "K80", "M16",
    "M17", "M54", "N39", "N18", "R07", "R10", "R55", "R99", "S06", "S52", "S72", "S82", "T78",
    "Z00", "Z03", "L40", "M05", "O80",
    # hospitalisation for heart failure in diabetes (DI110): the second-line drugs' outcome
    "I11",
)


def _icd10_universe() -> tuple[str, ...]:
    codes = set()
    for cat in ICD10_CATEGORIES:
        codes.add("D" + cat)
        codes.update(f"D{cat}{d}" for d in range(10))
    return tuple(sorted(codes))


# ATC codes: (code, name, strength in mg per unit, DDD in mg, pack size in units).
# volume (DDD per pack) = packsize * strength / DDD.
DRUGS: tuple[tuple[str, str, float, float, int], ...] = (
    ("C10AA01", "simvastatin", 40, 30, 100),
    ("C10AA03", "pravastatin", 40, 30, 100),
    ("C10AA05", "atorvastatin", 20, 20, 100),
    ("C10AA07", "rosuvastatin", 10, 10, 100),
    ("C10AX09", "ezetimibe", 10, 10, 98),
    ("C10BA02", "simvastatin and ezetimibe", 40, 30, 98),
    ("A10BA02", "metformin", 500, 2000, 200),
    ("A10BB12", "glimepiride", 2, 2, 120),
    ("A10BJ02", "liraglutide", 6, 1.5, 3),
    ("A10AE04", "insulin glargine", 300, 40, 5),
    ("A10BH01", "sitagliptin", 100, 100, 98),
    ("A10BK01", "dapagliflozin", 10, 10, 98),
    ("A10BK03", "empagliflozin", 10, 17.5, 90),
    ("C09AA02", "enalapril", 10, 10, 100),
    ("C09AA05", "ramipril", 5, 2.5, 100),
    ("C09CA01", "losartan", 50, 50, 98),
    ("C09CA06", "candesartan", 8, 8, 98),
    ("N02BE01", "paracetamol", 500, 3000, 100),
    ("M01AE01", "ibuprofen", 400, 1200, 100),
    ("J01CE02", "phenoxymethylpenicillin", 800, 2000, 20),
    ("J01CA04", "amoxicillin", 500, 1500, 20),
    ("J01FA09", "clarithromycin", 500, 500, 14),
    ("R03AC02", "salbutamol", 0.1, 0.8, 200),
    ("N06AB04", "citalopram", 20, 20, 100),
    ("N06AB10", "escitalopram", 10, 10, 98),
    ("A02BC01", "omeprazole", 20, 20, 100),
    ("A02BC05", "esomeprazole", 20, 30, 98),
    ("B01AC06", "acetylsalicylic acid", 75, 75, 100),
    ("B01AF01", "rivaroxaban", 20, 20, 98),
    ("C07AB02", "metoprolol", 100, 150, 100),
    ("C08CA01", "amlodipine", 5, 5, 100),
    ("C03CA01", "furosemide", 40, 40, 100),
    ("H03AA01", "levothyroxine", 0.1, 0.15, 100),
    ("N05CF01", "zopiclone", 7.5, 7.5, 30),
    ("R06AE07", "cetirizine", 10, 10, 30),
    ("N02AX02", "tramadol", 50, 300, 100),
    ("D07AC01", "betamethasone", 1, 1, 30),
)

DRUG_BY_ATC = {d[0]: d for d in DRUGS}


def dictionaries() -> dict[str, tuple[str, ...]]:
    """The code dictionaries of a dataset written by the generator."""
    return {
        "icd10": _icd10_universe(),
        "atc": tuple(sorted(DRUG_BY_ATC)),
        "indud": ("I", "U"),
        "diagtype": ("A", "B"),
    }


def normalise_icd10(code: str) -> str:
    """WHO or Danish form → Danish form: ``I21.9`` and ``DI219`` both give ``DI219``."""
    c = code.strip().upper().replace(".", "")
    if not c.startswith("D") or (len(c) >= 2 and c[1].isdigit()):
        # A WHO code never starts with "D" followed by a letter except the D chapter (D00-D89),
        # whose Danish form is "DD..": so any code whose second character is a digit is WHO.
        c = "D" + c
    return c


def prefix_range(dictionary: Sequence[str], prefix: str) -> tuple[int, int]:
    """Indices [lo, hi) of the sorted dictionary entries that start with ``prefix``."""
    lo = bisect.bisect_left(dictionary, prefix)
    hi = bisect.bisect_left(dictionary, prefix + "\U0010ffff")
    return lo, hi


def encode(dictionary: Sequence[str], codes: Iterable[str]) -> list[int]:
    """Indices of exact codes; raises KeyError naming the first unknown one."""
    index = {c: i for i, c in enumerate(dictionary)}
    return [index[c] for c in codes]
