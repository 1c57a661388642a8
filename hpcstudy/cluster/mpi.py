"""The ``mpi`` launcher: one MPI job, inside one Slurm allocation, is the whole Dask cluster.

Every rank runs the same ``hpcstudy run ... --launcher mpi`` command and takes a part by its
rank, as dask-mpi lays it out:

* rank 0 — the Dask scheduler; it broadcasts its address to the other ranks;
* rank 1 — the client: it runs the study, and shuts the cluster down when it is done (or fails);
* ranks 2 and up — one worker each, pinned to one GPU of its node where the node has GPUs.

Only the client rank speaks: it alone prints, writes outputs and audits. The other ranks check
the study as it does (so a bad study fails on every rank at once, and nothing waits forever) and
then serve until the client shuts the cluster down.

    mpirun -n 10 hpcstudy run study.yaml --data D --out O --launcher mpi --interface ib0
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import UserError

SCHEDULER, CLIENT = 0, 1
FIRST_WORKER = 2
_rank: int | None = None


def start() -> int:
    """This process's rank (MPI starts here); from now on only the client rank speaks."""
    global _rank
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - mpi4py is a dependency of the mpi extra
        raise UserError(f"the mpi launcher needs mpi4py ({e})",
                        fix="pip install 'hpcstudy[mpi]' on a machine with an MPI library") from e
    size = MPI.COMM_WORLD.Get_size()
    if size < 3:   # said by every rank: none of them is a client yet
        raise UserError(f"the mpi launcher needs 3 or more ranks (scheduler, client, a worker), "
                        f"not {size}", fix="start it with mpirun -n 3 (or more), or sbatch "
                        "--ntasks=3 (or more)")
    _rank = MPI.COMM_WORLD.Get_rank()
    return _rank


def speaks() -> bool:
    """False on the scheduler and worker ranks of an mpi run: they print and audit nothing."""
    return _rank is None or _rank == CLIENT


@dataclass(frozen=True)
class Part:
    rank: int
    size: int
    role: str            # scheduler | client | worker
    host: str
    gpu: str | None      # the one device a worker rank sees, or None


def join(interface: str | None = None) -> Part:
    """Collective over all ranks: check the layout, give each worker its GPU."""
    from mpi4py import MPI

    from .launchers import check_interface

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    check_interface(interface)
    # Ranks on the same node share its GPUs: worker k of a node takes that node's k-th device.
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    node_ranks = node.allgather(rank)
    node.Free()
    role = ("scheduler" if rank == SCHEDULER else "client" if rank == CLIENT else "worker")
    gpu = None
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if role == "worker" and visible:
        k = [r for r in node_ranks if r >= FIRST_WORKER].index(rank)
        gpu = visible[k % len(visible)]   # more workers than GPUs on a node: they share
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return Part(rank=rank, size=size, role=role, host=MPI.Get_processor_name(), gpu=gpu)


def serve(part: Part, interface: str | None = None, death_timeout: float = 120) -> None:
    """Run this rank's scheduler or worker until the client shuts the cluster down."""
    import distributed  # noqa: F401 - sets up its loggers, which are quietened next
    from mpi4py import MPI

    # errors only, as the processes launcher: the job log stays readable
    logging.getLogger("distributed").setLevel(logging.ERROR)
    quiet_closed_connections()
    # Stopped (USR1 before the walltime, TERM): the client rank gets the signal too and shuts
    # the cluster down, which ends this rank through its normal path (and MPI_Finalize, which
    # mpirun insists on: a rank leaving without it makes mpirun kill the client mid-clean-up).
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    comm = MPI.COMM_WORLD
    if part.role == "scheduler":
        asyncio.run(_scheduler(comm, interface))
    elif part.role == "worker":
        address = comm.bcast(None, root=SCHEDULER)
        asyncio.run(_worker(address, interface, f"mpi-rank-{part.rank}", death_timeout))
    else:
        raise ValueError("the client rank does not serve")


async def _scheduler(comm, interface: str | None) -> None:
    from distributed import Scheduler

    # ":0": the dashboard on a free port, so two jobs sharing a node never collide
    async with Scheduler(interface=interface, dashboard_address=":0") as scheduler:
        comm.bcast(scheduler.address, root=SCHEDULER)
        await scheduler.finished()


async def _worker(address: str, interface: str | None, name: str, death_timeout: float):
    from distributed import Worker

    # One thread: a worker drives one GPU; on CPUs, more ranks use more cores.
    async with Worker(address, nthreads=1, name=name, interface=interface,
                      death_timeout=death_timeout) as worker:
        await worker.finished()


class _ClosedConnection(logging.Filter):
    """Drops a record whose exception is a closed connection: when a job is stopped every rank
    shuts down at once, and a worker still sending data to a peer logs the reset as an error
    with its traceback. What went wrong is said once, in one line, by the client rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if type(exc).__name__ in ("CommClosedError", "StreamClosedError"):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


def quiet_closed_connections() -> None:
    """Install the filter where distributed's records are written (handler filters see the
    records of every child logger; logger filters would not)."""
    import distributed  # noqa: F401 - its logging configuration adds the handlers

    f = _ClosedConnection()
    for name in ("distributed", ""):
        for h in logging.getLogger(name).handlers:
            h.addFilter(f)
    for name in ("distributed.worker", "distributed.core", "distributed.scheduler",
                 "distributed.comm", "tornado.application"):
        logging.getLogger(name).addFilter(f)


@contextmanager
def connect(part: Part, timeout: float = 180):
    """On the client rank: a Client to the MPI cluster; the cluster is shut down on leaving,
    whether the study finished or failed, so no rank is left waiting."""
    from distributed import Client
    from mpi4py import MPI

    # A signal reaches every rank at once (mpirun forwards it): the scheduler rank may close
    # its connections before this rank's main thread runs its handler, and the client's I/O
    # thread then logs the expected reset as a tornado traceback. hpcstudy says what went
    # wrong itself, in one line.
    logging.getLogger("tornado.application").setLevel(logging.CRITICAL + 1)
    quiet_closed_connections()
    address = MPI.COMM_WORLD.bcast(None, root=SCHEDULER)
    workers = part.size - FIRST_WORKER
    with Client(address, timeout=timeout) as client:
        try:
            client.wait_for_workers(workers, timeout=timeout)
            where = client.run(lambda: (os.uname().nodename,
                                        os.environ.get("CUDA_VISIBLE_DEVICES")))
            gpus = sorted({f"{h}:{g}" for h, g in where.values() if g})
            print(f"hpcstudy: mpi cluster: scheduler {address}, {workers} workers on "
                  f"{len({h for h, _ in where.values()})} node(s)"
                  + (f", GPUs {' '.join(gpus)}" if gpus else ", no GPUs"),
                  file=sys.stderr, flush=True)
            yield client
        finally:
            client.shutdown()
