"""Turning what users pass (NumPy, CuPy, pandas, lists) into checked float arrays."""

from __future__ import annotations

import numpy as np

from hpcstudy_kernels._namespace import array_namespace

from ..devices import device_of
from .base import ModelError


def host_bool(flag) -> bool:
    """A 0-d boolean array as a Python bool; a device's comes through its counted
    ``to_host`` (the stand-in refuses ``bool()`` of its arrays, as a GPU would sync)."""

    return bool(host_value(flag))


def host_value(x):
    """A (small) array on the host: a device's through its counted ``to_host``."""
    from .partitions import part_device

    dev = part_device((x,))
    return x if dev is None else dev.to_host(x)


def all_finite(a, xp) -> bool:
    """Whether every value of ``a`` is finite. On the CPU first by its sum, one pass without a
    temporary: a NaN or ±inf anywhere makes the sum non-finite, so a finite sum proves it
    (an overflowing or non-finite sum is then checked value by value)."""
    if xp is np and a.size:
        with np.errstate(over="ignore", invalid="ignore"):
            if bool(np.isfinite(a.sum())):
                return True
    return host_bool(xp.all(xp.isfinite(a)))


def as_design(X, names=None):
    """(n, p) float64 array in its own namespace, and column names."""
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):  # pandas DataFrame
        names = names or [str(c) for c in X.columns]
        X = X.to_numpy(dtype=float)
    if device_of(X) == "cpu":
        X = np.asarray(X, dtype=float)
    xp = array_namespace(X)
    X = X.astype(xp.float64, copy=False)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ModelError(f"X must be a 2-d array, got {X.ndim} dimensions")
    if not all_finite(X, xp):
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
    if not all_finite(v, xp):
        raise ModelError(f"{what} has missing or infinite values")
    return v
