"""Write a register dataset from small in-memory tables (text codes, ISO dates).

For spec tests and hand-made examples: the same layout and manifest as ``synth`` writes, with
the generator's code dictionaries extended by any other codes the tables use.

    write_tables(out, {"bef": {"pnr": [1, 2], "koen": [1, 2], ...}, ...}, partitions=2)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import codes as C
from . import store
from .schema import CPR_START, DATA_END, REGISTERS

_DATE_COLS = {"foed_dag", "doddato", "haend_dato", "d_inddto", "d_uddto", "eksd"}


def _days(values) -> np.ndarray:
    return np.array([np.datetime64(v, "D").astype(np.int64) for v in values], np.int64)


def write_tables(out: str | Path, tables: dict[str, dict[str, list]], partitions: int = 2,
                 overwrite: bool = True) -> dict:
    out = Path(out)
    dicts = {k: set(v) for k, v in C.dictionaries().items()}
    for name, cols in tables.items():
        for col in REGISTERS[name].columns:
            if col.code_system and col.name in cols:
                dicts[col.code_system].update(str(v) for v in cols[col.name])
    dicts_sorted = {k: tuple(sorted(v)) for k, v in dicts.items()}
    index = {k: {c: i for i, c in enumerate(v)} for k, v in dicts_sorted.items()}
    encoded: dict[str, dict[str, np.ndarray]] = {}
    for name, reg in REGISTERS.items():
        cols = tables.get(name, {})
        arrays = {}
        for col in reg.columns:
            vals = cols.get(col.name, [])
            if col.name in _DATE_COLS:
                arrays[col.name] = _days(vals)
            elif col.code_system:
                arrays[col.name] = np.array([index[col.code_system][str(v)] for v in vals],
                                            np.int32)
            else:
                arrays[col.name] = np.array(vals, dtype=col.type.to_pandas_dtype())
        encoded[name] = arrays
    adm = encoded["lpr_adm"]
    d = encoded["lpr_diag"]
    pos = np.searchsorted(np.sort(adm["recnum"]), d["recnum"])
    order = np.argsort(adm["recnum"])
    d["_pnr"] = adm["pnr"][order][pos] if d["recnum"].size else np.zeros(0, np.int64)
    d["_d_inddto"] = adm["d_inddto"][order][pos] if d["recnum"].size else np.zeros(0, np.int64)
    with store.staged_output(out, overwrite, kind="dataset") as staging:
        manifest = store.empty_manifest(
            partitions, dicts_sorted, source={"kind": "tables"},
            period={"start": str(np.datetime64(CPR_START, "D")),
                    "end": str(np.datetime64(DATA_END, "D"))})
        for name in REGISTERS:
            (staging / name).mkdir()
            cols = encoded[name]
            key = cols["_pnr"] if name == "lpr_diag" else cols["pnr"]
            part = store.partition_of(key, partitions)
            for p in range(partitions):
                sel = part == p
                entry = store.write_partition(staging, name, p,
                                              {k: v[sel] for k, v in cols.items()})
                store.add_file(manifest, name, entry)
        (staging / store.MANIFEST).write_text(store.manifest_json(manifest))
    return manifest
