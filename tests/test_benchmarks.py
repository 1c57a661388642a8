"""The benchmark harness (benchmarks/): the hand-written peers of example 1 and of the diabetes
incidence study build the same per-person table as hpcstudy (the latter also on hand-made edge
cases with hand-worked rows), the comparison refuses a table that differs, and the model-fit
benchmark and its summary run end to end on tiny sizes. Nothing here is timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, run_cli

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import cohort_peers  # noqa: E402
import records  # noqa: E402


@pytest.fixture(scope="module")
def example1_table(medium_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", medium_data, "--out", out,
                "--quiet")
    assert r.returncode == 0, r.stderr
    return cohort_peers.person_table(out / "private" / "person_table.parquet")


@pytest.mark.parametrize("peer", ["duckdb", "polars", "pandas"])
def test_peer_builds_hpcstudys_cohort(peer, medium_data, example1_table, tmp_path):
    pytest.importorskip(peer)
    table = tmp_path / f"{peer}.parquet"
    r = subprocess.run([sys.executable, str(cohort_peers.PEERS[peer]), str(medium_data),
                        str(table)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    theirs = cohort_peers.person_table(table)
    figures = cohort_peers.same_table(example1_table, theirs, peer)
    # both groups, events in both, and every follow-up status the study can end in but one
    assert set(theirs.group) == {0, 1} and theirs.groupby("group").event.sum().min() > 0
    assert {0, 1, 2}.issubset(set(theirs.status))
    assert figures == cohort_peers.cohort_figures(example1_table)


def _peer_table(study, peer, data, tmp_path):
    pytest.importorskip(peer)
    table = tmp_path / f"{peer}.parquet"
    r = subprocess.run([sys.executable, str(cohort_peers.STUDIES[study][1][peer]), str(data),
                        str(table)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return cohort_peers.person_table(table)


@pytest.mark.parametrize("peer", ["duckdb", "polars"])
def test_diabetes_peer_builds_hpcstudys_cohort(peer, small_data, local_run, tmp_path):
    ours = cohort_peers.person_table(local_run / "private" / "person_table.parquet")
    theirs = _peer_table("diabetes_incidence", peer, small_data, tmp_path)
    assert cohort_peers.same_table(ours, theirs, peer) == cohort_peers.cohort_figures(ours)
    assert set(theirs.status) == {0, 1, 2, 3} and set(theirs.group) == {1}


def _day(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


def diabetes_edge_registers():
    """Persons at the edges of examples/diabetes_incidence.yaml's rules (index 2000-01-01, ages
    [20, 90), no E11* on or before index, E11* from the day after, death, the day before
    leaving, end of data 2023-12-31), each with the row the docs give by hand: pnr -> (exit
    day, status), or None for a person not in the cohort."""
    from tests.study.builder import Registers

    r, b, end = Registers(), "1950-06-01", _day("2023-12-31")
    want = {}

    def case(pnr, row, born=b, sex="M"):
        want[pnr] = row
        return r.person(pnr, sex, born)

    case(1, (_day("2000-01-01"), 2)).death(1, "2000-01-01")            # dies on index day
    case(2, None).death(2, "1999-12-31")
    case(3, None).contact(3, "2000-01-01", "DE119")                     # E11 on index day
    case(4, (_day("2000-01-02"), 1), sex="F").contact(4, "2000-01-02", "DE119")
    case(5, None).contact(5, "1995-03-01", "DI109", secondary=["DE110"])  # secondary counts
    case(6, (_day("2005-03-01"), 1)).contact(6, "2005-03-01", "DI109", secondary=["DE110"])
    case(7, (end, 0)).contact(7, "1995-03-01", "DE109")                 # E10 is not E11
    case(8, None).contact(8, "1999-03-01", "DE119", pattype=2)          # outpatient counts
    case(9, None).move(9, "U", "2000-01-01")                            # leaves on index day
    case(10, (_day("2000-01-01"), 3)).move(10, "U", "2000-01-02")
    case(11, (end, 0)).move(11, "I", "2000-01-01")                      # arrives on index day
    case(12, None).move(12, "I", "2000-01-02")
    case(13, None).move(13, "U", "1990-01-01").move(13, "I", "2001-01-01")  # abroad at index
    case(14, (end, 0)).move(14, "U", "1990-01-01").move(14, "I", "1995-01-01")
    case(15, (end, 0), born="1980-01-01")                               # 7305 days: 20.0
    case(16, None, born="1980-01-02")
    case(17, (end, 0), born="1910-01-01")                               # 89.998
    case(18, None, born="1909-12-31")                                   # 90.001
    case(19, (_day("2003-05-05"), 1)).contact(19, "2003-05-05", "DE119").death(19, "2003-05-05")
    case(20, (_day("2004-04-03"), 3)).move(20, "U", "2004-04-04").contact(
        20, "2004-04-04", "DE119")                                      # diagnosed as he left
    case(21, (_day("2004-04-03"), 3)).move(21, "U", "2004-04-04").move(
        21, "I", "2005-01-01").contact(21, "2006-01-01", "DE119")       # back, then diagnosed
    case(22, (_day("2007-07-07"), 1), sex="F").contact(22, "2007-07-07", "DE119",
                                                       secondary=["DE111"])
    case(23, None).contact(23, "1999-12-30", "DE119", days=6)           # admitted before index
    case(24, None).move(24, "U", "1985-01-01")
    case(25, (end, 1)).contact(25, "2023-12-31", "DE119")               # on the last day
    case(26, (end, 0)).contact(26, "2010-01-01", "DE109").contact(26, "2011-01-01", "DE139")
    case(27, (end, 0)).move(27, "I", "1960-01-01")
    case(28, None, born="2000-01-01")
    case(29, (_day("2002-01-01"), 1), sex="F").contact(
        29, "2003-01-01", "DE119", pattype=3).contact(
        29, "2002-01-01", "DE119", pattype=1)                           # the earlier one
    case(30, (_day("2009-12-31"), 3)).death(30, "2010-01-01").move(30, "U", "2010-01-01")
    for pnr in range(100, 140):                                         # enough for the models
        case(pnr, (end, 0), born=f"{1930 + pnr % 40}-0{1 + pnr % 9}-1{pnr % 10}",
             sex="MF"[pnr % 2])
    return r, want


@pytest.fixture(scope="module")
def diabetes_edges(tmp_path_factory):
    regs, want = diabetes_edge_registers()
    data = regs.write(tmp_path_factory.mktemp("edges") / "data", partitions=3)
    out = data.parent / "out"
    r = run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", data, "--out", out,
                "--quiet")
    assert r.returncode == 0, r.stderr
    return data, cohort_peers.person_table(out / "private" / "person_table.parquet"), want


def _rows(t) -> dict:
    return {int(p): (int(x), int(s)) for p, x, s in zip(t.pnr, t.exit_date, t.status,
                                                         strict=True)}


@pytest.mark.parametrize("tool", ["hpcstudy", "duckdb", "polars"])
def test_diabetes_edge_cases_by_hand(tool, diabetes_edges, tmp_path):
    data, ours, want = diabetes_edges
    t = ours if tool == "hpcstudy" else _peer_table("diabetes_incidence", tool, data, tmp_path)
    assert _rows(t) == {p: row for p, row in want.items() if row is not None}
    index = _day("2000-01-01")
    assert (t.time == t.exit_date - index + 1).all() and (t.event == (t.status == 1)).all()
    if tool != "hpcstudy":
        cohort_peers.same_table(ours, t, tool)


def test_a_peer_table_that_differs_is_refused(example1_table):
    for column, change in (("event", lambda t: t.loc[0, "event"] ^ 1),
                           ("age", lambda t: t.loc[0, "age"] * (1 + 1e-9)),
                           ("time", lambda t: t.loc[5, "time"] + 1)):
        bad = example1_table.copy()
        row = 5 if column == "time" else 0
        bad.loc[row, column] = change(bad)
        with pytest.raises(AssertionError, match=column):
            cohort_peers.same_table(example1_table, bad, "mutant")
    with pytest.raises(AssertionError, match="rows"):
        cohort_peers.same_table(example1_table, example1_table.iloc[1:], "mutant")


def test_child_measurements_and_summaries():
    r = records.run_child([sys.executable, "-c",
                           "import numpy as np; a = np.ones(40_000_000); print(a.sum())"])
    assert r["stdout"].strip() == "40000000.0"
    assert r["peak_rss_mib"] > 300  # 305 MiB of ones, resident
    assert r["cpu_s"] > 0 and r["wall_s"] > 0
    with pytest.raises(RuntimeError, match="exited 3"):
        records.run_child([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert records.summary([3.0, 1.0, 2.0, None]) == \
        {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert records.summary([]) is None


def test_a_childs_peak_memory_is_its_own_not_the_benchmarks():
    """Linux charges a forked child at least its parent's resident memory (the high water
    kept across exec): a tool started from a benchmark holding 600 MiB must not be recorded
    at 600 MiB."""
    import numpy as np

    held = np.ones(600 * 2**20 // 8)   # resident in this process
    r = records.run_child([sys.executable, "-c", "print(1)"])
    assert held.sum() > 0 and r["peak_rss_mib"] < 200, r["peak_rss_mib"]
    with pytest.raises(RuntimeError, match="took longer"):
        records.run_child([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)


def test_model_benchmark_and_summary_on_tiny_sizes(tmp_path):
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path), "BENCH_RUN": "test-run",
           "BENCH_LOAD_BEFORE": "3.5"}
    r = subprocess.run([sys.executable, "cox_peers.py", "--preset", "tiny"], cwd=BENCH,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in (tmp_path / "cox_peers.jsonl").read_text().splitlines()]
    assert [(x["ties"], x["n"]) for x in recs] == [("efron", 2000), ("breslow", 2000)]
    for x in recs:
        assert x["run"] == "test-run" and x["load_before_bench"] == 3.5
        assert x["machine"]["cores"] == os.cpu_count() and x["commit"]
        assert x["statsmodels_agreement"] < 1e-6 and x["hpcstudy_s"]["n"] >= 3
        assert x["hpcstudy_cold_s"] > 0 and x["speedup_vs_statsmodels"] > 0
    assert recs[0]["lifelines_agreement"] < 1e-6
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark figures\n\nhistory kept\n")
    r = subprocess.run([sys.executable, "summarize.py", "--out", str(out)], cwd=BENCH,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "history kept" in text and "### Cox fits" in text and "**Noisy:**" in text
    assert text.count("| efron | 2,000 | 3 |") == 1
    # summarising again replaces the generated part, not the history
    subprocess.run([sys.executable, "summarize.py", "--out", str(out)], cwd=BENCH, env=env,
                   check=True, capture_output=True)
    assert out.read_text() == text
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["run"] == "test-run" and len(latest["records"]) == 2


def test_summary_keeps_each_studys_cohort_records(tmp_path):
    """Records of two studies at one size are both shown, each under its own heading, and the
    goal line (example 1's) never reads the other study's record."""
    def rec(study, wall):
        t = {"wall_s": {"median": wall, "min": wall, "max": wall, "n": 1},
             "cpu_s": {"median": wall, "min": wall, "max": wall, "n": 1},
             "peak_rss_mib": {"median": 100.0, "min": 100.0, "max": 100.0, "n": 1},
             "cores_busy": {"median": 1.0, "min": 1.0, "max": 1.0, "n": 1}}
        return {"benchmark": "cohort_peers", "study": study, "persons": 1000,
                "cohort_rows": 10, "events": 1, "person_years": 5.0, "hpcstudy": t,
                "duckdb": t, "hpcstudy_over_duckdb_wall": wall, "hpcstudy_over_duckdb_cpu": wall,
                "hpcstudy_over_duckdb_peak_rss": 1.0, "decoded_bytes": 1, "parquet_bytes": 1,
                "hpcstudy_decoded_bytes_per_s": 1}
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path), "BENCH_RUN": "test-run"}
    r = subprocess.run([sys.executable, "-c", "import records, sys; "
                        "[records.append('cohort_peers', eval(a)) for a in sys.argv[1:]]",
                        repr(rec("statins_mi", 0.5)), repr(rec("diabetes_incidence", 7.0))],
                       cwd=BENCH, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "summarize.py", "--out", str(out)], cwd=BENCH,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    one, two = text.split("### Cohort building, diabetes_incidence")
    assert "### Cohort building, example 1" in one and "duckdb 0.5×" in one
    assert "**met**" in one and "7.0×" not in one
    assert "duckdb 7.0×" in two and "Goal" not in two


def test_peers_random_index_day_is_the_study_languages():
    sys.path.insert(0, str(BENCH / "peers"))
    import common

    from hpcstudy.engines.common import random_index_days

    pnr = np.random.default_rng(0).integers(0, 2**62, 10_000)
    assert np.array_equal(common.random_index_days(pnr, 7, 100, 5000),
                          random_index_days(pnr, 7, 100, 5000))
