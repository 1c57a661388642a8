"""``hpcstudy data verify``: check a dataset's files against its manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import REGISTERS
from .store import HASH_NAME, MANIFEST, Dataset, partition_of, sha256_file


def verify(root: str | Path) -> list[str]:
    """Problems found, one line each naming the file; an empty list means all is well."""
    ds = Dataset.open(root)
    problems: list[str] = []
    listed: set[Path] = set()
    m = ds.manifest
    if m.get("schema_version") != 1:
        problems.append(f"{MANIFEST}: schema_version {m.get('schema_version')!r} is not 1")
    for name, reg in m.get("registers", {}).items():
        known = REGISTERS.get(name)
        if known is None:
            problems.append(f"{MANIFEST}: unknown register {name!r}")
            continue
        want = {c.name: str(c.type) for c in known.columns}
        declared = {c["name"]: c["type"] for c in reg.get("columns", [])}
        if declared != want:
            problems.append(f"{MANIFEST}: register {name} declares columns {declared}, "
                            f"schema version 1 has {want}")
        total = 0
        for f in reg.get("files", []):
            path = ds.root / f["path"]
            listed.add(path.resolve())
            if not path.is_file():
                problems.append(f"{f['path']}: missing")
                continue
            digest = sha256_file(path)
            if digest != f["sha256"]:
                problems.append(f"{f['path']}: checksum mismatch (manifest {f['sha256'][:12]}…, "
                                f"file {digest[:12]}…)")
                continue
            try:
                meta = pq.read_metadata(path)
                schema = meta.schema.to_arrow_schema()
            except Exception as e:  # noqa: BLE001 - any unreadable file is one problem line
                problems.append(f"{f['path']}: not a readable Parquet file ({e})")
                continue
            got = {fld.name: str(fld.type) for fld in schema}
            if got != want:
                drift = sorted(set(got.items()) ^ set(want.items()))
                problems.append(f"{f['path']}: schema drifted from {name}: {drift}")
            if meta.num_rows != f["rows"]:
                problems.append(f"{f['path']}: {meta.num_rows} rows, manifest says {f['rows']}")
            elif got == want:
                problems += [f"{f['path']}: {p}" for p in _content(ds, name, path)]
            total += meta.num_rows
        if len(reg.get("files", [])) != ds.partitions:
            problems.append(f"{MANIFEST}: register {name} lists {len(reg.get('files', []))} "
                            f"files for {ds.partitions} partitions")
        if total != reg.get("rows") and not any(p.startswith(f"{name}/") for p in problems):
            problems.append(f"{MANIFEST}: register {name} rows {reg.get('rows')} but files "
                            f"hold {total}")
    for path in sorted(ds.root.rglob("*.parquet")):
        if path.resolve() not in listed:
            problems.append(f"{path.relative_to(ds.root)}: not listed in the manifest")
    return problems


# the study language's calendar: a date outside it is a typing error (year 9999) or a wrap
FIRST_DAY, LAST_DAY = np.datetime64("1850-01-01"), np.datetime64("2200-12-31")
ONE_ROW_PER_PERSON = ("bef", "dod", "dodsaarsag")


def _content(ds: Dataset, register: str, path: Path) -> list[str]:
    """What a file of the right shape can still hold that the engines would misread: empty
    values, persons stored in another person's partition (the partition engine would miss
    their rows), a person twice where a register has one row each, codes outside the
    manifest's dictionaries, dates outside 1850-2200 (found by an outside tester: each ran
    the dask engine silently to other numbers, and stopped the reference engine as a bug)."""
    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    out: list[str] = []
    part = int(path.stem.rsplit("-", 1)[-1])
    for col in REGISTERS[register].columns:   # a column at a time: memory of one column
        if col.name not in names:
            continue
        x = f.read(columns=[col.name])[col.name]
        if x.null_count:
            out.append(f"column {col.name!r} has {x.null_count} empty value(s)")
            continue
        if col.name == "pnr":
            pnr = x.to_numpy()
            wrong = int(np.count_nonzero(partition_of(pnr, ds.partitions) != part))
            if wrong:
                out.append(f"{wrong} row(s) of persons who belong to another partition "
                           f"(partitioning by {HASH_NAME})")
            if register in ONE_ROW_PER_PERSON and np.unique(pnr).size != pnr.size:
                out.append(f"{pnr.size - np.unique(pnr).size} person(s) with more than one "
                           f"row (one row a person in {register})")
        elif col.code_system:
            n = len(ds.dictionary(col.code_system))
            lo, hi = pc.min(x).as_py(), pc.max(x).as_py()
            if lo is not None and (lo < 0 or hi >= n):
                out.append(f"column {col.name!r} holds codes outside the manifest's "
                           f"{col.code_system} dictionary (0..{n - 1}): {lo}..{hi}")
        elif str(col.type).startswith("date") and len(x):
            first, last = pc.min(x).as_py(), pc.max(x).as_py()
            if np.datetime64(first) < FIRST_DAY or np.datetime64(last) > LAST_DAY:
                out.append(f"column {col.name!r} holds dates from {first} to {last}, "
                           f"outside {FIRST_DAY} to {LAST_DAY}")
    return out
