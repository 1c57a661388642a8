"""Benchmark: peak memory of `hpcstudy ingest` against the size of the extract.

    python benchmarks/ingest_memory.py --rows 1000000 2000000 --work /tmp/ingest-bench

Writes a synthetic CPR-keyed extract of each size (valid, distinct persons; a few bad rows),
ingests it into a fresh dataset in a child process and records that process's peak resident
memory (the kernel's high-water mark as GNU time reports it: exact, not sampled) and wall time.
Appends one JSON record per size to benchmarks/results/ingest_memory.jsonl. `--code DIR` runs
another checkout's hpcstudy (e.g. the version before streaming) for comparison.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import append  # noqa: E402

FIRST = np.datetime64("1937-01-01")
DAYS = int((np.datetime64("1999-12-31") - FIRST).astype(int)) + 1


def _cpr(i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct valid CPR numbers (7th digit 0-3: born 1937-1999) and their birth dates."""
    born = FIRST + (i % DAYS)
    serial = i // DAYS                                     # < 4000 for i < 230 M
    d = born.astype("datetime64[D]").astype(str)
    yy = np.array([s[2:4] for s in d])
    mm = np.array([s[5:7] for s in d])
    dd = np.array([s[8:10] for s in d])
    sss = np.char.zfill(serial.astype(str), 4)
    dash = np.where(i % 2 == 0, "-", "")                   # both written forms
    cpr = np.char.add(np.char.add(np.char.add(np.char.add(dd, mm), yy), dash), sss)
    return cpr, d


def write_extract(path: Path, register: str, rows: int, chunk: int = 1_000_000) -> None:
    rng = np.random.default_rng(7)
    order = rng.permutation(rows)
    with open(path, "wb") as f:
        for k, s in enumerate(range(0, rows, chunk)):
            i = order[s:s + chunk]
            cpr, born = _cpr(i)
            if register == "bef":
                t = pa.table({"cpr": cpr, "koen": 1 + i % 2, "foed_dag": born,
                              "region": 1081 + i % 5})
            else:                                          # lmdb: one dispensing per person
                day = np.datetime64("2015-01-01") + (i % 3000)
                t = pa.table({"cpr": cpr, "eksd": day.astype(str),
                              "atc": np.where(i % 3 == 0, "C10AA01", "A10BA02"),
                              "apk": 1 + i % 2, "packsize": np.full(i.size, 100),
                              "volume": np.where(i % 3 == 0, 100.0, 90.0)})
            if k == 0:
                t = t.set_column(0, "cpr", pa.array(["12345"] + cpr[1:].tolist()))
            opts = pcsv.WriteOptions(include_header=(k == 0), quoting_style="none")
            pcsv.write_csv(t, f, opts)


def peak_of(cmd: list[str], env: dict, cwd: Path) -> tuple[int, float, str]:
    """(peak RSS in bytes, wall seconds, stdout) of a command, measured by GNU time, which
    starts it from its own small process (a child forked from this Python, which holds the
    extract generator's arrays, could be charged for them)."""
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile("r") as f:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name, *cmd],
                           capture_output=True, text=True, env=env, cwd=cwd)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"ingest failed: {p.stdout}{p.stderr}")
        kib = int(f.read().strip().splitlines()[-1])
    return kib * 1024, wall, p.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", required=True)
    ap.add_argument("--register", choices=["bef", "lmdb"], default="bef")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ingest-bench"))
    ap.add_argument("--code", type=Path, default=None,
                    help="run the hpcstudy found in this folder instead (PYTHONPATH)")
    ap.add_argument("--label", default="streamed")
    a = ap.parse_args()
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    key = a.work / "key"
    if not key.exists():
        key.write_bytes(bytes(range(64)))
    env = dict(os.environ)
    if a.code:
        env["PYTHONPATH"] = str(a.code.resolve())
    env.setdefault("HPCSTUDY_AUDIT_LOG", str(a.work / "audit.jsonl"))
    for n in a.rows:
        src = a.work / f"{a.register}-{n}.csv"
        if not src.exists():
            write_extract(src, a.register, n)
        data = a.work / f"data-{a.register}-{n}-{a.label}"
        subprocess.run(["rm", "-rf", str(data)], check=True)
        cmd = [sys.executable, "-m", "hpcstudy.cli", "ingest", "--register", a.register,
               "--input", str(src), "--data", str(data), "--key-file", str(key),
               "--partitions", str(a.partitions), "--quarantine", str(a.work / "q.csv")]
        # run where `python -m hpcstudy` finds the code wanted first (it looks in the cwd)
        peak, wall, out = peak_of(cmd, env, a.code.resolve() if a.code else a.work)
        append("ingest_memory", {
            "benchmark": "ingest_memory", "code": a.label, "register": a.register, "rows": n,
            "extract_bytes": src.stat().st_size, "partitions": a.partitions,
            "peak_rss_mb": round(peak / 2**20, 1), "wall_s": round(wall, 1),
            "python": sys.version.split()[0], "summary": out.split(": ", 1)[-1].split(" in ")[0]})
        subprocess.run(["rm", "-rf", str(data)], check=True)


if __name__ == "__main__":
    main()
