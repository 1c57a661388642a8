"""Benchmark: `hpcstudy synth` wall time, peak memory and rows per register.

    python benchmarks/synth_scale.py --persons 1000000 --partitions 16 --out /tmp/synth-1m

Appends one JSON record to benchmarks/results/synth_scale.jsonl. Peak memory is sampled
every 0.2 s over the whole process tree (the main process plus its worker processes), from
/proc, so it is the resident memory the machine actually had to hold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "synth_scale.jsonl"


def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(parts[1]), int(parts[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--persons", type=int, required=True)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep", action="store_true", help="keep the dataset afterwards")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "hpcstudy.cli", "synth", "--persons", str(a.persons),
           "--seed", str(a.seed), "--partitions", str(a.partitions), "--jobs", str(a.jobs),
           "--out", str(a.out), "--overwrite", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if rc != 0:
        sys.exit(f"synth failed with exit code {rc}")
    manifest = json.loads((a.out / "manifest.json").read_text())
    rows = {k: v["rows"] for k, v in manifest["registers"].items()}
    size = sum(f["bytes"] for v in manifest["registers"].values() for f in v["files"])
    record = {
        "benchmark": "synth_scale", "persons": a.persons, "partitions": a.partitions,
        "jobs": a.jobs, "seed": a.seed, "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak / 2**30, 2), "rows": rows, "rows_total": sum(rows.values()),
        "bytes_on_disk": size, "machine": f"{platform.node()} {os.cpu_count()} cores "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    if not a.keep:
        shutil.rmtree(a.out)


if __name__ == "__main__":
    main()
