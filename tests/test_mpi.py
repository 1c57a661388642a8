"""The mpi launcher under a real Open MPI: the ranks of one ``mpirun`` are scheduler, client and
workers; the outputs equal the local run's; only the client rank speaks and audits; a bad study
or a failing client ends every rank (nothing is left waiting)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI, run_cli
from test_launchers import same_outputs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STUDY = EXAMPLES / "diabetes_incidence.yaml"
pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def mpirun():
    exe = shutil.which("mpirun")
    if exe is None:
        if IN_CI:
            pytest.fail("CI must run the MPI tests, but mpirun is not installed")
        pytest.skip("mpirun is not installed (make test installs Open MPI as root)")
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}

    def run(ranks: int, *args, env_extra: dict | None = None, timeout: float = 300):
        # --oversubscribe: 4 ranks on a 2-core CI machine
        return subprocess.run([exe, "-n", str(ranks), "--oversubscribe", sys.executable, "-m",
                               "hpcstudy.cli", "run", *map(str, args), "--launcher", "mpi"],
                              capture_output=True, text=True, timeout=timeout,
                              env={**env, **(env_extra or {})})

    return run


def audit_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_four_ranks_give_the_local_results_and_one_audit_record(mpirun, small_data, local_run,
                                                                tmp_path):
    log = tmp_path / "audit.jsonl"
    out = tmp_path / "out"
    r = mpirun(4, STUDY, "--data", small_data, "--out", out, "--interface", "lo",
               env_extra={"HPCSTUDY_AUDIT_LOG": str(log), "CUDA_VISIBLE_DEVICES": "0,1"})
    assert r.returncode == 0, r.stderr
    same_outputs(local_run, out)
    record = json.loads((out / "run.json").read_text())   # how it ran: its own record only
    assert (record["launcher"], record["workers"]) == ("mpi", 2)
    # scheduler and workers on loopback; the two workers pinned to a GPU each
    assert "scheduler tcp://127.0.0.1:" in r.stderr
    assert "2 workers on 1 node(s), GPUs" in r.stderr and ":0 " in r.stderr
    assert r.stderr.rstrip().endswith(":1")
    assert r.stdout.count("study 'diabetes_incidence'") == 1      # the client's report, once
    started, done = audit_records(log)                               # one rank audits
    assert started["command"] == "run" and started["event"] == "started"
    assert done["status"] == "ok" and done["started"]["seq"] == started["seq"]
    assert json.loads((out / "audit.json").read_text())["seq"] == started["seq"]


def test_a_bad_study_ends_every_rank_with_one_error(mpirun, small_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    log = tmp_path / "audit.jsonl"
    r = mpirun(3, bad, "--data", small_data, "--out", tmp_path / "o",
               env_extra={"HPCSTUDY_AUDIT_LOG": str(log)}, timeout=120)
    assert r.returncode == 2
    alone = run_cli("run", bad, "--data", small_data, "--out", tmp_path / "o").stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("hpcstudy: error:")]
    assert said == alone.splitlines() and "exposure: or index:" in alone   # said once, not 3x
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
    _, done = audit_records(log)
    assert done["status"].startswith("refused")


def test_an_unwritable_audit_log_stops_every_rank_before_it_starts(mpirun, small_data,
                                                                   tmp_path):
    log = tmp_path / "log"
    log.mkdir()                # a directory: the client cannot append (bad input, exit 2)
    r = mpirun(3, STUDY, "--data", small_data, "--out", tmp_path / "o",
               env_extra={"HPCSTUDY_AUDIT_LOG": str(log)}, timeout=120)
    assert r.returncode == 2, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("hpcstudy: error:")]
    assert len(said) == 1 and "cannot write the audit log" in said[0]
    assert not (tmp_path / "o").exists() and "Traceback" not in r.stderr


def test_a_client_failing_mid_run_shuts_the_cluster_down(mpirun, small_data, tmp_path):
    """The error comes after scheduler and workers are up (the Cox model has no events to fit
    in a one-day follow-up): the client shuts the cluster down, every rank exits, no OUT."""
    study = tmp_path / "no_events.yaml"
    text = STUDY.read_text().replace("date: 2000-01-01", "date: 2023-12-30")
    study.write_text(text.split("analyses:")[0] + "analyses:\n  cox: {adjust: [age]}\n")
    out = tmp_path / "out"
    r = mpirun(4, study, "--data", small_data, "--out", out, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("hpcstudy: error:") == 1 and "2 workers" in r.stderr
    assert "there are no events" in r.stderr and not out.exists()


def test_an_existing_out_is_refused_by_every_rank_at_once(mpirun, small_data, local_run,
                                                           tmp_path):
    """An OUT that may not be replaced is refused before the cluster starts, said once."""
    out = tmp_path / "out"
    shutil.copytree(local_run, out)
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    r = mpirun(4, STUDY, "--data", small_data, "--out", out, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("hpcstudy: error:") == 1 and "already exists" in r.stderr
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_without_mpirun_it_says_how_to_start_it(mpirun, small_data, tmp_path):
    r = run_cli("run", STUDY, "--data", small_data, "--out", tmp_path / "o", "--launcher", "mpi")
    assert r.returncode == 2 and "needs 3 or more ranks" in r.stderr and "mpirun -n 3" in r.stderr
