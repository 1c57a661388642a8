"""An outsider's attacks on the project's promises (session 8): each test is a break found by
running the real CLI on small synthetic data, kept so it stays fixed (or, marked xfail, so the
owner sees it)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
STATINS = (ROOT / "examples" / "statins_mi.yaml").read_text()
M = 5


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _small(n) -> bool:
    return 0 < n < M


def _design_run(root: Path, small_data, propensity: str, extra: str = "") -> Path:
    study = root / "s.yaml"
    study.write_text(STATINS.replace("analyses:", f"propensity:\n{propensity}\nanalyses:")
                     .replace("  min_cell: 5\n", f"  min_cell: 5\n{extra}"))
    out = root / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


# -- the equipoise share with bins that do not end at 0.3 and 0.7 ---------------------------
def test_the_equipoise_share_counts_no_persons_the_bins_do_not(small_data, tmp_path):
    # three bins (0-0.33, 0.33-0.67, 0.67-1): the share was 0.99791 of 959 persons, so 2
    # persons had a preference score above 0.7, of the 15 shown in the bin 0.67-1
    out = _design_run(tmp_path, small_data, "  covariates: [charlson, sex]\n"
                      "  method: weighting\n  bins: 3\n")
    doc = json.loads((out / "results.json").read_text())
    persons = sum(r["persons"] for r in doc["cohort"])
    share = doc["design"]["equipoise_share"]
    if share is not None:
        inside = round(share * persons)
        assert not _small(inside) and not _small(persons - inside), (share, persons)
    assert run_cli("check-outputs", out).returncode == 0
    # the checker, from the published numbers: a share beside bins not ending at 0.3 and 0.7
    from hpcstudy.outputs import checks

    doc["design"]["equipoise_share"] = 0.9979144942648592
    assert any("equipoise_share" in p for p in checks.smd_of_withheld(doc, "r"))


# -- Table 1 counts the arms before the design, the cohort table after it ---------------------
@pytest.mark.parametrize("design", [
    # 1:2 matching with a caliper of 0.15 SD: 178 of the 181 statin users matched
    "  covariates: [age, sex, charlson]\n  method: matching\n"
    "  matching: {ratio: 2, caliper: 0.15}\n",
    # trimming to the common support: 177 of 181 kept
    "  covariates: [age, sex, charlson]\n  method: weighting\n  trim: true\n"
    "  weighting: {estimand: overlap}\n"], ids=["matching", "trimming"])
def test_table1_and_the_cohort_do_not_differ_by_a_few_persons(small_data, tmp_path, design):
    # the attrition table withheld the step before the design (181), and Table 1's persons of
    # age and the preference table's bins showed it beside the cohort table's 178 (177)
    out = _design_run(tmp_path, small_data, design)
    cohort = {r["label"]: int(r["persons"]) for r in _rows(out / "tables/cohort.csv")}
    before: dict = {}
    for r in _rows(out / "tables/table1.csv"):
        if r["persons"] and not r["percent"]:
            before[r["arm"]] = int(r["persons"])
    pref: dict = {}
    for r in _rows(out / "tables/preference.csv"):
        pref.setdefault(r["arm"], []).append(r["persons"])
    for arm, ns in pref.items():
        if all(ns):
            assert before.setdefault(arm, sum(map(int, ns))) == sum(map(int, ns))
    assert before.keys() <= cohort.keys()
    for arm, n in before.items():
        assert not _small(n - cohort[arm]), (arm, n, cohort[arm])
    assert run_cli("check-outputs", out).returncode == 0
    # the checker, from the published numbers: Table 1's 181 beside the cohort's 178
    from hpcstudy.outputs import checks

    doc = {"cohort": [{"label": "statin", "persons": 178}, {"label": "non_users", "persons": 336}],
           "table1": [{"variable": "age", "level": "-", "arm": "statin", "persons": 181,
                       "percent": None},
                      {"variable": "sex", "level": "-", "arm": "non_users", "persons": 403,
                       "percent": 51.7994858612}],
           "preference": [{"arm": "non_users", "bin": "0-0.5", "persons": 700},
                          {"arm": "non_users", "bin": "0.5-1", "persons": 78}]}
    problems = checks.design_arms_vs_cohort(doc, M, "r")
    assert len(problems) == 1 and "'statin'" in problems[0] and "dropped 3" in problems[0]


# -- the Python API: bad arguments are a UserError, never another exception -------------------
@pytest.mark.parametrize("call", [
    "run(STUDY, None)", "run(STUDY, 5)", "run(STUDY, DATA, out=7)",
    "run(STUDY, DATA, project=3)", "run(STUDY, DATA, client='tcp://host:8786')",
    "run(STUDY, DATA, out=OUT, overwrite='no')", "run(STUDY, DATA, verify='yes')",
    "load_study(None)", "load_study(3)", "load_study(bytes(STUDY, 'utf-8'))"])
def test_the_python_api_refuses_bad_arguments_in_one_line(small_data, tmp_path, call):
    # TypeError (data=None, out=7, load_study(None)), AttributeError (client as a string);
    # overwrite="no" was taken for True
    import hpcstudy

    env = {"STUDY": str(ROOT / "examples/statins_mi.yaml"), "DATA": small_data,
           "OUT": tmp_path / "out", "run": hpcstudy.run, "load_study": hpcstudy.load_study}
    with pytest.raises(hpcstudy.UserError) as e:
        eval(call, env)
    assert "\n" not in str(e.value) and str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_missing_project_file_is_named_a_project_file(small_data, tmp_path):
    # "nope.yaml: no such study file — give the path of a .yaml study" for --project nope.yaml
    r = run_cli("check", ROOT / "examples/statins_mi.yaml", "--data", small_data,
                "--project", tmp_path / "nope.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"hpcstudy: error: {tmp_path / 'nope.yaml'}: no such project "
                                "file — give the path of a .yaml project")


# -- the study language: a value of the wrong shape is an error line, not a crash -------------
@pytest.mark.parametrize("old,new,field", [
    ("hospitals: {by: hospital,", "hospitals: {by: [],", "analyses.hospitals.by"),
    ("{name: mortality_by_hospital, by: [hospital]}", "{name: mortality_by_hospital, by: -1}",
     "analyses.measures[0].by")], ids=["hospitals-by-list", "measure-by-number"])
def test_a_by_of_the_wrong_shape_is_one_error_line(tmp_path, old, new, field):
    # exit 70, "internal error (TypeError: unhashable type: 'Seq')" and "argument of type
    # 'int' is not iterable" (found by mutating the examples' values)
    text = (ROOT / "examples/mi_hospitals.yaml").read_text()
    assert old in text
    study = tmp_path / "s.yaml"
    study.write_text(text.replace(old, new))
    r = run_cli("check", study)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpcstudy: error: {study}:"), r.stderr
    assert f": {field}: " in lines[0]


# -- hospitals numbered by rank or size: a withheld unit's place bounds its counts --------------
@pytest.mark.parametrize("identify", ["rank", "none"])
def test_withheld_hospitals_are_numbered_after_the_shown_ones(small_data, tmp_path, identify):
    # ranked by O/E, a withheld unit after a shown O/E of 2.49 had at least one death (it had
    # 4); numbered by size between two shown units of 28 persons, a withheld one had 28
    text = (ROOT / "examples/mi_hospitals.yaml").read_text()
    study = tmp_path / "h.yaml"
    study.write_text(text.replace("adjust: [age, sex, charlson]}",
                                  f"adjust: [age, sex, charlson], identify: {identify}}}"))
    out = tmp_path / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    rows = _rows(out / "tables/hospitals.csv")
    assert [int(x["hospital"]) for x in rows] == list(range(1, len(rows) + 1))
    withheld = [not x["persons"] for x in rows]
    assert any(withheld) and not all(withheld)   # the premise
    assert withheld == sorted(withheld), withheld   # every withheld unit after the shown ones
    assert run_cli("check-outputs", out).returncode == 0
    # the checker, from the published rows: a withheld unit between two shown ones
    from hpcstudy.outputs import checks

    cols = ("persons", "events", "expected", "oe")
    table = [{"hospital": 1, **dict(zip(cols, (28, 0, 1.9, 0.0), strict=True))},
             {"hospital": 2, **dict.fromkeys(cols), "suppressed": True},
             {"hospital": 3, **dict(zip(cols, (28, 0, 1.2, 0.0), strict=True))}]
    assert any("numbered before a shown one" in p
               for p in checks.check_kind("hospitals", table, M, "h"))


# -- rows in time hold the persons with time in them: consecutive rows are nested ---------------
ONE_DATE = """name: fixed_date
codelists:
  mi: {system: icd10, codes: [I21*]}
index: {date: 2010-12-20}
population: {age: [40, 90]}
covariates: [age, sex]
outcome: {name: mi, codelist: mi}
follow_up: {end_date: 2011-12-31}
analyses:
  lexis: {age_bands: [0, 150], periods: [2010, 2011, 2012]}
  measures:
    - {name: by_year, interval: year}
"""


def test_consecutive_rows_in_time_do_not_differ_by_a_few_persons(small_data, tmp_path):
    # everyone enters on 20 December 2010: 1 115 persons with time in 2010 (0 MIs) and 1 113
    # in 2011, as a measure by year and as Lexis periods, gave the 2 who died or emigrated in
    # the last 12 days of 2010
    study = tmp_path / "d.yaml"
    study.write_text(ONE_DATE)
    out = tmp_path / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    cohort = sum(int(x["persons"]) for x in _rows(out / "tables/cohort.csv"))
    for table in ("measure_by_year", "lexis"):
        shown = [cohort] + [int(x["persons"]) for x in _rows(out / f"tables/{table}.csv")
                            if x["persons"]]
        for a, b in zip(shown, shown[1:], strict=False):
            assert not _small(a - b), (table, shown)
    assert run_cli("check-outputs", out).returncode == 0
    # the checker, from the published numbers: the same steps as measure rows and time bands
    from hpcstudy.outputs import checks

    rows = [{"interval": 2010, "persons": 1115, "events": 0, "person_years": 36.6},
            {"interval": 2011, "persons": 1113, "events": 5, "person_years": 1096.8}]
    doc = {"cohort": [{"label": "cohort", "persons": 1115, "events": 5}],
           "measures": {"by_year": rows,
                        "by_time": [{**x, "time_band": b} for x, b in zip(
                            [{k: v for k, v in x.items() if k != "interval"} for x in rows],
                            ("0-11", "12-399"), strict=True)]}}
    problems = checks._results(doc, M, "r")
    assert sum("in time differ by 2 persons" in p for p in problems) == 2, problems


# -- the gate refused what hpcstudy itself writes: measures by month, quarter or time band -----
def test_measures_in_months_quarters_and_time_bands_can_be_exported(small_data, tmp_path):
    # "text '2010-Q4' holds the number(s) ['4'], which the study does not declare", the same
    # for '2010-02' and the time band '30-399', and "its persons add up to more than the 3000
    # persons of the cohort": every measure by month or quarter of an open outcome, and every
    # one by time_band, was held back at export
    study = tmp_path / "q.yaml"
    study.write_text(ONE_DATE.replace("2010-12-20", "2010-01-01").replace(
        "  lexis: {age_bands: [0, 150], periods: [2010, 2011, 2012]}\n", "").replace(
        "    - {name: by_year, interval: year}\n",
        "    - {name: by_quarter, interval: quarter}\n    - {name: by_month, interval: month}\n"
        "    - {name: by_time, by: [time_band], time_bands: [0, 30, 400]}\n").replace(
        "outcome: {name: mi, codelist: mi}", "outcome: {name: death, death: true}").replace(
        "codelists:\n  mi: {system: icd10, codes: [I21*]}\n", ""))
    out = tmp_path / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert _rows(out / "tables/measure_by_quarter.csv")[0]["interval"] == "2010-Q1"
    assert _rows(out / "tables/measure_by_time.csv")[1]["time_band"] == "30-399"
    r = run_cli("check-outputs", out)
    assert r.returncode == 0, r.stdout + r.stderr


# -- rounding: "rounds every shown count" left the design's tables exact ----------------------
def test_round_to_rounds_the_design_tables_too(small_data, tmp_path):
    out = _design_run(tmp_path, small_data, "  covariates: [age, sex, charlson]\n"
                      "  method: matching\n  matching: {ratio: 2, caliper: 0.2}\n",
                      extra="  round_to: 5\n")
    assert all(int(r["persons"]) % 5 == 0 for r in _rows(out / "tables/cohort.csv"))
    for table in ("table1", "table1_adjusted", "preference"):
        for r in _rows(out / f"tables/{table}.csv"):
            assert not r["persons"] or int(r["persons"]) % 5 == 0, (table, r)
    # a flag's percent is its rounded persons over the arm's rounded persons
    rows = _rows(out / "tables/table1.csv")
    arms = {r["arm"]: int(r["persons"]) for r in rows if r["persons"] and not r["percent"]}
    for r in rows:
        if r["percent"]:
            assert float(r["percent"]) == pytest.approx(100 * int(r["persons"]) / arms[r["arm"]])
    # the adjusted table's flag percent is its rounded weighted persons over the arm's
    adjusted = _rows(out / "tables/table1_adjusted.csv")
    arms = {r["arm"]: float(r["weighted_persons"]) for r in adjusted
            if r["weighted_persons"] and not r["percent"]}
    for r in adjusted:
        if r["weighted_persons"]:
            assert float(r["weighted_persons"]) % 5 == 0, r
        if r["percent"]:
            assert float(r["percent"]) == pytest.approx(
                100 * float(r["weighted_persons"]) / arms[r["arm"]])
    # SMDs to two decimals (exact ones are functions of the exact counts)
    for r in _rows(out / "tables/balance.csv"):
        for f in ("smd_before", "smd_after"):
            assert not r[f] or r[f] == f"{round(float(r[f]), 2):g}" or \
                float(r[f]) == round(float(r[f]), 2), r
    r = run_cli("check-outputs", out)
    assert r.returncode == 0, r.stdout + r.stderr


# -- a model's bands: the persons who left before a band, the reference band's events ---------
def test_a_models_time_bands_give_no_count_back(small_data, tmp_path):
    # everyone enters on 1 January 2010; Poisson by time since index: the band 30-364 held
    # 1 115 persons of the model's 1 118 (3 left in the first 30 days), and the reference band's
    # deaths were 86 - 19 - 38 - 27 = 2
    study = tmp_path / "b.yaml"
    study.write_text(ONE_DATE.replace("2010-12-20", "2010-01-01").replace(
        "2011-12-31", "2013-12-31").replace(
        "codelists:\n  mi: {system: icd10, codes: [I21*]}\n", "").replace(
        "outcome: {name: mi, codelist: mi}", "outcome: {name: death, death: true}").split(
        "analyses:")[0] + "analyses:\n  poisson: {adjust: [age, sex, time_band], "
        "time_bands: [0, 30, 365, 1000]}\n")
    out = tmp_path / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    model = json.loads((out / "results.json").read_text())["models"]["poisson"]
    bands = [t for t in model["terms"] if t["term"].startswith("time_band")]
    assert len(bands) == 3
    shown = [t for t in bands if t["persons"] is not None]
    for t in shown:
        assert not _small(model["persons"] - t["persons"]), t
    if len(shown) == len(bands):
        assert not _small(model["events"] - sum(t["events"] for t in bands))
    assert run_cli("check-outputs", out).returncode == 0
    # the checker, from the published numbers
    from hpcstudy.outputs import checks

    terms = [{"term": f"time_band {b}", "persons": p, "events": e, "persons_other": 1118,
              "events_other": 86 - e}
             for b, p, e in (("30-364", 1115, 19), ("365-999", 1093, 38), ("1000+", 1047, 27))]
    problems = checks._model({"persons": 1118, "events": 86, "terms": terms}, M, "m")
    assert any("no time with this band" in p for p in problems)
    assert any("reference level of time_band" in p for p in problems)


# -- the slurm launcher where no Slurm answers -------------------------------------------------
def test_the_slurm_launcher_without_slurm_is_one_line_at_once(small_data, tmp_path):
    # sbatch failed in the background: tornado printed a traceback per attempt, and after 3
    # minutes "hpcstudy: cannot read or write 180: Only 0/2 workers arrived after 180"
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("scontrol") is None:
        pytest.skip("Slurm's commands are not installed here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    if subprocess.run(["scontrol", "ping"], capture_output=True, env=env,
                      timeout=30).returncode == 0:
        pytest.skip("a Slurm controller answers here")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "hpcstudy.cli", "run",
                        str(ROOT / "examples/statins_mi.yaml"), "--data", str(small_data),
                        "--out", str(out), "--quiet", "--launcher", "slurm"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error: Slurm does not answer"), \
        lines[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def fitted(small_data):
    import hpcstudy

    return hpcstudy.run(ROOT / "examples/statins_mi.yaml", small_data)


@pytest.mark.parametrize("call", [
    "cox.predict_survival(people, day='x')", "cox.predict_survival(people, day=float('nan'))",
    "cox.predict_survival(people, day=None)", "cox.predict_survival(people, day=[1, 2])",
    "poisson.predict(people, exposure='x')", "poisson.predict(people, exposure=[1.0])",
    "cox.predict(people.assign(age='old'))"])
def test_a_fitted_models_bad_arguments_are_a_user_error(fitted, call):
    # day='x' and day=nan gave the survival at the last event day, and exposure=[1.0] was
    # broadcast over five persons, silently; day=None a TypeError, age='old' a ValueError
    import hpcstudy

    env = {"cox": fitted.models["cox"], "poisson": fitted.models["poisson"],
           "people": fitted.person_table.head()}
    with pytest.raises(hpcstudy.UserError) as e:
        eval(call, env)
    assert "\n" not in str(e.value)


# -- a name with digits in a file's path --------------------------------------------------------
def test_an_arm_named_with_digits_can_be_exported(small_data, tmp_path):
    # an arm named like example 4's (sglt2; without the caliper 0.2, which declares 2) is
    # written to tables/attrition_sglt2.csv, and the gate held outputs.json, so every file:
    # "text 'tables/attrition_sglt2.csv' holds the number(s) ['2'], which the study does not
    # declare"
    assert "  name: statin\n" in STATINS and "7" not in STATINS   # 7: no number of the study
    study = tmp_path / "s.yaml"
    study.write_text(STATINS.replace("  name: statin\n", "  name: statin7\n"))
    out = tmp_path / "out"
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert (out / "tables/attrition_statin7.csv").is_file()
    r = run_cli("check-outputs", out)
    assert r.returncode == 0, r.stdout[-3000:]


def test_consecutive_rows_without_the_event_give_no_count_back():
    """Persons without the event in one quarter against persons with time in the next: 1 084
    without a death in 2011-Q2 and 1 083 in Q3 gave the 1 who left in Q2 (the export register
    held it, session 8); the writer's rule looks at that step too."""
    from hpcstudy.outputs.checks import band_steps

    def doc(q3):
        rows = [{"interval": "2011-Q1", "persons": 1100, "events": 6, "person_years": 270.0},
                {"interval": "2011-Q2", "persons": 1094, "events": 10, "person_years": 268.0},
                {"interval": "2011-Q3", "persons": q3, "events": 7, "person_years": 265.0}]
        return {"cohort": [{"label": "all", "persons": 1100, "events": 30}],
                "measures": {"q": rows}}

    assert band_steps(doc(1083), 5) == [("measures.q", (), 1)]
    assert band_steps(doc(1084), 5) == []      # nobody left in Q2 but the 10 who died
    assert band_steps(doc(1070), 5) == []      # 14 left: at least the threshold
