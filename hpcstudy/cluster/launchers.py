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
            # adapt, not scale: a worker job that reaches its lifetime is replaced by a new one
            cluster.adapt(minimum=workers, maximum=workers)
            with Client(cluster) as client:
                client.wait_for_workers(workers, timeout=timeout)
                yield client
        return
    raise UserError(f"unknown launcher {launcher!r}", fix=f"use one of {', '.join(LAUNCHERS)}")


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
