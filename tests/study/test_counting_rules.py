"""The counting rules docs/studies.md states, on every engine, at their edges:
``residence_years: y`` is index day − arrival ≥ ⌊y × 365.25⌋ days (2 years: 730 days, not
730.5); ``age: [lo, hi)`` is lo ≤ (index − birth) / 365.25 < hi. Expected persons are worked
out here from those rules, by hand, not by the engines."""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text

from .builder import Registers

INDEX = "2012-01-01"


def day(iso: str, plus: int = 0) -> str:
    return str(np.datetime64(iso, "D") + plus)


STUDY = f"""
name: rules
codelists: {{copd: {{system: icd10, codes: [J44]}}}}
index: {{date: {INDEX}}}
population: {{age: [40, 60], residence_years: YEARS}}
covariates: [age]
outcome: {{name: copd, codelist: copd}}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    r = Registers()
    # arrivals 729, 730 and 731 days before index (all aged 50)
    for pnr, before in ((1, 729), (2, 730), (3, 731), (4, 547), (5, 548), (6, 546)):
        r.person(pnr, "M", "1962-01-01").move(pnr, "I", day(INDEX, -before))
    # born in Denmark, never moved: resident since birth. Age edges (no move):
    # 40 years = 14610 days (40 × 365.25): 14610 days old is in, 14609 is not;
    # 60 years = 21915 days: 21914 days old is in, 21915 is not.
    for pnr, age_days in ((7, 14609), (8, 14610), (9, 21914), (10, 21915)):
        r.person(pnr, "F", day(INDEX, -age_days))
    return r.write(tmp_path_factory.mktemp("rules") / "data", partitions=2)


@pytest.mark.parametrize("engine", ["reference", "dask"])
@pytest.mark.parametrize("years, persons", [
    ("2", [2, 3, 8, 9]),          # ≥ 730 days: 729 is out, 730 in
    ("1.5", [1, 2, 3, 4, 5, 8, 9]),  # ⌊1.5 × 365.25⌋ = 547: 546 out, 547 in
])
def test_residence_and_age_edges(engine, years, persons, data):
    study = study_from_text(STUDY.replace("YEARS", years))
    _, plan, ds = R.prepare(study, data)
    tables, _, _ = R.person_table(plan, ds, engine)
    assert sorted(R.combined(plan, tables)["pnr"].tolist()) == persons
