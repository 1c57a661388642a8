"""Benchmark: the same model fits on the GPU (CuPy arrays) where one is present — Cox (Efron;
and with 10 strata), logistic and Poisson at N = 1e6 (1e7 with BENCH_SIZES=full), p = 10 —
beside the CPU fit of the same data, with the device's name and the host <-> device transfers
of one fit (β out and packed sums back per Newton step: docs/models.md). Without CuPy or a
CUDA device it records one line saying so and exits 0.

    python benchmarks/gpu_models.py

Appends to results/gpu_models.jsonl.
"""

from __future__ import annotations

import os
import time

import modeldata
import numpy as np
import records


def device():
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
        props = cp.cuda.runtime.getDeviceProperties(0)
        return cp, props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    except Exception as e:  # noqa: BLE001 - any failure means: no usable GPU here
        return None, f"{type(e).__name__}: {e}"


def fits(xp, n, p):
    from hpcstudy.models import CoxPH, Logistic, Poisson

    X, t, e = modeldata.survival(n, p, 0.5, "days")
    Xb, y = modeldata.binary(n, p, 0.5)
    Xc, k, exposure = modeldata.counts(n, p)
    on = (lambda a: xp.asarray(a)) if xp is not None else (lambda a: a)
    strata = np.arange(n) % 10
    return {
        "cox": lambda: CoxPH().fit(on(X), on(t), on(e)).coef_,
        "cox_10_strata": lambda: CoxPH().fit(on(X), on(t), on(e), strata=on(strata)).coef_,
        "logistic": lambda: Logistic().fit(on(Xb), on(y)).coef_,
        "poisson": lambda: Poisson().fit(on(Xc), on(k), on(exposure)).coef_,
    }


def transfers_of_one_fit(fit) -> dict:
    """Host <-> device transfers (calls and bytes each way) of one fit on the GPU: counted by
    the process's GPU device, through which the fit's partitions move data."""
    from hpcstudy.models.partitions import _GPU

    dev = _GPU.get("gpu")
    if dev is None:
        return {}
    dev.transfers.reset()
    fit()
    return dev.transfers.as_dict()


def main() -> None:
    cp, name = device()
    if cp is None:
        print(f"gpu_models: skipped — no GPU ({name})")
        records.append("gpu_models", {"benchmark": "gpu_models", "skipped": name})
        return
    sizes = [1_000_000] + [10_000_000] * (os.environ.get("BENCH_SIZES") == "full")
    for n in sizes:
        gpu, cpu = fits(cp, n, 10), fits(None, n, 10)
        for model in gpu:
            t0 = time.perf_counter()
            gpu[model]()
            cp.cuda.Device().synchronize()
            cold = time.perf_counter() - t0
            g, c, coef = [], [], {}
            for _ in range(3):
                for side, fn, out in (("gpu", gpu[model], g), ("cpu", cpu[model], c)):
                    t0 = time.perf_counter()
                    coef[side] = np.asarray(fn())
                    cp.cuda.Device().synchronize()
                    out.append(time.perf_counter() - t0)
            agree = float(np.max(np.abs(coef["gpu"] - coef["cpu"])) / np.max(np.abs(coef["cpu"])))
            rec = {"benchmark": "gpu_models", "device": name, "model": model, "n": n, "p": 10,
                   "gpu_cold_s": round(cold, 4), "gpu_s": records.summary(g),
                   "cpu_s": records.summary(c), "agreement": agree,
                   "transfers_per_fit": transfers_of_one_fit(gpu[model])}
            if agree <= 1e-6:
                rec["cpu_over_gpu"] = round(rec["cpu_s"]["median"] / rec["gpu_s"]["median"], 2)
            records.append("gpu_models", rec)


if __name__ == "__main__":
    main()
