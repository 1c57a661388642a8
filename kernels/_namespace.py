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


def array_namespace(*arrays: object) -> ModuleType:
    """``numpy`` or ``cupy``, from the arrays given (None and scalars are ignored)."""
    found = {is_cupy(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if found == {True}:
        return sys.modules["cupy"]
    if found == {True, False}:
        raise TypeError("mixed NumPy and CuPy arrays: move them to one device first "
                        "(cupy.asarray or .get())")
    return np


def to_numpy(x):
    """A NumPy copy of a NumPy or CuPy array (for results, tables, printing)."""
    return x.get() if is_cupy(x) else np.asarray(x)


def asarray_like(x, like, dtype=None):
    """``x`` as an array of the same library (and device) as ``like``."""
    return array_namespace(like).asarray(x, dtype=dtype)
