"""Ingest of CPR-keyed extracts: CPR rules, pseudonymisation, quarantine, idempotence, a wrong
file refused before anything is written, and a study that runs on the ingested data."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.registers.store import Dataset
from hpcstudy.secure import cpr

# -- CPR numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("number, born", [
    ("010203-1234", datetime.date(1903, 2, 1)),      # 7th digit 1: 1900s
    ("0102031234", datetime.date(1903, 2, 1)),       # without the dash
    ("311299-3999", datetime.date(1999, 12, 31)),    # 3: 1900s
    ("150536-4111", datetime.date(2036, 5, 15)),     # 4, YY ≤ 36: 2000s
    ("150537-4111", datetime.date(1937, 5, 15)),     # 4, YY > 36: 1900s
    ("010110-9876", datetime.date(2010, 1, 1)),      # 9, YY ≤ 36: 2000s
    ("010170-9876", datetime.date(1970, 1, 1)),      # 9, YY > 36: 1900s
    ("290257-5000", None),                           # 5, YY ≤ 57: 2057 is no leap year
    ("280257-5000", datetime.date(2057, 2, 28)),     # 5–8, YY ≤ 57: 2000s
    ("010158-8000", datetime.date(1858, 1, 1)),      # 5–8, YY > 57: 1800s
    ("290200-1234", None),                           # 1900 had no 29 February
    ("290200-4234", datetime.date(2000, 2, 29)),     # 2000 is a leap year
])
def test_century_and_dates(number, born):
    digits, got, why = cpr.parse(number)
    assert got == born, why


@pytest.mark.parametrize("number, words", [
    ("320101-1234", "impossible birth date"),
    ("011301-1234", "impossible birth date"),
    ("01010-1234", "10 digits"),
    ("0101011234567", "10 digits"),
    ("01A101-1234", "other than digits"),
    ("", "empty"),
])
def test_invalid_numbers_say_why(number, words):
    digits, born, why = cpr.parse(number)
    assert digits is None and words in why


def test_modulus_11_is_not_required():
    # 0101010001: weighted sum 4+3+0+7+0+5+0+0+0+1 = 20, not divisible by 11 — still valid
    assert cpr.parse("010101-0001")[2] is None


def test_pseudonyms_are_keyed_stable_and_positive():
    a, b = b"k" * 32, b"j" * 32
    p = cpr.pseudonym("0101011234", a)
    assert p == cpr.pseudonym("0101011234", a) and 0 < p < 2**62
    assert p != cpr.pseudonym("0101011234", b) and p != cpr.pseudonym("0101011235", a)


# -- ingest -----------------------------------------------------------------------------------
@pytest.fixture
def key(tmp_path):
    k = tmp_path / "project.key"
    k.write_bytes(bytes(range(48)))
    return k


def write(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


BEF = ("cpr,koen,foed_dag,region", "010150-1234,1,1950-01-01,1084", "0202601111,2,1960-02-02,1081",
       "310299-1234,1,1999-02-31,1084", "12345,1,1950-01-01,1084", "030370-2222,3,1970-03-03,1084",
       "040480-3333,2,1980-04-04,9999")


def test_ingest_validates_quarantines_and_pseudonymises(tmp_path, key):
    src = write(tmp_path / "bef.csv", *BEF)
    data = tmp_path / "data"
    r = run_cli("ingest", "--register", "bef", "--input", src, "--data", data, "--key-file", key,
                "--partitions", "3")
    assert r.returncode == 0, r.stderr
    assert "2 rows added" in r.stdout and "4 quarantined" in r.stdout
    q = (tmp_path / "bef.csv.quarantine.csv").read_text()
    for reason in ("impossible birth date", "10 digits", "koen: 3", "region: 9999"):
        assert reason in q, q
    ds = Dataset.open(data)
    pnr = sorted(ds.read("bef").column("pnr").to_pylist())
    k = key.read_bytes()
    assert pnr == sorted([cpr.pseudonym("0101501234", k), cpr.pseudonym("0202601111", k)])
    assert run_cli("data", "verify", data).returncode == 0
    # no CPR and no key anywhere in the dataset
    blob = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    for secret in (b"0101501234", b"010150-1234", k, k.hex().encode()):
        assert secret not in blob
    assert k.hex() not in r.stdout + r.stderr


def test_ingesting_the_same_file_twice_changes_nothing(tmp_path, key):
    src = write(tmp_path / "bef.csv", *BEF)
    data = tmp_path / "data"
    assert run_cli("ingest", "--register", "bef", "--input", src, "--data", data, "--key-file",
                   key).returncode == 0
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    r = run_cli("ingest", "--register", "bef", "--input", src, "--data", data, "--key-file", key)
    assert r.returncode == 0 and "ingested before" in r.stdout
    assert before == {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}


def test_wrong_columns_are_refused_before_anything_is_written(tmp_path, key):
    src = write(tmp_path / "x.csv", "cpr,sex,born", "010150-1234,1,1950-01-01")
    data = tmp_path / "data"
    r = run_cli("ingest", "--register", "bef", "--input", src, "--data", data, "--key-file", key)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "missing ['foed_dag', 'koen', 'region']" in r.stderr and "unexpected" in r.stderr
    assert not data.exists() and not (tmp_path / "x.csv.quarantine.csv").exists()


def test_a_short_key_is_refused_without_showing_it(tmp_path):
    k = tmp_path / "k"
    k.write_bytes(b"secret-but-short")
    src = write(tmp_path / "bef.csv", *BEF)
    r = run_cli("ingest", "--register", "bef", "--input", src, "--data", tmp_path / "d",
                "--key-file", k)
    assert r.returncode == 2 and "holds 16 bytes; at least 32" in r.stderr
    assert "secret" not in r.stderr


def test_a_whole_extract_ingests_and_a_study_runs_on_it(tmp_path, key):
    d = tmp_path
    people = [f"{(i % 28) + 1:02d}0{(i % 9) + 1}{40 + i % 30:02d}-{1000 + i:04d}"
              for i in range(60)]
    write(d / "bef.csv", "cpr,koen,foed_dag,region",
          *[f"{c},{1 + i % 2},19{c[4:6]}-0{c[3]}-{c[0:2]},1084" for i, c in enumerate(people)])
    write(d / "lpr_adm.csv", "cpr,recnum,d_inddto,d_uddto,c_pattype,c_adiag,c_sgh",
          *[f"{c},{500 + i},2012-0{1 + i % 9}-15,2012-0{1 + i % 9}-16,0,"
            f"{'I21.9' if i % 3 == 0 else 'DZ039'},1301" for i, c in enumerate(people)])
    write(d / "lpr_diag.csv", "recnum,c_diag,c_diagtype",
          *[f"{500 + i},{'DI219' if i % 3 == 0 else 'DZ039'},A" for i in range(60)],
          "99999,DI219,A")
    write(d / "dod.csv", "cpr,doddato")
    write(d / "dodsaarsag.csv", "cpr,doddato,c_dodtilgrundl")
    write(d / "vnds.csv", "cpr,indud_kode,haend_dato")
    write(d / "lmdb.csv", "cpr,eksd,atc,apk,packsize,volume")
    data = d / "data"
    for reg in ("bef", "lpr_adm", "lpr_diag", "dod", "dodsaarsag", "vnds", "lmdb"):
        r = run_cli("ingest", "--register", reg, "--input", d / f"{reg}.csv", "--data", data,
                    "--key-file", key, "--partitions", "2")
        assert r.returncode == 0, (reg, r.stderr)
    ds = Dataset.open(data)
    assert ds.dictionary("icd10") == ["DI219", "DZ039"]
    assert ds.manifest["registers"]["lpr_diag"]["rows"] == 60   # recnum 99999 quarantined
    assert "has no contact" in (d / "lpr_diag.csv.quarantine.csv").read_text()
    assert run_cli("data", "verify", data).returncode == 0
    study = write(d / "s.yaml", "name: s\ncodelists: {mi: {system: icd10, codes: [I21]}}\n"
                  "index: {date: 2012-01-01}\noutcome: {name: mi, codelist: mi}\n")
    out = d / "out"
    r = run_cli("run", study, "--data", data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    cohort = json.loads((out / "results.json").read_text())["cohort"][0]
    assert cohort["persons"] == 60 and cohort["events"] == 20


def test_parquet_extracts_ingest_like_csv(tmp_path, key):
    import pandas as pd

    rows = [r.split(",") for r in BEF[1:3]]
    df = pd.DataFrame(rows, columns=BEF[0].split(","))
    df["foed_dag"] = pd.to_datetime(df["foed_dag"])
    df["koen"] = df["koen"].astype(int)
    df.to_parquet(tmp_path / "bef.parquet")
    data = tmp_path / "data"
    r = run_cli("ingest", "--register", "bef", "--input", tmp_path / "bef.parquet", "--data",
                data, "--key-file", key)
    assert r.returncode == 0 and "2 rows added" in r.stdout, r.stderr
    born = sorted(str(d) for d in Dataset.open(data).read("bef").column("foed_dag").to_pylist())
    assert born == ["1950-01-01", "1960-02-02"]


def test_sas_xport_extracts_with_sas_dates_and_datetimes(tmp_path, key):
    import datetime as dt

    import pandas as pd
    import pyreadstat

    for name, dates in (("dates", [dt.date(1950, 1, 1), dt.date(1960, 2, 2)]),
                        ("datetimes", pd.to_datetime(["1950-01-01", "1960-02-02"]))):
        df = pd.DataFrame({"CPR": ["010150-1234", "0202601111"], "KOEN": [1.0, 2.0],
                           "FOED_DAG": dates, "REGION": [1084.0, 1081.0]})
        src = tmp_path / f"bef_{name}.xpt"
        pyreadstat.write_xport(df, str(src), table_name="BEF", file_format_version=5)
        data = tmp_path / f"data_{name}"
        r = run_cli("ingest", "--register", "bef", "--input", src, "--data", data, "--key-file",
                    key)
        assert r.returncode == 0 and "2 rows added" in r.stdout, r.stderr
        born = sorted(str(d) for d in Dataset.open(data).read("bef").column("foed_dag")
                      .to_pylist())
        assert born == ["1950-01-01", "1960-02-02"], name
