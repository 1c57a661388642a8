"""Register datasets on disk: Parquet files hash-partitioned by ``pnr``, and their manifest.

Layout of a dataset directory::

    manifest.json              schema version, P, row counts, SHA-256 per file, dictionaries
    bef/part-00000.parquet     one file per register and partition, sorted by pnr then date
    ...
    lpr_diag/part-00000.parquet  (stored with the partition of its contact's pnr)

Every register uses the same hash and the same P, so linking registers on ``pnr`` (and
``lpr_diag`` on ``recnum``) never crosses partitions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError

# Output folders are staged and swapped into place by outputs/staging.py; these names stay
# importable from here for the writers of datasets (synth, ingest).
from ..outputs.staging import (  # noqa: F401
    commit_output,
    prepare_output,
    staged_output,
    write_refusal,  # noqa: F401
)
from .arrow import to_numpy
from .schema import HIDDEN_SORT_COLUMNS, REGISTERS, SCHEMA_VERSION, column_problem, is_iso_date

MANIFEST = "manifest.json"
FORMAT = "hpcstudy-registers"
HASH_NAME = "splitmix64(pnr) mod P"


def partition_of(pnr: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each person: the splitmix64 finaliser of the pnr, modulo P."""
    x = pnr.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(partitions)).astype(np.int32)


def part_name(p: int) -> str:
    return f"part-{p:05d}.parquet"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_table(register: str, cols: dict[str, np.ndarray]) -> pa.Table:
    """Arrow table in the register's schema (hidden sort columns dropped)."""
    reg = REGISTERS[register]
    arrays = []
    for c in reg.columns:
        a = cols[c.name]
        if pa.types.is_date32(c.type):
            arrays.append(pa.array(a.astype(np.int32), pa.int32()).cast(pa.date32()))
        else:
            arrays.append(pa.array(a, c.type))
    return pa.Table.from_arrays(arrays, schema=reg.arrow_schema())


def sort_columns(register: str, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows in the register's order inside a partition (stable: ties keep their order)."""
    keys = REGISTERS[register].sort_by
    first = cols[keys[0]]
    if first.size == 0:
        return cols
    order = np.lexsort([cols[k] for k in reversed(keys)])
    return {k: v[order] for k, v in cols.items()}


def write_parquet(table: pa.Table, path: Path) -> None:
    # Fixed options, no pandas metadata: the same table gives the same bytes.
    pq.write_table(table, path, compression="zstd", compression_level=3,
                   row_group_size=1 << 20, use_dictionary=True, write_statistics=True)


def manifest_json(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def empty_manifest(partitions: int, dictionaries: dict[str, Sequence[str]],
                   source: dict, period: dict) -> dict:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "partitions": partitions,
        "partitioning": {"key": "pnr", "hash": HASH_NAME,
                         "lpr_diag": "stored in the partition of its contact's pnr"},
        "period": period,
        "source": source,
        "dictionaries": {k: list(v) for k, v in dictionaries.items()},
        "registers": {
            name: {
                "title": reg.title,
                "columns": [{"name": c.name, "type": str(c.type),
                             **({"code_system": c.code_system} if c.code_system else {}),
                             **({"doc": c.doc} if c.doc else {})} for c in reg.columns],
                "sort_by": [k for k in reg.sort_by if k not in HIDDEN_SORT_COLUMNS]
                or ["pnr"],
                "rows": 0,
                "files": [],
            } for name, reg in REGISTERS.items()
        },
    }


def write_partition(root: Path, register: str, partition: int,
                    cols: dict[str, np.ndarray]) -> dict:
    """Sort one partition's columns, write its Parquet file; return its manifest entry."""
    path = Path(root) / register / part_name(partition)
    table = to_table(register, sort_columns(register, cols))
    write_parquet(table, path)
    return {"path": f"{register}/{part_name(partition)}", "rows": table.num_rows,
            "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def add_file(manifest: dict, register: str, entry: dict) -> None:
    m = manifest["registers"][register]
    m["files"].append(entry)
    m["rows"] += entry["rows"]


# -- reading ---------------------------------------------------------------------------------
def read_partition(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """One partition file; a missing or damaged file is the user's to restore, said in one
    line (pyarrow's own errors are ValueErrors and OSErrors of many shapes)."""
    try:
        if not Path(path).is_file():
            raise FileNotFoundError(path)
        # one file: pq.ParquetFile, not read_table's dataset layer (pyarrow.dataset takes
        # about 0.4 s of CPU to import, at the start of every partition task)
        with pq.ParquetFile(path) as f:
            t = f.read(columns=None if columns is None else list(columns))
        missing = [c for c in columns or () if c not in t.column_names]
        if missing:   # read_table refuses these; ParquetFile.read would leave them out
            raise ValueError(f"no column {missing[0]!r} in the file")
        if (why := column_problem(Path(path).parent.name, t)) is not None:
            raise ValueError(why)   # wrong types and empty values: one line, not a crash
        return t
    except (OSError, ValueError, pa.ArrowException) as e:
        if isinstance(e, OSError) and _disk_failure(e):
            raise
        why = "missing" if isinstance(e, FileNotFoundError) else \
            f"damaged ({(str(e).splitlines() or [''])[0][:120]})"
        raise UserError(f"{path}: partition file {why}",
                        fix="restore it; hpcstudy data verify lists every damaged file") from e


def _disk_failure(e: OSError) -> bool:
    """An I/O failure of the machine (not of the file's content): reported as such."""
    import errno

    return e.errno in (errno.EIO, errno.ENOSPC, errno.EACCES, errno.EPERM) or \
        "Input/output error" in str(e)


def _manifest_shape(m: dict) -> str | None:
    """What is missing or mistyped in a manifest (the fields every reader relies on)."""
    p = m.get("partitions")
    if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 4096:
        return f"field partitions: {p!r} is not a whole number in 1..4096"
    period = m.get("period")
    if not isinstance(period, dict) or not all(is_iso_date(period.get(k))
                                               for k in ("start", "end")):
        return "field period: missing, or its start and end are not YYYY-MM-DD days"
    words = m.get("dictionaries")
    if not isinstance(words, dict):
        return "field dictionaries (the code dictionaries) is missing"
    for system, codes in words.items():
        if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
            return f"field dictionaries.{system}: not a list of codes"
    regs = m.get("registers")
    if not isinstance(regs, dict) or not regs:
        return "field registers is missing or empty"
    for name, reg in regs.items():
        files = reg.get("files") if isinstance(reg, dict) else None
        if not isinstance(files, list) or not isinstance(reg.get("rows"), int) or not all(
                isinstance(f, dict) and isinstance(f.get("path"), str)
                and isinstance(f.get("rows"), int) and isinstance(f.get("sha256"), str)
                for f in files):
            return f"field registers.{name}: needs rows and a list of files (path, rows, sha256)"
    truth = m.get("truth")
    mi = truth.get("mi") if isinstance(truth, dict) else None
    if truth is not None and not (
            isinstance(mi, dict) and isinstance(mi.get("log_hr"), dict)
            and all(isinstance(v, int | float) for v in mi["log_hr"].values())):
        return "field truth: not the planted effects synth writes (truth.mi.log_hr)"
    return None


@dataclass
class Dataset:
    """A register dataset on disk, described by its manifest."""

    root: Path
    manifest: dict
    manifest_sha256: str = ""   # of the very bytes ``manifest`` was parsed from

    @classmethod
    def open(cls, root: str | os.PathLike) -> Dataset:
        root = Path(root)
        path = root / MANIFEST
        if not root.exists():   # a commit killed between its two renames: put the old back
            from ..outputs.targets import tidy

            tidy(root)
        if root.exists() and not root.is_dir():
            raise UserError(f"data directory {root} is not a directory",
                            fix="give the directory that `hpcstudy synth` or ingest wrote")
        if not root.is_dir():
            raise UserError(f"data directory {root} does not exist",
                            fix="give the directory that `hpcstudy synth` or ingest wrote")
        if not path.is_file():
            raise UserError(f"{root} has no {MANIFEST}",
                            fix="give the directory that `hpcstudy synth` or ingest wrote")
        raw = path.read_bytes()
        try:
            manifest = json.loads(raw.decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})", fix="restore the manifest") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"{path}: not an hpcstudy register manifest",
                            fix="give the directory that `hpcstudy synth` or ingest wrote")
        broken = _manifest_shape(manifest)
        if broken:
            raise UserError(f"{path}: {broken}", fix="restore the manifest that synth or "
                            "ingest wrote (hpcstudy data verify checks the rest)")
        return cls(root, manifest, hashlib.sha256(raw).hexdigest())

    @property
    def partitions(self) -> int:
        return int(self.manifest["partitions"])

    @property
    def registers(self) -> list[str]:
        return list(self.manifest["registers"])

    def check_files(self, checksums: bool = False) -> None:
        """Refuse (UserError) a dataset whose files disagree with its manifest: a partition
        file missing, extra or of another size, a count other than ``partitions``; with
        ``checksums`` every file's SHA-256, schema and row count too. Reads no data unless
        ``checksums``."""
        problems = self.file_problems()
        if not problems and checksums:
            from .verify import verify

            problems = verify(self.root)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"{self.root}: {problems[0]}{more}",
                            fix=f"`hpcstudy data verify {self.root}` lists every problem; "
                                "restore the dataset or write it again")

    def persons_sha256(self) -> str:
        """Who the data is about, whatever its partitioning: SHA-256 of the number of ``bef``
        persons and an order-free sum of a 64-bit mix of each pnr. The same persons
        re-partitioned (another manifest) are still the same data to the export register."""
        n, total = 0, np.uint64(0)
        with np.errstate(over="ignore"):
            for p in range(self.partitions):
                x = to_numpy(read_partition(self.path("bef", p), ["pnr"]).column("pnr"))
                z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)   # splitmix64
                z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                total = total + np.sum(z ^ (z >> np.uint64(31)), dtype=np.uint64)
                n += len(x)
        return hashlib.sha256(f"{n}:{int(total)}".encode()).hexdigest()

    def file_problems(self) -> list[str]:
        """What the manifest promises about files that the folder does not keep (cheap: sizes
        and names, no checksums)."""
        problems: list[str] = []
        try:
            P = self.partitions
            regs = self.manifest["registers"]
            if P <= 0 or not isinstance(regs, dict):
                raise ValueError
            entries = {name: list(reg["files"]) for name, reg in regs.items()}
            for files in entries.values():
                for f in files:
                    f["path"], f.get("bytes")
        except (KeyError, TypeError, ValueError, AttributeError):
            return [f"{MANIFEST}: partitions, registers or their files are malformed"]
        for name, files in entries.items():
            want = {f"{name}/{part_name(p)}" for p in range(P)}
            listed = [f["path"] for f in files]
            if sorted(listed) != sorted(want):
                problems.append(f"{MANIFEST}: register {name} lists {len(listed)} file(s) for "
                                f"partitions: {P} (want {name}/part-00000.parquet … "
                                f"{name}/{part_name(P - 1)})")
            for f in files:
                path = self.root / f["path"]
                if not path.is_file():
                    problems.append(f"{f['path']}: missing")
                elif isinstance(f.get("bytes"), int) and path.stat().st_size != f["bytes"]:
                    problems.append(f"{f['path']}: {path.stat().st_size} bytes, the manifest "
                                    f"says {f['bytes']}")
            folder = self.root / name
            if folder.is_dir():
                for extra in sorted(folder.glob("part-*.parquet")):
                    rel = f"{name}/{extra.name}"
                    if rel not in listed:
                        problems.append(f"{rel}: not in the manifest")
        return problems

    def dictionary(self, system: str) -> list[str]:
        return self.manifest["dictionaries"][system]

    def files(self, register: str) -> list[dict]:
        return self.manifest["registers"][register]["files"]

    def path(self, register: str, partition: int) -> Path:
        return self.root / register / part_name(partition)

    def read(self, register: str, columns: Iterable[str] | None = None,
             partitions: Iterable[int] | None = None, decode: bool = False) -> pa.Table:
        """Rows of a register (some partitions, some columns); ``decode`` turns codes to text."""
        parts = range(self.partitions) if partitions is None else partitions
        cols = list(columns) if columns is not None else None
        tables = [read_partition(self.path(register, p), cols) for p in parts]
        table = pa.concat_tables(tables, promote_options="default") if tables else \
            REGISTERS[register].arrow_schema().empty_table()
        return self.decode(register, table) if decode else table

    def decode(self, register: str, table: pa.Table) -> pa.Table:
        """Replace int32 code columns by their text (for people, not for kernels)."""
        reg = REGISTERS[register]
        for i, name in enumerate(table.column_names):
            system = reg.column(name).code_system
            if system:
                words = pa.array(self.dictionary(system))
                table = table.set_column(i, name, words.take(table.column(i)))
        return table
