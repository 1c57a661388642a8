"""``hpcstudy synth``: stream synthetic registers to a partitioned Parquet dataset.

Two passes keep memory bounded by one block and one partition, whatever N is:

1. blocks of persons are simulated (in worker processes) and their rows routed to partitions,
   appended to per-(register, partition) Arrow spill files;
2. each spill file is read whole, sorted by pnr then date, and written as one Parquet file.

Everything happens in a staging directory that is moved into place at the end.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import codes, store, synth
from .schema import CPR_START, DATA_END, REGISTERS

ProgressFn = Callable[[str, int, int], None]


def _block(args: tuple[int, int, int, int]):
    seed, block, persons, partitions = args
    rows = synth.block_rows(seed, block, persons)
    routed = {}
    for reg, cols in rows.items():
        key = cols["_pnr" if reg == "lpr_diag" else "pnr"]
        part = store.partition_of(key, partitions)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(partitions + 1))
        routed[reg] = {p: {k: v[order[bounds[p]:bounds[p + 1]]] for k, v in cols.items()}
                       for p in range(partitions) if bounds[p + 1] > bounds[p]}
    return routed


def _spill_schema(cols: dict[str, np.ndarray]) -> pa.Schema:
    return pa.schema([(k, pa.from_numpy_dtype(v.dtype)) for k, v in cols.items()])


def _finish(args: tuple[str, str, str, int]) -> tuple[str, int, dict]:
    """Sort one spill file and write its Parquet partition; return its manifest entry."""
    staging, spill, register, p = args
    path = Path(spill) / f"{register}-{p:05d}.arrow"
    if path.exists():
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_stream(src).read_all()
        cols = {name: table.column(name).to_numpy() for name in table.column_names}
        del table
        path.unlink()
    else:
        cols = {c.name: np.empty(0, c.type.to_pandas_dtype() if not pa.types.is_date32(c.type)
                                 else np.int32) for c in REGISTERS[register].columns}
        if register == "lpr_diag":
            cols |= {"_pnr": np.empty(0, np.int64), "_d_inddto": np.empty(0, np.int32)}
    return register, p, store.write_partition(Path(staging), register, p, cols)


def generate(out: Path, persons: int, seed: int, partitions: int, *, overwrite: bool = False,
             jobs: int = 1, progress: ProgressFn | None = None) -> dict:
    """Write a synthetic dataset to ``out``; return its manifest."""
    with store.staged_output(out, overwrite, kind="dataset") as staging:
        manifest = _generate_into(staging, persons, seed, partitions, jobs, progress)
        (staging / store.MANIFEST).write_text(store.manifest_json(manifest))
    return manifest


def _generate_into(staging: Path, persons: int, seed: int, partitions: int, jobs: int,
                   progress: ProgressFn | None) -> dict:
    spill = staging / "_spill"
    spill.mkdir()
    for reg in REGISTERS:
        (staging / reg).mkdir()
    blocks = math.ceil(persons / synth.BLOCK_SIZE)
    tasks = [(seed, b, persons, partitions) for b in range(blocks)]
    writers: dict[tuple[str, int], pa.ipc.RecordBatchStreamWriter] = {}
    ctx = mp.get_context("forkserver")
    pool = ctx.Pool(jobs) if jobs > 1 else None
    try:
        results = pool.imap(_block, tasks) if pool else map(_block, tasks)
        for i, routed in enumerate(results):
            for reg, parts in routed.items():
                for p, cols in parts.items():
                    w = writers.get((reg, p))
                    if w is None:
                        w = pa.ipc.new_stream(str(spill / f"{reg}-{p:05d}.arrow"),
                                              _spill_schema(cols))
                        writers[(reg, p)] = w
                    w.write_batch(pa.record_batch(list(cols.values()), names=list(cols)))
            if progress:
                progress("simulate", i + 1, blocks)
        for w in writers.values():
            w.close()
        writers.clear()
        manifest = store.empty_manifest(
            partitions, codes.dictionaries(),
            source={"kind": "synthetic", "generator": "hpcstudy.registers.synth",
                    "seed": seed, "persons": persons, "block_size": synth.BLOCK_SIZE},
            period={"start": str(np.datetime64(CPR_START, "D")),
                    "end": str(np.datetime64(DATA_END, "D"))})
        manifest["truth"] = synth.TRUTH.as_dict()
        finish = [(str(staging), str(spill), reg, p) for reg in REGISTERS
                  for p in range(partitions)]
        done = pool.imap(_finish, finish) if pool else map(_finish, finish)
        for i, (reg, _, entry) in enumerate(done):
            store.add_file(manifest, reg, entry)
            if progress:
                progress("sort and write", i + 1, len(finish))
    finally:
        for w in writers.values():
            w.close()
        if pool:
            pool.terminate()
            pool.join()
    shutil.rmtree(spill)
    return manifest
