"""Generated survival data with ties, delayed entry and strata, for peer comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd


def survival_frame(n=3000, p=4, seed=0, entry=False, strata=0, integer_days=True, weights=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[:, 0] = rng.random(n) < 0.4  # a binary exposure
    beta = np.linspace(0.5, -0.3, p)
    base = rng.exponential(1.0, n) / np.exp(X @ beta)
    t = base * 400
    c = rng.uniform(50, 600, n)
    time = np.minimum(t, c)
    event = (t <= c).astype(int)
    if integer_days:
        time = np.floor(time) + 1  # ties on the day grid
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(p)])
    df["time"], df["event"] = time, event
    if entry:
        e = np.floor(rng.uniform(0, 0.6, n) * time) if integer_days else \
            rng.uniform(0, 0.6, n) * time
        e = np.where(rng.random(n) < 0.5, 0, e)  # half enter at 0
        df["entry"] = np.minimum(e, time - 1 if integer_days else time * 0.99)
    if strata:
        df["stratum"] = rng.integers(0, strata, n)
    if weights:
        df["w"] = rng.integers(1, 4, n).astype(float)
    return df


def covariates(df):
    return [c for c in df.columns if c.startswith("x")]
