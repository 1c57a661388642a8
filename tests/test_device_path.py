"""The distributed side of the device path: ``--device``, rows left on the workers (the matched
bootstrap's too), a lost worker after the cohort step, a GPU failing in the cohort, design or
model steps, and the GPU benchmark at toy sizes."""

from __future__ import annotations

import contextvars
import json
import os
import re
import signal
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, same_output

from hpcstudy.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STUDY = EXAMPLES / "diabetes_incidence.yaml"


def one_error_line(r) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error: "), r.stderr
    return lines[0]


# -- choosing the device ----------------------------------------------------------------------
def test_device_gpu_without_cupy_is_one_line_and_writes_nothing(small_data, tmp_path):
    pytest.importorskip("hpcstudy.devices")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    out = tmp_path / "out"
    line = one_error_line(run_cli("run", STUDY, "--data", small_data, "--out", out,
                                  "--quiet", "--device", "gpu"))
    assert "CuPy" in line and "--device cpu" in line
    assert not out.exists() and not (tmp_path / "out.checkpoints").exists()


FAKE_CUPY = {   # a test double for absent hardware: CuPy imports, its runtime sees no device
    "cupy/__init__.py": "from . import cuda\n",
    "cupy/cuda/__init__.py": "from . import runtime\n",
    "cupy/cuda/runtime.py": "def getDeviceCount():\n    return 0\n",
}


@pytest.fixture()
def cupy_without_a_gpu(tmp_path):
    """A ``cupy`` package whose device count is 0: what CuPy says on a node without a GPU.
    It stands in for missing hardware only; nothing of hpcstudy is replaced."""
    root = tmp_path / "fake-cupy"
    for rel, text in FAKE_CUPY.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_device_gpu_with_cupy_but_no_gpu_is_one_line(small_data, tmp_path, cupy_without_a_gpu):
    pytest.importorskip("hpcstudy.devices")
    out = tmp_path / "out"
    line = one_error_line(run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet",
                                  "--device", "gpu", env=cupy_without_a_gpu))
    assert "no GPU" in line and "--device cpu" in line and "not usable here" not in line
    assert not out.exists()


def test_device_gpu_asks_the_workers_and_names_one_without_a_gpu(small_data, tmp_path,
                                                                  cupy_without_a_gpu):
    """Under the processes launcher the workers, not the client, must have the GPU: the line
    names a worker and how many others lack one."""
    pytest.importorskip("hpcstudy.devices")
    out = tmp_path / "out"
    line = one_error_line(run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet",
                                  "--launcher", "processes", "--workers", "2", "--device", "gpu",
                                  env=cupy_without_a_gpu))
    assert "error: worker tcp://" in line and "and 1 other worker(s)" in line
    assert "no GPU" in line and not out.exists()


def test_device_auto_without_a_gpu_runs_on_the_cpu_and_says_so(small_data, local_run,
                                                               tmp_path, cupy_without_a_gpu):
    pytest.importorskip("hpcstudy.devices")
    out = tmp_path / "out"
    r = run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet", "--device", "auto",
                env=cupy_without_a_gpu)
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["device"] == {"name": "cpu", "peak_memory_mib": None}
    for f in ("results.json", "outputs.json", "private/person_table.parquet"):
        same_output(out / f, local_run / f)


def test_the_profile_gives_the_default_device(small_data, tmp_path):
    """gefion's profile says gpu: without --device a run there asks for the GPU (and here,
    without one, is refused before it reads anything)."""
    pytest.importorskip("hpcstudy.devices")
    out = tmp_path / "out"
    line = one_error_line(run_cli("run", STUDY, "--data", small_data, "--out", out,
                                  "--quiet", "--profile", "gefion"))
    assert "--device gpu" in line and not out.exists()


def test_the_reference_engine_refuses_the_gpu(small_data, tmp_path):
    line = one_error_line(run_cli("run", STUDY, "--data", small_data, "--out", tmp_path / "o",
                                  "--engine", "reference", "--device", "gpu"))
    assert "reference engine runs on the CPU" in line


def test_a_submitted_job_runs_on_the_profiles_device(small_data, tmp_path):
    r = run_cli("submit", STUDY, "--profile", "gefion", "--data", small_data, "--out",
                tmp_path / "out", "--dry-run")
    assert r.returncode == 0, r.stderr
    run_line = next(x for x in r.stdout.splitlines() if "hpcstudy.cli run" in x)
    assert run_line.count("--device") == 1 and "--device gpu" in run_line


@pytest.mark.parametrize("profile,flag,want", [("ci", None, "cpu"), ("gefion", "auto", "auto"),
                                               ("gefion", "cpu", "cpu"), ("ci", "gpu", "gpu")])
def test_submit_device_overrides_the_profiles(profile, flag, want):
    from hpcstudy.cluster import slurm

    text = slurm.render_sbatch(slurm.load_profile(profile), study=Path("/s.yaml"),
                               data=Path("/d"), out=Path("/o"), study_name="s", device=flag)
    run_line = next(x for x in text.splitlines() if "hpcstudy.cli run" in x)
    assert run_line.count("--device") == 1 and f"--device {want} " in run_line + " "


@pytest.mark.parametrize("text,message", [
    ("device: tpu\n", "'tpu' is not a device"),
    ("device: gpu\ngpus_per_node: 0\n", "gpu on nodes without GPUs"),
])
def test_a_profiles_bad_device_is_refused_with_its_line(tmp_path, text, message):
    from hpcstudy.cluster.slurm import read_profile

    f = tmp_path / "site.yaml"
    f.write_text("name: site\npartition: p\nwalltime: '01:00:00'\n" + text)
    with pytest.raises(UserError) as e:
        read_profile(f)
    assert message in str(e.value) and f"{f}:4" in str(e.value)


# -- rows stay on the workers -----------------------------------------------------------------
_comm = contextvars.ContextVar("comm", default=None)


@contextmanager
def bytes_received(workers):
    """Count the bytes this process reads on connections it opened to the ``workers``
    (addresses): every byte of a partition's results reaches the client that way, directly or
    through the scheduler (which a LocalCluster runs in the client's process; counting only
    what comes from workers counts such a relay once)."""
    from distributed.comm import tcp

    got = {"bytes": 0, "largest": 0}   # in all, and the largest one message
    read, from_frames = tcp.TCP.read, tcp.from_frames

    async def counted_read(self, deserializers=None):
        _comm.set(self)
        return await read(self, deserializers)

    async def counted_from_frames(frames, *a, **kw):
        comm = _comm.get()
        if comm is not None and comm.peer_address in workers:
            size = sum(memoryview(f).nbytes for f in frames)
            got["bytes"] += size
            got["largest"] = max(got["largest"], size)
        return await from_frames(frames, *a, **kw)

    tcp.TCP.read, tcp.from_frames = counted_read, counted_from_frames
    try:
        yield got
    finally:
        tcp.TCP.read, tcp.from_frames = read, from_frames


def table_bytes(t: dict) -> int:
    return sum(v.nbytes for v in t.values())


@pytest.fixture(scope="module")
def two_big_parts(tmp_path_factory) -> Path:
    """40 000 persons in two partitions: per-person tables of ~200 kB each."""
    from hpcstudy.registers.generate import generate

    out = tmp_path_factory.mktemp("data") / "two"
    generate(out, persons=40_000, seed=3, partitions=2, jobs=2)
    return out


def test_a_distributed_run_moves_no_person_rows_through_the_client(two_big_parts, tmp_path):
    """A whole run of example 3 (cohort, rates, Lexis, a Poisson model's Newton steps) on a
    LocalCluster of worker processes: the client receives far less than one partition's
    per-person table, and the counter does see tables when they are fetched. (A Cox fit's
    per-step sums are per event time, the grid, whose size grows with distinct event days,
    not with persons.)"""
    from distributed import Client, LocalCluster

    from hpcstudy.engines import run as R

    study = STUDY
    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        with bytes_received(set(cluster.scheduler_info["workers"])) as got:
            R.run(study, two_big_parts, out, client=client)
        during_run = got["bytes"]
        _, plan, ds = R.prepare(study, two_big_parts)
        tables, _, _ = R.person_table(plan, ds, "dask", client)
        with bytes_received(set(cluster.scheduler_info["workers"])) as got:
            host = list(tables)          # rows asked for: this must show in the count
        fetched = got["bytes"]
    smallest = min(table_bytes(t) for t in host)
    assert fetched >= sum(table_bytes(t) for t in host)
    assert smallest > 200_000            # partitions big enough for the bound to mean something
    assert during_run < smallest / 10, (during_run, smallest)
    whole = R.combined(plan, host)
    import pyarrow.parquet as pq

    private = pq.read_table(out / "private" / "person_table.parquet").to_pydict()
    assert all(np.array_equal(whole[k], np.asarray(private[k])) for k in whole)


MATCHED = {
    "name": "matched_on_workers", "seed": 3,
    "codelists": {"statins": {"system": "atc", "codes": ["C10AA*"]},
                  "mi": {"system": "icd10", "codes": ["I21*"]},
                  "diabetes": {"system": "icd10", "codes": ["E11*"]}},
    "population": {"age": [40, 90]},
    "exposure": {"name": "statin", "first_event": {"codelist": "statins"},
                 "between": ["2005-01-01", "2020-12-31"], "washout_days": 365},
    "comparator": {"non_users": True},
    "covariates": ["age", "sex", "region",
                   {"name": "diabetes", "codelist": "diabetes", "window": [None, 0]}, "charlson"],
    "outcome": {"name": "mi", "codelist": "mi"},
    "propensity": {"covariates": ["age", "sex", "diabetes"], "method": "matching",
                   "matching": {"ratio": 1, "caliper": 0.2}},
    "analyses": {"cox": True},
}


def test_a_matched_design_under_a_client_gathers_triples_not_rows(two_big_parts):
    """The design step (score fit, matching, Table 1, balance) on a LocalCluster of worker
    processes: the client receives 17 bytes a person before matching (logit, pnr, arm:
    matching's one gather) and a fixed 100 kB for the per-step sums and Table 1's quantile
    rounds; less than the rows the step used to gather even though
    this study's rows are narrow (~37 bytes), and a wider study gathers the same 25 bytes. The
    matched tables, attrition and design sections are the same bytes as without a client."""
    import yaml
    from distributed import Client, LocalCluster

    from hpcstudy.engines import run as R
    from hpcstudy.study import study_from_text

    plain = {k: v for k, v in MATCHED.items() if k != "propensity"}
    _, plan0, ds0 = R.prepare(study_from_text(yaml.safe_dump(plain)), two_big_parts)
    rows_in = sum(table_bytes(t) for t in R.person_table(plan0, ds0, "dask").tables)
    study = study_from_text(yaml.safe_dump(MATCHED))
    _, plan, ds = R.prepare(study, two_big_parts)
    local = R.person_table(plan, ds, "dask")
    want = R.combined(plan, local.tables)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        workers = set(cluster.scheduler_info["workers"])
        with bytes_received(workers) as got:
            built = R.person_table(plan, ds, "dask", client)
        during = got["bytes"]
        with bytes_received(workers) as got:
            host = list(built.tables)     # rows asked for: this must show in the count
        fetched = got["bytes"]
    before = sum(arms[-2][1] for arms in built.attrition.values())   # the step before matching
    assert all(arms[-1][0] == "matched on the propensity score"
               for arms in built.attrition.values())
    assert fetched >= sum(table_bytes(t) for t in host)
    assert before > 10_000 and rows_in > 20 * before   # enough for the bound to mean something
    assert during < 25 * before + 100_000, (during, before)
    assert during < rows_in * 0.8, (during, rows_in)
    got_tables = R.combined(plan, host)
    assert set(got_tables) == set(want)
    assert all(np.array_equal(want[k], got_tables[k]) for k in want)
    assert built.attrition == local.attrition
    assert json.dumps(built.design, sort_keys=True) == json.dumps(local.design, sort_keys=True)


def test_the_matched_bootstrap_under_a_client_receives_sums_not_rows(two_big_parts,
                                                                    monkeypatch):
    """The bootstrap's replicates run where the matched rows are: while it runs (counted
    around bootstrap.cox_interval itself) the client's largest message from a worker is under
    a quarter of a matched partition's table (the bootstrap used to gather the whole
    tables), while fetching the tables does show them; and the interval is the one
    computed without a client. (In all the client does receive more than the matched rows'
    bytes here, ~1.6 MB against 0.46 MB: 20 replicates' Cox fits, each a few dozen messages
    of per-event-time sums.)"""
    import yaml
    from distributed import Client, LocalCluster

    from hpcstudy.designs import bootstrap
    from hpcstudy.engines import run as R
    from hpcstudy.study import study_from_text

    s = json.loads(json.dumps(MATCHED))
    s["propensity"]["matching"]["bootstrap"] = 20
    _, plan, ds = R.prepare(study_from_text(yaml.safe_dump(s)), two_big_parts)
    local = R.person_table(plan, ds, "dask")
    seen, original = [], bootstrap.cox_interval

    def counted(*a, **kw):
        with bytes_received(workers) as got:
            out = original(*a, **kw)
        seen.append(got)
        return out

    monkeypatch.setattr(bootstrap, "cox_interval", counted)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        workers = set(cluster.scheduler_info["workers"])
        built = R.person_table(plan, ds, "dask", client)
        with bytes_received(workers) as got:
            host = list(built.tables)     # rows asked for: this must show in the count
    (during,) = seen
    smallest = min(table_bytes(t) for t in host)
    assert got["largest"] >= smallest > 50_000, (got, smallest)
    # a message may carry several partitions' sums (~9 kB each here): still far from a table
    assert during["largest"] < smallest / 4, (during, smallest)
    want, have = local.design["design"]["bootstrap"], built.design["design"]["bootstrap"]
    assert want.keys() == have.keys() and want["failed"] == have["failed"] == 0
    for k in ("se", "lower_95", "upper_95"):   # sums added in other processes: the last bits
        assert have[k] == pytest.approx(want[k], rel=1e-9), k


def test_a_worker_lost_after_the_cohort_step_costs_no_results(small_data, local_run,
                                                              tmp_path):
    """The per-person tables live on the workers; SIGKILL one after the cohort step. Its
    tables are computed again elsewhere, and the models and the private table come out the
    same as on the local launcher."""
    from distributed import wait
    from test_launchers import same_outputs

    from hpcstudy.cluster.launchers import client_for
    from hpcstudy.engines import run as R

    out = tmp_path / "out"
    with client_for("processes", workers=2) as client:
        study, plan, ds = R.prepare(STUDY, small_data)
        report: dict = {}
        tables, attrition, parts = R.person_table(plan, ds, "dask", client, report=report)
        wait(tables.parts)
        holders = client.who_has(tables.parts)
        victim_addr = sorted({w for ws in holders.values() for w in ws})[0]
        victim = client.run(os.getpid, workers=[victim_addr])[victim_addr]
        os.kill(victim, signal.SIGKILL)
        results = R.analyse(plan, parts, attrition)
        R.write_outputs(out, plan, results, tables, engine="dask", ds=ds,
                        device=report["device"])
        assert victim not in client.run(os.getpid).values()   # it really died
    same_outputs(local_run, out)


def test_a_run_on_the_stand_in_device_under_a_client_gives_the_cpu_bytes(small_data,
                                                                         local_run, tmp_path):
    """Every partition built on the workers' stand-in device (arrays that refuse NumPy), under
    a LocalCluster of processes: the same per-person table and results as the local CPU run,
    and the device recorded."""
    from hpcstudy.engines import partition

    if not hasattr(partition, "run_partition"):
        pytest.skip("the partition engine here has no device path yet")
    from distributed import Client, LocalCluster
    from study.test_engines_agree import compare

    from hpcstudy.engines.run import run

    out = tmp_path / "out"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        res = run(STUDY, small_data, out, client=client, device="standin")
    assert res["run"]["device"]["name"] == "standin"
    private = Path("private") / "person_table.parquet"
    assert (out / private).read_bytes() == (local_run / private).read_bytes()
    # the persons behind the counts, summed and written on the workers: the same sketches
    sketches = Path("private") / "sketches.json"
    assert (out / sketches).read_bytes() == (local_run / sketches).read_bytes()
    want = json.loads((local_run / "results.json").read_text())
    got = json.loads((out / "results.json").read_text())
    want["run"].pop("device"), got["run"].pop("device")
    compare(want, got, rel=1e-12)   # sums in other processes: the last bit may differ


def _slow_in_reverse(part, n):
    import time

    time.sleep(0.3 * (n - 1 - part))   # the last partition finishes first
    return [part]


def test_partial_sums_are_added_in_partition_order_whatever_order_they_finish_in():
    """Partials finishing in reverse order are still combined 0, 1, 2, 3 (a combine that is
    not commutative shows the order), so every launcher adds the same numbers the same way."""
    from distributed import Client, LocalCluster

    from hpcstudy.models.partitions import DaskPartitions

    seen = []

    def combine(a, b):
        seen.append((list(a), list(b)))
        return a + b

    with LocalCluster(n_workers=4, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        parts = DaskPartitions(client.scatter([0, 1, 2, 3]), client)
        assert parts.map_reduce(_slow_in_reverse, 4, combine=combine) == [0, 1, 2, 3]
    assert seen == [([0], [1]), ([0, 1], [2]), ([0, 1, 2], [3])]


def _shift(part, by):
    return {"x": part["x"] - by}


def _sum_x(part):
    return float(part["x"].sum())


def _unrecomputable(dask_scheduler=None):
    """Keys the scheduler holds with no task to recompute them from (scattered data)."""
    return [str(k) for k, ts in dask_scheduler.tasks.items() if ts.run_spec is None]


def test_partitions_under_a_client_can_always_be_recomputed():
    """Host partitions handed to DaskPartitions under a client, and everything mapped from
    them (one partition's own arguments too), are tasks the scheduler can run again when the
    worker holding them is lost: none is scattered data."""
    from distributed import Client, LocalCluster

    from hpcstudy.models.partitions import DaskPartitions, map_each

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        parts = DaskPartitions([{"x": np.arange(3.0) + i} for i in range(3)], client)
        moved = map_each(parts.map(_shift, 1.0), _shift, [(1.0,), (2.0,), (3.0,)])
        # 0..2, 1..3, 2..4 (18 in all), less 2, 3 and 4 from each element
        assert moved.map_reduce(_sum_x) == 18 - 3 * (2 + 3 + 4)
        assert client.run_on_scheduler(_unrecomputable) == []
        client.scatter([1, 2])   # the check does see scattered data
        assert len(client.run_on_scheduler(_unrecomputable)) == 2


FAILING_GPU = {   # a test double for GPU hardware: NumPy behind CuPy's names; "GPU 1" breaks
    # Arrays moved to it are a NumPy subclass named cupy.ndarray, so hpcstudy takes them for
    # device arrays (and moves every host argument of a partition's step to it). Where GPU 1
    # breaks: at its first transfer, or with FAKE_CUPY_FAIL_AT=STEP:N at the N-th transfer
    # inside the per-partition step STEP (models.partitions._OnDevice, e.g. _poisson: a Newton
    # step); each failure is logged to FAKE_CUPY_LOG as "pid step n". FAKE_CUPY_BROKEN names
    # the broken GPUs ("1" by default; "0,1": both); FAKE_CUPY_TOGETHER=DIR:K holds each
    # failure until K GPUs are failing, so that they fail at the same moment.
    "cupy/__init__.py": textwrap.dedent("""\
        import os
        import sys
        import numpy as _np
        from . import cuda

        def _wrap(x):   # results of NumPy functions on these stay "on the device"
            if isinstance(x, _np.ndarray) and not isinstance(x, ndarray):
                return x.view(ndarray)
            if isinstance(x, tuple | list):
                return type(x)(_wrap(v) for v in x)
            return x

        class ndarray(_np.ndarray):
            def get(self):
                return _np.asarray(self)

            def __array_function__(self, func, types, args, kwargs):
                return _wrap(func._implementation(*args, **kwargs))

        try:   # workers send these as NumPy arrays, not as GPU buffers (distributed's cupy)
            from distributed.protocol import numpy as _dn
            from distributed.protocol.serialize import dask_deserialize, dask_serialize

            dask_serialize._lazy.pop("cupy", None)
            dask_deserialize._lazy.pop("cupy", None)
            dask_serialize.register(ndarray)(
                lambda x: _dn.serialize_numpy_ndarray(_np.asarray(x)))
            dask_deserialize.register(ndarray)(
                lambda h, f: _dn.deserialize_numpy_ndarray(h, f).view(ndarray))
        except ImportError:
            pass

        class _Pool:
            def total_bytes(self): return 0
            def free_bytes(self): return 0
            def free_all_blocks(self): pass

        _POOL = _Pool()
        _CALLS = {}

        def get_default_memory_pool(): return _POOL

        def asnumpy(a): return _np.asarray(a)

        def _step():
            f = sys._getframe(2)
            while f is not None:
                me = f.f_locals.get("self")
                if f.f_code.co_name == "__call__" and type(me).__name__ == "_OnDevice":
                    return me.__name__
                f = f.f_back
            return None

        def _breaks():
            broken = os.environ.get("FAKE_CUPY_BROKEN", "1").split(",")
            if os.environ.get("CUDA_VISIBLE_DEVICES") not in broken:
                return None
            at = os.environ.get("FAKE_CUPY_FAIL_AT")
            if not at:
                return "any", 1
            step, n = at.split(":")
            if _step() != step:
                return None
            _CALLS[step] = _CALLS.get(step, 0) + 1
            return (step, _CALLS[step]) if _CALLS[step] >= int(n) else None

        def _together():   # FAKE_CUPY_TOGETHER=DIR:K: fail only once K GPUs are failing
            at = os.environ.get("FAKE_CUPY_TOGETHER")
            if not at:
                return
            import time
            where, k = at.rsplit(":", 1)
            open(os.path.join(where, str(os.getpid())), "w").close()
            t0 = time.monotonic()
            while len(os.listdir(where)) < int(k) and time.monotonic() - t0 < 20:
                time.sleep(0.005)

        def asarray(a, dtype=None):
            broken = _breaks()
            if broken is not None:
                if os.environ.get("FAKE_CUPY_LOG"):
                    with open(os.environ["FAKE_CUPY_LOG"], "a") as f:
                        f.write(f"{os.getpid()} {broken[0]} {broken[1]}\\n")
                _together()
                raise cuda.runtime.CUDARuntimeError("cudaErrorECCUncorrectable: "
                                                    "uncorrectable ECC error encountered")
            return _np.asarray(a, dtype=dtype).view(ndarray)

        def __getattr__(name): return getattr(_np, name)
        """),
    "cupy/cuda/__init__.py": "from . import runtime\n",
    "cupy/cuda/runtime.py": textwrap.dedent("""\
        class CUDARuntimeError(RuntimeError):
            pass

        def getDeviceCount(): return 1

        def memGetInfo(): return (1 << 40, 1 << 40)
        """),
}


def failing_gpu(tmp_path, **env) -> dict:
    """The environment of a run whose GPU 1 is the failing double above."""
    root = tmp_path / "fake-cupy"
    for rel, text in FAILING_GPU.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
            **env}


def _same_as_cpu(out, local_run):
    private = Path("private") / "person_table.parquet"
    assert (out / private).read_bytes() == (local_run / private).read_bytes()
    # the persons behind the counts, summed and written on the workers: the same sketches
    sketches = Path("private") / "sketches.json"
    assert (out / sketches).read_bytes() == (local_run / sketches).read_bytes()
    want = json.loads((local_run / "results.json").read_text())
    got = json.loads((out / "results.json").read_text())
    assert got["run"].pop("device")["name"] == "gpu"
    want["run"].pop("device")
    from study.test_engines_agree import compare

    compare(want, got, rel=1e-12)


def test_a_worker_whose_gpu_fails_leaves_and_the_others_finish_the_run(small_data, local_run,
                                                                       tmp_path):
    """Two workers, one GPU each; the second GPU raises a CUDA error on its first transfer
    (a CuPy double: NumPy behind CuPy's names, the hardware being absent here). That worker
    leaves, its partitions go to the other, and the outputs equal the local CPU run's."""
    out = tmp_path / "out"
    r = run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet", "--launcher",
                "processes", "--gpus", "2", "--device", "gpu", env=failing_gpu(tmp_path))
    assert r.returncode == 0, r.stderr
    _same_as_cpu(out, local_run)


def test_a_gpu_failing_in_a_newton_step_leaves_and_the_others_refit(small_data, local_run,
                                                                    tmp_path):
    """GPU 1 builds its partitions' tables, then fails in the Poisson model's third Newton
    step on it (its transfer of the coefficients). Its worker leaves; the tables, the moved
    partitions and the prepared model partitions it held are recomputed from their tasks on
    the other worker, the step is retried there, and the outputs equal the CPU run's."""
    out, log = tmp_path / "out", tmp_path / "failures.log"
    r = run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet", "--launcher",
                "processes", "--gpus", "2", "--device", "gpu",
                env=failing_gpu(tmp_path, FAKE_CUPY_FAIL_AT="_poisson:3",
                                FAKE_CUPY_LOG=str(log)))
    assert r.returncode == 0, r.stderr
    # it did fail there, once: the worker that failed never ran another step
    assert [x.split()[1:] for x in log.read_text().splitlines()] == [["_poisson", "3"]]
    _same_as_cpu(out, local_run)


def test_a_gpu_failing_in_the_design_step_leaves_and_the_others_finish(small_data, tmp_path):
    """A matched design: GPU 1 fails in the third Newton step of the propensity score's fit
    on the workers. The worker leaves; the scheduler rebuilds the tables it held from their
    tasks on the other, the step is retried there, and the matched cohort, Table 1, balance
    and models equal a CPU run's."""
    import yaml
    from designs.test_bootstrap import spec

    study = tmp_path / "matched.yaml"
    study.write_text(yaml.safe_dump(spec()))
    cpu, out, log = tmp_path / "cpu", tmp_path / "out", tmp_path / "failures.log"
    r = run_cli("run", study, "--data", small_data, "--out", cpu, "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("run", study, "--data", small_data, "--out", out, "--quiet", "--launcher",
                "processes", "--gpus", "2", "--device", "gpu",
                env=failing_gpu(tmp_path, FAKE_CUPY_FAIL_AT="_logistic:3",
                                FAKE_CUPY_LOG=str(log)))
    assert r.returncode == 0, r.stderr
    assert [x.split()[1:] for x in log.read_text().splitlines()] == [["_logistic", "3"]]
    _same_as_cpu(out, cpu)
    assert json.loads((out / "results.json").read_text())["design"]["method"] == "matching"


@pytest.mark.mpi
def test_under_mpi_a_rank_whose_gpu_fails_leaves_and_the_others_finish(small_data, local_run,
                                                                       tmp_path):
    """The mpi launcher's workers are plain Workers in ranks, without a nanny: the rank whose
    GPU fails in a Newton step closes its worker and ends (MPI_Finalize, exit 0), the other
    worker rank recomputes what it held, and the outputs equal the CPU run's."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("mpirun")
    if exe is None:
        pytest.skip("mpirun is not installed")
    pytest.importorskip("mpi4py")
    out, log = tmp_path / "out", tmp_path / "failures.log"
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "CUDA_VISIBLE_DEVICES": "0,1",   # worker ranks 2 and 3 take GPUs 0 and 1
           **failing_gpu(tmp_path, FAKE_CUPY_FAIL_AT="_poisson:3", FAKE_CUPY_LOG=str(log))}
    r = subprocess.run([exe, "-n", "4", "--oversubscribe", sys.executable, "-m", "hpcstudy.cli",
                        "run", str(STUDY), "--data", str(small_data), "--out", str(out),
                        "--quiet", "--launcher", "mpi", "--interface", "lo", "--device", "gpu"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert [x.split()[1:] for x in log.read_text().splitlines()] == [["_poisson", "3"]]
    _same_as_cpu(out, local_run)


def test_a_gpu_failing_with_no_other_worker_is_one_line_exit_1(small_data, tmp_path):
    out = tmp_path / "out"
    r = run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet", "--device", "gpu",
                env=failing_gpu(tmp_path, CUDA_VISIBLE_DEVICES="1"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "the GPU failed while computing partition" in lines[0]
    assert "--resume" in lines[0] and not out.exists()


@pytest.mark.parametrize("launcher", ["local", "processes"])
def test_a_gpu_failing_in_a_newton_step_with_no_other_worker_is_one_line_exit_1(
        small_data, tmp_path, launcher):
    """The only GPU fails in a Newton step: on the local launcher, and on a cluster whose one
    worker it is (leaving would leave the run waiting for a worker forever). One line naming
    the step, exit 1, and --resume reuses the partitions finished before."""
    out = tmp_path / "out"
    more = ["--launcher", "processes", "--gpus", "1"] if launcher == "processes" else []
    env = failing_gpu(tmp_path, FAKE_CUPY_FAIL_AT="_poisson:2")
    if launcher == "local":
        env["CUDA_VISIBLE_DEVICES"] = "1"
    else:   # its one worker sees GPU 0: make GPU 0 the failing one
        env["FAKE_CUPY_BROKEN"] = "0"
    r = run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet", "--device", "gpu",
                *more, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "the GPU failed while computing partition" in lines[0]
    assert re.search(r"partition \d, step poisson \(CUDARuntimeError: ", lines[0]), lines[0]
    assert "--resume" in lines[0] and not out.exists()
    if launcher == "local":   # the checkpoints of the tables built before the failure are kept
        assert len(list((tmp_path / "out.checkpoints").glob("*"))) >= 3


@pytest.mark.parametrize("at", ["first transfer", "_poisson:2"])
def test_two_gpus_failing_at_once_leave_one_worker_and_stop_in_one_line(small_data, tmp_path,
                                                                        at):
    """Both GPUs of a two-worker cluster fail at the same moment (their first transfer, or the
    same Newton step). Each worker asks whether another is left before leaving; asked at once,
    both could see the other and leave, and the run would wait for a worker for ever. Only one
    may leave: the last one stops the run with one line, exit 1, and the --resume hint."""
    out, log = tmp_path / "out", tmp_path / "failures.log"
    (tmp_path / "failing").mkdir()
    env = failing_gpu(tmp_path, FAKE_CUPY_BROKEN="0,1", FAKE_CUPY_LOG=str(log),
                      FAKE_CUPY_TOGETHER=f"{tmp_path / 'failing'}:2")
    if at != "first transfer":
        env["FAKE_CUPY_FAIL_AT"] = at
    r = run_cli("run", STUDY, "--data", small_data, "--out", out, "--quiet", "--launcher",
                "processes", "--gpus", "2", "--device", "gpu", env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "the GPU failed while computing partition" in lines[0], r.stderr
    assert "--resume" in lines[0] and not out.exists()
    assert len({x.split()[0] for x in log.read_text().splitlines()}) == 2   # both failed


# -- the stand-in device under a client ------------------------------------------------------
def _standin_part(seed: int, n: int):
    from hpcstudy.devices import get_device

    rng = np.random.default_rng(seed)
    dev = get_device("standin")
    x = rng.normal(size=(n, 3))
    y = x @ np.array([0.5, -1.0, 2.0]) + rng.normal(size=n)
    return {"X": dev.to_device(x), "y": dev.to_device(y)}


def _center(part, mean):   # mean: a host array sent out, used against device arrays
    return {"X": part["X"] - mean, "y": part["y"]}


def _gram(part):
    X, y = part["X"], part["y"]
    return X.T @ X, X.T @ y, X.sum(axis=0), X.shape[0]


def _rss(part, beta):      # beta: the coefficients sent out at each step
    r = part["y"] - part["X"] @ beta
    return (r * r).sum()


def test_device_partitions_under_a_client_get_coefficients_and_give_sums():
    """Partitions built on the workers on the stand-in device, whose arrays refuse NumPy and
    any implicit trip to the host: host arguments (a mean, coefficients) reach them as device
    arrays, sums come back as host arrays, and the fit equals least squares on the host."""
    pytest.importorskip("hpcstudy.devices")
    from distributed import Client, LocalCluster

    from hpcstudy.models.partitions import DaskPartitions

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        futures = [client.submit(_standin_part, s, 300, pure=False) for s in range(3)]
        parts = DaskPartitions(futures, client, device="standin")
        _, _, xsum, n = parts.map_reduce(_gram)
        assert isinstance(xsum, np.ndarray) and n == 900
        centred = parts.map(_center, xsum / n)
        xtx, xty, _, _ = centred.map_reduce(_gram)
        beta = np.linalg.solve(xtx, xty)
        rss = centred.map_reduce(_rss, beta)
    X, y = [], []
    for rng in (np.random.default_rng(s) for s in range(3)):
        x = rng.normal(size=(300, 3))
        X.append(x)
        y.append(x @ np.array([0.5, -1.0, 2.0]) + rng.normal(size=300))
    X, y = np.concatenate(X), np.concatenate(y)
    Xc = X - X.mean(axis=0)
    want = np.linalg.lstsq(Xc, y, rcond=None)[0]
    assert np.allclose(beta, want, rtol=1e-10, atol=0)
    assert isinstance(rss, np.ndarray | np.generic) and float(rss) == pytest.approx(
        float(((y - Xc @ want) ** 2).sum()), rel=1e-10)


# -- the GPU benchmark runs anywhere, tiny ----------------------------------------------------
def test_the_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path):
    """benchmarks/gpu_study.py at toy sizes on the CPU: one record per run, each naming the
    device it measured, with the study's and the Cox fit's own figures."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_study.py"
    r = subprocess.run([sys.executable, str(script), "--persons", "1500", "--cox-n", "3000",
                        "--cox-p", "3", "--cox-chunk", "1000", "--devices", "cpu", "--jobs",
                        "1", "--cpu-workers", "0", "--work", str(tmp_path / "w"),
                        "--results", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    study = [json.loads(x) for x in (tmp_path / "r" / "gpu_study.jsonl").read_text().splitlines()]
    cox = [json.loads(x) for x in (tmp_path / "r" / "gpu_cox.jsonl").read_text().splitlines()]
    assert [(s["persons"], s["device"]) for s in study] == [(1500, "cpu")]
    assert study[0]["wall_s"] > 0 and "cores" in study[0]["device_name"]
    assert study[0]["peak_device_memory_mib"] is None            # none on the CPU
    assert [(c["n"], c["p"], c["device"]) for c in cox] == [(3000, 3, "cpu")]
    assert 0 < cox[0]["events"] < 3000 and abs(cox[0]["coef_0"] - 0.1) < 0.15
    assert not list((tmp_path / "w").glob("out-*"))              # run outputs cleaned up


def test_the_gpu_benchmark_refuses_without_a_gpu(tmp_path, cupy_without_a_gpu):
    import subprocess
    import sys

    pytest.importorskip("hpcstudy.devices")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_study.py"
    r = subprocess.run([sys.executable, str(script), "--devices", "gpu", "--work",
                        str(tmp_path / "w"), "--results", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, **cupy_without_a_gpu})
    assert r.returncode == 1 and "no GPU" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()
