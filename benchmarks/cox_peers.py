"""Benchmark: Cox fits (Efron and Breslow ties) — hpcstudy vs lifelines and statsmodels PHReg.

    python benchmarks/cox_peers.py                  # the default grid (BENCH_SIZES=quick)
    BENCH_SIZES=full python benchmarks/cox_peers.py # N = 1e5, 1e6, 1e7; p = 10, 50; all shapes
    python benchmarks/cox_peers.py --n 1000000 --p 10 --fractions 0.1 0.9 --times few days

Data (benchmarks/modeldata.py): N persons, p standard-normal covariates, an event fraction of
10, 50 or 90 %, and few (whole years: a few dozen) or many (whole days: thousands) distinct
event times. For each shape the fits run interleaved in one process (hpcstudy, lifelines,
statsmodels, hpcstudy, …), so a ratio compares runs taken under the same load; every time is a
median with min and max. hpcstudy's first, cold fit runs in a fresh process of its own (imports
done, nothing else touched), three such processes per shape (their median), and is recorded
apart from the warm fits. The coefficients must
agree with each peer's to 1e-6 (max |Δβ| / max |β|) before a time or ratio is reported; a peer
slower than --peer-limit seconds at a smaller N is skipped at larger N (recorded as skipped).
Appends one record per shape to benchmarks/results/cox_peers.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import modeldata
import numpy as np
import records

AGREE = 1e-6
COLD_RUNS = 3
PRESETS = {
    # (ties, n, p, fractions, times, peers)
    "tiny": [("efron", 2000, 3, [0.5], ["days"], ["lifelines", "statsmodels"]),
             ("breslow", 2000, 3, [0.5], ["few"], ["statsmodels"])],
    "quick": [("efron", 1_000_000, 10, [0.1, 0.5, 0.9], ["few", "days"], ["lifelines"]),
              ("efron", 1_000_000, 10, [0.5], ["days"], ["statsmodels"]),
              ("efron", 100_000, 10, [0.5], ["days"], ["lifelines", "statsmodels"]),
              ("efron", 100_000, 50, [0.5], ["days"], ["lifelines", "statsmodels"]),
              ("breslow", 1_000_000, 10, [0.1, 0.9], ["few", "days"], ["statsmodels"])],
}


def full_preset():
    out = []
    for ties, peers in (("efron", ["lifelines", "statsmodels"]), ("breslow", ["statsmodels"])):
        for p in (10, 50):
            for n in (100_000, 1_000_000, 10_000_000):
                out.append((ties, n, p, [0.1, 0.5, 0.9], ["few", "days"], peers))
    return out


def agreement(ours, theirs) -> float:
    theirs = np.asarray(theirs, float)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def peer_fit(name, ties, X, t, e):
    if name == "lifelines":
        import pandas as pd
        from lifelines import CoxPHFitter

        df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
        df["t"], df["e"] = t, e
        return lambda: CoxPHFitter().fit(df, "t", "e").params_.to_numpy()
    if name == "statsmodels":
        import statsmodels.api as sm

        return lambda: np.asarray(sm.PHReg(t, X, status=e, ties=ties).fit().params)
    raise ValueError(name)


def cold(args) -> None:
    """Child process: one fit in a fresh interpreter; prints its seconds and Newton steps."""
    ties, n, p, frac, times = args
    X, t, e = modeldata.survival(int(n), int(p), float(frac), times)
    from hpcstudy.models import CoxPH

    c0, t0 = time.process_time(), time.perf_counter()
    m = CoxPH(ties=ties).fit(X, t, e)
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                      "coef": m.coef_.tolist()}))


def run_shape(ties, n, p, frac, times, peers, repeats, slow, peer_limit):
    from hpcstudy.models import CoxPH

    X, t, e = modeldata.survival(n, p, frac, times)
    # the cold fit: one per fresh process, COLD_RUNS processes, their median (one sample
    # on a shared machine is as noisy as one warm fit)
    colds = [json.loads(records.run_child([sys.executable, __file__, "--cold", ties, str(n),
                                           str(p), str(frac), times])["stdout"])
             for _ in range(COLD_RUNS)]
    cold = {k: float(np.median([c[k] for c in colds])) for k in ("seconds", "cpu_s")}
    cold_s = cold["seconds"]
    rec = {"benchmark": "cox_peers", "ties": ties, "n": n, "p": p, "event_fraction": frac,
           "times": times, "events": int(e.sum()),
           "distinct_event_times": int(np.unique(t[e > 0]).size),
           "hpcstudy_cold_s": round(cold_s, 4), "hpcstudy_cold_cpu_s": round(cold["cpu_s"], 4),
           "hpcstudy_cold_runs": records.summary([c["seconds"] for c in colds]),
           "hpcstudy_cold_cpu_runs": records.summary([c["cpu_s"] for c in colds])}
    active = [q for q in peers if (q, p, ties) not in slow]
    for q in peers:
        if q not in active:
            rec[f"{q}_note"] = "skipped: slower than --peer-limit at a smaller N"
    fits = {"hpcstudy": lambda: CoxPH(ties=ties).fit(X, t, e)}
    fits.update({q: peer_fit(q, ties, X, t, e) for q in active})
    times_of = {k: [] for k in fits}
    cpu_of = {k: [] for k in fits}   # CPU time (user + system, all threads): the shared
    # machine's load changes wall time far more than CPU time
    coefs = {}
    ours_reps = max(repeats, 3)
    for i in range(max(ours_reps, repeats)):
        for name, fn in fits.items():
            if name != "hpcstudy" and i >= repeats:
                continue
            wall, cpu, out = records.timed(fn)
            times_of[name].append(wall)
            cpu_of[name].append(cpu)
            coefs[name] = out
            if name != "hpcstudy" and wall > peer_limit:
                slow.add((name, p, ties))
    ours = coefs["hpcstudy"]
    rec["hpcstudy_s"] = records.summary(times_of["hpcstudy"])
    rec["hpcstudy_cpu_s"] = records.summary(cpu_of["hpcstudy"])
    rec["hpcstudy_newton_steps"] = ours.n_iter_
    med = rec["hpcstudy_s"]["median"]
    for q in active:
        agree = agreement(ours.coef_, coefs[q])
        rec[f"{q}_agreement"] = agree
        if agree > AGREE:
            rec[f"{q}_note"] = f"coefficients differ by {agree:.1e} > {AGREE}: no time reported"
            continue
        rec[f"{q}_s"] = records.summary(times_of[q])
        rec[f"speedup_vs_{q}"] = round(rec[f"{q}_s"]["median"] / med, 2)
        rec[f"speedup_vs_{q}_cold"] = round(rec[f"{q}_s"]["median"] / cold_s, 2)
        rec[f"{q}_cpu_s"] = records.summary(cpu_of[q])
        rec[f"speedup_vs_{q}_cpu"] = round(rec[f"{q}_cpu_s"]["median"] /
                                           rec["hpcstudy_cpu_s"]["median"], 2)
        rec[f"speedup_vs_{q}_cold_cpu"] = round(rec[f"{q}_cpu_s"]["median"] / cold["cpu_s"],
                                                2)
    return records.append("cox_peers", rec)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--cold":
        return cold(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default=os.environ.get("BENCH_SIZES", "quick"),
                    choices=["tiny", "quick", "full"])
    ap.add_argument("--ties", choices=["efron", "breslow"], default="efron")
    ap.add_argument("--n", type=int, nargs="+")
    ap.add_argument("--p", type=int, nargs="+", default=[10])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    ap.add_argument("--times", nargs="+", default=["few", "days"])
    ap.add_argument("--peers", nargs="*", default=["lifelines", "statsmodels"])
    ap.add_argument("--repeats", type=int, default=None,
                    help="peer fits per shape (default 3 up to 1e5 persons, 2 above, 1 at 1e7)")
    ap.add_argument("--peer-limit", type=float, default=300.0)
    a = ap.parse_args()
    if a.n:
        grid = [(a.ties, n, p, a.fractions, a.times, a.peers) for p in a.p for n in a.n]
    else:
        grid = full_preset() if a.preset == "full" else PRESETS[a.preset]
    slow: set = set()
    for ties, n, p, fractions, times_list, peers in grid:
        repeats = a.repeats or (3 if n <= 100_000 else 2 if n <= 1_000_000 else 1)
        for frac in fractions:
            for times in times_list:
                run_shape(ties, n, p, frac, times, peers, repeats, slow, a.peer_limit)


if __name__ == "__main__":
    main()
