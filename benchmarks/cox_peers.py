"""Benchmark: Cox fit (Efron ties) — hpcstudy vs lifelines vs statsmodels, in one run.

    python benchmarks/cox_peers.py --n 100000 1000000 --p 10 50

Data: N persons, p standard-normal covariates, event times in whole days (about 10 000
distinct days, so many ties), about a quarter censored. hpcstudy fits three times (the record
keeps the first, cold fit and the median); each peer fits once, as its fits take long; the
coefficients are compared. Appends JSON records to
benchmarks/results/cox_peers.jsonl. Peers slower than --peer-limit seconds at a smaller N are
skipped at larger N (recorded as skipped).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import records


def data(n: int, p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    beta = np.linspace(0.3, -0.3, p) / np.sqrt(p)
    t = np.floor(rng.exponential(1, n) / np.exp(X @ beta) * 3000) + 1
    c = rng.uniform(100, 11000, n)
    return X, np.minimum(t, c), (t <= c).astype(float)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--p", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--peer-limit", type=float, default=300.0)
    a = ap.parse_args()
    import pandas as pd
    import statsmodels.api as sm
    from lifelines import CoxPHFitter

    from hpcstudy.models import CoxPH

    slow: set[str] = set()
    for p in a.p:
        for n in sorted(a.n):
            X, t, e = data(n, p)
            runs = [timed(lambda: CoxPH().fit(X, t, e)) for _ in range(3)]
            ours = runs[0][1]
            ours_s = float(np.median([s for s, _ in runs]))
            rec = {"benchmark": "cox_peers", "n": n, "p": p, "ties": "efron",
                   "events": int(e.sum()), "distinct_days": int(np.unique(t[e > 0]).size),
                   "hpcstudy_s": round(ours_s, 3), "hpcstudy_first_fit_s": round(runs[0][0], 3),
                   "hpcstudy_newton_steps": ours.n_iter_}
            df = pd.DataFrame(X, columns=[f"x{i}" for i in range(p)])
            df["t"], df["e"] = t, e
            for name, fit in (
                ("lifelines", lambda: CoxPHFitter().fit(df, "t", "e").params_.to_numpy()),
                ("statsmodels", lambda: np.asarray(
                    sm.PHReg(t, X, status=e, ties="efron").fit().params)),
            ):
                if (name, p) in slow:
                    rec[f"{name}_s"] = None
                    rec[f"{name}_note"] = "skipped: too slow at a smaller N"
                    continue
                secs, coef = timed(fit)
                rec[f"{name}_s"] = round(secs, 3)
                rec[f"speedup_vs_{name}"] = round(secs / ours_s, 1)
                rec[f"max_rel_coef_diff_vs_{name}"] = float(
                    np.max(np.abs(ours.coef_ - coef) / np.abs(coef)))
                if secs > a.peer_limit:
                    slow.add((name, p))
            records.append("cox_peers", rec)


if __name__ == "__main__":
    main()
