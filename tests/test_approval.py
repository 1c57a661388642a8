"""Project approvals: a study reaching outside the approved registers, columns or period is
refused by check, plan and run — naming what is outside — before any data file is read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.engines.run import prepare
from hpcstudy.secure.approval import load_approval, reach
from hpcstudy.study import StudyErrors

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

WHOLE = """\
project: FSEID-00000001
title: everything
registers: {bef: "*", dod: "*", dodsaarsag: "*", vnds: "*", lpr_adm: "*", lpr_diag: "*",
            lmdb: "*"}
period: [1968-04-02, 2023-12-31]
"""


def project(tmp_path, text: str) -> Path:
    f = tmp_path / "project.yaml"
    f.write_text(text)
    return f


def test_a_study_inside_its_approval_passes(tmp_path, small_data):
    p = project(tmp_path, WHOLE)
    r = run_cli("check", EXAMPLES / "statins_mi.yaml", "--data", small_data, "--project", p)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("change, words", [
    (("lmdb: \"*\"", "lmdb: [pnr, eksd]"), ["column(s) ['atc'] of lmdb"]),
    (("\n            lmdb: \"*\"", ""), ["register lmdb"]),
    (("lpr_adm: \"*\"", "lpr_adm: [pnr, recnum, d_inddto]"), ["['c_pattype'] of lpr_adm"]),
    (("[1968-04-02, 2023-12-31]", "[2005-01-01, 2023-12-31]"),
     ["looks at events from 1968-04-02", "period 2005-01-01 to 2023-12-31"]),
])
def test_reaching_outside_is_refused_and_named(tmp_path, small_data, change, words):
    p = project(tmp_path, WHOLE.replace(*change))
    for cmd in (["check"], ["plan"], ["run", "--out", str(tmp_path / "out")]):
        r = run_cli(*cmd[:1], EXAMPLES / "statins_mi.yaml", "--data", small_data, "--project",
                    p, *cmd[1:])
        assert r.returncode == 2, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
        assert all(w in r.stderr for w in words), r.stderr
    assert not (tmp_path / "out").exists()


def test_refusal_comes_before_any_data_file_is_read(tmp_path, small_data):
    # only the manifest: reading any Parquet file would fail differently
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(small_data / "manifest.json", bare / "manifest.json")
    p = project(tmp_path, WHOLE.replace("[1968-04-02, 2023-12-31]", "[2015-01-01, 2023-12-31]"))
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", bare, "--project", p, "--out",
                tmp_path / "out")
    assert r.returncode == 2 and "outside project FSEID-00000001's period" in r.stderr


def test_closed_windows_fit_a_shorter_period(small_data):
    text = (EXAMPLES / "diabetes_incidence.yaml").read_text().replace("[null, 0]", "[-1825, 0]")
    from hpcstudy.study import study_from_text

    study = study_from_text(text)
    _, plan, _ = prepare(study, small_data)
    lo, hi = reach(plan)
    import numpy as np

    assert str(np.datetime64(int(lo), "D")) == "1995-01-02"  # 2000-01-01 minus 1825 days
    assert str(np.datetime64(int(hi), "D")) == "2023-12-31"


def test_the_project_threshold_is_a_floor(tmp_path, small_data):
    p = project(tmp_path, WHOLE + "disclosure: {min_cell: 11}\n")
    out = tmp_path / "out"
    r = run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", small_data, "--project",
                p, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["run"]["min_cell"] == 11
    assert res["run"]["approval"]["project"] == "FSEID-00000001"


def test_project_file_errors_name_line_and_field(tmp_path):
    p = project(tmp_path, "project: X\nregisters: {lmd: '*', bef: [pnr, shoe]}\n"
                          "period: [2020-01-01, 2010-01-01]\ncolour: red\n")
    with pytest.raises(StudyErrors) as e:
        load_approval(p)
    lines = e.value.lines()
    assert any(":2: registers.lmd: unknown register" in x for x in lines), lines
    assert any(":2: registers.bef: unknown column(s) ['shoe']" in x for x in lines), lines
    assert any(":3: period: reversed" in x for x in lines), lines
    assert any(":4: colour: unknown field" in x for x in lines), lines


# -- approvals that name datasets; a site that requires an approval; the docs' example ----------
def _manifest_sha(data: Path) -> str:
    import hashlib

    return hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()


def test_an_approval_naming_the_dataset_lets_it_run(tmp_path, small_data):
    p = project(tmp_path, WHOLE + f"datasets: ['{'0' * 64}', {_manifest_sha(small_data)}]\n")
    out = tmp_path / "out"
    r = run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", small_data, "--project",
                p, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert _manifest_sha(small_data) in res["run"]["approval"]["datasets"]


def test_another_dataset_is_refused_before_any_data_file_is_read(tmp_path, small_data):
    # a dataset holding only a (changed) manifest: reading any Parquet file would fail otherwise
    other = tmp_path / "other"
    other.mkdir()
    m = json.loads((small_data / "manifest.json").read_text())
    m["source"]["seed"] = 12
    (other / "manifest.json").write_text(json.dumps(m))
    p = project(tmp_path, WHOLE + f"datasets: [{_manifest_sha(small_data)}]\n")
    sha = _manifest_sha(other)
    for cmd in (["check"], ["plan"], ["run", "--out", str(tmp_path / "out")],
                ["submit", "--profile", "ci", "--out", str(tmp_path / "out"), "--dry-run"]):
        r = run_cli(cmd[0], EXAMPLES / "statins_mi.yaml", "--data", other, "--project", p,
                    *cmd[1:])
        assert r.returncode == 2, (cmd, r.stderr)
        assert f"datasets: dataset {other} (manifest SHA-256 {sha}) is not one project " \
               "FSEID-00000001 is approved for" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_dataset_entries_must_be_sha256s(tmp_path):
    p = project(tmp_path, WHOLE + "datasets:\n  - abc\n  - 7\n")
    with pytest.raises(StudyErrors) as e:
        load_approval(p)
    lines = e.value.lines()
    assert any(":7: datasets[0]: 'abc' is not a SHA-256" in x for x in lines), lines
    assert any(":8: datasets[1]: 7 is not a SHA-256" in x for x in lines), lines


def test_a_site_can_require_an_approval(tmp_path, small_data):
    site = tmp_path / "site.yaml"
    site.write_text("require_project: true\n")
    env = {"HPCSTUDY_SITE_CONFIG": str(site), "HPCSTUDY_PROJECT": ""}
    study = EXAMPLES / "diabetes_incidence.yaml"
    for cmd in (["check"], ["plan"], ["run", "--out", str(tmp_path / "out")],
                ["submit", "--profile", "ci", "--out", str(tmp_path / "out"), "--dry-run"]):
        r = run_cli(cmd[0], study, "--data", small_data, *cmd[1:], env=env)
        assert r.returncode == 2, (cmd, r.stderr)
        assert r.stderr == (f"hpcstudy: error: {site}: this site requires a project approval for "
                            "studies that read data — give --project FILE (or set "
                            "$HPCSTUDY_PROJECT)\n")
    assert not (tmp_path / "out").exists()
    assert run_cli("check", study, env=env).returncode == 0     # the language alone: no data
    p = project(tmp_path, WHOLE)
    r = run_cli("check", study, "--data", small_data, "--project", p, env=env)
    assert r.returncode == 0, r.stderr
    site.write_text("require_project: yes please\n")
    r = run_cli("check", study, "--data", small_data, env=env)
    assert r.returncode == 2 and f"{site}:1: require_project: must be true or false" in r.stderr


def _docs_approval() -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "secure.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    (block,) = [b for b in blocks if b.startswith("project:")]
    return block


def test_the_docs_example_approval_runs_every_example(tmp_path, medium_data):
    p = project(tmp_path, _docs_approval())
    for study in sorted(EXAMPLES.glob("*.yaml")):
        if study.stem == "sglt2_dpp4_hf":
            # needs ~200 000 persons for events in both arms (tests/designs/test_sglt2_truth.py
            # runs it): here only the approval check, which reads nothing
            r = run_cli("check", study, "--data", medium_data, "--project", p)
        else:
            r = run_cli("run", study, "--data", medium_data, "--project", p, "--out",
                        tmp_path / study.stem, "--quiet")
        assert r.returncode == 0, (study.name, r.stderr)
    assert len(list(EXAMPLES.glob("*.yaml"))) == 5
