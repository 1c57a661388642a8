"""The partition engine on the device stand-in: the whole study path gives the CPU's bytes,
transfers stay within a stated number per partition, NumPy on a device array fails, and the
fallbacks for data not stored in hpcstudy's order give the same tables."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from hpcstudy.devices import get_device
from hpcstudy.engines import partition
from hpcstudy.engines import run as R
from hpcstudy.study import study_from_text
from hpcstudy_kernels import windows
from tests.conftest import EXAMPLES, same_files
from tests.study.strategies import studies


def _tables(plan, root, parts, device):
    out = []
    for p in range(parts):
        dev = get_device(device)
        out.append((partition.run_partition(str(root), p, plan, dev), dev.transfers))
    return out


def transfer_bound(plan) -> tuple[int, int]:
    """(to-device, to-host) transfers a partition task may make: one per column read plus at
    most four small code tables (lpr codes and types, lmdb, death); the stored-order flags,
    the attrition counts and one per column of the per-person table."""
    reads = sum(len(c) for c in plan.reads.values())
    out_cols = len(R.table_columns(plan))
    return reads + 4, out_cols + 2


def assert_same_table(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_examples_on_the_standin_equal_the_cpu_within_the_transfer_bound(example, small_data):
    _, plan, ds = R.prepare(EXAMPLES / f"{example}.yaml", small_data)
    cpu = _tables(plan, small_data, ds.partitions, "cpu")
    dev = _tables(plan, small_data, ds.partitions, "standin")
    to_dev, to_host = transfer_bound(plan)
    for ((tc, ac), _), ((ts, as_), t) in zip(cpu, dev, strict=True):
        assert_same_table(tc, ts)
        assert ac == as_
        assert 0 < t.to_device_calls <= to_dev, t
        assert 0 < t.to_host_calls <= to_host, t
        # the host gets back the table and a few flags and counts, nothing row-sized more
        table_bytes = sum(v.nbytes for v in ts.values())
        assert t.to_host_bytes <= table_bytes + 1024, t
        assert t.to_host_calls == to_host, t  # exactly: table columns, flags, attrition


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(spec=studies())
def test_generated_studies_on_the_standin_equal_the_reference(spec, small_data):
    study = study_from_text(yaml.safe_dump(spec))
    _, plan, ds = R.prepare(study, small_data)
    ref, att_ref, _ = R.person_table(plan, ds, "reference")
    got = _tables(plan, small_data, ds.partitions, "standin")
    to_dev, to_host = transfer_bound(plan)
    for (_, _), t in got:
        assert t.to_device_calls <= to_dev and t.to_host_calls <= to_host
    a = R.combined(plan, ref)
    b = R.combined(plan, [tab for (tab, _), _ in got])
    assert_same_table(a, b)
    summed = {}
    for (_, att), _ in got:
        for g, steps in att.items():
            rows = summed.setdefault(g, [[k, 0] for k, _ in steps])
            for r, (_, k) in zip(rows, steps, strict=True):
                r[1] += k
    assert {g: [tuple(r) for r in rows] for g, rows in summed.items()} == att_ref


def test_the_whole_study_path_on_the_standin_writes_the_cpu_bytes(small_data, tmp_path,
                                                                   monkeypatch):
    """`run` from the YAML to results.json, tables and the private per-person table, once on
    the CPU and once with every partition task on the stand-in device."""
    example = EXAMPLES / "statins_mi.yaml"
    R.run(example, small_data, tmp_path / "cpu")
    used = []

    def recording(name):
        used.append(name)
        return get_device(name)

    monkeypatch.setattr(partition, "DEFAULT_DEVICE", "standin")
    monkeypatch.setattr(partition, "get_device", recording)
    R.run(example, small_data, tmp_path / "standin")
    assert used and set(used) == {"standin"}
    same_files(tmp_path / "cpu", tmp_path / "standin")


def _wrong_criterion(pp, cr, ref):
    """A careless criterion: counts events with NumPy (host code on device arrays)."""
    er, ed = pp.streams[cr.stream]
    ok = windows.events_in_window(er, ed, ref, cr.window.lo, cr.window.hi)
    k = np.bincount(er[ok], minlength=pp.n)
    has = k >= cr.min_count
    return has if cr.action == "include" else ~has


def test_numpy_on_device_arrays_fails_on_the_standin(small_data, monkeypatch):
    """The stand-in catches a partition function that calls NumPy on device arrays (the CPU
    cannot: there the wrong function runs and even gives the right answer)."""
    _, plan, ds = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    right = partition.run_partition(str(small_data), 0, plan, "cpu")
    monkeypatch.setattr(partition, "criterion", _wrong_criterion)
    wrong_on_cpu = partition.run_partition(str(small_data), 0, plan, "cpu")
    assert_same_table(right[0], wrong_on_cpu[0])
    with pytest.raises(TypeError, match="device"):
        partition.run_partition(str(small_data), 0, plan, "standin")


def _permute(host: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for reg, cols in host.items():
        n = next(iter(cols.values())).shape[0]
        order = rng.permutation(n)
        out[reg] = {c: a[order] for c, a in cols.items()}
    return out


@pytest.mark.parametrize("device", ["cpu", "standin"])
def test_registers_out_of_order_give_the_same_table(small_data, device):
    """Data not stored in hpcstudy's order (rows shuffled in every register, diagnoses no
    longer beside their contacts) is sorted once on load and linked by recnum: same table."""
    _, plan, ds = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    host = partition.read_host(str(small_data), 1, plan.reads)
    dev = get_device(device)
    want = partition.person_table({r: {c: dev.to_device(a) for c, a in cols.items()}
                                   for r, cols in host.items()}, plan, dev)
    shuffled = _permute(host, 4)
    dev2 = get_device(device)
    data = {r: {c: dev2.to_device(a) for c, a in cols.items()} for r, cols in shuffled.items()}
    pp = partition.Persons(data, plan, dev2)
    assert not pp.diag_aligned
    got = partition.person_table(data, plan, dev2)
    assert_same_table(want[0], got[0])
    assert want[1] == got[1]


CONTACTS = """
name: contacts
seed: 1
codelists:
  mi: {system: icd10, codes: [I21*]}
population: {age: [0, 120]}
index: {date: 2015-01-01}
covariates:
  - {name: visits, count: hospital_contacts, window: [null, 0]}
  - {name: mi_before, codelist: mi, window: [null, 0]}
outcome: {name: death, death: true}
"""


@pytest.mark.parametrize("engine", ["reference", "dask"])
def test_contacts_without_diagnoses(tmp_path, engine, monkeypatch):
    """A contact with no row in lpr_diag (possible in real extracts): diagnoses can no longer
    be linked by position, the fallback links by recnum, and every engine agrees."""
    from tests.study.builder import Registers

    r = Registers()
    for p in (1, 2, 3, 4):
        r.person(p, "M", "1950-01-01")
    r.contact(1, "2010-01-01", "DI219").contact(2, "2011-01-01", "DI210")
    r._add("lpr_adm", pnr=1, recnum=99, d_inddto="2012-01-01", d_uddto="2012-01-02",
           c_pattype=0, c_adiag="DI219", c_sgh=1301)      # no diagnosis rows
    r._add("lpr_adm", pnr=3, recnum=98, d_inddto="2012-01-01", d_uddto="2012-01-02",
           c_pattype=0, c_adiag="DI219", c_sgh=1301)
    r.contact(3, "2013-01-01", "DE110", secondary=["DI212"])
    data = r.write(tmp_path / "data", partitions=1)
    monkeypatch.setattr(partition, "DEFAULT_DEVICE", "standin")
    _, plan, ds = R.prepare(study_from_text(CONTACTS), data)
    cpu = get_device("cpu")
    assert not partition.Persons(partition.load(str(data), 0, plan.reads, cpu), plan,
                                 cpu).diag_aligned
    tables, _, _ = R.person_table(plan, ds, engine)
    t = R.combined(plan, tables)
    got = {int(p): (int(v), int(m)) for p, v, m in zip(t["pnr"], t["visits"], t["mi_before"],
                                                         strict=True)}
    # visits count contacts with an A diagnosis; the undiagnosed ones count for nothing
    assert got == {1: (1, 1), 2: (1, 1), 3: (1, 1), 4: (0, 0)}


def test_device_table_stays_on_the_device(small_data):
    _, plan, _ = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    dev = get_device("standin")
    data = partition.load(str(small_data), 0, plan.reads, dev)
    before = dev.transfers.to_host_calls
    table, _ = partition.device_table(data, plan, dev)
    assert dev.transfers.to_host_calls == before + 2  # the order flags and the attrition
    assert all(type(v).__name__ == "StandinArray" for v in table.values())


@pytest.mark.gpu
def test_examples_on_a_gpu_equal_the_cpu(small_data):
    pytest.importorskip("cupy")
    from hpcstudy.devices import DeviceUnavailable

    try:
        get_device("gpu")
    except DeviceUnavailable as e:
        pytest.skip(str(e))
    for ex in sorted(EXAMPLES.glob("*.yaml")):
        _, plan, ds = R.prepare(ex, small_data)
        to_dev, to_host = transfer_bound(plan)
        for ((tc, ac), _), ((tg, ag), t) in zip(_tables(plan, small_data, ds.partitions, "cpu"),
                                                _tables(plan, small_data, ds.partitions, "gpu"),
                                                strict=True):
            assert_same_table(tc, tg)
            assert ac == ag
            assert t.to_device_calls <= to_dev and t.to_host_calls <= to_host



def test_a_partition_too_big_for_the_device_is_one_line_naming_it(small_data):
    from hpcstudy.errors import UserError

    _, plan, ds = R.prepare(EXAMPLES / "statins_mi.yaml", small_data)
    dev = get_device("standin")
    dev.memory_limit = 10_000
    with pytest.raises(UserError) as e:
        partition.run_partition(str(small_data), 2, plan, dev)
    msg = str(e.value)
    assert "\n" not in msg and "partition 2 of" in msg and "--partitions" in msg
    assert dev.transfers.to_device_calls == 0  # refused before anything moved
    need = int(msg.split("--partitions ")[1].split()[0])
    assert need > ds.partitions
    dev.memory_limit = 10**12
    assert partition.run_partition(str(small_data), 2, plan, dev)[0]["pnr"].size > 0


@pytest.mark.gpu
def test_the_whole_study_path_on_a_gpu_writes_the_cpu_bytes(small_data, tmp_path, monkeypatch):
    pytest.importorskip("cupy")
    from hpcstudy.devices import DeviceUnavailable

    try:
        get_device("gpu")
    except DeviceUnavailable as e:
        pytest.skip(str(e))
    example = EXAMPLES / "statins_mi.yaml"
    R.run(example, small_data, tmp_path / "cpu")
    monkeypatch.setattr(partition, "DEFAULT_DEVICE", "gpu")
    R.run(example, small_data, tmp_path / "gpu")
    same_files(tmp_path / "cpu", tmp_path / "gpu")


def test_empty_partitions_on_the_standin_equal_the_reference(tmp_path, monkeypatch):
    """Nine persons over sixteen partitions: most partitions hold nobody."""
    from tests.study.test_spec import STUDY, spec_registers

    data = spec_registers().write(tmp_path / "data", partitions=16)
    _, plan, ds = R.prepare(study_from_text(STUDY), data)
    empty = [p for p in range(16) if not partition.read_host(str(data), p,
                                                             {"bef": ("pnr",)})["bef"]["pnr"].size]
    assert len(empty) >= 4
    ref, att_ref, _ = R.person_table(plan, ds, "reference")
    monkeypatch.setattr(partition, "DEFAULT_DEVICE", "standin")
    got, att, _ = R.person_table(plan, ds, "dask")
    assert_same_table(R.combined(plan, ref), R.combined(plan, got))
    assert att == att_ref
