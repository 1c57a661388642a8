"""Benchmark: the physical limits beside the figures — this machine's memory bandwidth (a
large NumPy copy; a large sum for reading alone), and the Cox fit at N = 1e6, p = 10 taken
apart: the one-off preparation, and per Newton step the risk scores, pass 1, the grid terms
(Efron's tie expansion), pass 2 — each beside the time to read X once. With the compiled
passes (kernels/cox_cpu.py: the default where the C extension is built) the risk scores are
computed inside pass 1 and the preparation neither sorts nor copies X; where the shape allows
one pass over X per step (``cox_cpu.one_pass``: p ≤ 4 and a small grid; the record's
``route``), pass 2 is a sum over pass 1's per-grid-point buckets; with
HPCSTUDY_NO_COMPILED=1 the NumPy passes are measured (their preparation sorts and
transposes X). ``--relayout on`` measures the passes over the fit's re-laid copy of X
(``cox_cpu.pack``; its making counts in ``prepare``), ``--relayout both`` both routes with
their repeats interleaved (one record each, ``relaid_copy``).

    python benchmarks/physical.py [--n 1000000] [--p 10] [--shapes 0.1:days 0.9:few]
                                  [--relayout off|on|both]

Each figure is a median over repeats (min, max). The engine's bytes scanned per second are in
the cohort_peers records (decoded Parquet bytes / wall time). Appends to
results/physical.jsonl.
"""

from __future__ import annotations

import argparse
import time

import modeldata
import numpy as np
import records


def best_of(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bandwidth(repeats: int, size_mib: int = 1024) -> dict:
    a = np.ones(size_mib * 2**20 // 8)
    b = np.empty_like(a)
    np.copyto(b, a)  # touch the pages first
    copy = best_of(lambda: np.copyto(b, a), repeats)
    read = best_of(lambda: a.sum(), repeats)
    nbytes = a.nbytes
    return {"array_mib": size_mib,
            "copy_gb_s": records.summary([2 * nbytes / s / 1e9 for s in copy]),
            "read_gb_s": records.summary([nbytes / s / 1e9 for s in read])}


def cox_parts(n, p, frac, times, ties, repeats, relayout=("off",)) -> list[dict]:
    """One record per route in ``relayout`` ("off": the passes read the caller's rows; "on":
    the fit keeps the re-laid copy, ``cox_cpu.pack``), the routes' repeats interleaved."""
    from hpcstudy.models import CoxPH
    from hpcstudy_kernels import cox as K
    from hpcstudy_kernels import cox_cpu

    X, t, e = modeldata.survival(n, p, frac, times)
    s = np.zeros(n, np.int64)
    w = np.ones(n)
    mean = X.mean(axis=0)
    compiled = cox_cpu.enabled()
    names = ("read_X", "prepare", "risk", "pass1", "grid_terms", "pass2", "fit")
    if compiled:   # r = w·exp(xβ) is computed inside pass 1
        names = tuple(k for k in names if k != "risk")
    # CPU time: far steadier than wall time on a shared machine
    parts = {r: {k: [] for k in names} for r in relayout}
    cpu = {r: {k: [] for k in names} for r in relayout}
    budget = cox_cpu.PACK_BYTES

    def timed(route, name, fn):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        parts[route][name].append(time.perf_counter() - t0)
        cpu[route][name].append(time.process_time() - c0)
        return out

    fit = None
    for i in range(repeats):
        for route in (relayout if i % 2 == 0 else relayout[::-1]):
            # "on": a budget every shape here fits (the default, PACK_BYTES = 0, keeps none)
            cox_cpu.PACK_BYTES = 1 << 40 if route == "on" else 0
            timed(route, "read_X", lambda: X.sum())
            pairs = K.event_pairs(t, e, s)
            grid = K.make_grid([pairs[0]], [pairs[1]])
            part = timed(route, "prepare", lambda: K.prepare(X, t, e, None, s, w, grid, mean))
            m, dw, _ = K.fixed_sums(part)
            beta = np.linspace(0.01, -0.01, p)
            if not compiled:
                timed(route, "risk", lambda: part.risk(beta))
            shift, s0, s1, e0, e1 = timed(route, "pass1", lambda: K.pass1(part, beta))
            _, _, _, c, ee = timed(route, "grid_terms",
                                   lambda: K.grid_terms(s0, s1, e0, e1, m, dw, ties))
            timed(route, "pass2", lambda: K.pass2(part, beta, c, ee, shift))
            part = None   # the copy freed before the fit makes its own
            fit = timed(route, "fit", lambda: CoxPH(ties=ties).fit(X, t, e))
    cox_cpu.PACK_BYTES = budget
    records_out = []
    for route in relayout:
        out = {k: records.summary(v) for k, v in parts[route].items()}
        out_cpu = {k: records.summary(v) for k, v in cpu[route].items()}
        steps = tuple(k for k in ("risk", "pass1", "grid_terms", "pass2") if k in out)
        step = sum(out[k]["median"] for k in steps)
        step_cpu = sum(out_cpu[k]["median"] for k in steps)
        read = max(out["read_X"]["median"], 1e-9)   # (rounded to 0.1 ms: tiny sizes)
        read_cpu = max(out_cpu["read_X"]["median"], 1e-9)
        evaluations = fit.n_iter_ + 1  # β = 0 and one per Newton step (each with pass 2)
        # one pass over X per step (pass 2 from pass 1's buckets) or two (cox_cpu.one_pass)
        passes = "numpy" if not compiled else \
            "one pass" if cox_cpu.one_pass(n, grid.size, p, False) else "two passes"
        records_out.append({
            "n": n, "p": p, "event_fraction": frac, "times": times, "ties": ties,
            "compiled": compiled, "route": passes, "relaid_copy": route == "on",
            "interleaved_routes": list(relayout),
            "threads": cox_cpu._threads() if compiled else 1,
            "distinct_event_times": int(np.unique(t[e > 0]).size), "parts_s": out,
            "parts_cpu_s": out_cpu, "newton_evaluations": evaluations,
            "step_s": round(step, 4), "step_over_read_X": round(step / read, 2),
            "step_over_read_X_cpu": round(step_cpu / read_cpu, 2),
            "fit_over_read_X_per_evaluation": round(out["fit"]["median"] / evaluations / read,
                                                    2)})
    return records_out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--p", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shapes", nargs="+", default=["0.1:days", "0.9:few"])
    ap.add_argument("--bandwidth-mib", type=int, default=1024,
                    help="the array copied and summed for the memory bandwidth")
    ap.add_argument("--relayout", choices=["off", "on", "both"], default="off",
                    help="the passes over the caller's rows (off, the default route), over "
                         "the fit's re-laid copy (on), or both interleaved")
    a = ap.parse_args()
    routes = ("off", "on") if a.relayout == "both" else (a.relayout,)
    records.append("physical", {"benchmark": "physical", "what": "memory bandwidth",
                                **bandwidth(a.repeats, a.bandwidth_mib)})
    for shape in a.shapes:
        frac, times = shape.split(":")
        for ties in ("efron", "breslow"):
            for rec in cox_parts(a.n, a.p, float(frac), times, ties, a.repeats, routes):
                records.append("physical", {"benchmark": "physical", "what": "cox parts",
                                            **rec})


if __name__ == "__main__":
    main()
