"""The partition engine's linear-time steps against plain readings of the same rows: the
stored-order check, each event's person row, every event stream of example 1 (read row by row
with pandas), and the local launcher's threads (the same tables as one thread; an error in
one partition stops the run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcstudy.devices import get_device
from hpcstudy.engines import dask_engine, partition
from hpcstudy.engines import run as R
from hpcstudy.registers.store import Dataset
from tests.conftest import EXAMPLES

DEVICES = ["cpu", "standin"]


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
                     max_size=12),
       keys=st.integers(1, 3), device=st.sampled_from(DEVICES))
def test_stored_order_check_is_lexicographic_order(rows, keys, device):
    dev = get_device(device)
    names = ("a", "b", "c")[:keys]
    cols = {k: dev.to_device(np.array([r[i] for r in rows], dtype=np.int64))
            for i, k in enumerate(names)}
    got = bool(dev.to_host(partition._sorted_check(dev.xp, cols, names)))
    tuples = [r[:keys] for r in rows]
    assert got == all(x <= y for x, y in zip(tuples[:-1], tuples[1:], strict=True))


@settings(max_examples=60, deadline=None)
@given(persons=st.sets(st.integers(1, 60), max_size=20),
       events=st.lists(st.integers(0, 70), max_size=40), device=st.sampled_from(DEVICES))
def test_each_event_finds_its_persons_row(persons, events, device):
    dev = get_device(device)
    pnr = np.array(sorted(persons), dtype=np.int64)
    ev = np.array(sorted(events), dtype=np.int64)
    pp = partition.Persons.__new__(partition.Persons)
    pp.xp, pp.pnr, pp.n = dev.xp, dev.to_device(pnr), len(pnr)
    rows, known = (dev.to_host(a) for a in pp.rows_of(dev.to_device(ev)))
    where = {p: i for i, p in enumerate(pnr.tolist())}
    assert known.tolist() == [e in where for e in ev.tolist()]
    assert rows[known].tolist() == [where[e] for e in ev.tolist() if e in where]


def _in(codes, ranges) -> np.ndarray:
    hit = np.zeros(len(codes), dtype=bool)
    for lo, hi in ranges:
        hit |= (codes >= lo) & (codes < hi)
    return hit


def _expected(s, host: dict) -> tuple[list, list]:
    """A stream's (pnr, day) pairs read row by row: a contact (or dispensing) is an event when
    one of its rows has a code of the stream (and, lpr, a diagnosis type and patient type of
    the stream) and its person is in bef; in stored order."""
    bef = set(host["bef"]["pnr"].tolist())
    if s.register == "lpr":
        adm = pd.DataFrame(host["lpr_adm"])
        diag = pd.DataFrame(host["lpr_diag"])
        ok = diag.c_diagtype.isin(s.diagnosis_types)
        if s.codes is not None:
            ok &= _in(diag.c_diag.to_numpy(), s.codes.ranges)
        take = adm.recnum.isin(set(diag.recnum[ok]))
        if s.patient_types:
            take &= adm.c_pattype.isin(s.patient_types)
        take &= adm.pnr.isin(bef)
        return adm.pnr[take].tolist(), adm.d_inddto[take].tolist()
    reg = host["lmdb"]
    take = _in(reg["atc"], s.codes.ranges) & np.isin(reg["pnr"], list(bef))
    return reg["pnr"][take].tolist(), reg["eksd"][take].tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_every_stream_of_example_1_equals_a_row_by_row_reading(small_data, device):
    _, plan, ds = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    host = partition.read_host(str(small_data), 1, plan.reads)
    dev = get_device(device)
    pp = partition.Persons({r: {c: dev.to_device(a) for c, a in cols.items()}
                            for r, cols in host.items()}, plan, dev)
    streams = partition._plan_streams(plan)
    # the kinds of stream the engine decides differently are all here
    assert any(s.codes is None for s in streams)            # any code (hospital contacts)
    assert any(s.patient_types for s in streams)            # by code and patient type
    assert sum(partition._by_code_only(s) for s in streams) > 10
    _streams_equal_rows(pp, host, dev, streams)


def _streams_equal_rows(pp, host, dev, streams) -> int:
    """Each stream the engine builds on ``pp`` against a row-by-row reading of ``host``; the
    number of events compared."""
    partition.event_streams(pp, streams)
    pnr = host["bef"]["pnr"]
    seen = 0
    for s in streams:
        rows, days = (dev.to_host(a) for a in pp.streams[s])
        want_pnr, want_day = _expected(s, host)
        assert pnr[rows].tolist() == want_pnr and days.tolist() == want_day, s
        seen += len(want_pnr)
    return seen


def _odd_streams(streams) -> list:
    """Streams of shapes the examples lack: by diagnosis type alone, one type of a coded
    stream, two streams of overlapping codes, codes no row has, one code range split in many
    (more ranges than the engine compares one by one)."""
    from dataclasses import replace

    lpr = [s for s in streams if s.register == "lpr" and s.codes is not None]
    wide = max(lpr, key=lambda s: sum(hi - lo for lo, hi in s.codes.ranges))
    lo, hi = wide.codes.ranges[0]
    pieces = tuple((a, a + 1) for b, c in wide.codes.ranges for a in range(b, c))
    return [replace(lpr[0], codes=None, diagnosis_types=(1,), patient_types=()),
            replace(lpr[0], diagnosis_types=(0,)),
            replace(wide, codes=replace(wide.codes, ranges=((lo, (lo + hi) // 2 + 1),))),
            replace(wide, codes=replace(wide.codes, ranges=((hi + 10_000, hi + 10_001),))),
            replace(wide, codes=replace(wide.codes, ranges=pieces), diagnosis_types=(0, 1))]


@pytest.mark.parametrize("few_ranges", [0, partition.FEW_RANGES])
@pytest.mark.parametrize("device", DEVICES)
def test_odd_streams_equal_a_row_by_row_reading(small_data, device, few_ranges, monkeypatch):
    # few_ranges 0: every code found by the code table's gather, not by comparisons
    monkeypatch.setattr(partition, "FEW_RANGES", few_ranges)
    _, plan, ds = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    host = partition.read_host(str(small_data), 2, plan.reads)
    dev = get_device(device)
    plan_streams = partition._plan_streams(plan)
    odd = _odd_streams(plan_streams)
    assert len(odd[-1].codes.ranges) > 8
    # a stream by diagnosis type alone makes its register's streams go by every row: the
    # coded streams alone go by their matching rows (and their contacts)
    coded = [s for s in plan_streams if partition._by_code_only(s)] + odd[1:]
    calls = []
    monkeypatch.setattr(partition, "_contacts_of", _counting(partition._contacts_of, calls))
    seen = 0
    for streams in (plan_streams + odd[:1], coded):
        pp = partition.Persons({r: {c: dev.to_device(a) for c, a in cols.items()}
                                for r, cols in host.items()}, plan, dev)
        seen += _streams_equal_rows(pp, host, dev, streams)
    assert seen > 1000 and len(calls) == 1   # the coded streams linked by position


def _counting(fn, calls):
    def counted(*a):
        calls.append(1)
        return fn(*a)
    return counted


@pytest.mark.parametrize("device", DEVICES)
def test_diagnoses_link_to_their_own_contact_when_a_contact_has_several(device):
    """Contacts with 0..3 matching diagnoses among others: each contact once, its bits the
    OR of its own diagnoses' (planted), never a neighbour's."""
    dev = get_device(device)
    rng = np.random.default_rng(5)
    n_contacts = 400
    per = rng.integers(1, 6, n_contacts)
    starts = np.concatenate([[0], np.cumsum(per)[:-1]])
    m = int(per.sum())
    bits = rng.choice(np.array([0, 0, 0, 1, 2, 3], np.uint8), m)
    at = np.nonzero(bits)[0]
    change = np.zeros(m, dtype=bool)
    change[starts] = True
    index = partition._contact_index(dev.xp, dev.to_device(change), dev.to_device(at))
    got_c, got_b = partition._contacts_of(dev.xp, index, [dev.to_device(bits[at])])
    contact = np.repeat(np.arange(n_contacts), per)
    want = {}
    for i in at.tolist():
        want[int(contact[i])] = want.get(int(contact[i]), 0) | int(bits[i])
    assert dev.to_host(got_c).tolist() == sorted(want)
    assert dev.to_host(got_b[0]).tolist() == [want[c] for c in sorted(want)]


@pytest.mark.parametrize("device", DEVICES)
def test_a_diagnosis_finds_its_contact_at_the_edges(device):
    """The first row, a contact's first and last rows, a one-row contact and the last row."""
    dev = get_device(device)
    change = np.zeros(10, dtype=bool)
    change[[0, 3, 4, 9]] = True   # contacts of rows 0-2, 3, 4-8, 9
    at = np.array([0, 2, 3, 4, 8, 9], np.int64)
    got = dev.to_host(partition._contact_index(dev.xp, dev.to_device(change),
                                               dev.to_device(at)))
    assert got.tolist() == [0, 0, 1, 2, 2, 3]


def _tables(engine, ds, plan):
    tables, attrition = engine.person_tables(ds, plan)
    return list(tables), attrition


def test_local_threads_give_the_tables_of_one_thread(small_data):
    _, plan, _ = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    ds = Dataset.open(small_data)
    seen = []
    threads = dask_engine.DaskEngine(progress=lambda *a: seen.append(a))
    a, att_a = _tables(threads, ds, plan)
    b, att_b = _tables(dask_engine.DaskEngine(scheduler="sync"), ds, plan)
    assert att_a == att_b
    assert len(a) == len(b) == ds.partitions
    for x, y in zip(a, b, strict=True):
        assert list(x) == list(y)
        assert all(x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]) for k in x)
    assert [s[1] for s in seen] == list(range(1, ds.partitions + 1))


def test_an_error_in_one_partition_stops_the_local_run(small_data, monkeypatch):
    _, plan, _ = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    real = dask_engine.run_partition

    def broken(root, p, *args):
        if p == 1:
            raise OSError(f"partition {p}: disk gone")
        return real(root, p, *args)

    monkeypatch.setattr(dask_engine, "run_partition", broken)
    with pytest.raises(OSError, match="partition 1: disk gone"):
        dask_engine.DaskEngine().person_tables(Dataset.open(small_data), plan)
