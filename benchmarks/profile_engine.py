"""Where `hpcstudy run` spends its time: the run's phases timed in one process (wall and CPU),
and optionally a cProfile of one phase or of one partition's work.

    python benchmarks/profile_engine.py DATA                      # phases of example 1
    python benchmarks/profile_engine.py DATA --profile run        # + cProfile of the whole run
    python benchmarks/profile_engine.py DATA --profile partition --partition 0
    python benchmarks/profile_engine.py DATA --partition-parts    # one partition, step by step
    python benchmarks/profile_engine.py DATA --whole              # `hpcstudy run`, watched
    python benchmarks/profile_engine.py DATA --whole --against SRC --repeat 6
                                                   # interleaved with SRC/hpcstudy's runs

Phases: imports (what a run loads before it reads data), plan (parse and compile), cohort
(every partition's per-person table, with the run's launcher; the report's imports warm up
beside it, as in a run), analyses (Cox, Poisson, curves over the partition tables, side by
side; the private table's bytes are made beside them), outputs (disclosure checks, files, the
report, the private table). CPU time is this process's (user + system, all threads),
so CPU / wall says how many cores were busy in each phase. Prints JSON; appends nothing.

Cores busy depends on what else runs on the machine; what does not is how much of the CPU time
is spent while only one thread can run. A sampler thread reads every thread's state and CPU
clock from /proc every few milliseconds (the run's threads and its figure process): CPU time
accrued while at most one of them was runnable (state R: running or waiting for a core, not for
the GIL or a disk) is ``serial_cpu_s``, the rest ``parallel_cpu_s``; ``two_core_wall_s`` =
serial + parallel / 2 + the time nothing was runnable is the phase's wall on two free cores,
and ``two_core_cores_busy`` its CPU over that: the figures to compare before and after a change
on a loaded machine. ``--whole`` watches a real ``hpcstudy run`` (a child process, and its figure
process) the same way from outside: one phase, no imports of its own in the run's process.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "statins_mi.yaml"


def _clock():
    t = os.times()
    return time.perf_counter(), t.user + t.system


TICK = os.sysconf("SC_CLK_TCK")


def thread_states(pids, skip: int) -> dict:
    """{(pid, thread id): (running, CPU ticks so far)} of every thread of ``pids`` but ``skip``
    (the sampler's own), from /proc; a process or thread gone meanwhile is left out."""
    got = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in map(int, tids):
            if tid == skip:
                continue
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    st = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            got[(pid, tid)] = (st[0] == b"R", int(st[11]) + int(st[12]))
    return got


class Runnable:
    """A thread sampling which of this process's threads (and of ``pids``' too) are runnable,
    and the CPU time each accrued since the last sample, every ``every`` seconds: CPU time
    accrued while at most one was runnable is serial, the rest parallel (see the docstring)."""

    def __init__(self, every: float = 0.004, pids=None, children: bool = False):
        self.every, self.pids = every, [os.getpid()] if pids is None else list(pids)
        self.children = children   # follow the processes' children too (--whole)
        self.phase: str | None = None
        self.acc: dict[str, dict] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="profile-sampler", daemon=True)
        self._t.start()

    def _tasks(self, me: int) -> dict:
        return thread_states(self.pids, me)

    def _follow(self) -> None:
        for pid in list(self.pids):
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        kids = [int(k) for k in f.read().split()]
                except OSError:
                    continue
                self.pids += [k for k in kids if k not in self.pids]

    def _run(self) -> None:
        me = threading.get_native_id()
        last, t_last = self._tasks(me), time.perf_counter()
        k = 0
        while not self._stop.wait(self.every):
            k += 1
            if self.children and k % 10 == 1:
                self._follow()
            now, t_now = self._tasks(me), time.perf_counter()
            phase = self.phase
            if phase is not None:
                a = self.acc.setdefault(phase, {"serial": 0, "parallel": 0, "idle_s": 0.0})
                ticks = sum(max(0, c - last.get(k, (False, c))[1]) for k, (_, c) in now.items())
                running = sum(r for r, _ in now.values())
                a["serial" if running <= 1 else "parallel"] += ticks
                if running == 0 and ticks == 0:
                    a["idle_s"] += t_now - t_last
            last, t_last = now, t_now

    def stop(self) -> None:
        self._stop.set()
        self._t.join()

    def record(self, phase: str) -> dict:
        a = self.acc.get(phase, {"serial": 0, "parallel": 0, "idle_s": 0.0})
        serial, parallel = a["serial"] / TICK, a["parallel"] / TICK
        two = serial + parallel / 2 + a["idle_s"]
        return {"serial_cpu_s": round(serial, 3), "parallel_cpu_s": round(parallel, 3),
                "two_core_wall_s": round(two, 3),
                "two_core_cores_busy": round((serial + parallel) / max(two, 1e-9), 2)}


class Phases:
    def __init__(self, sampler: Runnable | None = None):
        self.out: dict = {}
        self.sampler = sampler

    def __call__(self, name, fn, *a, **k):
        if self.sampler is not None:
            self.sampler.phase = name
        w0, c0 = _clock()
        res = fn(*a, **k)
        w1, c1 = _clock()
        if self.sampler is not None:
            time.sleep(2 * self.sampler.every)   # the last sample of the phase
            self.sampler.phase = None
        self.out[name] = {"wall_s": round(w1 - w0, 3), "cpu_s": round(c1 - c0, 3),
                          "cores_busy": round((c1 - c0) / max(w1 - w0, 1e-9), 2)}
        if self.sampler is not None:
            self.out[name].update(self.sampler.record(name))
        return res

    def total(self) -> dict:
        keys = ("wall_s", "cpu_s", "serial_cpu_s", "parallel_cpu_s", "two_core_wall_s")
        t = {k: round(sum(p.get(k, 0) for p in self.out.values()), 3) for k in keys}
        t["cores_busy"] = round(t["cpu_s"] / max(t["wall_s"], 1e-9), 2)
        cpu = t["serial_cpu_s"] + t["parallel_cpu_s"]
        t["two_core_cores_busy"] = round(cpu / max(t["two_core_wall_s"], 1e-9), 2)
        return t


def phases(data: Path, study: Path, profile: str | None, top: int) -> dict:
    sampler = Runnable()
    ph = Phases(sampler)
    try:
        from hpcstudy.report.drawing import FigureProcess
    except ImportError:   # an older hpcstudy, to compare with: figures drawn in its process
        FigureProcess = None
    figures, more = None, {}
    if FigureProcess is not None:   # as `hpcstudy run`: started before its imports
        figures = FigureProcess.start()
        sampler.pids.append(figures.proc.pid)
        more = {"figures": figures}
    R = ph("imports", _run_imports)
    from hpcstudy.pipeline import AFTER_THE_PARTITIONS, warm_up

    out = Path(tempfile.mkdtemp(prefix="hpcstudy-profile-")) / "out"
    prof = cProfile.Profile() if profile else None
    load0 = os.getloadavg()[0]

    def maybe(name, fn, *a, **k):
        if prof is not None and profile in (name, "run"):
            prof.enable()
        try:
            return ph(name, fn, *a, **k)
        finally:
            if prof is not None:
                prof.disable()

    study_, plan, ds = maybe("plan", R.prepare, str(study), str(data))
    R.check_run(out, ds, study=study_, plan=plan)
    warm_up(AFTER_THE_PARTITIONS)   # as pipeline.execute: beside the partitions
    tables, attrition, parts = maybe("cohort", R.person_table, plan, ds, "dask", None, None,
                                     None, False, {}, "cpu")
    tables.write_ahead(plan)        # as pipeline.execute: beside the analyses
    early = {}
    if figures is not None:   # as pipeline.execute: each figure asked once its analysis is done
        try:
            from hpcstudy.report.ahead import Early
        except ImportError:   # an older hpcstudy: figures asked by the page
            Early = None
        if Early is not None:
            early = {"finished": Early(figures, plan)}
    results = maybe("analyses", R.analyse, plan, parts, attrition, ds=ds, **early)
    maybe("outputs", R.write_outputs, out, plan, results, tables, engine="dask", ds=ds,
          overwrite=False, approval=None, device=None, **more)
    if figures is not None:
        figures.close()
    sampler.stop()
    shutil.rmtree(out.parent, ignore_errors=True)
    rec = {"data": str(data), "phases": ph.out, "total": ph.total(),
           "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2)}
    if prof is not None:
        rec["profile"] = _top(prof, top)
    return rec


def whole(data: Path, study: Path, env: dict | None = None) -> dict:
    """``hpcstudy run`` of ``study`` on ``data`` in a child process (``env``: its environment),
    watched from outside."""
    out = Path(tempfile.mkdtemp(prefix="hpcstudy-profile-")) / "out"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    # -P: the current folder is not put first on the path, where a checkout's hpcstudy would
    # shadow the one --against put on PYTHONPATH
    proc = subprocess.Popen([sys.executable, "-P", "-m", "hpcstudy.cli", "run", str(study),
                             "--data", str(data), "--out", str(out), "--quiet"], env=env)
    sampler = Runnable(pids=[proc.pid], children=True)
    sampler.phase = "run"
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    sampler.stop()
    shutil.rmtree(out.parent, ignore_errors=True)
    if status != 0:
        raise SystemExit(f"hpcstudy run failed (wait status {status})")
    cpu = ru.ru_utime + ru.ru_stime   # the run's process and the children it waited for
    rec = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
           "cores_busy": round(cpu / wall, 2), **sampler.record("run")}
    return {"data": str(data), "whole": rec, "load_start": round(load0, 2),
            "load_end": round(os.getloadavg()[0], 2)}


def timeline(data: Path, study: Path, every: float = 0.005, bucket: float = 0.1) -> dict:
    """``hpcstudy run`` by the command line's code (``hpcstudy.cli._main``) in this
    process's main thread, watched by a sampler thread: every ``every`` seconds, which threads
    of the run (and of its figure process) are runnable, the CPU each accrued, and where each
    Python thread is (its innermost frame in hpcstudy). CPU accrued while at most one thread
    was runnable is charged to where that thread was (``serial_by_place``: the run's serial
    parts by name), beside a ``bucket``-second timeline of cores busy and where the run's main
    thread was."""
    import collections

    out = Path(tempfile.mkdtemp(prefix="hpcstudy-profile-")) / "out"
    argv = ["run", str(study), "--data", str(data), "--out", str(out), "--quiet"]
    load0 = os.getloadavg()[0]
    done = threading.Event()
    result: dict = {}
    me = os.getpid()
    main = threading.get_native_id()
    samples = []
    t0 = time.perf_counter()

    def sample():
        sampler_id = threading.get_native_id()
        pids = [me]
        last: dict = {}
        k = 0
        while not done.is_set():
            time.sleep(every)
            k += 1
            if k % 10 == 1:   # the figure process
                try:
                    for tid in os.listdir(f"/proc/{me}/task"):
                        with open(f"/proc/{me}/task/{tid}/children") as f:
                            pids += [int(c) for c in f.read().split() if int(c) not in pids]
                except OSError:
                    pass
            now = thread_states(pids, sampler_id)
            names = {t.native_id: t.name for t in threading.enumerate()}
            by_ident = {t.ident: t.native_id for t in threading.enumerate()}
            where = {}
            for ident, fr in sys._current_frames().items():
                f, place = fr, None
                while f is not None:
                    fn = f.f_code.co_filename
                    if "hpcstudy" in fn and "profile_engine" not in fn:
                        place = f"{fn.split('/hpcstudy')[-1]}:{f.f_code.co_name}"
                        break
                    f = f.f_back
                where[by_ident.get(ident)] = place
            dt = {key: max(0, c - last.get(key, (False, c))[1]) for key, (_, c) in now.items()}
            running = sum(r for r, _ in now.values())
            samples.append((time.perf_counter() - t0, running, dt,
                            {key: (names.get(key[1], "figures" if key[0] != me else "native"),
                                   where.get(key[1])) for key in now}))
            last = now

    watcher = threading.Thread(target=sample, name="profile-sampler", daemon=True)
    watcher.start()
    from hpcstudy.cli import _main as cli

    try:
        result["code"] = cli(argv)
    except BaseException as e:   # noqa: BLE001 - said in the record
        result["error"] = repr(e)
    done.set()
    watcher.join()
    wall = time.perf_counter() - t0
    shutil.rmtree(out.parent, ignore_errors=True)
    serial = collections.Counter()
    buckets: dict[int, dict] = {}
    t_last = 0.0
    for t, running, dt, who in samples:
        b = buckets.setdefault(int(t / bucket), {"ticks": 0, "n": 0, "run": 0, "span": 0.0,
                                                  "main": collections.Counter()})
        b["ticks"] += sum(dt.values())
        b["span"] += t - t_last
        t_last = t
        b["n"] += 1
        b["run"] += running
        b["main"][who.get((me, main), (None, None))[1]] += 1
        if running <= 1:
            for key, d in dt.items():
                if d:
                    name, place = who[key]
                    serial[f"{name.split('_')[0]} {place}"] += d
    line = []
    for i in sorted(buckets):
        b = buckets[i]
        line.append(f"{i * bucket:5.1f}s cores {b['ticks'] / TICK / max(b['span'], 1e-9):4.2f} "
                    f"runnable {b['run'] / max(b['n'], 1):4.2f} main "
                    f"{b['main'].most_common(1)[0][0]}")
    return {"data": str(data), "wall_s": round(wall, 3), "error": result.get("error"),
            "exit_code": result.get("code"),
            "serial_cpu_s": round(sum(serial.values()) / TICK, 3),
            "serial_by_place": {k: round(v / TICK, 3) for k, v in serial.most_common(25)},
            "timeline": line, "load_start": round(load0, 2),
            "load_end": round(os.getloadavg()[0], 2)}


def compiled() -> None:
    """hpcstudy's bytecode written beside its source, as ``pip install`` writes it for an
    installed package: an editable checkout run under PYTHONDONTWRITEBYTECODE (as on the
    benchmark machine) would otherwise compile its source again in every run (about 0.15 s of
    CPU at the start of each, which no installed hpcstudy pays)."""
    import compileall

    import hpcstudy
    import hpcstudy_kernels

    for pkg in (hpcstudy, hpcstudy_kernels):
        compileall.compile_dir(str(Path(pkg.__file__).parent), quiet=1)


def against(data: Path, study: Path, other: Path, repeat: int) -> dict:
    """``--whole`` runs of this hpcstudy and of the one whose package folder ``other`` holds
    (``other``/hpcstudy, put first on PYTHONPATH; compiled too), interleaved ``repeat`` times
    each (ABBA…): every run's record, and each side's median, min and max."""
    import compileall
    import statistics

    compileall.compile_dir(str(Path(other) / "hpcstudy"), quiet=1)
    envs = {"this": {k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "other": {**os.environ, "PYTHONPATH": str(other)}}
    runs: dict[str, list] = {"this": [], "other": []}
    for i in range(repeat):
        for side in ("other", "this") if i % 2 == 0 else ("this", "other"):
            r = whole(data, study, envs[side])
            runs[side].append({**r["whole"], "load": r["load_start"]})
    keys = ("wall_s", "cpu_s", "cores_busy", "serial_cpu_s", "two_core_wall_s",
            "two_core_cores_busy", "load")
    return {"data": str(data), "other": str(other), "runs": runs,
            "summary": {side: {k: [round(statistics.median(x[k] for x in v), 3),
                                   min(x[k] for x in v), max(x[k] for x in v)] for k in keys}
                        for side, v in runs.items()}}


def _run_imports():
    """What ``hpcstudy run`` imports before it reads any data (the engines, models, outputs);
    the report's come later, in the background (pipeline.warm_up)."""
    import hpcstudy.cli  # noqa: F401
    import hpcstudy.outputs.writers  # noqa: F401
    import hpcstudy.pipeline  # noqa: F401
    from hpcstudy.engines import run as R

    return R


def partition_parts(data: Path, study: Path, p: int, profile: bool, top: int) -> dict:
    """One partition's steps timed apart: read, Persons, event streams, groups."""
    from hpcstudy.devices import get_device
    from hpcstudy.engines import partition as P
    from hpcstudy.engines import run as R

    _, plan, ds = R.prepare(str(study), str(data))
    dev = get_device("cpu")
    ph = Phases()
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    host = ph("read", P.read_host, str(ds.root), p, plan.reads)
    loaded = {reg: {c: dev.to_device(a) for c, a in cols.items()} for reg, cols in host.items()}
    pp = ph("persons", P.Persons, loaded, plan, dev)
    ph("event_streams", P.event_streams, pp, P._plan_streams(plan))
    for g in plan.groups:
        ph(f"group {g.label}", P.group_table, pp, g, plan.study.seed)
    if prof is not None:
        prof.disable()
    rows = sum(a.shape[0] for cols in host.values() for a in list(cols.values())[:1])
    rec = {"data": str(data), "partition": p, "register_rows": rows, "steps": ph.out}
    if prof is not None:
        rec["profile"] = _top(prof, top)
    return rec


def _top(prof, top: int) -> list[str]:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    return [ln for ln in s.getvalue().splitlines() if ln.strip()][-top - 1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--study", type=Path, default=EXAMPLE)
    ap.add_argument("--profile", choices=["run", "plan", "cohort", "analyses", "outputs",
                                          "partition"])
    ap.add_argument("--partition", type=int, default=0)
    ap.add_argument("--partition-parts", action="store_true")
    ap.add_argument("--whole", action="store_true")
    ap.add_argument("--timeline", action="store_true",
                    help="the command line's run in this process, sampled: its serial CPU by "
                         "place and a timeline of cores busy")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--against", type=Path, metavar="SRC",
                    help="with --whole: interleave runs with the hpcstudy package in SRC "
                         "(SRC/hpcstudy: another commit's, e.g. from git archive)")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--source", action="store_true",
                    help="leave hpcstudy's bytecode uncompiled (see compiled())")
    a = ap.parse_args()
    if not a.source:
        compiled()
    if a.timeline:
        rec = timeline(a.data, a.study)
    elif a.whole and a.against:
        rec = against(a.data, a.study, a.against, a.repeat)
    elif a.whole:
        rec = whole(a.data, a.study)
    elif a.partition_parts or a.profile == "partition":
        rec = partition_parts(a.data, a.study, a.partition, a.profile == "partition", a.top)
    else:
        rec = phases(a.data, a.study, a.profile, a.top)
    prof = rec.pop("profile", None)
    print(json.dumps(rec, indent=1))
    if prof:
        print("\n".join(prof))


if __name__ == "__main__":
    main()
