"""Per-partition checkpoints of the dask engine, so an interrupted run loses no finished work.

Each finished partition's per-person table is written to ``OUT.checkpoints/part-NNNNN.parquet``
(the folder is private, mode 0700: the tables hold ``pnr``)
with a JSON record: its SHA-256, its attrition, and the run's fingerprint (the study, the data
manifest and the plan). ``run --resume`` reuses every checkpoint whose fingerprint and checksum
still match and computes only the others; a checkpoint that does not verify is recomputed. A
finished run removes its checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from ..registers import arrow


def fingerprint(plan, manifest_sha: str) -> str:
    """What a checkpoint was computed from: every node of the plan (their repr: frozen
    dataclasses, seed and data period included; the study it came from is not a node) and the
    data manifest."""
    text = json.dumps({"plan": repr(plan), "data": manifest_sha}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def directory(out: Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.checkpoints"


def _paths(d: Path, p: int) -> tuple[Path, Path]:
    return d / f"part-{p:05d}.parquet", d / f"part-{p:05d}.json"


def private_folder(d: Path) -> None:
    """Create ``d`` readable by its owner only (mode 0700), or narrow an existing one."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if d.stat().st_mode & 0o077:
        os.chmod(d, 0o700)


def save(d: Path, p: int, table: dict, attrition: dict, fp: str) -> None:
    private_folder(d)
    data, meta = _paths(d, p)
    tmp = data.with_suffix(".tmp")
    # plain pages (no dictionary, compression or statistics): a third of the CPU time of
    # zstd's on a partition's table, for a file that lives only until the run finishes
    pq.write_table(arrow.table(table), tmp, compression="none", use_dictionary=False,
                   write_statistics=False)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, data)
    record = {"partition": p, "fingerprint": fp, "sha256": digest,
              "attrition": {g: [list(s) for s in steps] for g, steps in attrition.items()}}
    tmp = meta.with_suffix(".jtmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, meta)  # the record last: a partition counts only once both are whole


def load(d: Path, p: int, fp: str):
    """(table, attrition) of a verified checkpoint, or None."""
    data, meta = _paths(d, p)
    if not (data.is_file() and meta.is_file()):
        return None
    try:
        record = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("fingerprint") != fp or \
            hashlib.sha256(data.read_bytes()).hexdigest() != record.get("sha256"):
        return None
    t = pq.read_table(data)
    table = {c: arrow.to_numpy(t.column(c)) for c in t.column_names}
    attrition = {g: [tuple(s) for s in steps] for g, steps in record["attrition"].items()}
    return table, attrition


def clear(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
