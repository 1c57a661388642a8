"""The run record: how a run ran (engine, launcher, workers, device, hardware, code, times),
exported as ``OUT/run.json`` and listed in ``outputs.json`` as kind ``run``.

    report = begin({"launcher": "mpi"}, client)       # when the run starts
    entry = write(staging, report, engine="dask", device=device_record)   # outputs written

It lives apart from ``results.json`` on purpose: the results and the per-person table are the
same bytes whichever launcher, worker count or machine computed them (the launcher tests
compare them), while this record says which did, and when. It holds no count of persons: only
the fields :data:`hpcstudy.outputs.manifest.RUN_FIELDS` declares, each of a fixed type and
shape, which the export gate re-checks (:func:`hpcstudy.outputs.checks.check_kind`, kind
``run``). The study report shows it in its *Run* section.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from . import manifest as M

# hardware names as vendors write them: ASCII letters, digits and a few signs, nothing else
_UNSAFE = re.compile(r"[^A-Za-z0-9 ()@.,:+/_-]+")
# a core count in words ("AMD Ryzen 7 5800X Eight-Core Processor"): written in digits, since
# number words may not leave in any exported text (text.py)
_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_WORDS.update(thirty="30", forty="40", fifty="50", sixty="60", seventy="70", eighty="80",
              ninety="90")


@functools.cache
def code_version() -> tuple[str, str]:
    """(hpcstudy's version, SHA-256 over its installed source and templates)."""
    # (importlib.metadata: about 0.06 s to import; a run calls this beside its partitions)
    from importlib import metadata

    import hpcstudy
    import hpcstudy_kernels

    h = hashlib.sha256()
    for pkg in (hpcstudy, hpcstudy_kernels):
        root = Path(pkg.__file__).parent
        for p in sorted(root.rglob("*")):
            if p.suffix in (".py", ".j2", ".css", ".sbatch", ".yaml") and p.is_file() and \
                    "__pycache__" not in p.parts:
                h.update(f"{pkg.__name__}/{p.relative_to(root).as_posix()}\n".encode())
                h.update(p.read_bytes())
    try:
        version = metadata.version("hpcstudy")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return version, h.hexdigest()


def grouped(digest: str) -> str:
    """A hex digest in groups of 8 (as audit.json writes them): no run of digits in it can
    pass for a long identifier."""
    return " ".join(digest[i:i + 8] for i in range(0, len(digest), 8))


# -- the machine a process runs on --------------------------------------------------------------
def hardware_name(text: str) -> str:
    """A CPU or GPU name as it may leave: vendor signs dropped, core counts in digits,
    whitespace collapsed, at most 80 characters."""
    text = text.replace("(R)", "").replace("(TM)", "").replace("(tm)", "")
    text = _UNSAFE.sub(" ", text)
    text = re.sub(r"(?i)\b(" + "|".join(sorted(_WORDS, key=len, reverse=True)) + r")\b",
                  lambda m: _WORDS[m.group(1).lower()], text)
    return " ".join(text.split())[:80].strip() or "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return hardware_name(value)
    except OSError:
        pass
    return hardware_name(platform.processor() or platform.machine())


def _cores() -> int:
    """The CPU cores this process may run on (a Slurm job's, not the whole node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _gpus() -> list[str]:
    """Names of the GPUs this process sees (CUDA_VISIBLE_DEVICES respected); [] without any.
    Asks nvidia-smi, so the client process of a run never starts a CUDA context."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return []
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        r = subprocess.run([smi, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if r.returncode != 0:
        return []
    rows = [[x.strip() for x in line.split(",", 2)] for line in r.stdout.splitlines()
            if line.count(",") >= 2]
    if visible is not None:
        want = [v.strip() for v in visible.split(",") if v.strip()]
        rows = [next((row for row in rows if v in (row[0], row[1])), None) for v in want]
        rows = [row for row in rows if row is not None]
    return [hardware_name(row[2]) for row in rows]


def machine() -> dict:
    """The CPU model, its cores available here and the GPUs visible here."""
    return {"cpu": _cpu_model(), "cores": _cores(), "gpus": _gpus()}


def _machines(client) -> list[dict]:
    """The distinct machines the run's partitions are computed on: this process for the local
    launcher, every worker's otherwise."""
    if client is None:
        return [machine()]
    try:
        seen = client.run(machine)
    except Exception:   # noqa: BLE001 (a record of the hardware never fails a run)
        return [machine()]
    kinds = {json.dumps(m, sort_keys=True) for m in seen.values()}
    return [json.loads(k) for k in sorted(kinds)] or [machine()]


# -- the record --------------------------------------------------------------------------------
def launcher_of(client) -> str:
    """The launcher behind a client, where the caller did not say: ``local`` (no client),
    ``slurm`` (dask-jobqueue), ``processes`` (a cluster on this machine), else ``client`` (a
    dask client the caller made)."""
    if client is None:
        return "local"
    cluster = getattr(client, "cluster", None)
    if cluster is None:
        return "client"
    return "slurm" if "SLURM" in type(cluster).__name__.upper() else "processes"


def _workers(client) -> int | None:
    if client is None:
        return None
    try:
        return len(client.nthreads())
    except Exception:   # noqa: BLE001
        return None


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(int(t), datetime.UTC) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def begin(report: dict, client=None) -> dict:
    """Note in a run's ``report`` dict when the run starts and where it runs (its launcher,
    ``report["launcher"]`` when the caller says, workers and machines). Returns ``report``."""
    if "run_record" not in report:
        report["run_record"] = {
            "launcher": report.get("launcher") or launcher_of(client),
            "workers": _workers(client), "hardware": _machines(client),
            "started": time.time(), "monotonic": time.monotonic()}
    return report


def record(report: dict | None, *, engine: str, device: dict | None) -> dict:
    """The run record (see :data:`hpcstudy.outputs.manifest.RUN_FIELDS`): the outputs are
    being written now, so this is when the run finished."""
    begun = begin({} if report is None else report)["run_record"]
    version, code = code_version()
    device = device or {}
    peaks = [v for v in (device.get("peak_memory_mib") or {}).values() if isinstance(v, int)]
    now, mono = time.time(), time.monotonic()
    return {"format": M.RUN_FORMAT, "engine": engine, "launcher": begun["launcher"],
            "workers": begun["workers"], "device": device.get("name") or "cpu",
            "peak_device_memory_mib": max(peaks) if peaks else None,
            "hardware": begun["hardware"], "hpcstudy_version": version,
            "code_sha256": grouped(code), "started": _utc(begun["started"]),
            "finished": _utc(now), "wall_seconds": round(mono - begun["monotonic"], 1)}


def write(out: Path, report: dict | None, *, engine: str, device: dict | None) -> dict:
    """Write ``OUT/run.json``; returns its manifest entry (path and kind)."""
    rec = record(report, engine=engine, device=device)
    (Path(out) / M.RUN_RECORD).write_text(json.dumps(rec, indent=1) + "\n")
    return {"path": M.RUN_RECORD, "kind": "run"}
