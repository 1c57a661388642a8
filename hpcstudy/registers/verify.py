"""``hpcstudy data verify``: check a dataset's files against its manifest."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from .schema import REGISTERS
from .store import MANIFEST, Dataset, sha256_file


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
