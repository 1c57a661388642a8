"""Benchmark: the dask engine on one machine with 1, 2 and 4 worker processes (and the local
threaded scheduler), running example 1 on a synthetic dataset; with --mpi-workers, also as
MPI ranks (scheduler + client + W workers under mpirun, timed from the outside, start-up
included).

    python benchmarks/workers_scale.py --data /tmp/synth-1m [--mpi-workers 2] [--skip-local]

Appends one JSON record per configuration to benchmarks/results/workers_scale.jsonl. The
projection to Gefion nodes built on these figures is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import records

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "statins_mi.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--mpi-workers", type=int, nargs="*", default=[])
    ap.add_argument("--skip-local", action="store_true")
    a = ap.parse_args()
    from hpcstudy.cluster.launchers import client_for
    from hpcstudy.engines.run import run
    from hpcstudy.registers.store import Dataset

    ds = Dataset.open(a.data)

    def record(launcher: str, workers: int, wall: float, res: dict, out: Path, **extra):
        shutil.rmtree(out.parent, ignore_errors=True)
        records.append("workers_scale", {
            "benchmark": "workers_scale", "launcher": launcher, "workers": workers, **extra,
            "persons": ds.manifest["source"].get("persons"), "partitions": ds.partitions,
            "wall_s": round(wall, 1), "hr_statin": res["models"]["cox"]["terms"][0]["HR"]})

    configs = [("local", 0)] * (not a.skip_local) + [("processes", w) for w in a.workers]
    for launcher, workers in configs:
        out = Path(tempfile.mkdtemp()) / "out"
        with client_for(launcher, workers=max(workers, 1)) as client:
            t0 = time.perf_counter()
            res = run(EXAMPLE, a.data, out, client=client)
            wall = time.perf_counter() - t0
        record(launcher, workers, wall, res, out)
    for workers in a.mpi_workers:
        out = Path(tempfile.mkdtemp()) / "out"
        env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        t0 = time.perf_counter()
        subprocess.run(["mpirun", "-n", str(workers + 2), "--oversubscribe", sys.executable, "-m",
                        "hpcstudy.cli", "run", str(EXAMPLE), "--data", str(a.data), "--out",
                        str(out), "--launcher", "mpi", "--quiet"], check=True, env=env)
        wall = time.perf_counter() - t0
        res = json.loads((out / "results.json").read_text())
        record("mpi", workers, wall, res, out, ranks=workers + 2)

if __name__ == "__main__":
    main()
