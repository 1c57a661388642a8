"""Spec tests: small readable registers, a study, the per-person rows expected — run on
every engine (reference and dask) by one parametrized fixture."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpcstudy.engines import run as R
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


def spec_registers() -> Registers:
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
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return spec_registers().write(tmp_path_factory.mktemp("spec") / "data")


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


M64 = 2**64 - 1
DATA_END = d("2023-12-31")       # the period end the builder writes into the manifest


def drawn_day(pnr: int, seed: int, start: int, end: int) -> int:
    """The non-users' index rule written out by hand in Python integers: the pnr mixed with the
    seed (times the 64-bit golden ratio), scrambled by the MurmurHash3 64-bit finaliser, taken
    modulo the days of the `between` window."""
    x = pnr ^ (seed * 0x9E3779B97F4A7C15 & M64)
    x = ((x ^ (x >> 33)) * 0xFF51AFD7ED558CCD) & M64
    x = ((x ^ (x >> 33)) * 0xC4CEB9FE1A85EC53) & M64
    x ^= x >> 33
    return start + x % (end - start + 1)


def expected_non_users() -> pd.DataFrame:
    """The comparison group of STUDY, person by person, from the readable register rows and the
    study's rules (docs/studies.md) alone."""
    regs = {k: pd.DataFrame(v) for k, v in spec_registers().t.items()}

    def days(col):
        return col.astype("datetime64[s]").astype("int64") // 86400

    lmdb, adm, diag = regs["lmdb"], regs["lpr_adm"], regs["lpr_diag"]
    statins = lmdb[lmdb["atc"].str.startswith("C10AA")]
    mi_contacts = adm[adm["recnum"].isin(diag.loc[diag["c_diag"].str.startswith("DI21"),
                                                  "recnum"])]
    # the outcome: an inpatient contact with MI as its action diagnosis
    outcome = adm[(adm["c_pattype"] == 0) & adm["c_adiag"].str.startswith("DI21")]
    rows = []
    for _, person in regs["bef"].iterrows():
        p = int(person["pnr"])
        index = drawn_day(p, 3, d("2010-01-01"), d("2020-12-31"))
        born = d(person["foed_dag"])
        first_statin = days(statins.loc[statins["pnr"] == p, "eksd"]).min()
        death = days(regs["dod"].loc[regs["dod"]["pnr"] == p, "doddato"]).min()
        moves = regs["vnds"][regs["vnds"]["pnr"] == p].assign(
            day=lambda m: days(m["haend_dato"])).sort_values("day")
        before = moves[moves["day"] <= index]
        if first_statin <= index:                       # no exposure on or before index
            continue
        if born > index or death < index:               # born and alive on the index day
            continue
        if len(before) and before["indud_kode"].iloc[-1] == "U":
            continue                                    # abroad on the index day
        arrivals = before.loc[before["indud_kode"] == "I", "day"]
        resident_since = arrivals.iloc[-1] if len(arrivals) else born
        if not 40 <= (index - born) / 365.25 < 90 or (index - resident_since) / 365.25 < 2:
            continue
        if (days(mi_contacts.loc[mi_contacts["pnr"] == p, "d_inddto"]) <= index).any():
            continue                                    # exclude: MI on or before index
        mi = days(outcome.loc[outcome["pnr"] == p, "d_inddto"])
        leaves = moves.loc[(moves["indud_kode"] == "U") & (moves["day"] > index), "day"]
        ends = [(index + 3649, 0), (DATA_END, 0), (mi[mi > index].min(), 1), (death, 2),
                (leaves.min() - 1, 3), (first_statin - 1, 4)]
        ends = sorted((int(day), status) for day, status in ends if pd.notna(day))
        exit_day, status = ends[0]
        # no tie between different reasons in this data: the expectation needs no tie rule
        assert ends[1][0] > exit_day or ends[1][1] == status, (p, ends)
        rows.append({"pnr": p, "index_date": index, "exit_date": exit_day, "status": status,
                     "time": exit_day - index + 1})
    return pd.DataFrame(rows)


def test_non_users_follow_the_random_date_rule(table):
    _, t, _ = table
    comp = t["group"] == 0
    got = pd.DataFrame({k: np.asarray(t[k][comp], dtype=np.int64) for k in
                        ("pnr", "index_date", "exit_date", "status", "time")})
    want = expected_non_users()
    # the data exercises the rules named here: prior MI (3), too young (7), ezetimibe is no
    # statin (9), and non-users who leave the comparison when they start a statin
    assert 3 not in want["pnr"].values and 7 not in want["pnr"].values
    assert 9 in want["pnr"].values
    assert (want["status"] == 4).any()
    pd.testing.assert_frame_equal(got.sort_values("pnr").reset_index(drop=True),
                                  want.sort_values("pnr").reset_index(drop=True))


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
