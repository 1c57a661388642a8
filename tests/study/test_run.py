"""`hpcstudy run`: what it writes, what it keeps private, determinism, errors — and the
demo's claim: example 1 recovers the planted hazard ratio, the crude comparison does not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, same_output

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def run_out(medium_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "statins"
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", medium_data, "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r


def test_run_writes_results_tables_plan_and_a_private_table(run_out):
    out, r = run_out
    assert "statin" in r.stdout and "HR statin" in r.stdout and "planted truth" in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert {"attrition", "cohort", "models", "curves", "run"} <= set(res)
    assert res["models"]["cox"]["terms"][0]["term"] == "statin"
    for f in ("cohort.csv", "curves.csv", "model_cox.csv", "model_poisson.csv",
              "attrition_statin.csv", "attrition_non_users.csv"):
        assert (out / "tables" / f).is_file(), f
    assert "registers and columns read" in (out / "plan.txt").read_text()
    private = pq.read_table(out / "private" / "person_table.parquet")
    assert "pnr" in private.column_names and private.num_rows > 100


def _keys(o):
    if isinstance(o, dict):
        for k, v in o.items():
            yield k
            yield from _keys(v)
    elif isinstance(o, list):
        for v in o:
            yield from _keys(v)


def test_nothing_outside_private_names_a_person(run_out):
    out, _ = run_out
    pnrs = list(map(str, pq.read_table(out / "private" / "person_table.parquet")
                    .column("pnr").to_pylist()))
    assert "pnr" not in set(_keys(json.loads((out / "results.json").read_text())))
    for f in out.rglob("*"):
        if f.is_file() and "private" not in f.parts:
            text = f.read_text()
            if f.suffix == ".csv" and text:
                assert "pnr" not in text.splitlines()[0].split(","), f
            assert not any(p in text for p in pnrs), f


def test_same_inputs_give_the_same_bytes(run_out, medium_data, tmp_path):
    out, _ = run_out
    again = tmp_path / "again"
    assert run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", medium_data, "--out", again,
                   "--quiet").returncode == 0
    for f in out.rglob("*"):
        if f.is_file():   # (but what each run records of itself: run.json, audit.json)
            same_output(f, again / f.relative_to(out))


def test_small_cells_are_withheld(medium_data, tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text((EXAMPLES / "mi_mortality.yaml").read_text().replace(
        "analyses:", "disclosure: {min_cell: 30}\nanalyses:"))
    out = tmp_path / "out"
    assert run_cli("run", study, "--data", medium_data, "--out", out).returncode == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["measures"]["mortality_30d"]
    assert any(r.get("suppressed") for r in rows)
    for r in rows:
        if r.get("suppressed"):
            assert r["events"] is None and r["proportion"] is None
        else:
            assert r["persons"] >= 30 and (r["events"] == 0 or r["events"] >= 30)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, medium_data):
    out = tmp_path / "out"
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", tmp_path / "nope", "--out", out)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "statins_mi.yaml").read_text().replace("[age, sex, diabetes, "
                                                                       "charlson]", "[bmi]"))
    r = run_cli("run", bad, "--data", medium_data, "--out", out)
    assert r.returncode == 2 and "bmi" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_demo_recovers_the_planted_hazard_ratio_and_crude_does_not(tmp_path):
    """What `make demo` shows: 200 000 persons, seed 1, example 1."""
    data = tmp_path / "demo-data"
    assert run_cli("synth", "--persons", "200000", "--seed", "1", "--partitions", "8",
                   "--out", data, "--quiet").returncode == 0
    out = tmp_path / "out"
    assert run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", data, "--out", out,
                   "--quiet").returncode == 0
    res = json.loads((out / "results.json").read_text())
    truth = math.exp(res["planted_truth"]["mi_log_hr"]["statin"])
    hr = res["models"]["cox"]["terms"][0]
    assert hr["lower_95"] < truth < hr["upper_95"], hr
    crude_study = tmp_path / "crude.yaml"
    crude_study.write_text((EXAMPLES / "statins_mi.yaml").read_text().replace(
        "cox: {adjust: [age, sex, diabetes, charlson]}", "cox: true"))
    out2 = tmp_path / "crude"
    assert run_cli("run", crude_study, "--data", data, "--out", out2, "--quiet").returncode == 0
    crude = json.loads((out2 / "results.json").read_text())["models"]["cox"]["terms"][0]
    assert crude["lower_95"] > truth, crude   # confounding by indication
