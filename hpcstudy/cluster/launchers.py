"""Where the dask engine's tasks run: a ``distributed.Client`` for a launcher, or None.

* ``local``     — the threaded scheduler in this process (no client);
* ``processes`` — worker processes on this machine; with ``gpus`` one worker per GPU, each
  seeing only its own device through ``CUDA_VISIBLE_DEVICES``;
* ``slurm``     — dask-jobqueue: every worker is a Slurm job with one GPU, shaped by a site
  profile (partition, account, CPUs and memory per GPU, walltime, network interface);
* ``mpi``       — the ranks of one MPI job are scheduler, client and workers
  (:mod:`hpcstudy.cluster.mpi`; the client rank calls this with its ``part``).

    with client_for("processes", workers=2) as client:
        run(study, data, out, client=client)
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from ..errors import UserError

LAUNCHERS = ("local", "processes", "slurm", "mpi")


@contextmanager
def client_for(launcher: str, workers: int = 1, gpus: int = 0, profile=None,
               account: str | None = None, timeout: float = 180,
               interface: str | None = None, part=None, log_directory=None):
    if launcher == "local":
        yield None
        return
    if launcher == "mpi":
        from .mpi import connect

        with connect(part, timeout=timeout) as client:
            yield client
        return
    if workers < 1 and not gpus:
        raise UserError(f"--workers must be ≥ 1, not {workers}")
    from distributed import Client

    if launcher == "processes":
        from distributed import Nanny, Scheduler, SpecCluster

        n = gpus or workers
        spec = {f"worker-{i}": {"cls": Nanny, "options": {
            "nthreads": 1, "silence_logs": 40,  # errors only: a run's output stays readable
            "env": {"CUDA_VISIBLE_DEVICES": str(i)} if gpus else {}}}
            for i in range(n)}
        # ":0": a free port for the dashboard, so several runs on one machine never collide
        cluster = SpecCluster(workers=spec, scheduler={
            "cls": Scheduler, "options": {"dashboard_address": ":0"}}, silence_logs=40)
        with cluster, Client(cluster) as client:
            client.wait_for_workers(n, timeout=timeout)
            yield client
        return
    if launcher == "slurm":
        if profile is None:
            raise UserError("the slurm launcher needs a site profile", fix="add --profile NAME")
        from dask_jobqueue import SLURMCluster

        extra = ["--gpus-per-node=1"] if profile.gpus_per_node else []
        skip = []
        memory = profile.mem
        if profile.mem_per_gpu:
            # the site wants memory per GPU: never also write --mem (sbatch refuses both)
            extra.append(f"--mem-per-gpu={profile.mem_per_gpu}")
            skip.append("--mem")
            memory = profile.mem_per_gpu
        interface = interface or profile.interface
        check_interface(interface)   # the scheduler listens here: a clear error, not a trace
        _slurm_answers()
        cluster = SLURMCluster(
            queue=profile.partition, account=account or profile.account,
            cores=profile.cpus_per_gpu or 1, processes=1, memory=memory or "2GB",
            walltime=profile.walltime, job_extra_directives=extra,
            job_directives_skip=skip, python=sys.executable, interface=interface,
            worker_extra_args=_lifetime(profile.walltime),
            job_script_prologue=list(profile.setup), silence_logs="error",
            log_directory=str(log_directory) if log_directory else None,
            scheduler_options={"dashboard_address": ":0"})   # interface: scheduler and workers
        with cluster:
            _worker_job_accepted(cluster.job_script())
            # adapt, not scale: a worker job that reaches its lifetime is replaced by a new one
            cluster.adapt(minimum=workers, maximum=workers)
            with Client(cluster) as client:
                try:
                    client.wait_for_workers(workers, timeout=timeout)
                except TimeoutError:   # was "cannot read or write 180: Only 0/2 workers …"
                    from .slurm import SlurmUnreachable

                    raise SlurmUnreachable(
                        f"the worker jobs did not all start within {timeout:g} s",
                        fix=f"see squeue --me and the worker logs in {log_directory}; try "
                        "again when the queue is shorter, or use --launcher mpi") from None
                yield client
        return
    raise UserError(f"unknown launcher {launcher!r}", fix=f"use one of {', '.join(LAUNCHERS)}")


def _worker_job_accepted(script: str) -> None:
    """Ask Slurm, before any worker job is submitted, whether it would take the worker job
    (``sbatch --test-only``), else one line, exit 2: a refused worker job was seen only as
    tornado's traceback of each failed sbatch, and a timeout 3 minutes later (outside tester,
    session 8)."""
    import subprocess
    import tempfile

    from .slurm import _one_line

    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(script)
        f.flush()
        r = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(f"sbatch refused the worker job: {_one_line(r.stderr or r.stdout)}",
                        fix="check the profile (partition, account, memory) against the site")


def _slurm_answers() -> None:
    """The Slurm controller answers (``scontrol ping``), else one line, exit 1."""
    import subprocess

    from .slurm import SlurmUnreachable, _one_line

    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("the slurm launcher needs Slurm, and scontrol is not installed here",
                        fix="run on a login or compute node of the cluster, or use "
                        "--launcher local") from None
    if ping.returncode != 0:
        raise SlurmUnreachable(f"Slurm does not answer: {_one_line(ping.stderr or ping.stdout)}",
                               fix="is the Slurm controller up? try again, or ask the operators")


def check_interface(interface: str | None) -> None:
    if not interface:
        return
    import psutil

    have = sorted(psutil.net_if_addrs())
    if interface not in have:
        raise UserError(f"no network interface {interface!r} on {os.uname().nodename}",
                        fix=f"this node has {', '.join(have)}; set interface: in the profile "
                        "or --interface to one the scheduler and workers share")


def _lifetime(walltime: str) -> list[str]:
    """Worker jobs retire (handing their data on) 5-9 minutes before Slurm would kill them at
    the walltime; the stagger keeps them from all leaving at once. Short jobs: no lifetime."""
    from .slurm import seconds

    wall = seconds(walltime)
    if wall < 30 * 60:
        return []
    return ["--lifetime", f"{wall - 7 * 60}s", "--lifetime-stagger", "120s"]
