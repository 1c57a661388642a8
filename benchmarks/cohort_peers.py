"""Benchmark: cohort building for example 1 (examples/statins_mi.yaml) — `hpcstudy run` vs the
same study written by hand in DuckDB SQL, polars and pandas (benchmarks/peers/), on the same
synthetic Parquet registers; and how `hpcstudy run` scales with the number of persons.
`--study diabetes_incidence` takes examples/diabetes_incidence.yaml instead (a population
cohort on a fixed day, a shape the engine was not tuned on; peers in DuckDB SQL and polars).

    python benchmarks/cohort_peers.py                      # 2e5 and 1e6 persons; scaling 1e5, 1e6
    python benchmarks/cohort_peers.py --persons 10000000   # or BENCH_SIZES=full: adds 1e7
    python benchmarks/cohort_peers.py --persons 20000 --repeats 1 --scaling   # a smoke test
    python benchmarks/cohort_peers.py --study diabetes_incidence --persons 200000 --scaling-persons

Each tool runs as a child process and the runs are interleaved (hpcstudy, duckdb, polars,
pandas, hpcstudy, …), so each ratio compares runs under the same load. Per run: wall time, CPU
time (user + system; CPU / wall says how many cores were busy) and peak resident memory
(the kernel's high-water mark, from wait4). Before any figure is recorded the benchmark
asserts that every peer's per-person table equals hpcstudy's (private/person_table.parquet)
row for row — so the same cohort size, events and person-years. hpcstudy's run includes the
analyses (Cox, Poisson, curves) and writing its outputs; the peers build the table only.
Datasets are made once with `hpcstudy synth` under --data-root and reused; the runs write
their outputs in a temporary folder of their own, removed at the end.
Appends to results/cohort_peers.jsonl and results/scaling.jsonl.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import records

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "statins_mi.yaml"
PEERS = {"duckdb": HERE / "peers" / "statins_mi_duckdb.py",
         "polars": HERE / "peers" / "statins_mi_polars.py",
         "pandas": HERE / "peers" / "statins_mi_pandas.py"}
# study name -> (the study, its hand-written peers, the registers it reads)
STUDIES = {
    "statins_mi": (EXAMPLE, PEERS, ("bef", "dod", "vnds", "lpr_adm", "lpr_diag", "lmdb")),
    "diabetes_incidence": (
        HERE.parent / "examples" / "diabetes_incidence.yaml",
        {"duckdb": HERE / "peers" / "diabetes_incidence_duckdb.py",
         "polars": HERE / "peers" / "diabetes_incidence_polars.py"},
        ("bef", "dod", "vnds", "lpr_adm", "lpr_diag")),
}
SEED = 1


def partitions_for(persons: int) -> int:
    return max(2, min(64, persons // 62_500))


def dataset(root: Path, persons: int) -> Path:
    """The synthetic dataset for this many persons (made once, then reused)."""
    path = root / f"persons-{persons}"
    manifest = path / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if m.get("source", {}).get("persons") == persons and m["source"].get("seed") == SEED:
            return path
    root.mkdir(parents=True, exist_ok=True)
    records.run_child([sys.executable, "-m", "hpcstudy.cli", "synth", "--persons", str(persons),
                       "--seed", str(SEED), "--partitions", str(partitions_for(persons)),
                       "--out", str(path), "--overwrite", "--quiet"])
    return path


def scanned_bytes(data: Path, study: str = "statins_mi") -> dict:
    """Parquet bytes on disk and decoded (uncompressed) of the registers the study reads."""
    import pyarrow.parquet as pq

    disk = decoded = 0
    for reg in STUDIES[study][2]:
        for f in sorted((data / reg).glob("*.parquet")):
            disk += f.stat().st_size
            md = pq.ParquetFile(f).metadata
            decoded += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    return {"parquet_bytes": disk, "decoded_bytes": decoded}


def run_hpcstudy(data: Path, out: Path, study: str = "statins_mi") -> tuple[dict, Path]:
    # -P: the current folder is not put first on the path (PYTHONPATH picks the hpcstudy timed)
    res = records.run_child([sys.executable, "-P", "-m", "hpcstudy.cli", "run",
                             str(STUDIES[study][0]),
                             "--data", str(data), "--out", str(out), "--overwrite", "--quiet"])
    return res, out / "private" / "person_table.parquet"


def run_peer(name: str, data: Path, out: Path, study: str = "statins_mi") -> tuple[dict, Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = out / f"{name}.parquet"
    peer = STUDIES[study][1][name]
    return records.run_child([sys.executable, str(peer), str(data), str(table)]), table


def person_table(path: Path):
    import pandas as pd

    t = pd.read_parquet(path)
    return t.sort_values(["group", "pnr"], kind="stable").reset_index(drop=True)


def same_table(ours, theirs, name: str) -> dict:
    """Assert a peer's per-person table equals hpcstudy's; return cohort size, events, py."""
    import pandas as pd

    assert list(theirs.columns) == list(ours.columns), f"{name}: columns {list(theirs.columns)}"
    assert len(theirs) == len(ours), f"{name}: {len(theirs)} rows, hpcstudy {len(ours)}"
    for c in ours.columns:
        a, b = ours[c].to_numpy(), theirs[c].to_numpy()
        if c == "age":
            ok = np.allclose(a, b, rtol=1e-12, atol=0)
        else:
            ok = np.array_equal(a.astype(np.int64), b.astype(np.int64))
        assert ok, f"{name}: column {c} differs from hpcstudy's in " \
            f"{int((a != b).sum())} rows"
    assert isinstance(theirs, pd.DataFrame)
    return cohort_figures(theirs)


def cohort_figures(t) -> dict:
    return {"cohort_rows": int(len(t)), "events": int(t.event.sum()),
            "person_years": round(float(t.time.sum()) / 365.25, 3)}


def measure(data: Path, work: Path, tools: list[str], repeats: int,
            study: str = "statins_mi") -> dict:
    runs = {t: [] for t in tools}
    figures = {}
    for _ in range(repeats):
        tables = {}
        for tool in tools:
            if tool == "hpcstudy":
                res, table = run_hpcstudy(data, work / "hpcstudy-out", study)
            else:
                res, table = run_peer(tool, data, work / "peers", study)
            runs[tool].append(res)
            tables[tool] = table
        ours = person_table(tables["hpcstudy"])
        figures["hpcstudy"] = cohort_figures(ours)
        for tool in tools[1:]:
            figures[tool] = same_table(ours, person_table(tables[tool]), tool)
    return {"runs": runs, "figures": figures}


def summarise(runs: list[dict]) -> dict:
    wall = [r["wall_s"] for r in runs]
    cpu = [r["cpu_s"] for r in runs]
    return {"wall_s": records.summary(wall), "cpu_s": records.summary(cpu),
            "peak_rss_mib": records.summary([r["peak_rss_mib"] for r in runs]),
            "cores_busy": records.summary([c / w for c, w in zip(cpu, wall, strict=True)]),
            "load": records.summary([(r["load_start"] + r["load_end"]) / 2 for r in runs]),
            "per_run": [{k: round(r[k], 3) for k in ("wall_s", "cpu_s", "peak_rss_mib",
                                                      "load_start", "load_end")} for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser()
    full = os.environ.get("BENCH_SIZES") == "full"
    ap.add_argument("--persons", type=int, nargs="+",
                    default=[200_000, 1_000_000] + [10_000_000] * full)
    ap.add_argument("--scaling-persons", type=int, nargs="*",
                    default=[100_000, 1_000_000] + [10_000_000] * full)
    ap.add_argument("--study", choices=list(STUDIES), default="statins_mi")
    ap.add_argument("--peers", nargs="*", help="default: every peer of the study")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of each tool (default 3 up to 2e5 persons, 2 above, 1 at 1e7)")
    ap.add_argument("--data-root", type=Path,
                    default=Path(os.environ.get("BENCH_DATA", "/tmp/hpcstudy-bench")))
    a = ap.parse_args()
    # the runs' outputs in a folder of this run's own: the data root may be read-only, and
    # two benchmarks running at once must not write (or remove) each other's outputs
    work = Path(tempfile.mkdtemp(prefix="hpcstudy-bench-work-"))
    atexit.register(shutil.rmtree, work, True)   # (also where a peer's table disagrees)
    peers = STUDIES[a.study][1]
    if a.peers is None:
        a.peers = list(peers)
    if set(a.peers) - set(peers):
        ap.error(f"--peers: {a.study} has peers {', '.join(peers)}")
    tools = ["hpcstudy", *a.peers]
    scaling: dict[int, dict] = {}
    for persons in sorted(a.persons):
        data = dataset(a.data_root, persons)
        repeats = a.repeats or (3 if persons <= 200_000 else 2 if persons <= 1_000_000 else 1)
        m = measure(data, work, tools, repeats, a.study)
        rec = {"benchmark": "cohort_peers", "study": a.study, "persons": persons,
               "partitions": partitions_for(persons), **m["figures"]["hpcstudy"],
               **scanned_bytes(data, a.study), "repeats": repeats}
        for tool in tools:
            rec[tool] = summarise(m["runs"][tool])
        ours = rec["hpcstudy"]
        for tool in tools[1:]:
            rec[f"hpcstudy_over_{tool}_wall"] = round(
                ours["wall_s"]["median"] / rec[tool]["wall_s"]["median"], 2)
            rec[f"hpcstudy_over_{tool}_cpu"] = round(
                ours["cpu_s"]["median"] / rec[tool]["cpu_s"]["median"], 2)
            rec[f"hpcstudy_over_{tool}_peak_rss"] = round(
                ours["peak_rss_mib"]["median"] / rec[tool]["peak_rss_mib"]["median"], 2)
        rec["hpcstudy_decoded_bytes_per_s"] = round(rec["decoded_bytes"] /
                                                    ours["wall_s"]["median"])
        records.append("cohort_peers", rec)
        scaling[persons] = ours
    for persons in sorted(set(a.scaling_persons) - set(scaling)):
        data = dataset(a.data_root, persons)
        m = measure(data, work, ["hpcstudy"], a.repeats or 2, a.study)
        scaling[persons] = summarise(m["runs"]["hpcstudy"])
    if len(scaling) >= 2:
        n = np.array(sorted(scaling), float)
        t = np.array([scaling[int(k)]["wall_s"]["median"] for k in n])
        slope = float(np.polyfit(np.log(n), np.log(t), 1)[0])
        records.append("scaling", {
            "benchmark": "scaling", "study": a.study,
            "points": [{"persons": int(k), **scaling[int(k)]} for k in n],
            "slope_log_time_vs_log_persons": round(slope, 3)})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
