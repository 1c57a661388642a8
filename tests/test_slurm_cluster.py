"""The real single-node Slurm the tests start on loopback."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def wait_for(job: str, env: dict, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True,
                           text=True)
        if not q.stdout.strip():
            r = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True,
                               text=True)
            return r.stdout
        time.sleep(0.3)
    raise AssertionError(f"job {job} still queued/running after {timeout}s")


def test_node_is_idle_with_four_gpus(slurm_cluster):
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T %G"], env=slurm_cluster.env(),
                       capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["idle", "gpu:4"]


def test_a_job_asking_two_gpus_sees_two_devices(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    r = subprocess.run(["sbatch", "--parsable", "--gpus-per-node=2", "-o", str(out),
                        "--wrap", "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"],
                       env=slurm_cluster.env(), capture_output=True, text=True, check=True)
    info = wait_for(r.stdout.strip(), slurm_cluster.env())
    assert "JobState=COMPLETED" in info, info
    assert out.read_text().strip() == "CUDA_VISIBLE_DEVICES=0,1"


def test_two_jobs_get_disjoint_gpus(slurm_cluster, tmp_path):
    outs = [tmp_path / f"j{i}.out" for i in range(2)]
    jobs = [subprocess.run(["sbatch", "--parsable", "--gpus-per-node=2", "-o", str(o), "--wrap",
                            "echo $CUDA_VISIBLE_DEVICES; scontrol show job -d $SLURM_JOB_ID "
                            "| grep -o 'IDX:[0-9-]*'; sleep 3"],
                           env=slurm_cluster.env(), capture_output=True, text=True,
                           check=True).stdout.strip() for o in outs]
    for j in jobs:
        wait_for(j, slurm_cluster.env())
    idx = [Path(o).read_text().split()[-1] for o in outs]
    assert sorted(idx) == ["IDX:0-1", "IDX:2-3"], idx
