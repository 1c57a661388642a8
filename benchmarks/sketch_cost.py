"""Benchmark: what the export register's sketches of the persons behind a run's counts cost.

    python benchmarks/sketch_cost.py --run OUT [--repeat 7]

Reads a finished run's private per-person table (``OUT/private/person_table.parquet``) and its
results, splits the table into the dataset's partitions' count of pieces, and times
``hpcstudy.secure.sketches.of_run`` on them (CPU and wall seconds, median of the repeats), and
the same on a synthetic table of one million rows. Appends one record to
benchmarks/results/sketch_cost.jsonl (with the load average: figures on a shared machine are
noisy). The run's own CPU time is what ``/usr/bin/time`` says of ``hpcstudy run``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import append, summary, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run's OUT")
    ap.add_argument("--study", type=Path, default=Path("examples/statins_mi.yaml"))
    ap.add_argument("--data", type=Path, default=Path("/tmp/hpcstudy-bench/persons-1000000"))
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    from hpcstudy.models.partitions import LocalPartitions
    from hpcstudy.pipeline import prepare
    from hpcstudy.secure import sketches as S

    prep = prepare(a.study, a.data)
    t = pq.read_table(a.run / "private" / "person_table.parquet")
    cols = {c: t.column(c).to_numpy() for c in t.column_names}
    p = prep.ds.partitions
    parts = LocalPartitions([{k: v[i::p] for k, v in cols.items()} for i in range(p)])
    res = json.loads((a.run / "results.json").read_text())
    runs = [timed(lambda: S.of_run(prep.plan, parts, res, "bench")) for _ in range(a.repeat)]
    rng = np.random.default_rng(0)
    # a million rows drawn from the run's (its columns, so every family of rows is sketched)
    pick = [rng.integers(0, len(t), 125_000) for _ in range(8)]
    million = LocalPartitions([{**{k: v[i] for k, v in cols.items()},
                                "pnr": rng.integers(1, 2**62, 125_000)} for i in pick])
    per_million = [timed(lambda: S.of_run(prep.plan, million, res, "bench"))
                   for _ in range(a.repeat)]
    append("sketch_cost", {"benchmark": "sketch_cost", "study": str(a.study),
                           "data": str(a.data), "rows": len(t), "partitions": p,
                           "sets": len(runs[-1][2]["sets"]),
                           "sketch_bytes": len(json.dumps(runs[-1][2], sort_keys=True,
                                                          separators=(",", ":"))) + 1,
                           "cpu_s": summary([c for _, c, _ in runs]),
                           "wall_s": summary([w for w, _, _ in runs]),
                           "cpu_s_per_million_rows": summary([c for _, c, _ in per_million])})


if __name__ == "__main__":
    main()
