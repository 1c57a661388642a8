"""Benchmark: the dask engine on one machine with 1, 2 and 4 worker processes (and the local
threaded scheduler), running example 1 on a synthetic dataset.

    python benchmarks/workers_scale.py --data /tmp/synth-1m

Appends one JSON record per configuration to benchmarks/results/workers_scale.jsonl. The
projection to Gefion nodes built on these figures is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import records

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "statins_mi.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    a = ap.parse_args()
    from hpcstudy.cluster.launchers import client_for
    from hpcstudy.engines.run import run
    from hpcstudy.registers.store import Dataset

    ds = Dataset.open(a.data)
    persons = ds.manifest["source"].get("persons")
    configs = [("local", 0)] + [("processes", w) for w in a.workers]
    for launcher, workers in configs:
        out = Path(tempfile.mkdtemp()) / "out"
        with client_for(launcher, workers=max(workers, 1)) as client:
            t0 = time.perf_counter()
            res = run(EXAMPLE, a.data, out, client=client)
            wall = time.perf_counter() - t0
        rec = {"benchmark": "workers_scale", "launcher": launcher, "workers": workers,
               "persons": persons, "partitions": ds.partitions, "wall_s": round(wall, 1),
               "hr_statin": res["models"]["cox"]["terms"][0]["HR"]}
        shutil.rmtree(out.parent, ignore_errors=True)
        records.append("workers_scale", rec)


if __name__ == "__main__":
    main()
