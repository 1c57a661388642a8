"""Submitting to Slurm: profiles, the rendered script (golden text), and — on the real
loopback cluster — a submitted study whose results equal the local run, status and cancel."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import run_cli

from hpcstudy.cluster import slurm
from hpcstudy.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GOLDEN = Path(__file__).parent / "golden"


def render(name):
    return slurm.render_sbatch(slurm.load_profile(name), study=Path("/p/study.yaml"),
                               data=Path("/p/data"), out=Path("/p/out dir"), study_name="s1",
                               python="/opt/venv/bin/python", account="p-123")


@pytest.mark.parametrize("name", ["gefion", "ci"])
def test_rendered_scripts_match_their_golden_text(name):
    got = render(name)
    golden = GOLDEN / f"{name}.sbatch"
    if os.environ.get("HPCSTUDY_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text()


def test_gefion_asks_memory_per_gpu_and_never_mem():
    text = render("gefion")
    assert "--mem-per-gpu=240G" in text and "--gpus-per-node=8" in text
    assert "--mem=" not in text and "--cpus-per-gpu=14" in text


def test_paths_are_quoted_for_the_shell():
    assert "--out '/p/out dir'" in render("ci")


def test_an_operator_adds_a_profile_without_code(tmp_path, monkeypatch):
    (tmp_path / "mysite.yaml").write_text("name: mysite\npartition: a100\nwalltime: '1-00:00:00'"
                                          "\ngpus_per_node: 4\nmem: 500G\n")
    monkeypatch.setenv("HPCSTUDY_PROFILE_PATH", str(tmp_path))
    assert "mysite" in [p.name for p in slurm.list_profiles()]
    r = run_cli("profiles", env={"HPCSTUDY_PROFILE_PATH": str(tmp_path)})
    assert "mysite" in r.stdout and "gefion" in r.stdout


@pytest.mark.parametrize("text, words", [
    ("name: x\npartition: p\nwalltime: '1:00'\n", r"not \[D-\]HH:MM:SS"),
    ("name: x\npartition: p\nwalltime: '01:00:00'\nmem: 1G\nmem_per_gpu: 1G\n", "not both"),
    ("name: x\npartition: p\nwalltime: '01:00:00'\ngpus: 2\n", "gpus: unknown field"),
])
def test_profile_errors_name_file_line_and_field(tmp_path, monkeypatch, text, words):
    (tmp_path / "x.yaml").write_text(text)
    monkeypatch.setenv("HPCSTUDY_PROFILE_PATH", str(tmp_path))
    with pytest.raises(UserError, match=words):
        slurm.load_profile("x")


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(UserError, match="known profiles: ci, gefion"):
        slurm.load_profile("nope")


def test_submit_refuses_a_bad_study_before_sbatch(tmp_path, small_data):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    r = run_cli("submit", bad, "--profile", "ci", "--data", small_data, "--out", tmp_path / "o")
    assert r.returncode == 2 and "exposure: or index:" in r.stderr
    assert not list(tmp_path.glob("o.*"))


def wait_done(job, env, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = slurm.status([job], env)[0]
        if st["slurm_state"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return st
        time.sleep(1)
    raise AssertionError(f"job {job} not done after {timeout}s: {st}")


@pytest.mark.slurm
def test_a_submitted_study_gives_the_local_results(slurm_cluster, small_data, tmp_path):
    env = slurm_cluster.env()
    local = tmp_path / "local"
    assert run_cli("run", EXAMPLES / "diabetes_incidence.yaml", "--data", small_data, "--out",
                   local, "--quiet").returncode == 0
    out = tmp_path / "remote"
    r = run_cli("submit", EXAMPLES / "diabetes_incidence.yaml", "--profile", "ci", "--data",
                small_data, "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    job = json.loads((tmp_path / "remote.job.json").read_text())["job_id"]
    st = wait_done(job, env)
    assert st["state"] == "done", (st, Path(f"{out}.slurm-{job}.out").read_text())
    assert st["gpus"] == 1 and st["gpu_hours"] >= 0
    for f in local.rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (out / f.relative_to(local)).read_bytes(), f
    r = run_cli("status", job, env=env)
    assert job in r.stdout and "done" in r.stdout and "GPU-h" in r.stdout


@pytest.mark.slurm
def test_cancel_and_logs(slurm_cluster, tmp_path):
    env = slurm_cluster.env()
    script = tmp_path / "sleep.sbatch"
    log = tmp_path / "sleep.out"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={log}\necho started\nsleep 300\n")
    import subprocess

    job = subprocess.run(["sbatch", "--parsable", str(script)], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    deadline = time.monotonic() + 60
    while slurm.status([job], env)[0]["slurm_state"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert run_cli("cancel", job, env=env).returncode == 0
    assert wait_done(job, env)["state"] == "cancelled"
    r = run_cli("logs", job, env=env)
    assert r.returncode == 0 and "started" in r.stdout


@pytest.mark.slurm
def test_a_cancelled_job_resubmitted_resumes(slurm_cluster, tmp_path):
    """scancel mid-run, submit again: finished partitions are not recomputed (the job says how
    many it reused) and the results equal an uninterrupted run."""
    from hpcstudy.registers.generate import generate

    env = slurm_cluster.env()
    data = tmp_path / "data"
    generate(data, persons=40_000, seed=9, partitions=16, jobs=2)
    whole = tmp_path / "whole"
    assert run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", data, "--out", whole,
                   "--quiet").returncode == 0
    out = tmp_path / "out"
    ckpt = tmp_path / "out.checkpoints"
    r = run_cli("submit", EXAMPLES / "statins_mi.yaml", "--profile", "ci", "--data", data,
                "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    job = json.loads((tmp_path / "out.job.json").read_text())["job_id"]
    deadline = time.monotonic() + 120
    while len(list(ckpt.glob("*.json"))) < 3:
        assert time.monotonic() < deadline, slurm.status([job], env)
        time.sleep(0.1)
    assert run_cli("cancel", job, env=env).returncode == 0
    assert wait_done(job, env)["state"] == "cancelled"
    finished = len(list(ckpt.glob("*.json")))
    assert 3 <= finished < 16 and not out.exists()
    r = run_cli("submit", EXAMPLES / "statins_mi.yaml", "--profile", "ci", "--data", data,
                "--out", out, env=env)
    job2 = json.loads((tmp_path / "out.job.json").read_text())["job_id"]
    assert wait_done(job2, env)["state"] == "done"
    log = Path(f"{out}.slurm-{job2}.out").read_text()
    resumed = int(log.split("resumed ")[1].split(" of 16")[0])
    assert resumed >= finished  # the checkpoints of the cancelled job were used
    for f in whole.rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (out / f.relative_to(whole)).read_bytes(), f
