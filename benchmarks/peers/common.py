"""What the hand-written peers of example 1 share: the study's constants (from
examples/statins_mi.yaml), the register dictionaries, the non-users' random index day (the
study language's documented draw from (seed, pnr)) and the Charlson coding table (data:
Thygesen et al. 2011, as docs/studies.md cites it)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

EPOCH = dt.date(1970, 1, 1)


def command_line(build, threads: bool = False) -> None:
    """Every peer's command line: DATA OUT.parquet (and --threads N for an engine that takes a
    thread count), then build(data, out[, threads])."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    if threads:
        ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    build(a.data, a.out, *([a.threads] if threads else []))


def day(text: str) -> int:
    return (dt.date.fromisoformat(text) - EPOCH).days


# examples/statins_mi.yaml
SEED = 1
WINDOW = (day("2010-01-01"), day("2020-12-31"))   # exposure.between
WASHOUT = 365                                      # exposure.washout_days
AGE = (40.0, 90.0)                                 # population.age, [low, high)
RESIDENCE_DAYS = int(2 * 365.25)                   # population.residence_years: 2 -> 730
MAX_DAYS = 3650                                    # follow_up.max_days
CHARLSON_WINDOW = 3650                             # charlson: [-3650, 0]
STATINS, MI, DIABETES, METFORMIN = "C10AA", "DI21", "DE11", "A10BA02"

COLUMNS = ["pnr", "group", "index_date", "age", "sex", "diabetes", "charlson",
           "metformin_last_year", "contacts_last_year", "exit_date", "status", "time", "event"]


def manifest(data: Path) -> dict:
    return json.loads((Path(data) / "manifest.json").read_text())


def data_end(data: Path) -> int:
    return day(manifest(data)["period"]["end"])


def dictionary(data: Path, name: str) -> list[str]:
    return manifest(data)["dictionaries"][name]


def codes_with_prefix(data: Path, name: str, *prefixes: str) -> np.ndarray:
    words = dictionary(data, name)
    return np.array([i for i, w in enumerate(words) if w.startswith(prefixes)], dtype=np.int32)


def random_index_days(pnr: np.ndarray, seed: int, start: int, end: int) -> np.ndarray:
    """A uniform day in [start, end] per person from (seed, pnr): pnr XOR seed·φ64, then
    the splitmix64/murmur3 finaliser, modulo the window's length."""
    mix = np.uint64((seed * 0x9E3779B97F4A7C15) & (2**64 - 1))
    x = pnr.astype(np.uint64) ^ mix
    with np.errstate(over="ignore"):
        for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            x = (x ^ (x >> np.uint64(33))) * np.uint64(mult)
        x = x ^ (x >> np.uint64(33))
    return start + (x % np.uint64(end - start + 1)).astype(np.int64)


def charlson_codes(data: Path) -> list[tuple[str, int, int]]:
    """(category, weight, icd10 dictionary index) for every code of every category."""
    from hpcstudy.study.charlson import CATEGORIES

    words = dictionary(data, "icd10")
    return [(name, weight, i) for name, weight, prefixes in CATEGORIES
            for i, w in enumerate(words) if w.startswith(prefixes)]


def charlson_hierarchy() -> dict[str, str]:
    """severe category -> the mild one it replaces."""
    from hpcstudy.study.charlson import HIERARCHY

    return dict(HIERARCHY)


# examples/diabetes_incidence.yaml: a population cohort on a fixed day (group 1), no comparator
class Diabetes:
    INDEX = day("2000-01-01")                     # index.date
    AGE = (20.0, 90.0)                            # population.age, [low, high)
    CODES = "DE11"                                # codelists.diabetes: E11* (Danish D prefix)
    COLUMNS = ["pnr", "group", "index_date", "age", "sex", "exit_date", "status", "time",
               "event"]
