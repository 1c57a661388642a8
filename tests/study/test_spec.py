"""Spec tests: small readable registers, a study, the per-person rows expected — run on
every engine (reference and dask) by one parametrized fixture."""

from __future__ import annotations

import numpy as np
import pytest

from hpcstudy.engines import run as R
from hpcstudy.engines.common import random_index_days
from hpcstudy.study import study_from_text

from .builder import Registers

ENGINES = ["reference", "dask"]


def d(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


STUDY = """
name: spec
seed: 3
codelists:
  statins: {system: atc, codes: [C10AA*]}
  mi: {system: icd10, codes: [I21*]}
  diabetes: {system: icd10, codes: [E11]}
population: {age: [40, 90], residence_years: 2}
exposure:
  name: statin
  first_event: {codelist: statins}
  between: [2010-01-01, 2020-12-31]
  washout_days: 365
comparator: {non_users: true}
criteria:
  - exclude: {codelist: mi, window: [null, 0]}
covariates:
  - age
  - sex
  - {name: diabetes, codelist: diabetes, window: [null, 0]}
  - {name: statin_packs, count: statins, window: [-3650, 0]}
  - charlson
outcome: {name: mi, codelist: mi, diagnosis_type: [A], patient_type: [inpatient]}
follow_up: {max_days: 3650}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    r = Registers()
    # 1: new user, MI as inpatient action diagnosis three years later
    r.person(1, "M", "1950-06-01").rx(1, "2012-03-01", "C10AA01").rx(1, "2012-06-01", "C10AA01")
    r.contact(1, "2015-05-05", "DI219")
    # 2: a dispensing in the year before the first one in the window: not a new user
    r.person(2, "F", "1955-01-01").rx(2, "2009-12-01", "C10AA05").rx(2, "2010-06-01", "C10AA05")
    # 3: never a statin user; had an MI long ago (excluded also as a non-user)
    r.person(3, "M", "1960-02-02").contact(3, "1999-01-01", "DI210")
    # 4: user who dies
    r.person(4, "F", "1930-01-01").rx(4, "2015-08-01", "C10AA07").death(4, "2016-02-02")
    # 5: user who emigrates (last day at risk: the day before)
    r.person(5, "M", "1945-03-03").rx(5, "2013-01-01", "C10AA01").move(5, "U", "2014-04-01")
    # 6: immigrant arriving a year before the first dispensing: fails 2 years' residence
    r.person(6, "F", "1950-01-01").move(6, "I", "2012-01-01").rx(6, "2013-01-01", "C10AA01")
    # 7: too young
    r.person(7, "M", "1990-01-01").rx(7, "2015-01-01", "C10AA01")
    # 8: MI only as secondary or outpatient diagnosis: no outcome; diabetes before index;
    #    a cancer in the Charlson window
    r.person(8, "M", "1950-01-01").contact(8, "2008-05-05", "DE119").rx(8, "2014-01-01",
                                                                          "C10AA01")
    r.contact(8, "2009-01-01", "DC509").contact(8, "2016-01-01", "DZ039", secondary=["DI21"])
    r.contact(8, "2017-01-01", "DI219", pattype=2)
    # 9: ezetimibe is not a statin (C10AX): a non-user candidate
    r.person(9, "F", "1948-01-01").rx(9, "2012-01-01", "C10AX09")
    return r.write(tmp_path_factory.mktemp("spec") / "data")


@pytest.fixture(params=ENGINES)
def table(request, data):
    study = study_from_text(STUDY)
    _, plan, ds = R.prepare(study, data)
    tables, attrition, _ = R.person_table(plan, ds, request.param)
    t = R.combined(plan, tables)
    return {int(p): {k: t[k][i] for k in t} for i, p in enumerate(t["pnr"]) if t["group"][i]}, \
        t, attrition


def test_exposed_rows(table):
    rows, _, _ = table
    assert sorted(rows) == [1, 4, 5, 8]
    assert rows[1]["index_date"] == d("2012-03-01")
    assert (rows[1]["exit_date"], rows[1]["status"]) == (d("2015-05-05"), 1)
    assert rows[1]["time"] == d("2015-05-05") - d("2012-03-01") + 1
    assert (rows[4]["exit_date"], rows[4]["status"]) == (d("2016-02-02"), 2)
    assert (rows[5]["exit_date"], rows[5]["status"]) == (d("2014-03-31"), 3)
    # 8: no inpatient action MI: followed to the 3650-day limit
    assert (rows[8]["exit_date"], rows[8]["status"]) == (d("2014-01-01") + 3649, 0)
    assert rows[8]["time"] == 3650


def test_covariates(table):
    rows, _, _ = table
    assert rows[8]["diabetes"] == 1 and rows[1]["diabetes"] == 0
    assert rows[1]["age"] == pytest.approx((d("2012-03-01") - d("1950-06-01")) / 365.25)
    assert rows[4]["sex"] == 1 and rows[1]["sex"] == 0
    # Charlson: uncomplicated diabetes (DE119) 1 + any tumour (DC50) 2
    assert rows[8]["charlson"] == 3 and rows[1]["charlson"] == 0
    assert rows[1]["statin_packs"] == 1


def test_attrition_names_every_step(table):
    _, _, attrition = table
    steps = dict(attrition["statin"])
    assert steps["index event in window"] == 7      # 1 2 4 5 6 7 8
    assert steps["no event in the 365 days before"] == 6
    assert steps["age in [40, 90)"] == 5
    assert steps["resident ≥ 2 years"] == 4


def test_non_users_follow_the_random_date_rule(table, data):
    _, t, _ = table
    comp = t["group"] == 0
    pnr = t["pnr"][comp]
    idx = random_index_days(pnr, 3, d("2010-01-01"), d("2020-12-31"))
    assert (t["index_date"][comp] == idx).all()
    assert 3 not in pnr and 7 not in pnr   # prior MI; too young
    assert 9 in pnr                        # ezetimibe is no statin
    # users are non-users only before their first statin
    for p, i in zip(pnr, t["index_date"][comp], strict=True):
        first = {1: "2012-03-01", 2: "2009-12-01", 4: "2015-08-01", 5: "2013-01-01",
                 8: "2014-01-01"}.get(int(p))
        if first:
            assert i < d(first)
    # a non-user who starts a statin leaves the comparison the day before
    for i in np.flatnonzero(comp):
        if t["pnr"][i] == 1 and t["status"][i] == 4:
            assert t["exit_date"][i] == d("2012-02-29")


def test_index_never_matches_outside_the_data(tmp_path, data):
    text = STUDY.replace("2010-01-01, 2020-12-31", "2030-01-01, 2031-01-01")
    from hpcstudy.study import StudyErrors

    with pytest.raises(StudyErrors, match="starts after the data end"):
        R.prepare(study_from_text(text), data)


SMALL_COHORT = """
name: fixed
codelists:
  copd: {system: icd10, codes: [J44*]}
index: {date: 2012-01-01}
population: {age: [0, 120]}
covariates: [age, sex, region, calendar_year]
outcome: {name: copd, codelist: copd}
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_fixed_date_cohort_and_residence(engine, tmp_path):
    r = Registers()
    r.person(1, "M", "1950-01-01").contact(1, "2013-01-01", "DJ441", pattype=2)
    r.person(2, "F", "2012-06-01")                                 # born after index
    r.person(3, "F", "1970-01-01").move(3, "U", "2010-01-01")      # abroad at index
    r.person(4, "M", "1970-01-01").move(4, "U", "2010-01-01").move(4, "I", "2011-06-01")
    r.person(5, "M", "1940-01-01").death(5, "2011-12-31")          # dead before index
    r.person(6, "F", "1980-01-01", region=1081).contact(6, "2011-01-01", "DJ449")
    data = r.write(tmp_path / "d", partitions=3)
    _, plan, ds = R.prepare(study_from_text(SMALL_COHORT), data)
    tables, _, _ = R.person_table(plan, ds, engine)
    t = R.combined(plan, tables)
    assert t["pnr"].tolist() == [1, 4, 6]
    assert t["status"].tolist() == [1, 0, 0]
    assert t["exit_date"][0] == d("2013-01-01")
    assert t["region"].tolist() == [1084, 1084, 1081]
    assert t["calendar_year"].tolist() == [2012] * 3
