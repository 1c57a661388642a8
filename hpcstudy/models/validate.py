"""Turning what users pass (NumPy, CuPy, pandas, lists) into checked float arrays."""

from __future__ import annotations

import numpy as np

from hpcstudy_kernels._namespace import array_namespace, is_cupy

from .base import ModelError


def as_design(X, names=None):
    """(n, p) float64 array in its own namespace, and column names."""
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # pandas DataFrame
        names = names or [str(c) for c in X.columns]
        X = X.to_numpy(dtype=float)
    if not is_cupy(X):
        X = np.asarray(X, dtype=float)
    xp = array_namespace(X)
    X = X.astype(xp.float64, copy=False)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ModelError(f"X must be a 2-d array, got {X.ndim} dimensions")
    if not bool(xp.all(xp.isfinite(X))):
        raise ModelError("X has missing or infinite values — remove or impute them first")
    p = X.shape[1]
    names = list(names) if names is not None else [f"x{i}" for i in range(p)]
    if len(names) != p:
        raise ModelError(f"{len(names)} names for {p} columns")
    return X, names


def as_vector(v, n, what, xp):
    if hasattr(v, "to_numpy"):
        v = v.to_numpy()
    v = xp.asarray(v, dtype=xp.float64).reshape(-1)
    if v.shape[0] != n:
        raise ModelError(f"{what} has {v.shape[0]} values for {n} rows")
    if not bool(xp.all(xp.isfinite(v))):
        raise ModelError(f"{what} has missing or infinite values")
    return v
