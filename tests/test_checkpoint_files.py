"""A partition's checkpoint (engines/checkpoint.py): what is saved comes back column for column,
dtype for dtype and bit for bit, with its attrition; a checkpoint that does not verify (a
changed byte, a cut file, another run's fingerprint, a missing record) is not used."""

from __future__ import annotations

import json

import numpy as np

from hpcstudy.engines import checkpoint, partition
from hpcstudy.engines import run as engine_run

EXAMPLE = "examples/diabetes_incidence.yaml"


def _table() -> dict:
    """A per-person table of every column type a run writes, with edge values."""
    rng = np.random.default_rng(4)
    n = 5000
    return {"pnr": np.sort(rng.integers(0, 2 ** 62, n)).astype(np.int64),
            "group": np.full(n, 1, np.int8),
            "index_date": rng.integers(-30000, 30000, n).astype(np.int32),
            "age": np.r_[[20.0, 89.99999999999999, 1e-300, -0.0], rng.uniform(20, 90, n - 4)],
            "sex": rng.integers(0, 2, n).astype(np.int8),
            "exit_date": rng.integers(10957, 19722, n).astype(np.int32),
            "status": rng.integers(0, 4, n).astype(np.int8),
            "time": rng.integers(1, 9000, n).astype(np.int32),
            "event": rng.integers(0, 2, n).astype(np.int8)}


def _same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for c, v in want.items():
        assert got[c].dtype == v.dtype, c
        assert got[c].tobytes() == v.tobytes(), c   # bit for bit (-0.0 and 1e-300 too)


def test_a_checkpoint_comes_back_bit_for_bit(tmp_path):
    table = _table()
    attrition = {"cohort": [("index date", 5000), ("alive and resident", 4100)]}
    checkpoint.save(tmp_path, 3, table, attrition, "f" * 64)
    got = checkpoint.load(tmp_path, 3, "f" * 64)
    assert got is not None
    _same(got[0], table)
    assert got[1] == attrition
    assert checkpoint.load(tmp_path, 4, "f" * 64) is None   # another partition: none saved


def test_a_real_partition_table_round_trips(small_data, tmp_path):
    _, plan, ds = engine_run.prepare(EXAMPLE, str(small_data))
    table, attrition = partition.person_table(partition.load(str(ds.root), 1, plan.reads), plan)
    checkpoint.save(tmp_path, 1, table, attrition, "a" * 64)
    got_table, got_attrition = checkpoint.load(tmp_path, 1, "a" * 64)
    _same(got_table, table)
    assert got_attrition == attrition


def test_a_checkpoint_that_does_not_verify_is_not_used(tmp_path):
    table = _table()
    checkpoint.save(tmp_path, 0, table, {"cohort": [("index date", 5000)]}, "f" * 64)
    data = tmp_path / "part-00000.parquet"
    whole = data.read_bytes()
    assert checkpoint.load(tmp_path, 0, "e" * 64) is None   # another run's
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 1
    data.write_bytes(bytes(flipped))
    assert checkpoint.load(tmp_path, 0, "f" * 64) is None
    data.write_bytes(whole[:-100])
    assert checkpoint.load(tmp_path, 0, "f" * 64) is None
    data.write_bytes(whole)
    assert checkpoint.load(tmp_path, 0, "f" * 64) is not None
    record = tmp_path / "part-00000.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "sha256": "0" * 64}))
    assert checkpoint.load(tmp_path, 0, "f" * 64) is None
    record.unlink()
    assert checkpoint.load(tmp_path, 0, "f" * 64) is None
