"""``hpcstudy ingest``: add a raw, CPR-keyed register extract to a partitioned dataset.

Steps, in this order (nothing is written before the columns are known to be right):

1. read the extract (CSV, Parquet, SAS7BDAT or SAS XPORT) and check its columns against the
   register's raw schema: the register's columns with ``cpr`` in place of ``pnr``;
2. skip it if a file with the same SHA-256 was already ingested into this register;
3. check every row (CPR number with the century rules, dates, codes, value ranges); rows that
   fail go to a quarantine CSV with the reason, and are counted — nothing is dropped silently;
4. pseudonymise CPR → pnr with the project's key (HMAC-SHA256); the key never appears in data,
   outputs, logs or messages;
5. in a hard-linked staging copy of the dataset: grow the code dictionaries (kept sorted, so
   existing files are re-encoded when a new code arrives), add the rows to their partitions,
   update the manifest; then swap the staging copy into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..errors import UserError
from ..registers import store
from ..registers.schema import CPR_START, DATA_END, REGIONS, REGISTERS
from . import cpr as C

DATE_COLUMNS = {"foed_dag", "doddato", "haend_dato", "d_inddto", "d_uddto", "eksd"}
CODE_PATTERNS = {"icd10": re.compile(r"^D[A-Z][0-9]{2}[0-9A-Z]{0,4}$"),
                 "atc": re.compile(r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$"),
                 "indud": re.compile(r"^[IU]$"), "diagtype": re.compile(r"^[AB]$")}
ALLOWED = {"koen": {1, 2}, "region": set(REGIONS), "c_pattype": {0, 1, 2, 3}}
FIXED_DICTIONARIES = {"indud": ("I", "U"), "diagtype": ("A", "B")}
EARLIEST = int(np.datetime64("1850-01-01", "D").astype(np.int64))
TODAY = int(np.datetime64("today", "D").astype(np.int64))


def raw_columns(register: str) -> list[str]:
    return ["cpr" if c == "pnr" else c for c in REGISTERS[register].column_names]


def read_extract(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with warnings.catch_warnings():   # a row longer than the header is an error
                warnings.simplefilter("error", pd.errors.ParserWarning)
                return pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
        if suffix == ".parquet":
            return pq.read_table(path).to_pandas()
        if suffix in (".sas7bdat", ".xpt"):
            df = pd.read_sas(path, format="sas7bdat" if suffix == ".sas7bdat" else "xport",
                             encoding="latin-1")
            df.columns = [c.lower() for c in df.columns]
            for c in DATE_COLUMNS & set(df.columns):
                if pd.api.types.is_numeric_dtype(df[c]):
                    df[c] = _sas_dates(df[c].to_numpy(dtype=float))
            return df
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserWarning) as e:
        raise UserError(f"{path}: cannot be read as {suffix[1:]} ({e})") from e
    raise UserError(f"{path}: unknown format {suffix!r}",
                    fix="give a .csv, .parquet, .sas7bdat or .xpt extract")


def _sas_dates(v: np.ndarray) -> list[str]:
    """SAS dates (days since 1960-01-01) or datetimes (seconds since then) as ISO dates.
    Any date from 1850 to 2200 is within ±100 000 days; a datetime is beyond ±10⁶ seconds."""
    out = []
    for x in v:
        if np.isnan(x):
            out.append("")
            continue
        days = int(np.floor(x / 86400)) if abs(x) > 1e6 else int(x)
        out.append(str(np.datetime64("1960-01-01", "D") + days))
    return out


def _as_text(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, bytes):
        v = v.decode("latin-1")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d")
    return str(v).strip()


def check_rows(df: pd.DataFrame, register: str, key: bytes, known_recnums: set[int]):
    """(good rows as typed column lists, quarantined rows with reasons)."""
    reg = REGISTERS[register]
    good: dict[str, list] = {c: [] for c in reg.column_names}
    bad: list[dict] = []
    cols = raw_columns(register)
    seen_recnum = set(known_recnums)
    for i, row in enumerate(df[cols].itertuples(index=False, name=None), start=2):
        values = dict(zip(cols, (_as_text(v) for v in row), strict=True))
        typed, reason = {}, None
        for col in reg.columns:
            raw = values["cpr" if col.name == "pnr" else col.name]
            if col.name == "pnr":
                digits, _, why = C.parse(raw)
                if why:
                    reason = why
                    break
                typed["pnr"] = C.pseudonym(digits, key)
            elif col.name in DATE_COLUMNS:
                try:
                    d = int(np.datetime64(raw, "D").astype(np.int64)) if re.fullmatch(
                        r"\d{4}-\d{2}-\d{2}", raw) else None
                except ValueError:
                    d = None
                if d is None:
                    reason = f"{col.name}: {raw!r} is not a date (YYYY-MM-DD)"
                    break
                if not EARLIEST <= d <= TODAY:
                    reason = f"{col.name}: {raw} is before 1850 or in the future"
                    break
                typed[col.name] = d
            elif col.code_system:
                code = raw.upper().replace(".", "")
                if col.code_system == "icd10" and code and not code.startswith("D"):
                    code = "D" + code
                if not CODE_PATTERNS[col.code_system].match(code):
                    reason = f"{col.name}: {raw!r} is not a valid {col.code_system} code"
                    break
                typed[col.name] = code
            else:
                try:
                    v = float(raw) if col.type.to_pandas_dtype() == np.float64 else int(raw)
                except ValueError:
                    reason = f"{col.name}: {raw!r} is not a number"
                    break
                if col.name in ALLOWED and v not in ALLOWED[col.name]:
                    reason = f"{col.name}: {raw} is not one of {sorted(ALLOWED[col.name])}"
                    break
                typed[col.name] = v
        if reason is None and register == "lpr_diag" and typed["recnum"] not in seen_recnum:
            reason = f"recnum {typed['recnum']} has no contact in lpr_adm (ingest lpr_adm first)"
        if reason is not None:
            bad.append({**{k: v for k, v in values.items()}, "line": i, "reason": reason})
            continue
        if register == "lpr_adm":
            seen_recnum.add(typed["recnum"])
        for k, v in typed.items():
            good[k].append(v)
    return good, bad


def _new_dataset(staging: Path, partitions: int) -> dict:
    for name in REGISTERS:
        (staging / name).mkdir()
    manifest = store.empty_manifest(
        partitions, {"icd10": (), "atc": (), **FIXED_DICTIONARIES},
        source={"kind": "ingest"},
        period={"start": str(np.datetime64(CPR_START, "D")),
                "end": str(np.datetime64(DATA_END, "D"))})
    for name in REGISTERS:
        for p in range(partitions):
            empty = {c.name: np.empty(0, np.int64) for c in REGISTERS[name].columns}
            if name == "lpr_diag":
                empty |= {"_pnr": np.empty(0, np.int64), "_d_inddto": np.empty(0, np.int64)}
            store.add_file(manifest, name, store.write_partition(staging, name, p, empty))
    manifest["ingested"] = []
    return manifest


def _read_partition(root: Path, register: str, p: int) -> dict[str, np.ndarray]:
    t = store.read_partition(root / register / store.part_name(p))
    out = {}
    for c in t.column_names:
        col = t.column(c)
        out[c] = col.cast("int32").to_numpy().astype(np.int64) if str(col.type) == "date32[day]" \
            else col.to_numpy()
    return out


def _rewrite(staging: Path, manifest: dict, register: str, p: int, cols: dict) -> None:
    path = staging / register / store.part_name(p)
    path.unlink()  # a hard link to the old dataset's file: never write through it
    entry = store.write_partition(staging, register, p, cols)
    files = manifest["registers"][register]["files"]
    old = next(i for i, f in enumerate(files) if f["path"] == entry["path"])
    manifest["registers"][register]["rows"] += entry["rows"] - files[old]["rows"]
    files[old] = entry


def _lpr_keys(root: Path, partitions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """recnum → (pnr, admission day) of every contact already in the dataset."""
    rec, pnr, day = [], [], []
    for p in range(partitions):
        t = _read_partition(root, "lpr_adm", p)
        rec.append(t["recnum"])
        pnr.append(t["pnr"])
        day.append(t["d_inddto"])
    return np.concatenate(rec), np.concatenate(pnr), np.concatenate(day)


def ingest(register: str, input_path: Path, data: Path, key_file: Path,
           quarantine: Path | None = None, partitions: int = 8) -> dict:
    """Add an extract to ``data``; return a summary (rows added, quarantined, skipped)."""
    if register not in REGISTERS:
        raise UserError(f"unknown register {register!r}", fix=f"use one of {', '.join(REGISTERS)}")
    input_path = Path(input_path)
    if not input_path.is_file():
        raise UserError(f"{input_path} does not exist", fix="give the extract's path")
    key = C.load_key(key_file)
    df = read_extract(input_path)
    df.columns = [str(c).strip().lower() for c in df.columns]
    want = raw_columns(register)
    missing, extra = sorted(set(want) - set(df.columns)), sorted(set(df.columns) - set(want))
    if missing or extra:
        raise UserError(f"{input_path}: columns do not match register {register}"
                        + (f"; missing {missing}" if missing else "")
                        + (f"; unexpected {extra}" if extra else ""),
                        fix=f"{register} extracts have the columns {', '.join(want)}")
    sha = hashlib.sha256(input_path.read_bytes()).hexdigest()
    data = Path(data)
    existing = (data / store.MANIFEST).is_file()
    if existing:
        manifest = store.Dataset.open(data).manifest
        if any(x["sha256"] == sha and x["register"] == register
               for x in manifest.get("ingested", [])):
            return {"register": register, "file": str(input_path), "skipped": True,
                    "reason": "this file was ingested before: nothing changed"}
    quarantine = Path(quarantine) if quarantine else \
        input_path.with_name(input_path.name + ".quarantine.csv")
    with store.staged_output(data, overwrite=True, kind="dataset",
                              reads=(input_path, key_file)) as staging:
        if existing:
            for src in data.rglob("*"):
                dst = staging / src.relative_to(data)
                if src.is_dir():
                    dst.mkdir(parents=True, exist_ok=True)
                else:
                    os.link(src, dst)
            (staging / store.MANIFEST).unlink()
        else:
            manifest = _new_dataset(staging, partitions)
        P = int(manifest["partitions"])
        rec = pnr_of = day_of = None
        if register in ("lpr_adm", "lpr_diag"):
            rec, pnr_of, day_of = _lpr_keys(staging, P)
        good, bad = check_rows(df, register, key, set(rec.tolist()) if rec is not None else set())
        _grow_dictionaries(staging, manifest, register, good)
        new = _encode(manifest, register, good)
        if register == "lpr_diag":
            if rec is not None:
                order = np.argsort(rec)
                pos = order[np.searchsorted(rec[order], new["recnum"])] if new["recnum"].size \
                    else np.zeros(0, np.int64)
                new["_pnr"], new["_d_inddto"] = pnr_of[pos], day_of[pos]
            route = new["_pnr"]
        else:
            route = new["pnr"]
        part = store.partition_of(route, P)
        for p in np.unique(part):
            old = _read_partition(staging, register, int(p))
            if register == "lpr_diag":
                order = np.argsort(rec)
                pos = order[np.searchsorted(rec[order], old["recnum"])] if old["recnum"].size \
                    else np.zeros(0, np.int64)
                old["_pnr"], old["_d_inddto"] = pnr_of[pos], day_of[pos]
            sel = part == p
            cols = {k: np.concatenate([old[k], new[k][sel]]) for k in new}
            _rewrite(staging, manifest, register, int(p), cols)
        manifest["source"] = {"kind": "ingest"}
        manifest.setdefault("ingested", []).append(
            {"register": register, "file": input_path.name, "sha256": sha,
             "rows": int(route.size), "quarantined": len(bad)})
        (staging / store.MANIFEST).write_text(store.manifest_json(manifest))
    if bad:
        pd.DataFrame(bad).to_csv(quarantine, index=False)
    return {"register": register, "file": str(input_path), "skipped": False,
            "rows": int(route.size), "quarantined": len(bad),
            "quarantine": str(quarantine) if bad else None}


def _grow_dictionaries(staging: Path, manifest: dict, register: str, good: dict) -> None:
    """Add new codes, keep every dictionary sorted, re-encode stored data that it moves."""
    for col in REGISTERS[register].columns:
        system = col.code_system
        if not system or system in FIXED_DICTIONARIES:
            continue
        old = manifest["dictionaries"][system]
        merged = sorted(set(old) | set(good[col.name]))
        if merged == old:
            continue
        remap = np.searchsorted(np.array(merged, dtype=object), np.array(old, dtype=object)) \
            if old else np.zeros(0, np.int64)
        manifest["dictionaries"][system] = merged
        if not old:
            continue
        for name, reg in REGISTERS.items():
            code_cols = [c.name for c in reg.columns if c.code_system == system]
            if not code_cols:
                continue
            for p in range(int(manifest["partitions"])):
                if not manifest["registers"][name]["files"][p]["rows"]:
                    continue
                cols = _read_partition(staging, name, p)
                for c in code_cols:
                    cols[c] = remap[cols[c]].astype(np.int32)
                if name == "lpr_diag":
                    cols["_pnr"] = np.zeros(cols["recnum"].shape[0], np.int64)
                    cols["_d_inddto"] = np.arange(cols["recnum"].shape[0])  # keeps the order
                _rewrite(staging, manifest, name, p, cols)


def _encode(manifest: dict, register: str, good: dict) -> dict[str, np.ndarray]:
    out = {}
    for col in REGISTERS[register].columns:
        v = good[col.name]
        if col.code_system:
            index = {c: i for i, c in enumerate(manifest["dictionaries"][col.code_system])}
            out[col.name] = np.array([index[x] for x in v], np.int32)
        elif col.name in DATE_COLUMNS:
            out[col.name] = np.array(v, np.int64)
        else:
            out[col.name] = np.array(v, dtype=col.type.to_pandas_dtype())
    return out
