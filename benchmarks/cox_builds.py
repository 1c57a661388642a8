"""Benchmark: two builds of the Cox passes (kernels/_cox_c.c) side by side in one process, their
repeats interleaved: pass 1 and pass 2 at β ≠ 0 per build, CPU and wall time, beside one read
of X, and whether the builds' sums agree (bit for bit, or their largest relative difference).

    python benchmarks/cox_builds.py OLD NEW [--n 1000000] [--p 10] [--repeats 15]
                                    [--shapes 0.1:days 0.9:few] [--threads 1]

OLD and NEW are C sources or builds (.so). A source is compiled as setup does (gcc with
pyproject.toml's extra-compile-args, both target clones; ``--old-flags`` and ``--new-flags``
add flags to one build) into a temporary folder; each is loaded under the extension's name.
``git show REV:kernels/_cox_c.c > old.c`` gives an earlier state. CPU time (process_time) is
steadier than wall time on a shared machine; figures are medians (min, max) in ms per pass,
printed to stderr with whether the builds' sums agree and the 1-minute load. Appends to
results/cox_builds.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from pathlib import Path

import modeldata
import numpy as np
import records


def build(source: Path, folder: Path, tag: str, flags: list[str]) -> Path:
    if source.suffix == ".so":   # a build already made (the installed module's, say)
        return source
    out = folder / tag / f"_cox_c{sysconfig.get_config_var('EXT_SUFFIX')}"
    out.parent.mkdir()
    (ext,) = tomllib.loads((records.ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["ext-modules"]
    subprocess.run(["gcc", *ext["extra-compile-args"], *flags, "-fPIC", "-shared", "-pthread",
                    f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(out), "-lm"],
                   check=True)
    return out


def load(path: Path):
    spec = importlib.util.spec_from_file_location("hpcstudy_kernels._cox_c", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--p", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--shapes", nargs="+", default=["0.1:days", "0.9:few"])
    ap.add_argument("--ties", default="efron")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--old-flags", default="", help="more gcc flags for OLD (space-separated)")
    ap.add_argument("--new-flags", default="", help="more gcc flags for NEW")
    a = ap.parse_args()
    os.environ["HPCSTUDY_THREADS"] = a.threads
    from hpcstudy_kernels import cox as K
    from hpcstudy_kernels import cox_cpu

    with tempfile.TemporaryDirectory() as tmp:
        mods = {"old": load(build(a.old, Path(tmp), "old", a.old_flags.split())),
                "new": load(build(a.new, Path(tmp), "new", a.new_flags.split()))}
        for shape in a.shapes:
            frac, times = shape.split(":")
            X, t, e = modeldata.survival(a.n, a.p, float(frac), times)
            s = np.zeros(a.n, np.int64)
            pairs = K.event_pairs(t, e, s)
            grid = K.make_grid([pairs[0]], [pairs[1]])
            cox_cpu._cox_c = mods["old"]
            part = K.prepare(X, t, e, None, s, np.ones(a.n), grid, X.mean(axis=0))
            m, dw, _ = K.fixed_sums(part)
            beta = np.linspace(0.01, -0.01, a.p)
            cpu = {b: {k: [] for k in ("read_X", "pass1", "pass2")} for b in mods}
            wall = {b: {k: [] for k in ("read_X", "pass1", "pass2")} for b in mods}
            got = {}

            def timed(b, name, fn):
                c0, t0 = time.process_time(), time.perf_counter()
                out = fn()
                cpu[b][name].append(1e3 * (time.process_time() - c0))
                wall[b][name].append(1e3 * (time.perf_counter() - t0))
                return out

            for i in range(a.repeats):
                for b in (("old", "new") if i % 2 == 0 else ("new", "old")):
                    cox_cpu._cox_c = mods[b]
                    timed(b, "read_X", lambda: X.sum())
                    part.bins = None   # (pass 1 would return the last call's bins)
                    shift, s0, s1, e0, e1 = timed(b, "pass1", lambda: K.pass1(part, beta))
                    _, _, _, c, ee = K.grid_terms(s0, s1, e0, e1, m, dw, a.ties)
                    h = timed(b, "pass2", lambda: K.pass2(part, beta, c, ee, shift))
                    got[b] = (np.concatenate([s0.ravel(), s1.ravel()]), np.asarray(h).ravel())
            cox_cpu._cox_c = mods["old"]
            agree = {}
            for k, name in enumerate(("pass1", "pass2")):
                x, y = got["old"][k], got["new"][k]
                agree[name] = ("same bits" if x.tobytes() == y.tobytes() else
                               float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-300)))
            rec = {"n": a.n, "p": a.p, "event_fraction": float(frac), "times": times,
                   "ties": a.ties, "threads": a.threads, "old": str(a.old), "new": str(a.new),
                   "old_flags": a.old_flags, "new_flags": a.new_flags,
                   "cpu_ms": {b: {k: records.summary(v) for k, v in cpu[b].items()}
                              for b in mods},
                   "wall_ms": {b: {k: records.summary(v) for k, v in wall[b].items()}
                               for b in mods},
                   "agree": agree}
            records.append("cox_builds", {"benchmark": "cox_builds", **rec})
            for b in mods:
                for clock, d in (("cpu", cpu), ("wall", wall)):
                    c = {k: records.summary(v) for k, v in d[b].items()}
                    step = c["pass1"]["median"] + c["pass2"]["median"]
                    print(f"{shape} {b} {clock}: " + "  ".join(
                        f"{k} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})"
                        for k, v in c.items())
                        + f"  step/readX {step / c['read_X']['median']:.2f}", file=sys.stderr)
            print(f"{shape} agree: {agree}  load {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
