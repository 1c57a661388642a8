"""Which device a run computes on: ``--device cpu|gpu|auto``.

The device is chosen where the work runs: in this process for the local launcher, on every
worker for the others (a client on a login node may have no GPU while its workers do).

* ``cpu``  — NumPy on the CPU cores;
* ``gpu``  — CuPy on the one GPU each worker sees; refused with one line when CuPy is missing
  or finds no device;
* ``auto`` — ``gpu`` where CuPy finds a device on every worker (or here), else ``cpu``.

Whether a partition fits in the device's memory is checked where it is loaded
(:func:`hpcstudy.engines.partition.load`). A worker whose GPU fails (a CUDA error other than
running out of memory) while building a partition's table, or in a design or model step on a
partition (:class:`hpcstudy.models.partitions._OnDevice`), leaves the cluster, and the others
compute that step and recompute what it held.
"""

from __future__ import annotations

from ..errors import UserError


class DeviceFailed(UserError):
    """The GPU failed mid-run where no other worker can take over: one line, exit 1."""

    exit_code = 1

DEVICES = ("cpu", "gpu", "auto")


def gpu_problem() -> str | None:
    """Why this process cannot compute on a GPU, in one line with the fix; None when it can."""
    from ..devices import DeviceUnavailable, get_device

    try:
        get_device("gpu")
    except DeviceUnavailable as e:
        return str(e)
    return None


def choose(requested: str, client=None) -> str:
    """``cpu`` or ``gpu`` for a requested ``cpu``, ``gpu`` or ``auto``; raises a UserError
    (exit 2) for ``gpu`` where a worker (or this process, without a client) has no GPU."""
    if requested not in DEVICES + ("standin",):
        raise UserError(f"unknown device {requested!r}", fix=f"use one of {', '.join(DEVICES)}")
    if requested in ("cpu", "standin"):   # standin: the CPU stand-in for a GPU (tests, CI)
        return requested
    if client is None:
        problems = {"this machine": gpu_problem()}
    else:
        problems = {f"worker {w}": p for w, p in client.run(gpu_problem).items()}
    missing = {where: p for where, p in problems.items() if p is not None}
    if requested == "auto":
        return "cpu" if missing else "gpu"
    if missing:
        where, why = sorted(missing.items())[0]
        more = f" and {len(missing) - 1} other worker(s)" if len(missing) > 1 else ""
        raise UserError(f"{where}{more}: {why}")
    return "gpu"


def default_device(profile=None) -> str:
    """A run's device when --device is not given: the site profile's, else cpu."""
    return getattr(profile, "device", None) or "cpu"


def device_failed(e: BaseException) -> bool:
    """A CUDA error raised through CuPy, but running out of memory (a partition too large is
    its own one-line error)."""
    return type(e).__module__.split(".")[0] in ("cupy", "cupy_backends") and \
        not isinstance(e, MemoryError)


def leave_the_cluster(p: int, e: BaseException, step: str | None = None):
    """On a worker whose GPU failed computing partition ``p`` (building its table, or a design
    or model ``step`` on it): close this worker (and its nanny, so it is not restarted on the
    same GPU) and hand the task back to the scheduler, which gives it, and the tables and
    prepared partitions this worker held (recomputed from their tasks), to the others. Where no
    other worker could take over (the local launcher, or the cluster's last worker): one line,
    exit 1."""
    why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
    where = f"partition {p}" + (f", step {step}" if step else "")
    failed = DeviceFailed(f"the GPU failed while computing {where} ({why})",
                          fix="run again with --resume (finished partitions are kept), or "
                              "with --device cpu")
    try:
        from distributed import Reschedule, get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        raise failed from e
    if not _may_leave(worker):   # leaving would leave the run waiting for a worker forever
        _quiet_this_worker()   # the client says it, in one line
        raise failed from None
    worker.loop.add_callback(worker.close, nanny=True, reason=f"its GPU failed ({why})")
    raise Reschedule()


def _may_leave(worker) -> bool:
    """Whether another worker that is not itself leaving stays to take this one's work (if
    so, this worker is counted as leaving). Asked of the scheduler, which answers one worker
    at a time: two GPUs failing at the same moment must not both see the other and leave."""
    try:
        from distributed import get_client

        return bool(get_client().run_on_scheduler(_claim_leave, address=worker.address))
    except Exception:   # noqa: BLE001 - any failure to ask: stop here rather than risk a hang
        return False


def _claim_leave(dask_scheduler, address: str) -> bool:
    """On the scheduler (its event loop runs this whole, between other messages)."""
    leaving = dask_scheduler.__dict__.setdefault("hpcstudy_leaving", set())
    if not set(dask_scheduler.workers) - leaving - {address}:
        return False
    leaving.add(address)
    return True


class _DeviceFailedRecord:
    """Drops the worker's "Compute Failed" record (with its traceback) of a DeviceFailed."""

    @staticmethod
    def filter(record) -> bool:
        return not (record.args and "DeviceFailed" in str(record.args))


def _quiet_this_worker() -> None:
    import logging

    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _DeviceFailedRecord) for f in log.filters):
        log.addFilter(_DeviceFailedRecord())
