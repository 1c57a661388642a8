"""Study variants (sensitivity analyses): run one locally, or submit all as a job array."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import run_cli, same_output

from hpcstudy.cluster import slurm
from hpcstudy.errors import UserError
from hpcstudy.study import StudyErrors, load_study

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VARIANTS = """
variants:
  - {name: washout_2y, set: {exposure.washout_days: 730}}
  - {name: age_50_80, set: {population.age: [50, 80]}}
"""


@pytest.fixture
def study(tmp_path):
    f = tmp_path / "statins.yaml"
    f.write_text((EXAMPLES / "statins_mi.yaml").read_text() + VARIANTS)
    return f


def test_variants_change_what_they_say(study):
    base = load_study(study)
    assert base.variant_names == ("washout_2y", "age_50_80")
    w = load_study(study, "washout_2y")
    assert w.index.washout_days == 730 and base.index.washout_days == 365
    assert w.name == "statins_mi.washout_2y"
    assert load_study(study, "age_50_80").population.age == (50, 80)


def test_unknown_and_malformed_variants_are_named(study, tmp_path):
    with pytest.raises(UserError, match="no variant 'men'.*washout_2y, age_50_80"):
        load_study(study, "men")
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "statins_mi.yaml").read_text() +
                   "variants:\n  - {name: x, set: {population.sex: both}}\n  - {nom: y}\n")
    with pytest.raises(StudyErrors) as e:
        load_study(bad, "x")
    lines = e.value.lines()
    assert any("variants[1]: needs name:" in x for x in lines), lines
    assert any("population.sex" in x and "'both'" in x for x in lines), lines


def test_array_script(study):
    s = load_study(study)
    text = slurm.render_sbatch(slurm.load_profile("ci"), study=study, data=Path("/d"),
                               out=Path("/o"), study_name=s.name, python="py",
                               variants=s.variant_names)
    assert "#SBATCH --array=0-1" in text and "VARIANTS=(washout_2y age_50_80)" in text
    assert '--out /o/"$VARIANT"' in text and '--variant "$VARIANT"' in text
    assert "--output=/o.slurm-%A_%a.out" in text


@pytest.mark.slurm
def test_a_study_with_variants_runs_as_a_job_array(slurm_cluster, study, small_data, tmp_path):
    env = slurm_cluster.env()
    out = tmp_path / "arr"
    r = run_cli("submit", study, "--profile", "ci", "--data", small_data, "--out", out, env=env)
    assert r.returncode == 0 and "job array of 2 variants" in r.stdout, r.stderr
    job = json.loads((tmp_path / "arr.job.json").read_text())["job_id"]
    deadline = time.monotonic() + 240
    while not all((out / v / "results.json").exists() for v in ("washout_2y", "age_50_80")):
        logs = "".join(p.read_text() for p in tmp_path.glob("arr.slurm-*.out"))
        assert "error" not in logs, logs
        assert time.monotonic() < deadline, slurm.status([job], env)
        time.sleep(1)
    deadline = time.monotonic() + 60
    rows = slurm.status([job], env)
    while not all(r["state"] == "done" for r in rows):
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)
        rows = slurm.status([job], env)
    # the array's id stands for its tasks, a row each
    assert sorted(r["job_id"] for r in rows) == [f"{job}_0", f"{job}_1"]
    r = run_cli("logs", out, env=env)               # every task's log, named
    assert r.returncode == 0 and r.stdout.count("==> ") == 2, r.stderr
    for v in ("washout_2y", "age_50_80"):
        local = tmp_path / f"local_{v}"
        assert run_cli("run", study, "--variant", v, "--data", small_data, "--out", local,
                       "--quiet").returncode == 0
        for f in local.rglob("*"):
            if f.is_file():   # (but what each run records of itself)
                same_output(f, out / v / f.relative_to(local))
