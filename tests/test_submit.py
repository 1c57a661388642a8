"""Submitting to Slurm: profiles, the rendered script (golden text), and — on the real
loopback cluster — a submitted study whose results equal the local run, status and cancel."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import run_cli, same_files

from hpcstudy.cluster import slurm
from hpcstudy.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GOLDEN = Path(__file__).parent / "golden"


def render(name, launcher=None):
    return slurm.render_sbatch(slurm.load_profile(name), study=Path("/p/study.yaml"),
                               data=Path("/p/data"), out=Path("/p/out dir"), study_name="s1",
                               python="/opt/venv/bin/python", account="p-123",
                               launcher=launcher)


@pytest.mark.parametrize("name, launcher", [("gefion", None), ("ci", None),
                                            ("gefion", "slurm"), ("ci", "mpi")])
def test_rendered_scripts_match_their_golden_text(name, launcher):
    got = render(name, launcher)
    golden = GOLDEN / (f"{name}-{launcher}.sbatch" if launcher else f"{name}.sbatch")
    if os.environ.get("HPCSTUDY_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text()


def test_gefion_asks_memory_per_gpu_and_never_mem():
    text = render("gefion")
    assert "--mem-per-gpu=240G" in text and "--gpus-per-node=8" in text
    assert "--mem=" not in text and "--cpus-per-gpu=14" in text


def test_paths_are_quoted_for_the_shell():
    assert "--out '/p/out dir'" in render("ci")


def test_gefion_runs_a_worker_per_gpu_as_mpi_ranks_over_infiniband():
    text = render("gefion")
    assert "--ntasks=10" in text          # 8 workers + scheduler + client
    assert "srun --mpi=pmix /opt/venv/bin/python -m hpcstudy.cli run" in text
    assert "--launcher mpi --interface ib0" in text


def test_every_job_asks_for_a_signal_before_its_end_and_may_requeue():
    for name, launcher in [("gefion", None), ("ci", "slurm"), ("ci", None)]:
        text = render(name, launcher)
        wanted = "900" if name == "gefion" else "60"
        assert f"#SBATCH --signal=B:USR1@{wanted}" in text and "#SBATCH --requeue" in text
        assert "trap requeue USR1" in text and "scontrol requeue" in text
        assert "#SBATCH --open-mode=append" in text   # the requeued run adds to the log


def test_the_slurm_launcher_submits_a_small_driver_without_gpus():
    text = render("gefion", "slurm")
    assert "--gpus-per-node" not in text and "--mem-per-gpu" not in text
    assert "#SBATCH --ntasks=1" in text and "#SBATCH --mem=240G" in text
    assert "--launcher slurm --profile gefion --workers 8 --account p-123" in text


def test_a_profile_without_signal_asks_for_none(tmp_path, monkeypatch):
    (tmp_path / "q.yaml").write_text("name: q\npartition: p\nwalltime: '01:00:00'\n"
                                     "signal_before_end: 0\n")
    monkeypatch.setenv("HPCSTUDY_PROFILE_PATH", str(tmp_path))
    text = slurm.render_sbatch(slurm.load_profile("q"), study=Path("/s"), data=Path("/d"),
                               out=Path("/o"), study_name="s", python="py")
    assert "#SBATCH --signal" not in text and "#SBATCH --requeue" not in text


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
    ("name: x\npartition: p\nwalltime: '01:00:00'\nlauncher: threads\n",
     "launcher: 'threads' is not a launcher"),
    ("name: x\npartition: p\nwalltime: '01:00:00'\ninterface: 'ib0; rm -rf /'\n",
     "not a network interface name"),
    ("name: x\npartition: p\nwalltime: '00:10:00'\nsignal_before_end: 600\n",
     "not before the end of a 600 s walltime"),
    ("name: x\npartition: p\nwalltime: '01:00:00'\nworkers_per_node: -1\n",
     "workers_per_node: must be a whole number"),
])
def test_profile_errors_name_file_line_and_field(tmp_path, monkeypatch, text, words):
    (tmp_path / "x.yaml").write_text(text)
    monkeypatch.setenv("HPCSTUDY_PROFILE_PATH", str(tmp_path))
    with pytest.raises(UserError, match=words) as e:
        slurm.load_profile("x")
    line = text[:text.index(str(e.value.what).split(":")[0] + ":")].count("\n") + 1
    assert e.value.where == f"{tmp_path / 'x.yaml'}:{line}"


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
        if st["slurm_state"] in slurm.FINAL_STATES:
            return st
        time.sleep(1)
    raise AssertionError(f"job {job} not done after {timeout}s: {st}")


def submit_and_wait(data, out, env, *options, profile="ci"):
    """Submit example 3 and wait for the job to end: (job id, its status, its log text)."""
    r = run_cli("submit", EXAMPLES / "diabetes_incidence.yaml", "--profile", profile, "--data",
                data, "--out", out, *options, env=env)
    assert r.returncode == 0, r.stderr
    job = json.loads(Path(f"{out}.job.json").read_text())["job_id"]
    st = wait_done(job, env)
    return job, st, Path(f"{out}.slurm-{job}.out").read_text()


@pytest.mark.slurm
def test_a_submitted_study_gives_the_local_results(slurm_cluster, small_data, local_run,
                                                   tmp_path):
    env = slurm_cluster.env()
    out = tmp_path / "remote"
    job, st, log = submit_and_wait(small_data, out, env)
    assert st["state"] == "done", (st, log)
    assert st["gpus"] == 2 and st["gpu_hours"] >= 0
    same_files(local_run, out)
    r = run_cli("status", job, env=env)
    assert job in r.stdout and "done" in r.stdout and "GPU-h" in r.stdout
    # a researcher may name the job by the OUT they submitted it with
    assert run_cli("status", out, env=env).stdout == r.stdout
    assert run_cli("logs", out, env=env).stdout == log


def test_a_job_is_named_by_its_id_or_its_out(tmp_path):
    assert slurm.job_of("1234") == ("1234", None) and slurm.job_of("77_3")[0] == "77_3"
    (tmp_path / "o.job.json").write_text('{"job_id": "55", "log": "x"}')
    assert slurm.job_of(str(tmp_path / "o"))[0] == "55"
    r = run_cli("status", tmp_path / "nothing")
    assert r.returncode == 2 and "neither a job id nor an OUT" in r.stderr


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


def submit_and_wait_for_checkpoints(data, out, env, at_least=3, launcher="local"):
    # each partition takes a second (a test hook): the job is still running when it is stopped
    slow = {**env, "HPCSTUDY_TEST_PARTITION_SECONDS": "1"}
    r = run_cli("submit", EXAMPLES / "statins_mi.yaml", "--profile", "ci", "--data", data,
                "--out", out, "--launcher", launcher, env=slow)
    assert r.returncode == 0, r.stderr
    job = json.loads(Path(f"{out}.job.json").read_text())["job_id"]
    ckpt = Path(f"{out}.checkpoints")
    deadline = time.monotonic() + 120
    while len(list(ckpt.glob("*.json"))) < at_least:
        assert time.monotonic() < deadline, slurm.status([job], env)
        time.sleep(0.1)
    return job, ckpt


@pytest.mark.slurm
def test_a_cancelled_job_resubmitted_resumes(slurm_cluster, many_parts, uninterrupted,
                                            tmp_path):
    """scancel mid-run, submit again: finished partitions are not recomputed (the job says how
    many it reused) and the results equal an uninterrupted run."""
    data, whole = many_parts, uninterrupted
    env = slurm_cluster.env()
    out = tmp_path / "out"
    job, ckpt = submit_and_wait_for_checkpoints(data, out, env)
    assert run_cli("cancel", job, env=env).returncode == 0
    assert wait_done(job, env)["state"] == "cancelled"
    finished = len(list(ckpt.glob("*.json")))
    assert 3 <= finished < 16 and not out.exists()
    r = run_cli("submit", EXAMPLES / "statins_mi.yaml", "--profile", "ci", "--data", data,
                "--out", out, env=env)
    assert r.returncode == 0, r.stderr
    job2 = json.loads((tmp_path / "out.job.json").read_text())["job_id"]
    assert wait_done(job2, env)["state"] == "done"
    log = Path(f"{out}.slurm-{job2}.out").read_text()
    resumed = int(log.split("resumed ")[1].split(" of 16")[0])
    assert resumed >= finished  # the checkpoints of the cancelled job were used
    same_files(whole, out)


@pytest.mark.slurm
@pytest.mark.parametrize("launcher", ["local", "mpi"])
def test_a_job_signalled_before_its_end_requeues_itself_and_resumes(slurm_cluster, many_parts,
                                                                     uninterrupted, tmp_path,
                                                                     launcher):
    """USR1 to the batch shell — what Slurm sends signal_before_end seconds before the
    walltime (--signal=B:USR1@N) — makes the job stop, requeue itself and, run again, compute
    only the partitions it had not finished; the outputs equal an uninterrupted run."""
    import subprocess

    from test_launchers import same_outputs

    data, whole = many_parts, uninterrupted
    env = slurm_cluster.env()
    out = tmp_path / "out"
    job, ckpt = submit_and_wait_for_checkpoints(data, out, env, launcher=launcher)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    deadline = time.monotonic() + 60
    while (st := slurm.status([job], env)[0])["slurm_state"] != "PENDING" or st["restarts"] < 1:
        assert time.monotonic() < deadline, st
        time.sleep(0.2)
    assert st["state"].startswith("waiting")        # requeued, held by Slurm for a while
    finished = len(list(ckpt.glob("*.json")))
    assert 3 <= finished < 16 and not out.exists()    # stopped mid-way, promptly
    # Slurm holds a requeued job for about two minutes; the test need not wait that long, but
    # a start within the second of the requeue would meet the old run's revoked credential
    subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now+3"], env=env,
                   check=True)
    st = wait_done(job, env)
    log = Path(f"{out}.slurm-{job}.out").read_text()
    assert st["state"] == "done" and st["restarts"] == 1, log
    assert "signalled before its end; stopping to requeue" in log
    assert "hpcstudy: interrupted; nothing half-written" in log   # the run stopped cleanly
    assert "Traceback" not in log
    resumed = int(log.split("resumed ")[1].split(" of 16")[0])
    assert resumed >= finished   # the partitions finished before the signal were not redone
    if launcher == "local":
        same_files(whole, out)
    else:
        same_outputs(whole, out)   # sums in other processes: equal to 1e-12
    assert "(requeued 1x)" in run_cli("status", job, env=env).stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_signals_the_batch_script_before_the_walltime(slurm_cluster, tmp_path):
    """The header lines a profile renders make Slurm itself deliver USR1 to the batch shell
    ahead of the walltime (Slurm checks about once a minute, so this takes up to a minute)."""
    import subprocess

    prof = slurm.Profile(name="t", partition="debug", walltime="00:01:00",
                         signal_before_end=50)
    log = tmp_path / "sig.out"
    header = "\n".join(slurm.sbatch_lines(prof, "sig", str(log)))
    script = tmp_path / "sig.sbatch"
    script.write_text(f"#!/bin/bash\n{header}\ntrap 'echo got USR1 after $SECONDS s; exit 0' "
                      "USR1\nsleep 120 &\nwait\necho no signal\n")
    env = slurm_cluster.env()
    job = subprocess.run(["sbatch", "--parsable", str(script)], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    st = wait_done(job, env, timeout=150)
    text = log.read_text()
    assert "got USR1" in text and st["state"] == "done", (st, text)


@pytest.mark.slurm
@pytest.mark.parametrize("start", ["mpirun", "srun --mpi=pmix"])
def test_an_mpi_job_in_one_allocation_gives_the_local_results(slurm_cluster, small_data,
                                                              local_run, tmp_path, start):
    """Ranks started by Open MPI's mpirun (the ci profile) or by Slurm's srun over PMIx (as on
    Gefion; here from an operator's profile in $HPCSTUDY_PROFILE_PATH)."""
    from test_launchers import same_outputs

    env = slurm_cluster.env()
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    ci = (slurm.JOBS_DIR / "profiles" / "ci.yaml").read_text()
    (profiles / "ci2.yaml").write_text(ci.replace("name: ci", "name: ci2").replace(
        "mpi_start: mpirun", f"mpi_start: {start}"))
    env["HPCSTUDY_PROFILE_PATH"] = str(profiles)
    out = tmp_path / "mpi"
    job, st, log = submit_and_wait(small_data, out, env, "--launcher", "mpi", profile="ci2")
    assert f"\n{start} " in Path(f"{out}.sbatch").read_text()
    assert st["state"] == "done", log
    # 4 ranks: scheduler, client, 2 workers, each worker on one of the job's 2 GPUs
    line = next(x for x in log.splitlines() if "mpi cluster" in x)
    assert "scheduler tcp://127.0.0.1:" in line and "2 workers on 1 node(s)" in line
    assert len(set(line.split("GPUs ")[1].split())) == 2 and st["gpus"] == 2, line
    same_outputs(local_run, out)


@pytest.mark.slurm
def test_a_slurm_launcher_job_drives_worker_jobs(slurm_cluster, small_data, local_run,
                                                 tmp_path):
    from test_launchers import same_outputs

    env = slurm_cluster.env()
    out = tmp_path / "drv"
    job, st, log = submit_and_wait(small_data, out, env, "--launcher", "slurm")
    assert st["state"] == "done" and st["gpus"] == 0, log
    same_outputs(local_run, out)
    # the two worker jobs wrote their logs next to OUT, each with its own job id
    logs = sorted((tmp_path / "drv.worker-logs").glob("*.out"))
    assert len(logs) == 2 and len({p.name for p in logs}) == 2


def test_sacct_rows_give_state_elapsed_and_gpu_hours():
    """The accounting path (the loopback cluster runs none, so its text is given here)."""
    text = ("4242|hpcstudy-statins|COMPLETED|3600|billing=112,cpu=112,gres/gpu=8,mem=1920G,"
            "node=1\n"
            "4243_0|hpcstudy-statins|RUNNING|1800|cpu=14,gres/gpu:h100=1,gres/gpu=1,node=1\n"
            "4244|hpcstudy-statins|CANCELLED by 1000|0|\n")
    a, b, c = slurm.parse_sacct(text)
    assert (a["state"], a["gpus"], a["gpu_hours"]) == ("done", 8, 8.0)
    assert (b["job_id"], b["array_job"], b["state"], b["gpu_hours"]) == ("4243_0", "4243",
                                                                          "running", 0.5)
    assert (c["state"], c["gpus"]) == ("cancelled", 0)


def test_scontrol_rows_name_array_tasks_as_sacct_does():
    line = ("JobId=31 ArrayJobId=30 ArrayTaskId=1 JobName=hpcstudy-s JobState=RUNNING "
            "Restarts=1 RunTime=00:30:00 NumNodes=1 TresPerNode=gres:gpu:2 "
            "StdOut=/o.slurm-30_1.out")
    (row,) = slurm.parse_scontrol(line)
    assert row["job_id"] == "30_1" and row["array_job"] == "30" and row["restarts"] == 1
    assert row["gpus"] == 2 and row["gpu_hours"] == 1.0 and row["log"] == "/o.slurm-30_1.out"
    (held,) = slurm.parse_scontrol("JobId=32 JobState=PENDING Reason=BeginTime Restarts=1")
    assert held["state"] == "waiting (BeginTime)" and held["slurm_state"] == "PENDING"


def test_a_launcher_whose_package_is_missing_is_refused_at_submit(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "dask_jobqueue" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'hpcstudy\[slurm\]'"):
        slurm.check_launcher_installed("slurm")
    slurm.check_launcher_installed("mpi")      # mpi4py is installed here
