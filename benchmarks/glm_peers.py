"""Benchmark: logistic regression vs scikit-learn and statsmodels, Poisson regression (log
person-time offset) vs statsmodels GLM and scikit-learn, at N = 1e5 and 1e6 (1e7 with
BENCH_SIZES=full), p = 10 and 50, 10 / 50 / 90 % events (logistic).

    python benchmarks/glm_peers.py [--preset tiny|quick|full]

Fits run interleaved in one process; times are medians with min and max; hpcstudy's cold
first fit runs in a fresh process. Coefficients must agree to 1e-6 (max |Δβ| / max |β|)
before a time is reported. Peers are unpenalised and solved to their tightest tolerance:
scikit-learn with ``newton-cholesky``, statsmodels with Newton / IRLS. Scikit-learn's
Poisson model has no offset: it is fitted to the rate y / exposure with exposure as sample
weight, which has the same coefficients. Appends to benchmarks/results/glm_peers.jsonl.
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
from cox_peers import AGREE, agreement

PRESETS = {
    "tiny": [("logistic", 2000, 3, [0.5]), ("poisson", 2000, 3, [0.25])],
    "quick": [("logistic", 1_000_000, 10, [0.1, 0.5, 0.9]), ("logistic", 100_000, 50, [0.5]),
              ("poisson", 1_000_000, 10, [0.25]), ("poisson", 100_000, 50, [0.25])],
    "full": [(m, n, p, fr) for m, fr in (("logistic", [0.1, 0.5, 0.9]), ("poisson", [0.25]))
             for p in (10, 50) for n in (100_000, 1_000_000, 10_000_000)],
}
PEERS = {"logistic": ["sklearn", "statsmodels"], "poisson": ["statsmodels", "sklearn"]}


def data(model, n, p, frac):
    if model == "logistic":
        X, y = modeldata.binary(n, p, frac)
        return X, y, None
    return modeldata.counts(n, p, frac)


def ours(model, X, y, exposure):
    from hpcstudy.models import Logistic, Poisson

    if model == "logistic":
        return lambda: Logistic().fit(X, y).coef_
    return lambda: Poisson().fit(X, y, exposure).coef_


def peer(name, model, X, y, exposure):
    if name == "statsmodels":
        import statsmodels.api as sm

        Xc = sm.add_constant(X, has_constant="add")
        if model == "logistic":
            return lambda: np.asarray(sm.Logit(y, Xc).fit(disp=0, tol=1e-10).params)
        return lambda: np.asarray(sm.GLM(y, Xc, family=sm.families.Poisson(),
                                         offset=np.log(exposure)).fit(tol=1e-10).params)
    if name == "sklearn":
        from sklearn.linear_model import LogisticRegression, PoissonRegressor

        if model == "logistic":
            def fit():
                m = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10,
                                       max_iter=100).fit(X, y)
                return np.concatenate([m.intercept_, m.coef_.ravel()])
            return fit

        def fit_rate():
            m = PoissonRegressor(alpha=0.0, solver="newton-cholesky", tol=1e-10,
                                 max_iter=100).fit(X, y / exposure, sample_weight=exposure)
            return np.concatenate([[m.intercept_], m.coef_])
        return fit_rate
    raise ValueError(name)


def cold(args) -> None:
    model, n, p, frac = args
    X, y, exposure = data(model, int(n), int(p), float(frac))
    fit = ours(model, X, y, exposure)
    t0 = time.perf_counter()
    fit()
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def run_shape(model, n, p, frac, repeats):
    X, y, exposure = data(model, n, p, frac)
    child = records.run_child([sys.executable, __file__, "--cold", model, str(n), str(p),
                               str(frac)])
    cold_s = json.loads(child["stdout"])["seconds"]
    fits = {"hpcstudy": ours(model, X, y, exposure)}
    fits.update({q: peer(q, model, X, y, exposure) for q in PEERS[model]})
    times_of = {k: [] for k in fits}
    coefs = {}
    for _ in range(repeats):
        for name, fn in fits.items():
            wall, _, out = records.timed(fn)
            times_of[name].append(wall)
            coefs[name] = out
    rec = {"benchmark": "glm_peers", "model": model, "n": n, "p": p,
           "outcome_mean": round(float(y.mean()), 4), "hpcstudy_cold_s": round(cold_s, 4),
           "hpcstudy_s": records.summary(times_of["hpcstudy"])}
    med = rec["hpcstudy_s"]["median"]
    for q in PEERS[model]:
        agree = agreement(coefs["hpcstudy"], coefs[q])
        rec[f"{q}_agreement"] = agree
        if agree > AGREE:
            rec[f"{q}_note"] = f"coefficients differ by {agree:.1e} > {AGREE}: no time reported"
            continue
        rec[f"{q}_s"] = records.summary(times_of[q])
        rec[f"speedup_vs_{q}"] = round(rec[f"{q}_s"]["median"] / med, 2)
    return records.append("glm_peers", rec)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--cold":
        return cold(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default=os.environ.get("BENCH_SIZES", "quick"),
                    choices=sorted(PRESETS))
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, metavar="MODEL:N:P",
                    help="run only these cases of the preset, e.g. logistic:1000000:10")
    a = ap.parse_args()
    for model, n, p, fractions in PRESETS[a.preset]:
        if a.only is not None and f"{model}:{n}:{p}" not in a.only:
            continue
        repeats = a.repeats or (5 if n <= 100_000 else 3 if n <= 1_000_000 else 1)
        for frac in fractions:
            run_shape(model, n, p, frac, repeats)


if __name__ == "__main__":
    main()
