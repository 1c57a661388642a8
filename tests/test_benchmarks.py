"""The benchmark harness (benchmarks/): the hand-written peers of example 1 build the same
per-person table as hpcstudy, the comparison refuses a table that differs, and the model-fit
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


def test_peers_random_index_day_is_the_study_languages():
    sys.path.insert(0, str(BENCH / "peers"))
    import common

    from hpcstudy.engines.common import random_index_days

    pnr = np.random.default_rng(0).integers(0, 2**62, 10_000)
    assert np.array_equal(common.random_index_days(pnr, 7, 100, 5000),
                          random_index_days(pnr, 7, 100, 5000))
