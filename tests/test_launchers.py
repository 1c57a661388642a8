"""Launchers for the dask engine: worker processes (one per GPU) and Slurm jobs through
dask-jobqueue give the same outputs as the local run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import same_but_how_it_ran

from hpcstudy.cluster.launchers import client_for
from hpcstudy.cluster.slurm import load_profile

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def same_outputs(a: Path, b: Path):
    """The per-person table byte for byte; every estimate to 1e-12 relative (sums computed in
    worker processes can differ in the last bit: numpy's summation depends on alignment); the
    report page but for its Run section, which shows how each ran (run.json)."""
    import json

    from study.test_engines_agree import compare

    private = Path("private") / "person_table.parquet"
    assert (a / private).read_bytes() == (b / private).read_bytes()
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    compare(ra, rb, rel=1e-12)
    same_but_how_it_ran(a, b)   # run.json apart: how, where and when each ran


def test_processes_launcher_gives_the_local_results(local_run, processes_run):
    same_outputs(local_run, processes_run)


def test_one_worker_per_gpu_sees_only_its_device():
    import os

    with client_for("processes", gpus=3) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(seen.values()) == ["0", "1", "2"]


@pytest.mark.slurm
def test_slurm_workers_give_the_local_results(slurm_cluster, local_run, small_data, tmp_path,
                                              monkeypatch):
    import os

    for k, v in slurm_cluster.env().items():
        if k == "SLURM_CONF":
            monkeypatch.setenv(k, v)
    with client_for("slurm", workers=2, profile=load_profile("ci"),
                    log_directory=tmp_path / "logs") as client:   # not into the checkout
        seen = client.run(lambda: (os.environ.get("SLURM_JOB_ID"),
                                   os.environ.get("CUDA_VISIBLE_DEVICES")))
        from hpcstudy.engines.run import run

        run(EXAMPLES / "diabetes_incidence.yaml", small_data, tmp_path / "out", client=client)
    jobs = {j for j, _ in seen.values()}
    gpus = [g for _, g in seen.values()]
    assert len(jobs) == 2 and None not in jobs          # two workers, each its own Slurm job
    assert len(set(gpus)) == 2 and None not in gpus     # each with its own GPU
    same_outputs(local_run, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (record["launcher"], record["workers"]) == ("slurm", 2)   # (said by its client)


def run_and_kill_a_worker(client, data, out, kill) -> None:
    """Run example 1 on the client in a thread; once two partitions are checkpointed,
    kill(client) takes a worker away; the run must still finish."""
    import threading
    import time

    from hpcstudy.engines.run import run

    result = {}
    t = threading.Thread(target=lambda: result.update(
        r=run(EXAMPLES / "statins_mi.yaml", data, out, client=client)))
    t.start()
    ckpt = out.parent / f"{out.name}.checkpoints"
    deadline = time.monotonic() + 120
    while len(list(ckpt.glob("*.json"))) < 2:
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.05)
    kill(client)
    t.join(timeout=300)
    assert not t.is_alive() and "r" in result


@pytest.mark.slow
def test_a_worker_killed_mid_run_costs_no_results(many_parts, uninterrupted, tmp_path):
    """SIGKILL one worker process while partitions are being computed: its tasks run again
    elsewhere, and the outputs equal those of an undisturbed run."""
    import os
    import signal

    out = tmp_path / "out"
    with client_for("processes", workers=2) as client:
        victim = sorted(client.run(os.getpid).values())[0]
        run_and_kill_a_worker(client, many_parts, out,
                              lambda c: os.kill(victim, signal.SIGKILL))
        assert victim not in client.run(os.getpid).values()  # it really died
    same_outputs(uninterrupted, out)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_worker_job_cancelled_mid_run_costs_no_results(slurm_cluster, many_parts,
                                                         uninterrupted, tmp_path, monkeypatch):
    """A lost node, as the slurm launcher sees it: one worker job is scancelled mid-run. The
    other worker takes over its tasks, a replacement job is submitted, and the outputs equal
    an undisturbed run."""
    import os
    import subprocess

    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env()["SLURM_CONF"])
    out = tmp_path / "out"
    lost = []

    def cancel_one(client):
        jobs = client.run(lambda: os.environ["SLURM_JOB_ID"])
        lost.append(sorted(jobs.values())[0])
        subprocess.run(["scancel", lost[0]], check=True)

    with client_for("slurm", workers=2, profile=load_profile("ci"),
                    log_directory=tmp_path / "logs") as client:
        run_and_kill_a_worker(client, many_parts, out, cancel_one)
        client.wait_for_workers(2, timeout=120)     # adapt replaced the lost worker job
        jobs = set(client.run(lambda: os.environ["SLURM_JOB_ID"]).values())
        assert len(jobs) == 2 and lost[0] not in jobs
    same_outputs(uninterrupted, out)
    from hpcstudy.cluster.slurm import status

    assert status(lost)[0]["state"] == "cancelled"
