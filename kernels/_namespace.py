"""Which array library an array belongs to, without importing any GPU library.

A kernel starts with ``xp = array_namespace(x, y)`` and then uses only ``xp``: NumPy arrays
give ``numpy``, CuPy arrays give ``cupy``. CuPy is imported only when a CuPy array is already
in hand, so importing hpcstudy never pulls in CUDA.
"""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np


def is_cupy(x: object) -> bool:
    return type(x).__module__.split(".", 1)[0] == "cupy"


def _kind(a: object):
    if isinstance(a, np.ndarray):
        return np
    if is_cupy(a):
        return sys.modules["cupy"]
    ns = getattr(type(a), "__array_namespace__", None)  # e.g. hpcstudy's device stand-in
    return a.__array_namespace__() if ns is not None else np


def array_namespace(*arrays: object) -> ModuleType:
    """``numpy`` or ``cupy`` (or another namespace that announces itself through
    ``__array_namespace__``), from the arrays given (None and scalars are ignored)."""
    found = {_kind(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if len(found) > 1:
        raise TypeError("arrays of different devices mixed (NumPy and CuPy or the stand-in): "
                        "move them to one device first (device.to_device or device.to_host)")
    return found.pop() if found else np


def to_numpy(x):
    """A NumPy copy of a NumPy or CuPy array (for results, tables, printing)."""
    return x.get() if is_cupy(x) else np.asarray(x)


def asarray_like(x, like, dtype=None):
    """``x`` as an array of the same library (and device) as ``like``."""
    return array_namespace(like).asarray(x, dtype=dtype)
