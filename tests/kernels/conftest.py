"""The ``xp`` fixture: every kernel test runs on NumPy and, where a GPU is usable, on CuPy.

These tests need only NumPy, pytest (and CuPy for the GPU half), so they run on a GPU machine
without dask, pyarrow or the rest of hpcstudy's stack: ``make test-gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest


def _cupy_or_reason():
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - any import failure means "no GPU here"
        return None, f"CuPy not importable ({type(e).__name__})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "no CUDA device"
    except Exception as e:  # noqa: BLE001
        return None, f"no usable CUDA device ({type(e).__name__})"
    return cupy, None


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "numpy":
        return np
    cupy, why = _cupy_or_reason()
    if cupy is None:
        pytest.skip(why)
    return cupy


def host(a):
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a)
