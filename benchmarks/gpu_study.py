"""Benchmark: the study path on a GPU against the same machine's CPU cores.

    python benchmarks/gpu_study.py                      # on a GPU node: the full benchmark
    python benchmarks/gpu_study.py --persons 2000 --cox-n 5000 --cox-p 3 --devices cpu \\
        --work /tmp/gpu-bench --results /tmp/gpu-bench/results      # a tiny check, anywhere

For each size in ``--persons`` it generates the synthetic registers on this machine (all its
cores), then runs example 1 (statins and MI: cohort, Cox, logistic, curves) from Parquet to
results on each device in ``--devices`` (the CPU with a worker process per core, the GPU from
one process); then it fits a Cox model alone on ``--cox-n`` rows and
``--cox-p`` covariates generated on each device. Every figure is one JSON line appended to
``RESULTS/gpu_study.jsonl`` or ``RESULTS/gpu_cox.jsonl``, with the device's name (the GPU's
model, or the CPU's model and cores). ``--devices``: cpu, gpu, standin (the CPU stand-in for a
GPU), auto.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXAMPLE_1 = HERE.parent / "examples" / "statins_mi.yaml"


def device_name(device: str) -> str:
    """What the figures were measured on, in words."""
    if device == "gpu":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores" + (" (stand-in device)" if device == "standin"
                                                 else "")


def append(results: Path, name: str, record: dict) -> dict:
    record = {**record, "host": platform.node(), "numpy": np.__version__,
              "date": time.strftime("%Y-%m-%d")}
    results.mkdir(parents=True, exist_ok=True)
    with open(results / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record


def partitions_for(persons: int) -> int:
    """About 600 000 persons a partition (a 10 M run: 16), at least 2."""
    return max(2, math.ceil(persons / 600_000))


def study_runs(a, results: Path) -> None:
    from hpcstudy.cluster.launchers import client_for
    from hpcstudy.engines.run import run
    from hpcstudy.registers.generate import generate

    for persons in a.persons:
        data = a.work / f"data-{persons}"
        parts = a.partitions or partitions_for(persons)
        t0 = time.perf_counter()
        if not (data / "manifest.json").is_file():
            generate(data, persons=persons, seed=1, partitions=parts, jobs=a.jobs)
        synth_s = time.perf_counter() - t0
        for device in a.devices:
            out = a.work / f"out-{persons}-{device}"
            shutil.rmtree(out, ignore_errors=True)
            report: dict = {}
            workers = a.cpu_workers if device == "cpu" else 0
            with client_for("processes" if workers else "local", workers=max(workers, 1)) as c:
                t0 = time.perf_counter()
                res = run(EXAMPLE_1, data, out, device=device, report=report, client=c)
                wall = time.perf_counter() - t0
            cox = res.get("models", {}).get("cox", {})
            hr = next((t.get("HR") for t in cox.get("terms", []) if t["term"] == "statin"),
                      None)
            peaks = (report.get("device") or {}).get("peak_memory_mib") or {}
            append(results, "gpu_study", {
                "benchmark": "example1", "persons": persons, "partitions": parts,
                "device": report.get("device", {}).get("name", device),
                "device_name": device_name(device), "wall_s": round(wall, 2),
                "launcher": f"processes x {workers}" if workers else "local",
                "synth_s": round(synth_s, 2), "hr_statin": hr,
                "peak_device_memory_mib": max(peaks.values(), default=None)})
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out.parent / f"{out.name}.checkpoints", ignore_errors=True)


def _cox_parts(n: int, p: int, device: str, chunk: int):
    """Cox data generated where it is fitted: X ~ N(0, 1), hazard exp(0.1 x_0 - 0.1 x_1) per
    year, follow-up to a year (about 63 % events), times in whole days (ties)."""
    from hpcstudy.devices import get_device

    dev = get_device(device)
    xp = dev.xp if device != "standin" else np
    rng = xp.random.default_rng(7) if hasattr(xp.random, "default_rng") else xp.random
    parts = []
    beta = np.zeros(p)
    beta[:2] = [0.1, -0.1]
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        X = rng.standard_normal((m, p))
        rate = xp.exp(X @ xp.asarray(beta))
        t = xp.ceil(rng.standard_exponential(m) / rate * 365)
        e = (t < 365).astype(xp.float64)
        t = xp.minimum(t, 365.0)
        part = {"X": X, "time": t, "event": e, "weights": xp.ones(m),
                "strata": xp.zeros(m, dtype=xp.int64)}
        if device == "standin":
            part = {k: dev.to_device(v) for k, v in part.items()}
        parts.append(part)
    return parts, dev


def cox_runs(a, results: Path) -> None:
    from hpcstudy.models.cox import CoxPH
    from hpcstudy.models.partitions import LocalPartitions

    for device in a.devices:
        t0 = time.perf_counter()
        parts, dev = _cox_parts(a.cox_n, a.cox_p, device, a.cox_chunk)
        if device == "gpu":
            dev.xp.cuda.Device().synchronize()
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = CoxPH().fit_partitions(LocalPartitions(parts), [f"x{i}" for i in range(a.cox_p)])
        wall = time.perf_counter() - t0
        append(results, "gpu_cox", {
            "benchmark": "cox", "n": a.cox_n, "p": a.cox_p, "device": device,
            "device_name": device_name(device), "wall_s": round(wall, 2),
            "generate_s": round(gen_s, 2), "newton_steps": m.n_iter_, "events": m.n_events_,
            "coef_0": float(m.coef_[0]), "peak_device_memory_mib":
                None if device != "gpu" else math.ceil(dev.peak_memory() / 2 ** 20)})
        del parts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1_000_000, 10_000_000], help="sizes, comma-separated")
    ap.add_argument("--partitions", type=int, default=0,
                    help="data partitions (default: about 600 000 persons each)")
    ap.add_argument("--devices", type=lambda s: s.split(","), default=["gpu", "cpu"])
    ap.add_argument("--cox-n", type=int, default=100_000_000)
    ap.add_argument("--cox-p", type=int, default=20)
    ap.add_argument("--cox-chunk", type=int, default=10_000_000,
                    help="rows per Cox partition")
    ap.add_argument("--skip", choices=["study", "cox"], action="append", default=[])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="processes generating the data")
    ap.add_argument("--cpu-workers", type=int, default=os.cpu_count() or 1,
                    help="worker processes for the CPU runs of the study (0: threads in one "
                         "process); the GPU runs use one process and its GPU")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hpcstudy-gpu-bench"))
    ap.add_argument("--results", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if "gpu" in a.devices:
        from hpcstudy.cluster.gpus import gpu_problem

        why = gpu_problem()
        if why:
            sys.exit(f"gpu_study: {why}")
    if "study" not in a.skip:
        study_runs(a, a.results)
    if "cox" not in a.skip:
        cox_runs(a, a.results)


if __name__ == "__main__":
    main()
