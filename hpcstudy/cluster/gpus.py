"""Which device a run computes on (``--device cpu|gpu|auto``), and whether a partition fits.

The device is chosen where the work runs: in this process for the local launcher, on every
worker for the others (a client on a login node may have no GPU while its workers do).

* ``cpu``  — NumPy on the CPU cores;
* ``gpu``  — CuPy on the one GPU each worker sees; refused with one line when CuPy is missing
  or finds no device;
* ``auto`` — ``gpu`` where CuPy finds a device on every worker (or here), else ``cpu``.

A partition is moved to the device whole, so before it is loaded its size is estimated from
the manifest's row counts: rows × bytes per row read × :data:`MEMORY_FACTOR`. A partition whose
estimate exceeds the device's free memory stops the run with one line naming it and the
``--partitions`` that would fit.
"""

from __future__ import annotations

import math

from ..errors import UserError

DEVICES = ("cpu", "gpu", "auto")
# Working memory per byte read: the columns themselves, their sorted copies (linkage and
# windows sort), masks and window results, and the per-person table built from them.
MEMORY_FACTOR = 6
BYTES_PER_VALUE = 8       # every column is widened to 64 bits on the device
HOW_TO_RUN_ON_CPU = "run with --device cpu (NumPy on the CPU cores gives the same results)"


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


# -- memory ------------------------------------------------------------------------------------
class PartitionTooLarge(Exception):
    """Raised on a worker: partition ``p`` needs ``need`` bytes, ``free`` are free."""

    def __init__(self, p: int, need: int, free: int):
        super().__init__(p, need, free)
        self.p, self.need, self.free = p, need, free


def partition_bytes(ds, reads: dict[str, tuple[str, ...]]) -> list[int]:
    """Estimated device bytes per partition: rows read × columns × 8 × MEMORY_FACTOR."""
    need = [0] * ds.partitions
    for reg, cols in reads.items():
        for p, f in enumerate(ds.files(reg)):
            need[p] += int(f["rows"]) * len(cols) * BYTES_PER_VALUE * MEMORY_FACTOR
    return need


def too_large(e: PartitionTooLarge, need: list[int], device: str = "gpu") -> UserError:
    """The one line for a partition that does not fit: which, how much, what would fit."""
    total = sum(need)
    fit = max(len(need) + 1, math.ceil(total / max(e.free, 1) * 1.25))
    gib = 2 ** 30
    return UserError(
        f"partition {e.p} needs about {e.need / gib:.2f} GiB of {device} memory "
        f"(rows read × 8 bytes × {MEMORY_FACTOR}), but only {e.free / gib:.2f} GiB is free",
        fix=f"split the data into more partitions (hpcstudy synth/ingest --partitions {fit} or "
            f"more), or {HOW_TO_RUN_ON_CPU}")


def check_fits(device, p: int, need: int) -> None:
    """On the worker, before partition ``p`` is loaded: PartitionTooLarge if it cannot fit."""
    free = device.memory_free()
    if free is not None and need > free:
        raise PartitionTooLarge(p, need, int(free))
