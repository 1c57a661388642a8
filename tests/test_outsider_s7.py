"""An outsider's attacks on the project's promises (session 7): each test is a break found by
running the real CLI, kept so it stays fixed."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
STATINS = (ROOT / "examples" / "statins_mi.yaml").read_text()


def _one_error_line(r, exit_code: int = 2) -> str:
    """The promise for bad input: exit 2, one line ``hpcstudy: error: …``, no traceback."""
    assert r.returncode == exit_code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error: "), r.stderr
    return lines[0]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- a propensity score of one rare flag ---------------------------------------------------
# On small_data a diabetes diagnosis in the 10 days before index is held by 1 statin user and
# 1 non-user: Table 1 withholds the flag, but the preference table and the design's truncation
# point gave both back.
def _rare_flag_study(tmp_path: Path, design: str) -> Path:
    study = tmp_path / "rare.yaml"
    study.write_text(STATINS.replace(
        "  - charlson\n",
        "  - charlson\n  - {name: recent_dm, codelist: diabetes, window: [-10, 0]}\n").replace(
        "analyses:", f"propensity:\n  covariates: [recent_dm]\n{design}\nanalyses:"))
    return study


@pytest.fixture(scope="module")
def rare_flag_run(small_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rare")
    out = root / "out"
    study = _rare_flag_study(root, "  method: weighting\n"
                                   "  weighting: {estimand: ate, truncate: [1, 99]}\n")
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_withheld_preference_bins_do_not_sum_to_a_small_count(rare_flag_run):
    # 180 of the 181 statin users were shown in one bin; the withheld bins (the 1 person's
    # and an empty one withheld beside it) then held 181 - 180 = 1 person
    arms = {r["label"]: int(r["persons"]) for r in _rows(rare_flag_run / "tables/cohort.csv")}
    pref = _rows(rare_flag_run / "tables/preference.csv")
    assert any(r["suppressed"] == "True" for r in pref)
    for arm, persons in arms.items():
        shown = sum(int(r["persons"]) for r in pref if r["arm"] == arm and r["persons"])
        assert persons - shown == 0 or persons - shown >= 5, (arm, persons, shown)
    assert run_cli("check-outputs", rare_flag_run).returncode == 0


def test_the_checker_finds_withheld_preference_bins_that_sum_to_a_small_count(rare_flag_run):
    from hpcstudy.outputs import checks

    doc = json.loads((rare_flag_run / "results.json").read_text())
    arms = {r["label"]: r["persons"] for r in doc["cohort"]}
    # what the writer published before: all but one person of each arm in one bin, the small
    # bin and an empty one withheld
    for r in doc["preference"]:
        r.pop("suppressed", None)
        r["persons"] = {"0.45-0.5": arms[r["arm"]] - 1}.get(r["bin"], 0)
        if r["bin"] in ("0-0.05", "0.8-0.85"):
            r.update(persons=None, suppressed=True)
    problems = checks._results(doc, 5, "results.json")
    assert sum("withheld bins of arm" in p and "hold 1 persons" in p for p in problems) == 2


def test_the_design_publishes_no_value_of_a_persons_score_or_weight(rare_flag_run):
    # truncated_at was [1.23, 5.3166…] = the weight 957/180 of the exposed without the flag:
    # 180 of 181 statin users and 957 of 959 persons lack it, so 1 and 1 have it
    design = json.loads((rare_flag_run / "results.json").read_text())["design"]
    assert not {"truncated_at", "common_support", "caliper_logit"} & set(design)
    text = (rare_flag_run / "results.json").read_text()
    assert "5.3166" not in text and "1.2316" not in text


def test_the_gate_refuses_a_design_that_shows_a_weight(rare_flag_run):
    from hpcstudy.outputs import gate

    doc = json.loads((rare_flag_run / "results.json").read_text())
    for field, value in (("truncated_at", [1.2316602316602308, 5.316666666666683]),
                         ("common_support", [0.0, 0.5]), ("caliper_logit", 0.01)):
        design = {**doc["design"], field: value}
        assert any(field in p for p in gate._design_problems(design, "d")), field


# -- a matched analysis with a bootstrap interval ------------------------------------------
def test_the_bootstrap_interval_goes_with_a_withheld_exposure_term(small_data, tmp_path):
    # 178 matched pairs with 4 MIs in each arm within 700 days: the Cox model withholds the
    # statin term, but design.bootstrap showed its SE and interval, and 12 of 50 replicates
    # "failed" (a replicate fails when an arm draws no event: about e^-k of them for k events)
    study = tmp_path / "bs.yaml"
    study.write_text(STATINS.replace("max_days: 3650", "max_days: 700").replace(
        "analyses:", "propensity:\n  covariates: [age, sex, diabetes]\n  method: matching\n"
                     "  matching: {ratio: 1, caliper: 0.2, bootstrap: 20}\n\nanalyses:"))
    out = tmp_path / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "results.json").read_text())
    statin = next(t for t in doc["models"]["cox"]["terms"] if t["term"] == "statin")
    assert statin["coef"] is None   # the premise: the term is withheld
    assert "bootstrap" not in doc["design"]
    assert run_cli("check-outputs", out).returncode == 0
    # the checker, independently: a bootstrap beside the withheld term is a problem
    from hpcstudy.outputs import checks

    doc["design"]["bootstrap"] = {"replicates": 50, "failed": 12, "term": "statin",
                                  "se": 0.48, "lower_95": 0.38, "upper_95": 1.89}
    assert any("design.bootstrap" in p for p in checks._results(doc, 5, "r"))


def test_a_failed_match_names_no_small_count(small_data, tmp_path, audit_log):
    # "matched 1 of the 181 exposed persons, fewer than min_cell (5)": a small cell in the
    # error line and in the audit log, which keeps each refusal's message
    import re

    study = tmp_path / "m.yaml"
    study.write_text(STATINS.replace(
        "analyses:", "propensity:\n  covariates: [age, charlson]\n  method: matching\n"
                     "  matching: {ratio: 1, caliper: 0.000005}\n\nanalyses:"))
    r = run_cli("run", study, "--data", small_data, "--out", tmp_path / "out", "--quiet")
    line = _one_error_line(r)
    assert "fewer than min_cell (5)" in line
    assert not re.search(r"matched \d|SD = ", line), line
    last = json.loads(audit_log.read_text().splitlines()[-1])
    assert last["event"] == "finished" and not re.search(r"matched \d", last["status"])
    assert not (tmp_path / "out").exists()


# -- I/O failures ---------------------------------------------------------------------------
def test_a_run_that_hits_the_file_size_limit_names_out_and_resumes(small_data, tmp_path,
                                                                   monkeypatch):
    # the report (83 kB) passes a 40 kB limit no more than a full disk would: the line was
    # "hpcstudy: error: .out.partial-PID@HOST: cannot write the report … then run `hpcstudy
    # report` again", naming a hidden folder already removed and a command that cannot help
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    # an audit log of its own: the session's shared one outgrows the limit after other tests
    monkeypatch.setenv("HPCSTUDY_AUDIT_LOG", str(tmp_path / "log" / "audit.jsonl"))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "hpcstudy.cli", "run", str(ROOT / "examples/statins_mi.yaml"),
            "--data", str(small_data), "--out", str(out), "--quiet"]
    r = subprocess.run(args, capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == (f"hpcstudy: cannot write {out}: a file would exceed the size "
                                "limit; nothing half-written was kept — free some space or "
                                "choose another location")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "out.checkpoints"]
    r = run_cli(*args[3:], "--resume")
    assert r.returncode == 0, r.stderr
    assert (out / "report.html").is_file()


# -- rows that split persons: a time-varying state -------------------------------------------
VARYING = """name: varying
codelists:
  statins: {system: atc, codes: [C10AA*]}
  circulatory: {system: icd10, codes: [I*, C*, E*, J*]}
index: {date: 2010-01-01}
population: {age: [40, 90]}
covariates:
  - age
  - {name: statin, codelist: statins, time_varying: true}
outcome: {name: circulatory, codelist: circulatory}
follow_up: {end_date: 2010-02-10}
analyses:
  measures:
    - {name: by_statin, by: [statin]}
"""


def test_a_time_varying_state_hides_the_persons_who_switched(small_data, tmp_path):
    # a person who starts a statin has time in both states: a measure by statin with 874 and
    # 246 persons beside a cohort of 1 118, and the Poisson model's statin term with persons
    # 246 and persons_other 874 of its 1 118, gave the 2 who started one in the first 41 days
    study = tmp_path / "varying.yaml"
    study.write_text(VARYING + "  poisson: {adjust: [age, statin]}\n")
    out = tmp_path / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    cohort = sum(int(r["persons"]) for r in _rows(out / "tables/cohort.csv"))
    rows = _rows(out / "tables/measure_by_statin.csv")
    if all(r["persons"] for r in rows):
        extra = sum(int(r["persons"]) for r in rows) - cohort
        assert extra == 0 or extra >= 5, extra
    model = json.loads((out / "results.json").read_text())["models"]["poisson"]
    for t in model.get("terms", []):
        if t["persons"] is not None:
            both = t["persons"] + t["persons_other"] - model["persons"]
            assert both == 0 or both >= 5, (t, model["persons"])
    statin = next(t for t in _rows(out / "tables/model_poisson.csv") if t["term"] == "statin")
    assert statin["coef"] == "" and "both with and without statin" in statin["withheld"]
    assert run_cli("check-outputs", out).returncode == 0
    # the checker, from the published numbers alone (results.json and the CSVs)
    from hpcstudy.outputs import checks

    doc = {"cohort": [{"label": "cohort", "persons": 1118, "events": 63}],
           "measures": {"by_statin": [{"statin": 0, "persons": 874, "events": 44},
                                      {"statin": 1, "persons": 246, "events": 19}]}}
    assert checks.split_overlaps(doc, 5) == [("measures.by_statin", (), 2)]
    terms = [{"term": "age", "persons": None, "events": None, "persons_other": None,
              "events_other": None},
             {"term": "statin", "persons": 246, "events": 19, "persons_other": 874,
              "events_other": 44}]
    files = {"tables/cohort.csv": ("cohort", doc["cohort"]),
             "tables/measure_by_statin.csv": ("measure", doc["measures"]["by_statin"]),
             "tables/model_poisson.csv": ("model", terms)}
    problems = checks.check_run(files, 5)
    assert any("hold 2 persons more" in p for p in problems)
    assert any("model_poisson.csv" in p and "by 2" in p for p in problems)
    model = {"persons": 1118, "events": 63, "terms": terms}
    assert any("exceed the model's by 2" in p for p in checks._model(model, 5, "m"))


# -- a directly standardised proportion ---------------------------------------------------
def test_a_standardised_interval_shown_only_where_every_age_band_passes(small_data, tmp_path):
    # 30-day mortality by hospital, standardised to the ESP 2013: a row of 8 persons and 0
    # deaths showed an upper limit of 2.2743 = 3.689 · max(w_a / persons_a), the weight of
    # ages 30-60 over 1 person: the one person aged 30-60 with an MI at hospital 1301
    import numpy as np
    import pandas as pd

    study = tmp_path / "hs.yaml"
    study.write_text((ROOT / "examples/mi_hospitals.yaml").read_text().replace(
        "age: [18, 120]", "age: [30, 120]").replace(
        "{name: mortality_by_hospital, by: [hospital]}",
        "{name: mortality_by_hospital, by: [hospital], standardise: esp2013, "
        "age_bands: [30, 60, 80, 150]}"))
    out = tmp_path / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    people = pd.read_parquet(out / "private/person_table.parquet")
    people["band"] = np.digitize(people["age"], [60, 80])
    table = _rows(out / "tables/measure_mortality_by_hospital.csv")
    assert any(r["persons"] for r in table)   # the premise: rows shown (1301: 8 persons)
    for row in (r for r in table if r["standardised_upper_95"]):
        here = people[people["hospital"] == int(row["hospital"])]
        for _, band in here.groupby("band"):
            n, d = len(band), int(band["event"].sum())
            assert all(x == 0 or x >= 5 for x in (n, d, n - d)), (row, n, d)


def test_a_report_that_hits_the_file_size_limit_leaves_no_half_written_file(statins_run,
                                                                             tmp_path):
    # `hpcstudy report` stopped by a full disk left OUT/.report.html.tmp, which then held every
    # export of the run ("not declared in outputs.json")
    import resource
    import shutil
    import subprocess
    import sys

    out = tmp_path / "out"
    shutil.copytree(statins_run, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    r = subprocess.run([sys.executable, "-m", "hpcstudy.cli", "report", str(out)],
                       capture_output=True, text=True, preexec_fn=limit,
                       env={**os.environ, "HPCSTUDY_AUDIT_LOG": str(tmp_path / "audit.jsonl")})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert run_cli("check-outputs", out).returncode == 0


# -- writing inside what hpcstudy wrote ------------------------------------------------------
def test_no_folder_is_written_inside_a_dataset_or_a_run(statins_run, tmp_path):
    # `synth --out data/bef/x` wrote a second dataset into the first one's register folder:
    # `data verify` then failed on 56 files and ingest refused the dataset; a dataset (or a run)
    # under a run's tables/ held every later export of that run
    import shutil

    data = tmp_path / "data"
    assert run_cli("synth", "--persons", 50, "--partitions", 1, "--out", data).returncode == 0
    run = tmp_path / "run"
    shutil.copytree(statins_run, run)
    for args in (("synth", "--persons", 50, "--out", data / "bef" / "x"),
                 ("synth", "--persons", 50, "--out", run / "tables" / "x"),
                 ("run", ROOT / "examples/statins_mi.yaml", "--data", data, "--out",
                  run / "again", "--quiet")):
        line = _one_error_line(run_cli(*args))
        assert "lies inside the" in line, line
    assert not (data / "bef" / "x").exists() and not (run / "tables" / "x").exists()
    assert not (run / "again").exists()
