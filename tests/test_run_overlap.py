"""The run path keeps both cores busy and loads only what it uses: no pandas, scipy or dask on
a dask run; analyses side by side; the private table made beside them; the report's imports
while the partitions compute; its figures drawn in a process of their own while the page is laid
out. None of it may change a byte of what a run writes, and a failure in any of it stops the
run with one line, exit code 1 and no output."""

from __future__ import annotations

import io
import json
import operator
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, run_cli, same_files, same_output

from hpcstudy.engines import run as R
from hpcstudy.engines.analyses import _distinct_rows
from hpcstudy.engines.dask_engine import PartitionTables, combined, write_person_table
from hpcstudy.engines.results import analyse
from hpcstudy.models.partitions import DaskPartitions, LocalPartitions
from hpcstudy.outputs.publish import jsonable
from hpcstudy.pipeline import prepare, warm_up
from hpcstudy.registers import arrow
from hpcstudy.report import render
from hpcstudy.report.drawing import FigureFailed, FigureProcess, Here, Placeholders


def test_a_dask_run_loads_no_pandas_scipy_or_dask_and_writes_the_same_bytes(
        small_data, statins_run, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpcstudy.cli", "run",
                        EXAMPLES / "statins_mi.yaml", "--data", small_data, "--out", out,
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", r.stderr, re.M))
    # the list is the run's (jinja2 by name of any of its modules: the warm-up thread's lines
    # may interleave with the main thread's)
    assert "pyarrow.parquet" in loaded and any(m.startswith("jinja2.") for m in loaded)
    # matplotlib: only in the figure process, yet the page has its figures
    heavy = {"pandas", "scipy", "dask", "distributed", "pyarrow.dataset"} & loaded
    heavy |= {m for m in loaded if m.split(".")[0] == "matplotlib"}
    assert (out / "report.html").read_text().count("<svg") == 4
    assert not heavy, f"a dask run of example 1 imported {sorted(heavy)}"
    # analyses side by side, the table written ahead, imports in the background: the bytes of
    # another run (statins_run) all the same
    same_files(statins_run, out)


@pytest.fixture(scope="module")
def built(small_data):
    prep = prepare(EXAMPLES / "statins_mi.yaml", small_data)
    return prep.plan, R.person_table(prep.plan, prep.ds, "dask")


def test_analyses_side_by_side_give_the_results_of_one_after_another(built):
    plan, b = built
    assert isinstance(b.parts, DaskPartitions) and len(b.parts) == 3
    together: dict = {}
    res = analyse(plan, b.parts, b.attrition, together)
    # LocalPartitions: every analysis in turn, in this thread (the path before)
    alone: dict = {}
    ref = analyse(plan, LocalPartitions(list(b.tables)), b.attrition, alone)
    assert {"curves", "models"} <= set(res) and list(res["models"]) == ["cox", "poisson"]
    assert json.dumps(res, default=jsonable) == json.dumps(ref, default=jsonable)
    assert list(together) == list(alone) == ["cox", "poisson"]
    for name in together:
        assert np.array_equal(together[name].coef_, alone[name].coef_)


def test_the_table_written_ahead_is_the_bytes_written_after(built, tmp_path):
    plan, b = built
    tables = PartitionTables(list(b.tables))
    tables.write_ahead(plan)
    tables.write_ahead(plan)   # once is enough: a second call changes nothing
    tables.write(plan, tmp_path / "ahead.parquet")
    write_person_table(combined(plan, list(b.tables)), tmp_path / "after.parquet")
    assert (tmp_path / "ahead.parquet").read_bytes() == (tmp_path / "after.parquet").read_bytes()
    assert pq.read_table(tmp_path / "ahead.parquet").num_rows == \
        sum(len(t["pnr"]) for t in b.tables)


def test_a_table_that_cannot_be_made_ahead_fails_the_write(built, tmp_path):
    plan, b = built
    broken = [dict(t) for t in b.tables]
    del broken[1]["time"]
    tables = PartitionTables(broken)
    tables.write_ahead(plan)
    with pytest.raises(KeyError, match="time"):
        tables.write(plan, tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()


def _sum_of_inner(part, parts):
    # a reduction whose tasks reduce again: they run on the pool's own threads
    return parts.map_reduce(_size) + len(part["x"])


def _size(part):
    return len(part["x"])


def _fails_on_two(part):
    if part["x"][0] == 2:
        raise ValueError("partition two")
    return 1


def test_the_thread_pool_keeps_partition_order_nests_and_raises():
    parts = DaskPartitions([{"x": np.full(k + 1, k)} for k in range(6)])
    # combine in partition order: list concatenation shows the order
    assert parts.map_reduce(lambda p: [int(p["x"][0])], combine=operator.add) == \
        [0, 1, 2, 3, 4, 5]
    assert [int(p["x"][0]) for p in parts.map(lambda p: p).parts] == [0, 1, 2, 3, 4, 5]
    got = []
    t = threading.Thread(target=lambda: got.append(parts.map_reduce(_sum_of_inner, parts)))
    t.start()
    t.join(60)
    assert not t.is_alive(), "a reduction inside a reduction waited on its own pool"
    assert got == [6 * 21 + 21]
    with pytest.raises(ValueError, match="partition two"):
        parts.map_reduce(_fails_on_two)


NUMERIC = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
           np.float32, np.float64]


@pytest.mark.parametrize("dtype", NUMERIC)
def test_arrow_conversions_are_pyarrows_own(dtype):
    rng = np.random.default_rng(3)
    v = rng.integers(0, 100, 1000).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        v[::7] = np.nan
    for x in (v, v[3:], v[::3], v[:0]):       # offsets, strides, empty
        a = pa.array(x)
        got = arrow.to_numpy(a)
        assert got.dtype == a.to_numpy(zero_copy_only=False).dtype
        np.testing.assert_array_equal(got, a.to_numpy(zero_copy_only=False))
        chunks = pa.chunked_array([a.slice(0, len(a) // 2), a.slice(len(a) // 2)], a.type)
        np.testing.assert_array_equal(arrow.to_numpy(chunks), chunks.to_numpy())
        ours, theirs = io.BytesIO(), io.BytesIO()
        pq.write_table(arrow.table({"v": x, "w": x[::-1]}), ours, compression="zstd")
        pq.write_table(pa.table({"v": pa.array(x), "w": pa.array(x[::-1])}), theirs,
                       compression="zstd")
        assert ours.getvalue() == theirs.getvalue()
    assert arrow.to_numpy(pa.chunked_array([], pa.int32())).shape == (0,)


def test_arrow_columns_of_other_kinds_take_pyarrows_path():
    with_nulls = pa.array([1, None, 3], pa.int32())
    np.testing.assert_array_equal(arrow.to_numpy(with_nulls), [1, np.nan, 3])
    assert arrow.to_numpy(pa.array(["a", "b"])).tolist() == ["a", "b"]
    flags = np.array([True, False, True])
    assert arrow.from_numpy(flags).equals(pa.array(flags))


def test_distinct_rows_are_numpys_unique_rows():
    rng = np.random.default_rng(5)
    kinds = [np.int8, np.int16, np.int32, np.int64, np.uint8, bool]
    for trial in range(200):
        n, k = int(rng.integers(0, 300)), int(rng.integers(1, 4))
        keys = []
        for _ in range(k):
            kind = kinds[int(rng.integers(len(kinds)))]
            lo = 0 if kind in (np.uint8, bool) else -3
            keys.append(rng.integers(lo, 4, n).astype(kind))
        stacked = np.stack(keys, axis=1) if n else np.zeros((0, k))
        want, want_inv = np.unique(stacked, axis=0, return_inverse=True)
        got, got_inv = _distinct_rows(keys, n)
        assert got.dtype == want.dtype, trial
        assert np.array_equal(got, want) and np.array_equal(got_inv, want_inv.reshape(-1))
    # more distinct codes than int64 holds, and a float key: unique rows as before
    n = 2 ** 16
    wide = [rng.permutation(n).astype(np.int64) for _ in range(4)]
    got, inv = _distinct_rows(wide, n)
    want, want_inv = np.unique(np.stack(wide, axis=1), axis=0, return_inverse=True)
    assert np.array_equal(got, want) and np.array_equal(inv, want_inv.reshape(-1))
    mixed = [np.array([2, 1, 2]), np.array([0.5, 0.5, 0.5])]
    got, inv = _distinct_rows(mixed, 3)
    assert got.tolist() == [[1.0, 0.5], [2.0, 0.5]] and inv.tolist() == [1, 0, 1]


def test_warm_up_leaves_a_module_it_cannot_import_to_the_run():
    t = warm_up(["hpcstudy_no_such_module", "json"])
    t.join(30)
    assert not t.is_alive()
    with pytest.raises(ModuleNotFoundError):
        __import__("hpcstudy_no_such_module")


def test_warm_up_compiles_the_report_template_the_page_then_uses():
    from hpcstudy import report

    report._environment.cache_clear()
    t = warm_up(["hpcstudy.report:template"])
    t.join(60)
    assert not t.is_alive()
    compiled = report.template()
    assert report.template() is compiled   # compiled once per process, by the warm-up
    assert report._environment.cache_info().hits >= 1
    t = warm_up(["hpcstudy.report:no_such_function", "json"])   # left to the run to report
    t.join(30)
    assert not t.is_alive()


def test_a_run_that_stops_early_waits_for_its_background_threads(small_data, tmp_path,
                                                                  monkeypatch):
    """A run that fails after its warm-up, reads ahead and figure process have started returns
    only once their threads are done (a daemon thread importing, or inside pyarrow, when the
    interpreter exits can abort the process after its one-line error), and not on the kept
    thread pools, which wait for work and would hold it a minute."""
    import time

    from hpcstudy import pipeline
    from hpcstudy.engines import run as engine_run

    def fails(*args, **kw):
        raise RuntimeError("stopped here")

    prep = prepare(EXAMPLES / "statins_mi.yaml", small_data)
    monkeypatch.setattr(engine_run, "person_table", fails)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stopped here"):
        pipeline.execute(prep, tmp_path / "out")
    assert time.monotonic() - t0 < 30
    alive = [t.name for t in threading.enumerate() if t.name.startswith(pipeline.BACKGROUND)]
    assert alive == []


# -- the report's figures, drawn in a process of their own -----------------------------------------
class NothingToDrawAt:
    """Figures drawn here, but for the ``k``-th (from 0), which has nothing to draw: what a
    figure whose numbers are all suppressed gives (figures.draw returns None)."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def draw(self, name, *args, **kw):
        self.calls += 1
        return None if self.calls == self.k + 1 else Here().draw(name, *args, **kw)


def test_figures_drawn_in_their_own_process_are_the_page_drawn_here(statins_run):
    figures = FigureProcess.start()
    try:
        assert isinstance(figures, FigureProcess) and figures.proc.poll() is None
        there = render(statins_run, figures)
        again = render(statins_run, figures)   # the same process draws a second page
        _placeholders(figures)
        # a figure it cannot draw (no such plot): one line, exit code 1; it draws on
        with pytest.raises(FigureFailed, match="could not draw a figure") as e:
            figures.draw("no_such_plot", [])
        assert e.value.exit_code == 1 and "\n" not in str(e.value)
        assert figures.draw("forest_plot", []) is None   # nothing to draw: no figure
    finally:
        figures.close()
    assert figures.proc.returncode == 0
    here = render(statins_run)
    assert there == again == here and there["report.html"].count(b"<svg") == 4
    for path, data in here.items():   # and the run (its own figure process) wrote them
        assert (statins_run / path).read_bytes() == data, path


@pytest.mark.parametrize("k", [0, 2])
def test_a_figure_with_nothing_to_draw_lays_the_page_out_as_drawn_here(statins_run, k,
                                                                        monkeypatch):
    # km (0) missing moves the curves' table to the cumulative incidence; a forest plot (2)
    # missing leaves its table alone: the page laid out again, as drawing here does
    monkeypatch.setenv("HPCSTUDY_TEST_FIGURES_NONE", str(k))
    figures = FigureProcess.start()
    try:
        there = render(statins_run, figures)
    finally:
        figures.close()
    here = render(statins_run, NothingToDrawAt(k))
    assert there == here
    assert here["report.html"].count(b"<svg") == 3
    assert b"<!--hpcstudy-figure" not in here["report.html"]
    assert here["report.html"] != (statins_run / "report.html").read_bytes()


def _placeholders(figures):
    # a fresh nonce per page: exported text cannot hold the placeholder of a page not yet made
    a, b = Placeholders(figures), Placeholders(figures)
    assert a.nonce != b.nonce and len(a.nonce) == 32
    # one figure asked twice is drawn once; another is another placeholder
    rows = [{"term": "x", "HR": 2.0, "lower_95": 1.5, "upper_95": 3.0}]
    t1, t2 = a.draw("forest_plot", rows), a.draw("forest_plot", rows)
    t3 = a.draw("forest_plot", rows + rows)
    assert t1 == t2 != t3 and len(a.futures) == 2
    assert all(svg.startswith("<?xml") for svg in a.drawn().values())


def _one_line_no_output(r, tmp_path, out, log, says):
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error: "), r.stderr
    assert says in lines[0] and "Traceback" not in r.stderr + r.stdout
    assert not out.exists()
    # nothing half-written beside it: no staging folder (the checkpoints stay, for --resume)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([log.name, "out.checkpoints"])
    started, finished = [json.loads(x) for x in log.read_text().splitlines()]
    assert (started["event"], finished["event"]) == ("started", "finished")
    assert finished["status"].startswith("refused: ") and says in finished["status"]
    assert finished["started"]["seq"] == started["seq"] and "outputs" not in finished
    v = run_cli("audit", "verify", "--log", log)
    assert v.returncode == 0 and "2 records, chain intact" in v.stdout, v.stdout + v.stderr


def test_a_figure_process_that_dies_stops_the_run_with_one_line(tmp_path, small_data,
                                                                 statins_run):
    # it dies mid-page (its first figure drawn): the run writes nothing and exits 1
    log, out = tmp_path / "audit.jsonl", tmp_path / "out"
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", small_data, "--out", out,
                "--quiet", env={"HPCSTUDY_TEST_FIGURES_EXIT": "1",
                                "HPCSTUDY_AUDIT_LOG": str(log)})
    _one_line_no_output(r, tmp_path, out, log, "the report's figure process stopped")
    assert "exit code 3" in r.stderr
    # one that cannot start (it stops before its first figure): the figures drawn in the run's
    # process, the same bytes
    first = tmp_path / "first"
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", small_data, "--out", first,
                "--quiet", env={"HPCSTUDY_TEST_FIGURES_EXIT": "0",
                                "HPCSTUDY_AUDIT_LOG": str(log)})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    same_files(statins_run, first)
    # the checkpoints left let the same run finish, the same bytes as one never stopped
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", small_data, "--out", out,
                "--quiet", "--resume", env={"HPCSTUDY_AUDIT_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    same_files(statins_run, out)


# -- the first partitions read while the run imports -------------------------------------------
def test_a_partition_read_ahead_is_the_partition_read_then(small_data):
    from hpcstudy.engines import partition, read_ahead

    prep = prepare(EXAMPLES / "statins_mi.yaml", small_data)
    root, reads = str(small_data), prep.plan.reads
    read_ahead.start(root, reads, [0, 1])
    assert len(read_ahead._AHEAD) == 2 * len(reads)
    ahead = partition.read_host(root, 1, reads)   # partition 1's tables, taken once
    assert len(read_ahead._AHEAD) == len(reads)
    again = partition.read_host(root, 1, reads)   # read anew: nothing left for it
    assert ahead.keys() == again.keys() == reads.keys()
    for reg, cols in reads.items():
        for c in cols:
            assert ahead[reg][c].dtype == again[reg][c].dtype
            assert np.array_equal(ahead[reg][c], again[reg][c], equal_nan=ahead[reg][c].dtype
                                  .kind == "f")
    read_ahead.clear()   # a run that stopped early: partition 0's tables go
    assert read_ahead._AHEAD == {}
    assert read_ahead.take(small_data / "lpr_diag" / "part-00000.parquet", ("pnr",)) is None


def _damaged_run_fails_in_one_line(source, part: str, tmp_path) -> None:
    """Copy ``source``, damage its file ``part`` (same size: the manifest agrees), run example
    1 on it: exit 2, one line naming the file, no OUT."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(source, data)
    victim = data / part
    raw = bytearray(victim.read_bytes())
    raw[-4:] = b"PAR0"   # not Parquet's magic
    victim.write_bytes(bytes(raw))
    out = tmp_path / "out"
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", data, "--out", out, "--quiet")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcstudy: error: ") and \
        f"{victim}: partition file damaged" in lines[0], r.stderr
    assert not out.exists()


def test_a_damaged_partition_read_ahead_fails_the_run_as_any_read(small_data, tmp_path):
    # read ahead: the run's first partition
    _damaged_run_fails_in_one_line(small_data, "lpr_diag/part-00000.parquet", tmp_path)


# -- who the data is about, the analyses' imports, the end of the run (session 6) ---------------
def test_who_the_data_is_about_is_read_beside_the_partitions(small_data, tmp_path, monkeypatch,
                                                             statins_run):
    """persons_sha256 (outputs.json's data_persons_sha256) runs in a background thread started
    before the partitions, not after the analyses on the run's thread; the bytes are a run's."""
    from hpcstudy import pipeline
    from hpcstudy.engines import run as engine_run
    from hpcstudy.registers.store import Dataset

    events: list[tuple[str, str]] = []
    hashed, computed = Dataset.persons_sha256, engine_run.person_table

    def persons_sha256(self):
        events.append(("persons", threading.current_thread().name))
        return hashed(self)

    def person_table(*a, **kw):
        # the thread was started before: it runs, or has run, now
        ahead = ("persons", "hpcstudy-persons") in events or \
            any(t.name == "hpcstudy-persons" for t in threading.enumerate())
        events.append(("partitions", ahead))
        return computed(*a, **kw)

    monkeypatch.setattr(Dataset, "persons_sha256", persons_sha256)
    monkeypatch.setattr(engine_run, "person_table", person_table)
    out = tmp_path / "out"
    pipeline.execute(prepare(EXAMPLES / "statins_mi.yaml", small_data), out)
    assert sorted(events) == [("partitions", True), ("persons", "hpcstudy-persons")]
    started = [t for t in threading.enumerate() if t.name == "hpcstudy-persons"]
    assert started == []   # joined with the run's other background threads
    # the same outputs as the command line's run (which also writes its audit head)
    for f in ("outputs.json", "results.json", "report.html", "tables/cohort.csv"):
        same_output(statins_run / f, out / f)
    doc = json.loads((out / "outputs.json").read_text())
    assert doc["data_persons_sha256"] == hashed(Dataset.open(small_data))


def test_a_failure_reading_who_the_data_is_about_stops_the_run_with_nothing_written(
        small_data, tmp_path, monkeypatch):
    from hpcstudy import pipeline
    from hpcstudy.errors import UserError
    from hpcstudy.registers.store import Dataset

    def fails(self):
        raise UserError(f"{self.root}/bef/part-00001.parquet: partition file missing")

    monkeypatch.setattr(Dataset, "persons_sha256", fails)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="partition file missing"):
        pipeline.execute(prepare(EXAMPLES / "statins_mi.yaml", small_data), out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.checkpoints"]   # for --resume
    assert [t for t in threading.enumerate() if t.name.startswith(pipeline.BACKGROUND)] == []


def test_the_warm_up_imports_what_the_run_needs_after_its_partitions():
    """What execute imports after the partitions (the analyses, disclosure, the writers) and the
    code's hash (run.json, the report) are the warm-up's, beside the partitions; in a fresh
    interpreter the warm-up alone imports them all, and imports no matplotlib."""
    from hpcstudy import pipeline

    names = [n.partition(":")[0] for n in pipeline.AFTER_THE_PARTITIONS]
    assert {"hpcstudy.engines.results", "hpcstudy.outputs.publish", "hpcstudy.outputs.writers",
            "hpcstudy.demo"} <= set(names)
    assert "hpcstudy.outputs.run_record:code_version" in pipeline.AFTER_THE_PARTITIONS
    code = ("import sys\nfrom hpcstudy import pipeline\n"
            "before = set(sys.modules)\n"
            "pipeline.warm_up(pipeline.AFTER_THE_PARTITIONS).join()\n"
            "from hpcstudy.outputs import run_record\n"
            "print(sorted(set(sys.modules) - before))\n"
            "print(run_record.code_version.cache_info().currsize)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    new, cached = r.stdout.splitlines()
    loaded = set(eval(new))   # noqa: S307 - our own subprocess's printed list
    assert set(names) <= loaded | {"importlib.metadata"} and cached == "1"
    assert not any(m.split(".")[0] == "matplotlib" for m in loaded)


def test_run_record_needs_no_importlib_metadata_until_it_says_the_version():
    code = ("import sys\nfrom hpcstudy.outputs import run_record\n"
            "print('importlib.metadata' in sys.modules)\n"
            "run_record.code_version()\nprint('importlib.metadata' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["False", "True"], r.stderr


def test_the_figure_process_answers_every_figure_then_exits_at_once():
    """At the end of its input it exits (os._exit, no teardown for the run to wait for) only
    after every figure asked has been answered: none is lost to the quick exit."""
    figures = FigureProcess.start()
    try:
        asked = [figures.submit("forest_plot", []) for _ in range(5)]
    finally:
        figures.close()
    assert [f.result() for f in asked] == [None] * 5   # each answered (nothing to draw)
    assert figures.proc.returncode == 0 and figures.answered == 5


def test_the_command_line_leaves_its_heap_to_the_exit(monkeypatch):
    """main() on the process's own command line (argv None: the console script, python -m)
    freezes the collector's objects when it returns; main(argv), as tests call it in their own
    process, does not."""
    import gc

    from hpcstudy import cli

    monkeypatch.setattr(sys, "argv", ["hpcstudy", "--help"])
    signals = {s: __import__("signal").getsignal(s) for s in (15, 10)}
    try:
        gc.unfreeze()
        assert cli.main(["--help"]) == 0 and gc.get_freeze_count() == 0
        assert cli.main() == 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        for s, h in signals.items():
            __import__("signal").signal(s, h)


def test_reads_ahead_shared_by_fewer_threads_read_each_partition_once_in_order(small_data,
                                                                              monkeypatch):
    """Two partitions a core (the run's): ``threads`` threads take the partitions in turn, each
    in partition order, and every table is the partition's as read then."""
    from hpcstudy.engines import partition, read_ahead

    prep = prepare(EXAMPLES / "statins_mi.yaml", small_data)
    root, reads = str(small_data), prep.plan.reads
    seen: list[tuple[str, list[str]]] = []
    reading = read_ahead._read

    def recorded(jobs):
        seen.append((threading.current_thread().name,
                     [Path(path).name for (path, _), _ in jobs]))
        reading(jobs)

    monkeypatch.setattr(read_ahead, "_read", recorded)
    read_ahead.start(root, reads, range(3), threads=2)
    assert len(read_ahead._AHEAD) == 3 * len(reads)
    try:
        tables = {p: partition.read_host(root, p, reads) for p in (2, 0, 1)}
    finally:
        read_ahead.clear()
    n = len(reads)
    assert sorted(seen) == [
        ("hpcstudy-read-ahead-0", ["part-00000.parquet"] * n + ["part-00002.parquet"] * n),
        ("hpcstudy-read-ahead-1", ["part-00001.parquet"] * n)]
    for p, got in tables.items():
        again = partition.read_host(root, p, reads)   # nothing ahead now: read anew
        for reg, cols in reads.items():
            for c in cols:
                assert np.array_equal(got[reg][c], again[reg][c],
                                      equal_nan=got[reg][c].dtype.kind == "f")


@pytest.fixture
def cli_here(monkeypatch):
    """hpcstudy.cli.main in this process, the figure processes it starts recorded; its signal
    handlers are put back afterwards."""
    import signal

    from hpcstudy import cli, pipeline
    from hpcstudy.report import drawing

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    events: list = []
    starting, preparing = drawing.FigureProcess.start.__func__, pipeline.prepare

    def start(cls):
        f = starting(cls)
        events.append(("figures", f))
        return f

    def prepare(*a, **kw):
        events.append(("prepare", None))
        return preparing(*a, **kw)

    monkeypatch.setattr(drawing.FigureProcess, "start", classmethod(start))
    monkeypatch.setattr(pipeline, "prepare", prepare)
    yield cli, events
    for s, h in handlers.items():
        signal.signal(s, h)


def test_the_command_line_starts_the_figure_process_before_its_imports_and_checks(
        cli_here, small_data, tmp_path, statins_run):
    cli, events = cli_here
    out = tmp_path / "out"
    code = cli.main(["run", str(EXAMPLES / "statins_mi.yaml"), "--data", str(small_data),
                     "--out", str(out), "--quiet"])
    assert code == 0
    assert [e for e, _ in events] == ["figures", "prepare"]   # one process, the run's
    figures = events[0][1]
    assert isinstance(figures, FigureProcess) and figures.proc.returncode == 0
    assert figures.answered == 4   # it drew the page's figures
    for f in ("outputs.json", "results.json", "report.html"):
        same_output(statins_run / f, out / f)


@pytest.mark.parametrize("engine", ["dask", "reference"])
def test_a_refused_run_ends_the_figure_process_it_started(cli_here, small_data, tmp_path,
                                                           engine):
    """A run refused after the figure process started (here its --out exists and is not a
    run's) ends it, unused; the reference engine starts none."""
    cli, events = cli_here
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = cli.main(["run", str(EXAMPLES / "statins_mi.yaml"), "--data", str(small_data),
                     "--out", str(out), "--quiet", "--engine", engine])
    assert code == 2 and (out / "notes.txt").read_text() == "mine"
    started = [f for e, f in events if e == "figures"]
    if engine == "reference":
        assert started == []
        return
    assert len(started) == 1 and started[0].proc.poll() is not None   # ended, not left behind
    assert started[0].answered == 0


# -- figures asked as soon as their analysis is done --------------------------------------------
class Watched(FigureProcess):
    """A figure process that notes each figure asked early (with the run's folder's contents
    then) and each one the page took."""

    def __init__(self, proc):
        super().__init__(proc)
        self.folder, self.asked, self.used = None, [], []

    def early(self, name, *args, **kw):
        self.asked.append((name, sorted(p.name for p in self.folder.iterdir())))
        super().early(name, *args, **kw)

    def taken(self, key):
        got = super().taken(key)
        self.used.append(got is not None)
        return got


def _watched(folder: Path) -> Watched:
    started = Watched.start()
    assert isinstance(started, Watched)
    started.folder = folder
    return started


def test_figures_asked_as_their_analyses_finish_are_the_ones_the_page_draws(
        small_data, statins_run, tmp_path):
    from hpcstudy import pipeline

    out = tmp_path / "out"
    figures = _watched(tmp_path)
    pipeline.execute(prepare(EXAMPLES / "statins_mi.yaml", small_data), out, figures=figures)
    # the curves' two figures and both models' forest plots, each asked before the writers had
    # staged anything (only the checkpoints were there), and each taken by the page: no figure
    # was drawn twice, nor one the page did not ask for
    assert sorted(name for name, _ in figures.asked) == \
        ["forest_plot", "forest_plot", "km_plot", "km_plot"]
    assert all(seen == ["out.checkpoints"] for _, seen in figures.asked), figures.asked
    assert figures.used == [True] * 4 and figures._early == {}
    assert figures.proc.returncode == 0
    for f in ("results.json", "report.html", "tables/curves.csv", "tables/model_cox.csv"):
        same_output(statins_run / f, out / f)


def test_a_figure_asked_early_that_the_page_does_not_draw_changes_nothing(statins_run):
    """The page takes a figure asked early only for the very same call; any other is drawn
    when the page asks for it, and a figure asked early that the page never asks for is not
    shown."""
    figures = FigureProcess.start()
    try:
        rows = [{"term": "x", "HR": 2.0, "lower_95": 1.5, "upper_95": 3.0}]
        figures.early("forest_plot", rows)
        figures.early("forest_plot", rows)   # asked twice: drawn once
        figures.early("km_plot", [], {}, "survival")
        page = Placeholders(figures)
        other = page.draw("forest_plot", [{**rows[0], "HR": 2.5}])
        same = page.draw("forest_plot", rows)
        svgs = page.drawn()
        assert svgs[same] == Here().draw("forest_plot", rows)
        assert svgs[other] == Here().draw("forest_plot", [{**rows[0], "HR": 2.5}])
        assert figures._next == 3   # (two early, one asked by the page)
        there = render(statins_run, figures)   # a whole page, with a stale early figure left
    finally:
        figures.close()
    assert there == render(statins_run)


def test_a_section_the_early_figures_cannot_read_is_left_to_the_page():
    from hpcstudy.plan.nodes import CurvesPlan, ModelPlan
    from hpcstudy.report.ahead import Early

    class Asked:
        calls: list = []

        def early(self, *a, **kw):
            self.calls.append(a)

    class Plan:
        name, min_cell, round_to = "x", 5, 0

    early = Early(Asked(), Plan())
    # not what an analysis fills: nothing asked, nothing raised (the page says any error)
    early(object.__new__(CurvesPlan), {"curves": "not rows"})
    early(object.__new__(ModelPlan), {"models": {"cox": {"terms": [{"coef": object()}]}}})
    early(object.__new__(ModelPlan), {"models": {"cox": {"withheld": "too few events"}}})
    assert Asked.calls == []


def test_a_figure_process_that_dies_at_an_early_figure_stops_the_run_with_one_line(
        tmp_path, small_data):
    # the figure numbered 1 is now asked during the analyses: the run still ends in one line
    # with nothing written (the page raises it)
    log, out = tmp_path / "audit.jsonl", tmp_path / "out"
    r = run_cli("run", EXAMPLES / "statins_mi.yaml", "--data", small_data, "--out", out,
                "--quiet", env={"HPCSTUDY_TEST_FIGURES_EXIT": "2",
                                "HPCSTUDY_AUDIT_LOG": str(log)})
    _one_line_no_output(r, tmp_path, out, log, "the report's figure process stopped")


# -- the page's table rows written in Python ------------------------------------------------------
# the page's macros as they were (templates/report.html.j2 before report/cells.py): the reference
MACROS = """{%- macro trace(c) -%}
{% if c.columns %} data-columns="{{ c.columns|join(' ') }}"{% endif %}
{%- if c.row %} data-row="{{ c.row }}"{% endif %}
{%- if c.scale != 1 %} data-scale="{{ c.scale }}"{% endif %}
{%- if c.difference %} data-difference="{{ c.difference|join(' ') }}"{% endif %}
{%- if c.suppressed %} class="suppressed" title="{{ c.suppressed }}"{% endif %}
{%- endmacro -%}
{%- macro cell(c) -%}
{% set tag = 'th' if c.header else 'td' %}<{{ tag }}{% if c.header %} scope="row"{% endif %}\
{{ trace(c) }}>{{ c.text }}</{{ tag }}>
{%- endmacro -%}
<tbody>
{% for row in rows %}<tr>{% for c in row %}{{ cell(c) }}{% endfor %}</tr>
{% endfor %}</tbody>"""


def test_table_rows_written_in_python_are_the_macros_bytes():
    from jinja2 import Environment, StrictUndefined
    from markupsafe import Markup

    from hpcstudy.report.cells import body_rows
    from hpcstudy.report.model import Cell

    env = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
    macros = env.from_string(MACROS)
    ours = env.from_string("<tbody>\n{{ body_rows(rows) }}</tbody>")
    rng = np.random.default_rng(7)
    texts = ["12", "0.5 (0.1–0.9)", "<5", "a & b", "\"q\" 'x'", "", "—", "1,234",
             Markup("<b>x</b>"), "suppressed", "é ü"]
    for trial in range(300):
        rows = []
        for _ in range(int(rng.integers(0, 4))):
            row = []
            for _ in range(int(rng.integers(0, 5))):
                k = int(rng.integers(0, 3))
                row.append(Cell(
                    texts[int(rng.integers(len(texts)))],
                    columns=tuple(["at_risk", "lower_95", "a<b", "x&y"][:k]),
                    row=[None, 0, 1, 17][int(rng.integers(4))],
                    scale=[1, 100][int(rng.integers(2))],
                    suppressed=[None, "", "fewer than 5 <persons>", "withheld: \"x\""][
                        int(rng.integers(4))],
                    header=bool(rng.integers(2)),
                    difference=[None, (1, 2), (3, 10)][int(rng.integers(3))]))
            rows.append(row)
        assert ours.render(rows=rows, body_rows=body_rows) == macros.render(rows=rows), trial


# -- the last partition read while the ones before it compute ------------------------------------
def test_the_last_partition_read_ahead_gives_the_tables_read_in_turn(many_parts, monkeypatch):
    from hpcstudy.engines import dask_engine, read_ahead

    prep = prepare(EXAMPLES / "statins_mi.yaml", many_parts)
    monkeypatch.setattr(dask_engine.os, "cpu_count", lambda: 2)
    events: list = []
    start, run_partition = read_ahead.start, dask_engine.run_partition

    def spy_start(root, reads, partitions, threads=None):
        events.append(("read ahead", list(partitions)))
        return start(root, reads, partitions, threads)

    def spy_run(root, p, *a, **kw):
        events.append(("partition", p))
        return run_partition(root, p, *a, **kw)

    monkeypatch.setattr(read_ahead, "start", spy_start)
    monkeypatch.setattr(dask_engine, "run_partition", spy_run)
    ahead, attrition = dask_engine.DaskEngine().person_tables(prep.ds, prep.plan)
    # asked once, for partition 15, by the task of partition 13 (16 - 1 - 2 threads) before it
    # computes, while the other thread computes partition 12 (or 11, its last)
    asked = [e for e in events if e[0] == "read ahead"]
    assert asked == [("read ahead", [15])]
    at = events.index(asked[0])
    assert events.index(("partition", 12)) < at < events.index(("partition", 13))
    assert read_ahead._AHEAD == {}   # taken by partition 15's task
    monkeypatch.setattr(dask_engine, "LAST_READ_AHEAD", False)
    alone, attrition_alone = dask_engine.DaskEngine().person_tables(prep.ds, prep.plan)
    assert [e for e in events if e[0] == "read ahead"] == asked and attrition == attrition_alone
    for a, b in zip(ahead, alone, strict=True):
        assert list(a) == list(b) and all(np.array_equal(a[c], b[c]) for c in a)


def test_a_damaged_last_partition_read_ahead_fails_the_run_as_any_read(many_parts, tmp_path):
    # the last partition: read ahead (2 cores)
    _damaged_run_fails_in_one_line(many_parts, "lmdb/part-00015.parquet", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out.checkpoints"]
