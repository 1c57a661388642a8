"""The Python API (hpcstudy.load_study / hpcstudy.run): the same numbers and files as the CLI,
the documented DataFrames, predictions checked by hand, one-line errors, nothing written
without ``out``, and the example of docs/python-api.md runs."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hpcstudy
from tests.conftest import EXAMPLES, run_cli, same_files

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
RATE = ["persons", "events", "person_years", "rate_per_1000py", "lower_95", "upper_95"]


@pytest.fixture(scope="module")
def statins(small_data, statins_run, tmp_path_factory):
    """Example 1 on small_data by the CLI (conftest's statins_run) and by the API, each into
    its own folder."""
    cli_out, api_out = statins_run, tmp_path_factory.mktemp("api") / "api"
    result = hpcstudy.run(hpcstudy.load_study(EXAMPLES / "statins_mi.yaml"), small_data,
                          out=api_out)
    return cli_out, api_out, result


@pytest.fixture(scope="module")
def mortality(mortality_run):
    """Example 2 (logistic with region indicators, measures) on medium_data (conftest's
    mortality_run, which wrote its outputs for the report tests too)."""
    return mortality_run


@pytest.fixture(scope="module")
def incidence(small_data):
    """Example 3 (rates by sex, Lexis, Poisson) on small_data, no out."""
    return hpcstudy.run(EXAMPLES / "diabetes_incidence.yaml", small_data, engine="reference")


def test_import_hpcstudy_stays_light():
    code = ("import sys, hpcstudy; bad = [m for m in ('pandas', 'dask', 'hpcstudy.api', "
            "'hpcstudy.engines') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hpcstudy.run.__module__ == "hpcstudy.api"
    with pytest.raises(AttributeError):
        hpcstudy.no_such_thing  # noqa: B018


def test_hazard_ratio_equals_the_cli_results(statins):
    cli_out, _, result = statins
    cli = json.loads((cli_out / "results.json").read_text())
    want = {t["term"]: t for t in cli["models"]["cox"]["terms"]}
    got = result.models["cox"].summary.set_index("term")
    assert list(got.index) == list(want)
    for term, row in want.items():
        for col in ("coef", "se", "HR", "lower_95", "upper_95"):
            assert abs(got.loc[term, col] - row[col]) <= 1e-12 * max(1, abs(row[col]))
        assert abs(math.exp(result.models["cox"].coef_[term]) - row["HR"]) <= 1e-12 * row["HR"]
    assert result.exported["models"] == cli["models"]


def test_output_folder_is_the_clis_byte_for_byte(statins):
    cli_out, api_out, result = statins
    same_files(cli_out, api_out)   # all but each run's own audit.json
    assert result.out == api_out
    assert result.exported == json.loads((api_out / "results.json").read_text())
    # audited like the CLI: the folder carries the chain head of the API's own run
    head = json.loads((api_out / "audit.json").read_text())
    assert head["command"] == "run"
    assert head != json.loads((cli_out / "audit.json").read_text())


def test_the_api_run_is_in_the_audit_log(small_data, audit_log, tmp_path):
    hpcstudy.run(EXAMPLES / "statins_mi.yaml", small_data, engine="reference")
    last = [json.loads(line) for line in audit_log.read_text().splitlines()[-2:]]
    assert [r["event"] for r in last] == ["started", "finished"]
    assert last[1]["status"] == "ok" and last[1]["started"]["seq"] == last[0]["seq"]
    assert "(python api)" in last[0]["args"]
    with pytest.raises(hpcstudy.UserError):
        hpcstudy.run(EXAMPLES / "statins_mi.yaml", tmp_path / "nothing here")
    last = json.loads(audit_log.read_text().splitlines()[-1])
    assert last["event"] == "finished" and last["status"].startswith("refused: ")


def test_dataframes_have_the_documented_columns(statins, incidence, mortality):
    result = statins[2]
    assert list(result.cohort.columns) == ["label", *RATE]
    assert list(result.cohort["label"]) == ["statin", "non_users"]
    assert set(result.attrition) == {"statin", "non_users"}
    for frame in result.attrition.values():
        assert list(frame.columns) == ["step", "persons"]
        assert frame["persons"].is_monotonic_decreasing
    assert list(result.curves.columns) == ["group", "day", "at_risk", "events", "survival",
                                           "lower_95", "upper_95", "cumulative_incidence"]
    assert result.rates is None and result.lexis is None and result.measures == {}
    assert list(incidence.rates.columns) == ["sex", *RATE]
    lexis = list(incidence.lexis.columns)
    persons = ["persons"] if "persons" in lexis else []   # counted where disclosure needs it
    assert lexis == ["group", "age_band", "period", *persons, "events", "person_years",
                     "rate_per_1000py", "lower_95", "upper_95"]
    assert set(incidence.models) == {"poisson", "lexis_poisson"}
    assert set(mortality.measures) == {"mortality_30d", "mortality_30d_by_region"}
    assert list(mortality.measures["mortality_30d"].columns) == [
        "region", "index_year", "persons", "events", "proportion", "lower_95", "upper_95"]
    for m in [*result.models.values(), *mortality.models.values()]:
        ratio = {"cox": "HR", "logistic": "OR", "poisson": "RR"}[m.kind]
        assert list(m.summary.columns) == ["term", "coef", "se", ratio, "lower_95", "upper_95",
                                           "z", "p"]
        assert list(m.coef_.index) == m.terms == list(m.se_.index)
        ci = m.conf_int()
        np.testing.assert_allclose(np.exp(ci["lower"]), m.summary["lower_95"], rtol=1e-12)
        np.testing.assert_allclose(np.exp(ci["upper"]), m.summary["upper_95"], rtol=1e-12)
        wide = m.conf_int(0.99)
        assert (wide["lower"] < ci["lower"]).all() and (wide["upper"] > ci["upper"]).all()
    # the person table: one row per person and arm (a non-user may start a statin later)
    pt = result.person_table
    assert len(pt) == int(result.cohort["persons"].sum())
    assert not pt.duplicated(["pnr", "group"]).any()


def test_cohort_agrees_with_the_person_table(statins):
    """Counts computed here from the person table, not by the code under test."""
    result = statins[2]
    pt = result.person_table
    for _, row in result.cohort.iterrows():
        code = 1 if row["label"] == "statin" else 0
        arm = pt[pt["group"] == code]
        assert row["persons"] == len(arm)
        assert row["events"] == int(arm["event"].sum())
        assert abs(row["person_years"] - arm["time"].sum() / 365.25) < 1e-9


def test_cox_predict_and_baseline_hazard_by_hand(statins):
    result = statins[2]
    cox = result.models["cox"]
    pt = result.person_table
    beta = dict(zip(cox.terms, cox.model.coef_, strict=True))
    rows = pt.iloc[:50]
    by_hand = np.exp(beta["statin"] * rows["group"] + sum(
        beta[c] * rows[c] for c in ("age", "sex", "diabetes", "charlson")))
    np.testing.assert_allclose(cox.predict(rows), by_hand, rtol=1e-12)
    # Breslow by a plain loop over the event days
    risk = np.exp(beta["statin"] * pt["group"] + sum(
        beta[c] * pt[c] for c in ("age", "sex", "diabetes", "charlson"))).to_numpy()
    time, event = pt["time"].to_numpy(float), pt["event"].to_numpy()
    days = sorted(set(time[event == 1]))
    cum, want = 0.0, []
    for d in days:
        cum += event[time == d].sum() / risk[time >= d].sum()
        want.append(cum)
    bh = cox.baseline_hazard
    assert list(bh.columns) == ["stratum", "day", "events", "hazard", "cumulative_hazard"]
    assert list(bh["day"]) == days
    np.testing.assert_allclose(bh["cumulative_hazard"], want, rtol=1e-10)
    day = days[len(days) // 2]
    np.testing.assert_allclose(cox.predict_survival(rows, day),
                               np.exp(-want[len(days) // 2] * by_hand), rtol=1e-10)
    # a DataFrame of the terms themselves predicts the same
    terms = rows.rename(columns={"group": "statin"})[cox.terms]
    np.testing.assert_allclose(cox.predict(terms), by_hand, rtol=1e-12)


def test_logistic_predict_with_region_levels_by_hand(mortality):
    m = mortality.models["logistic"]
    pt = mortality.person_table
    beta = dict(zip(m.terms, m.model.coef_, strict=True))
    rows = pt.iloc[::97]
    eta = beta["intercept"] + sum(beta[c] * rows[c] for c in ("age", "sex"))
    levels = [t for t in m.terms if t.startswith("region=")]
    assert len(levels) == pt["region"].nunique() - 1   # the lowest region is the reference
    for t in levels:
        eta = eta + beta[t] * (rows["region"] == int(t.split("=")[1]))
    np.testing.assert_allclose(m.predict(rows), 1 / (1 + np.exp(-eta)), rtol=1e-12)
    assert ((m.predict(rows) > 0) & (m.predict(rows) < 1)).all()
    with pytest.raises(hpcstudy.UserError, match="region"):
        m.predict(rows.drop(columns=["region"]))
    with pytest.raises(hpcstudy.UserError, match="DataFrame"):
        m.predict(rows.to_numpy())
    with pytest.raises(hpcstudy.UserError, match="only a Cox model"):
        m.baseline_hazard  # noqa: B018


def test_poisson_predict_is_a_rate_per_person_year(incidence):
    m = incidence.models["poisson"]
    pt = incidence.person_table
    b = dict(zip(m.terms, m.model.coef_, strict=True))
    rows = pt.iloc[:40]
    rate = np.exp(b["intercept"] + b["age"] * rows["age"] + b["sex"] * rows["sex"])
    np.testing.assert_allclose(m.predict(rows), rate, rtol=1e-12)
    years = rows["time"] / 365.25
    np.testing.assert_allclose(m.predict(rows, exposure=years), rate * years, rtol=1e-12)
    # the model's fitted events add up to the observed ones (a Poisson GLM with intercept)
    total = m.predict(pt, exposure=pt["time"] / 365.25).sum()
    assert abs(total - pt["event"].sum()) < 1e-6 * pt["event"].sum()
    lx = incidence.models["lexis_poisson"]
    with pytest.raises(hpcstudy.UserError, match="lacks the term"):
        lx.predict(rows)


def test_exported_is_disclosure_controlled(incidence, small_data):
    """Without out, exported is the raw results with the study's disclosure rules applied."""
    from hpcstudy.engines.run import exported

    min_cell = incidence.study.min_cell
    assert incidence.exported == exported(incidence.results, min_cell, incidence.study.round_to)
    for row in incidence.exported["lexis"]:
        assert row["events"] is None or row["events"] == 0 or row["events"] >= min_cell
    small = [r for r in incidence.results["lexis"] if 0 < r["events"] < min_cell]
    assert small, "the Lexis table should have small cells for this test to mean anything"


def test_without_out_nothing_is_written(small_data, tmp_path, monkeypatch):
    before = sorted((p, p.stat().st_mtime_ns) for p in small_data.rglob("*"))
    monkeypatch.chdir(tmp_path)
    result = hpcstudy.run(EXAMPLES / "statins_mi.yaml", small_data)
    assert result.out is None and "run" not in result.exported
    assert list(tmp_path.iterdir()) == []
    assert sorted((p, p.stat().st_mtime_ns) for p in small_data.rglob("*")) == before


def test_a_bad_study_is_one_error_with_file_and_line(small_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (EXAMPLES / "statins_mi.yaml").read_text().replace("cox: {adjust:", "cox: {ajdust:")
    bad.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "ajdust" in s)
    with pytest.raises(hpcstudy.StudyErrors) as e:
        hpcstudy.load_study(bad)
    assert f"bad.yaml:{line}" in str(e.value) and "adjust" in str(e.value)
    with pytest.raises(hpcstudy.StudyErrors):
        hpcstudy.run(bad, small_data)
    assert issubclass(hpcstudy.StudyErrors, hpcstudy.UserError)


@pytest.mark.parametrize("kwargs, match", [
    ({"engine": "spark"}, "unknown engine"),
    ({"variant": "no_such_variant"}, "no_such_variant"),
    ({"study": 42}, "a study is a Study"),
    ({"data": "/nonexistent/registers"}, "nonexistent"),
])
def test_bad_arguments_are_user_errors(small_data, kwargs, match):
    args = {"study": EXAMPLES / "statins_mi.yaml", "data": small_data, **kwargs}
    with pytest.raises(hpcstudy.UserError, match=match):
        hpcstudy.run(**args)


def test_out_is_refused_like_the_cli(statins, small_data):
    _, api_out, _ = statins
    before = (api_out / "results.json").read_bytes()
    with pytest.raises(hpcstudy.UserError, match="exists"):
        hpcstudy.run(EXAMPLES / "statins_mi.yaml", small_data, out=api_out, engine="reference")
    with pytest.raises(hpcstudy.UserError):
        hpcstudy.run(EXAMPLES / "statins_mi.yaml", small_data, out=small_data / "out")
    assert (api_out / "results.json").read_bytes() == before


def test_a_variant_runs_like_the_cli(small_data, tmp_path):
    study = tmp_path / "v.yaml"
    study.write_text((EXAMPLES / "statins_mi.yaml").read_text() +
                     "\nvariants:\n  - {name: strict, set: {disclosure: {min_cell: 10}}}\n")
    r = run_cli("run", study, "--data", small_data, "--out", tmp_path / "cli", "--quiet",
                "--variant", "strict", "--engine", "reference")
    assert r.returncode == 0, r.stderr
    loaded = hpcstudy.load_study(study)
    result = hpcstudy.run(loaded, small_data, out=tmp_path / "api", variant="strict",
                          engine="reference")
    assert result.study.min_cell == 10
    same_files(tmp_path / "cli", tmp_path / "api")


def test_the_documented_example_runs(small_data, tmp_path):
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/python-api.md has no python example"
    (tmp_path / "data").symlink_to(small_data)
    (tmp_path / "examples").symlink_to(EXAMPLES)
    code = "\n".join(blocks)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "results" / "results.json").is_file()
    assert "HR" in r.stdout


def test_damaged_data_is_refused_without_out(small_data, tmp_path):
    """No out folder does not mean no checks: a data file that disagrees with the manifest."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    victim = next(p for p in sorted(data.rglob("*.parquet")))
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(hpcstudy.UserError, match=victim.name):
        hpcstudy.run(EXAMPLES / "statins_mi.yaml", data, engine="reference")


def test_the_api_runs_audit_head_ends_with_it(small_data, tmp_path):
    """A folder written after an API run, outside any audited command, carries no head."""
    from hpcstudy.engines.run import run as engine_run
    from hpcstudy.secure import audit

    hpcstudy.run(EXAMPLES / "statins_mi.yaml", small_data, engine="reference")
    assert audit.current() is None
    engine_run(EXAMPLES / "statins_mi.yaml", small_data, tmp_path / "out", engine="reference")
    assert not (tmp_path / "out" / "audit.json").exists()


def test_stratified_cox_baseline_hazard_per_stratum_by_hand(small_data, tmp_path):
    study = tmp_path / "strata.yaml"
    study.write_text((EXAMPLES / "statins_mi.yaml").read_text().replace(
        "cox: {adjust: [age, sex, diabetes, charlson]}", "cox: {adjust: [age], strata: [sex]}"))
    result = hpcstudy.run(study, small_data, engine="reference")
    cox = result.models["cox"]
    assert cox.terms == ["statin", "age"]
    pt = result.person_table
    b = cox.model.coef_
    risk = np.exp(b[0] * pt["group"] + b[1] * pt["age"]).to_numpy()
    time, event, sex = pt["time"].to_numpy(float), pt["event"].to_numpy(), pt["sex"].to_numpy()
    bh = cox.baseline_hazard
    assert sorted(set(bh["stratum"])) == sorted(set(sex[event == 1]))
    for s in set(bh["stratum"]):
        mine = bh[bh["stratum"] == s]
        days = sorted(set(time[(event == 1) & (sex == s)]))
        cum, want = 0.0, []
        for d in days:
            cum += event[(time == d) & (sex == s)].sum() / risk[(time >= d) & (sex == s)].sum()
            want.append(cum)
        assert list(mine["day"]) == days
        np.testing.assert_allclose(mine["cumulative_hazard"], want, rtol=1e-10)
    with pytest.raises(hpcstudy.UserError, match="unstratified"):
        cox.predict_survival(pt.head(), 365)


def test_no_audit_log_no_run(small_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HPCSTUDY_AUDIT_LOG", str(tmp_path))   # a folder: cannot be appended to
    with pytest.raises(hpcstudy.UserError):
        hpcstudy.run(EXAMPLES / "statins_mi.yaml", small_data, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
