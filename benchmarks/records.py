"""One place where benchmark figures are stamped, timed and appended to results/*.jsonl.

Every record carries the machine (cores, memory, CPU model), the git commit, the load
average when the script started and when the record was written, and the date: figures
taken on a shared machine (load above its cores) are noisy, and the summary says so.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS", Path(__file__).parent / "results"))
LOAD_AT_START = os.getloadavg()[0]
# one id for every record of one `make bench` (the summary shows the latest run's records)
RUN = os.environ.get("BENCH_RUN") or time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"host": platform.node(), "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "cpu": model, "python": platform.python_version(), "numpy": np.__version__}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


_STAMP = None


def stamp() -> dict:
    global _STAMP
    if _STAMP is None:
        _STAMP = {"machine": machine(), "commit": git_commit()}
    before = os.environ.get("BENCH_LOAD_BEFORE")  # `make bench` reads it before it starts
    return {**_STAMP, "run": RUN,
            "load_before_bench": round(float(before), 2) if before else None,
            "load_at_start": round(LOAD_AT_START, 2),
            "load_now": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def append(name: str, record: dict) -> dict:
    """Add the machine, commit, load and date; append to results/NAME.jsonl; print it."""
    record = {**record, **stamp()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record


def summary(values) -> dict:
    """Median, min, max and count of repeated measurements (None when there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def timed(fn):
    """(wall seconds, CPU seconds of this process, result) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


# Measures the tool from a small process: on Linux a child's peak RSS (wait4's ru_maxrss) is
# at least what its parent had resident when it was forked (the kernel keeps the pre-exec high
# water), so a tool started straight from this script, which holds the tables it checks, would
# be charged this script's memory. This starter is a few MiB; the tool is spawned from it and
# its own wall time, CPU time (with what it waited for) and peak RSS come back as JSON.
_STARTER = """
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
               "peak_rss_mib": ru.ru_maxrss / 1024}, f)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_child(cmd, env=None, cwd=None, timeout=None) -> dict:
    """Run a command in a child process; its wall seconds, CPU seconds (user + system of the
    child and of what it waited for) and peak resident memory (the kernel's high-water mark,
    not sampled), from wait4 on that one child in a small starter process (see _STARTER), and
    the 1-minute load average when it started and ended (the machine may be shared). Raises
    RuntimeError when it fails."""
    import signal
    import sys
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as measured:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-S", "-c", _STARTER, measured.name,
                                 *map(str, cmd)], env=env, cwd=cwd, stdout=out, stderr=err,
                                start_new_session=True)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)   # the starter and the tool
                os.wait4(proc.pid, 0)
                proc.returncode = -signal.SIGKILL   # reaped here, not by Popen
                raise RuntimeError(f"{cmd[0]} … took longer than {timeout} s")
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        text = measured.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {stderr[-2000:]}")
    tool = json.loads(text) if text else {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                                          "peak_rss_mib": ru.ru_maxrss / 1024}
    return {**tool, "load_start": round(load0, 2),
            "load_end": round(os.getloadavg()[0], 2), "stdout": stdout, "stderr": stderr}
