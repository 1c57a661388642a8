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
    # task 0 is the study as written (no --variant), in a folder named after the study
    assert "#SBATCH --array=0-2" in text and "VARIANTS=('' washout_2y age_50_80)" in text
    assert 'FOLDER="${VARIANT:-statins_mi}"' in text and '--out /o/"$FOLDER"' in text
    assert '${VARIANT:+ --variant "$VARIANT"}' in text
    assert "--output=/o.slurm-%A_%a.out" in text


def test_the_array_scripts_tasks_run_what_they_name(study, tmp_path):
    """The rendered array lines, run by bash for each task id, give the study's own run
    (no --variant) for task 0 and each variant for the others, each to its own folder."""
    import subprocess

    s = load_study(study)
    text = slurm.render_sbatch(slurm.load_profile("ci"), study=study, data=Path("/d"),
                               out=Path("/o"), study_name=s.name, python="py",
                               variants=s.variant_names)
    pick = [x for x in text.splitlines() if x.startswith(("VARIANTS=", "VARIANT=", "FOLDER="))]
    run = next(x for x in text.splitlines() if " -m hpcstudy.cli run " in x)
    cmd = run.split(" -m hpcstudy.cli ", 1)[1].rstrip(" &")
    got = []
    for task in range(3):
        script = "\n".join([f"SLURM_ARRAY_TASK_ID={task}", *pick,
                            f"printf '%s|' {cmd}"])
        got.append(subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                  check=True).stdout)
    assert "--variant" not in got[0] and "|--out|/o/statins_mi|" in got[0]
    assert "|--out|/o/washout_2y|" in got[1] and "|--variant|washout_2y|" in got[1]
    assert "|--out|/o/age_50_80|" in got[2] and "|--variant|age_50_80|" in got[2]


def test_a_variant_named_as_the_study_is_refused(tmp_path):
    f = tmp_path / "clash.yaml"
    f.write_text((EXAMPLES / "statins_mi.yaml").read_text() +
                 "variants:\n  - {name: statins_mi, set: {exposure.washout_days: 730}}\n")
    r = run_cli("check", f)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[0]
    assert "clash.yaml:" in line and "named as the study itself" in line, r.stderr


@pytest.mark.slurm
def test_a_study_with_variants_runs_as_a_job_array(slurm_cluster, study, small_data, tmp_path):
    env = slurm_cluster.env()
    out = tmp_path / "arr"
    r = run_cli("submit", study, "--profile", "ci", "--data", small_data, "--out", out, env=env)
    assert r.returncode == 0 and "job array of the study and its 2 variants" in r.stdout, \
        r.stderr
    job = json.loads((tmp_path / "arr.job.json").read_text())["job_id"]
    deadline = time.monotonic() + 240
    folders = ("statins_mi", "washout_2y", "age_50_80")
    while not all((out / v / "results.json").exists() for v in folders):
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
    assert sorted(r["job_id"] for r in rows) == [f"{job}_0", f"{job}_1", f"{job}_2"]
    r = run_cli("logs", out, env=env)               # every task's log, named
    assert r.returncode == 0 and r.stdout.count("==> ") == 3, r.stderr
    for v in folders:   # the study as written, then each variant, as run here
        local = tmp_path / f"local_{v}"
        which = () if v == "statins_mi" else ("--variant", v)
        assert run_cli("run", study, *which, "--data", small_data, "--out", local,
                       "--quiet").returncode == 0
        for f in local.rglob("*"):
            if f.is_file():   # (but what each run records of itself)
                same_output(f, out / v / f.relative_to(local))
