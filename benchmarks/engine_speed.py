"""Benchmark: `hpcstudy run` of example 1 (statins and MI) from Parquet to results, timed from
the outside: wall time, CPU time (user + system of the run's process and its threads), peak
resident memory, and the machine's load average around the run (the machine may be shared).

    python benchmarks/engine_speed.py --data /tmp/synth-200k --label after [--repeat 3]
    python benchmarks/engine_speed.py --data /tmp/synth-200k --label before \
        --checkout /tmp/main-checkout          # the same command on another checkout's code

Appends one JSON record per run to benchmarks/results/engine_speed.jsonl, with the git commit
of the code that ran, and prints the median of the repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "statins_mi.yaml"


def commit_of(checkout: Path) -> str:
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    marker = checkout / "COMMIT"
    return marker.read_text().strip() if marker.is_file() else "unknown"


def one_run(data: Path, checkout: Path | None, device: str | None) -> dict:
    out = Path(tempfile.mkdtemp(prefix="hpcstudy-engine-speed-")) / "out"
    env = dict(os.environ)
    cwd = None
    if checkout is not None:
        # another checkout's code, imported first (run from outside any checkout)
        env["PYTHONPATH"] = str(checkout)
        cwd = tempfile.gettempdir()
    cmd = [sys.executable, "-m", "hpcstudy.cli", "run", str(EXAMPLE), "--data", str(data),
           "--out", str(out), "--quiet"]
    if device:
        cmd += ["--device", device]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    log = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    if status != 0:
        raise SystemExit(f"hpcstudy run failed ({status}):\n{log}")
    results_sha = hashlib.sha256((out / "results.json").read_bytes()).hexdigest()[:16]
    shutil.rmtree(out.parent, ignore_errors=True)
    cpu = ru.ru_utime + ru.ru_stime
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "cpu_per_wall": round(cpu / wall, 2), "peak_rss_mib": round(ru.ru_maxrss / 1024),
            "load_before": [round(x, 2) for x in load0],
            "load_after": [round(x, 2) for x in load1], "results_sha256": results_sha}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--label", required=True, help="before | after | a short name")
    ap.add_argument("--checkout", type=Path, default=None,
                    help="run another checkout's code (e.g. main) instead of this one")
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    manifest = json.loads((a.data / "manifest.json").read_text())
    persons = manifest["registers"]["bef"]["rows"]
    commit = commit_of(a.checkout or ROOT)
    runs = []
    for i in range(a.repeat):
        r = one_run(a.data, a.checkout, a.device)
        runs.append(r)
        records.append("engine_speed", {
            "benchmark": "engine_speed", "study": "statins_mi", "label": a.label,
            "commit": commit, "persons": persons, "partitions": manifest["partitions"],
            "device": a.device or "cpu", "repeat": i + 1, "of": a.repeat,
            "cores": os.cpu_count(), **r})
    if len(runs) > 1:
        print(f"median wall {statistics.median(r['wall_s'] for r in runs):.2f} s, "
              f"cpu {statistics.median(r['cpu_s'] for r in runs):.2f} s", flush=True)


if __name__ == "__main__":
    main()
