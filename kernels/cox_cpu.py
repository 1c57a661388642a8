"""Compiled CPU passes of the Cox fit, used by ``kernels/cox.py`` on NumPy arrays.

The passes are C (``kernels/_cox_c.c``, built with the package as ``hpcstudy_kernels._cox_c``;
a C extension rather than a JIT so that the first fit in a process pays no compilation or
JIT start-up). Each pass reads the caller's row-major covariates once, in their own row order,
centring each row as it goes: no sort and no copy of X. Pass 1 computes r = w·exp(xβ − shift)
and adds r and r·x into per-grid-point bins (deaths, survivors and late entries apart); pass 2
adds r·v·x xᵀ. Everything that follows on the (small) grid is the NumPy code of
``kernels/cox.py``. One thread per partition, rows in a fixed order: the same inputs give
the same bytes.

Used when the extension was built and ``HPCSTUDY_NO_COMPILED`` is unset (or 0); otherwise
the NumPy passes of ``kernels/cox.py`` run (the same estimates up to rounding).
"""

from __future__ import annotations

import os

import numpy as np

try:   # a source checkout without a build, or a platform without a C compiler
    from . import _cox_c
except ImportError:   # pragma: no cover - depends on the installation
    _cox_c = None

# flags of a kept row: it dies at its exit grid point; it enters after its stratum's first
DEAD, LATE = 1, 2


def enabled() -> bool:
    """Whether the compiled passes are used (built, and not switched off)."""
    return _cox_c is not None and os.environ.get("HPCSTUDY_NO_COMPILED", "") in ("", "0")


def pass1_bins(part, beta, shift_above):
    """(shift, dead, alive, late): the bins of pass 1 at β, (G, 1 + p) each, taken times
    exp(−shift), ``shift`` chosen as ``CoxPart.risk`` chooses it (0 unless some |xβ|
    exceeds ``shift_above``, then the largest xβ). Leaves r at β in ``part.r``."""
    G, p = part.grid_size, part.mean.shape[0]
    if part.r is None:
        part.r = np.empty(part.b.shape[0])
    beta = np.ascontiguousarray(beta, dtype=np.float64)
    shift = 0.0
    while True:
        bins = np.zeros((3, G, p + 1))
        lo, hi = _cox_c.pass1(part.rows, part.keep, part.mean, beta, part.w,
                              part.unit_weights, part.a, part.b, part.flags, shift, part.r,
                              bins[0], bins[1], bins[2])
        # the first pass takes shift 0; only a huge |xβ| (a wild trial step) needs a second
        if shift != 0.0 or part.b.shape[0] == 0 or max(hi, -lo) <= shift_above:
            break
        shift = hi
    part.shift = shift
    part._beta = beta.copy()
    return shift, bins[0], bins[1], bins[2]


def pass2_sum(part, cum, e, scale):
    """Σ r v x xᵀ (p, p) at the β of the last ``pass1_bins``; see ``kernels/cox.py`` pass2."""
    p = part.mean.shape[0]
    out = np.empty((p, p))
    _cox_c.pass2(part.rows, part.keep, part.mean, part.r, part.a, part.b, part.flags,
                 np.ascontiguousarray(cum, dtype=np.float64),
                 np.ascontiguousarray(e, dtype=np.float64), float(scale), out)
    return out


def fixed_sums(part):
    """Deaths per grid point (count, Σw) and Σ w·x over the deaths."""
    G, p = part.grid_size, part.mean.shape[0]
    count, sw, xd = np.zeros(G), np.zeros(G), np.zeros(p)
    _cox_c.fixed(part.rows, part.keep, part.mean, part.w, part.unit_weights, part.b,
                 part.flags, count, sw, xd)
    return count, sw, xd


__all__ = ["enabled", "pass1_bins", "pass2_sum", "fixed_sums", "DEAD", "LATE"]
