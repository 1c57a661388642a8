"""Compiled CPU passes of the Cox fit, used by ``kernels/cox.py`` on NumPy arrays.

The passes are C (``kernels/_cox_c.c``, built with the package as ``hpcstudy_kernels._cox_c``;
a C extension rather than a JIT so that the first fit in a process pays no compilation or
JIT start-up). Each pass reads the caller's row-major covariates once, in their own row order,
centring each row as it goes: no sort and no copy of X. Pass 1 computes r = w·exp(xβ − shift)
(its own exp: the same bits from the AVX2 and the baseline build) and adds r and r·x into
per-grid-point bins (deaths, survivors and late entries apart; at β = 0 r = w without exp, and
the bins at β = 0 give the deaths' fixed sums, ``fixed_sums``, and serve the first evaluation);
pass 2 adds r·v·x xᵀ — from pass 1's per-grid-point buckets of r·x xᵀ where ``one_pass`` holds
(one read of X per step), else by a second read of X, each row's grid point from its int32 slot
(``row_flags``). Everything that follows on the (small) grid is the NumPy code of
``kernels/cox.py``. Rows in fixed chunks (two threads), each summed in row order and the
chunks added in order: the same inputs give the same bytes. Where ``packs`` holds (never with
the default budget, ``PACK_BYTES = 0``), the passes read a re-laid copy of the rows made once
per fit (``pack``) instead, with the same operations in the same order: the same bits.

Used when the extension was built and ``HPCSTUDY_NO_COMPILED`` is unset (or 0); otherwise
the NumPy passes of ``kernels/cox.py`` run (the same estimates up to rounding).
"""

from __future__ import annotations

import os
import threading

import numpy as np

try:   # a source checkout without a build, or a platform without a C compiler
    from . import _cox_c
except ImportError:   # pragma: no cover - depends on the installation
    _cox_c = None

# flags of a row: it dies at its exit grid point; it enters after its stratum's first grid
# point; it is at risk at no grid point (b ≤ a: prepare drops it)
DEAD, LATE, NOT_AT_RISK = 1, 2, 4


def enabled() -> bool:
    """Whether the compiled passes are used (built, and not switched off)."""
    return _cox_c is not None and os.environ.get("HPCSTUDY_NO_COMPILED", "") in ("", "0")


# A partition's rows are split into CHUNKS fixed ranges (from _MIN_CHUNK rows each), run on
# up to as many threads (the C loops release the GIL: both cores of a small machine work on
# one fit); the chunks' sums are added in chunk order, so the bytes never depend on how many
# threads ran them.
CHUNKS = 2
_MIN_CHUNK = 1 << 16


def _ranges(n):
    k = CHUNKS if n >= CHUNKS * _MIN_CHUNK else 1
    cuts = [n * i // k for i in range(k + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _threads() -> int:
    """Threads for one partition's chunks: HPCSTUDY_THREADS, else the CPU count."""
    want = os.environ.get("HPCSTUDY_THREADS", "")
    return max(1, int(want) if want.isdigit() else (os.cpu_count() or 1))


def _run(calls):
    """The results of ``calls`` (functions of no arguments), in order; the first in this
    thread, the others in threads of their own (a thread costs ~0.1 ms, a pool's import a
    first fit 9 ms)."""
    if len(calls) == 1 or _threads() == 1:
        return [f() for f in calls]
    out, errors = [None] * len(calls), []

    def work(i):
        try:
            out[i] = calls[i]()
        except BaseException as e:   # raised again in the calling thread
            errors.append(e)

    others = [threading.Thread(target=work, args=(i,), name="hpcstudy-cox")
              for i in range(1, len(calls))]
    for t in others:
        t.start()
    work(0)
    for t in others:
        t.join()
    if errors:
        raise errors[0]
    return out


def _cut(v, lo, hi):
    return None if v is None else v[lo:hi]


def _rows(part, lo, hi, chunk=0):
    """X, keep of the kept rows lo:hi (views, no copies), the ``chunk``-th of ``_ranges``;
    where the part keeps a re-laid copy, that chunk's copy and None."""
    if part.packed is not None:
        return part.packed[chunk], None
    if part.keep.shape[0] == 0:
        return part.rows[lo:hi], part.keep
    return part.rows, part.keep[lo:hi]


# One pass over X per Newton step: pass 1 adds r z zᵀ (z = (1, x)) into per-grid-point
# buckets (deaths, survivors and late entries apart, bucket_cells(p) doubles per grid point
# each) instead of only (r, r x), and pass 2's Σ r v x xᵀ is then a sum over the grid of the
# buckets times v: no second read of X. Each row then adds p(p+1)/2 more values into its
# bucket in memory, where pass 2 keeps its sums in registers; measured at N = 1e6 on the
# 2-core machine (one thread, pass 1 + pass 2 CPU ms, one pass / two): p = 2: 16 / 31 (few
# event times), 18 / 27 (1 843 event days); p = 4: 20 / 21 and 26 / 24; p = 10: 40 / 40 and
# 59 / 43. So one pass where p ≤ ONE_PASS_P, the buckets of a chunk fit in ONE_PASS_BYTES
# (a core's cache) and there are at least ONE_PASS_ROWS rows per bucket row (the sum over the
# grid stays small beside the rows' work): a rule on the shape alone (covariates, grid points,
# late entries, rows), never on the thread count or a timing.
ONE_PASS_P = 4
ONE_PASS_BYTES = 1 << 19
ONE_PASS_ROWS = 8


# The re-laid copy (``pack``): once per fit, each chunk's kept rows centred and stored in
# blocks of four rows, each column's four values side by side, then the four rows' grid slots
# (b, dead, late). Pass 1 then sums xβ for four rows with one multiply and one add per column
# and pass 2 forms √(rv)·(x − mean) with one multiply per column, with no centring, no row
# indices and no 4 × 4 transpositions per step; the passes give the same bits either way.
# It is made where the copy (8·(p + 1) bytes a row, whole blocks of four per chunk) fits
# PACK_BYTES per partition: a rule on the shape (rows, covariates) alone. PACK_BYTES is 0,
# so no fit takes it: measured at N = 1e6, p = 10 (docs/performance.md, "Cox fits") a step
# took 7–11 % less CPU but the copy cost more than three evaluations saved (a fit 12–19 ms
# slower), as it did at p = 24; set it (e.g. 1 << 29) to take the route.
PACK_BYTES = 0


def packed_bytes(rows, p):
    """Bytes of the re-laid copy of ``rows`` kept rows of ``p`` covariates (each chunk's rows
    rounded up to whole blocks of four, 4p values and 4 slots a block)."""
    return sum((hi - lo + 3) // 4 for lo, hi in _ranges(rows)) * (4 * p + 4) * 8


def packs(rows, p):
    """Whether a partition of ``rows`` kept rows and ``p`` covariates keeps a re-laid copy."""
    return rows > 0 and packed_bytes(rows, p) <= PACK_BYTES


def pack(part):
    """The re-laid copy of the part's kept rows, one flat array per chunk of ``_ranges``
    (``_cox_c.pack``), or None where ``packs`` does not hold."""
    n, p = part.b.shape[0], part.mean.shape[0]
    if not packs(n, p):
        return None
    ranges = _ranges(n)
    out = [np.empty((hi - lo + 3) // 4 * (4 * p + 4)) for lo, hi in ranges]
    _run([lambda lo=lo, hi=hi, o=o: _cox_c.pack(part.rows, part.keep, part.mean, part.b,
                                                part.flags, lo, hi, o)
          for (lo, hi), o in zip(ranges, out, strict=True)])
    return out


def _aligned_zeros(shape):
    """Zeros starting on a 64-byte boundary (the C loops' 4-vectors never straddle a cache
    line: bucket_cells is a multiple of 4)."""
    size = int(np.prod(shape))
    raw = np.zeros(size + 8)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip:skip + size].reshape(shape)


def bucket_cells(p):
    """Doubles per grid point in a bucket of r z zᵀ (z = (1, x), p covariates): row k of
    z zᵀ from column 4⌊k/4⌋ to 1 + p rounded up to 4 (whole 4-vectors; as _cox_c)."""
    width = (p + 4) // 4 * 4
    return sum(width - k // 4 * 4 for k in range(p + 1))


def one_pass(rows, grid_size, p, late):
    """Whether a partition of ``rows`` kept rows on a grid of ``grid_size`` points with ``p``
    covariates (``late``: some row enters late) takes one pass over X per Newton step."""
    chunk = rows // len(_ranges(rows)) if rows else 0
    kinds = 3 if late else 2
    cells = grid_size * bucket_cells(p) * kinds
    return (p <= ONE_PASS_P and 8 * cells <= ONE_PASS_BYTES
            and grid_size * kinds * ONE_PASS_ROWS <= chunk)


def pass1_bins(part, beta, shift_above):
    """(shift, dead, alive, late): the bins of pass 1 at β, (G, 1 + p) each, taken times
    exp(−shift), ``shift`` chosen as ``CoxPart.risk`` chooses it (0 unless some |xβ|
    exceeds ``shift_above``, then the largest xβ). Leaves r at β in ``part.r`` and, where
    ``one_pass`` holds, the buckets of r x xᵀ in ``part.buckets`` (else None)."""
    G, p = part.grid_size, part.mean.shape[0]
    n = part.b.shape[0]
    if part.r is None:
        part.r = np.empty(n)
    beta = np.ascontiguousarray(beta, dtype=np.float64)
    unit = part.unit_weights
    ranges = _ranges(n)
    late = part.late.shape[0] > 0
    fused = one_pass(n, G, p, late)
    cells = bucket_cells(p)

    def chunk(lo, hi, shift, i):
        X, keep = _rows(part, lo, hi, i)
        bins = np.zeros((3, G, p + 1))
        more = ()
        if fused:   # (the late bucket is never written without late entries)
            buckets = _aligned_zeros((3 if late else 2, G, cells))
            more = (buckets[0], buckets[1], buckets[2 if late else 1])
        lohi = _cox_c.pass1(X, keep, part.mean, beta, part.w[lo:hi], unit, _cut(part.a, lo, hi),
                            part.b[lo:hi], part.flags[lo:hi], shift, part.r[lo:hi], bins[0],
                            bins[1], bins[2], *more)
        return bins, buckets if fused else None, lohi

    shift = 0.0
    while True:
        out = _run([lambda lo=lo, hi=hi, shift=shift, i=i: chunk(lo, hi, shift, i)
                    for i, (lo, hi) in enumerate(ranges)])
        lo = min(o[2][0] for o in out)
        hi = max(o[2][1] for o in out)
        # the first pass takes shift 0; only a huge |xβ| (a wild trial step) needs a second
        if shift != 0.0 or n == 0 or max(hi, -lo) <= shift_above:
            break
        shift = hi
    bins, buckets = out[0][0], out[0][1]
    for more, more2, _ in out[1:]:   # in chunk order
        bins += more
        if fused:
            buckets += more2
    part.shift = shift
    part._beta = beta.copy()
    part.buckets = buckets
    part.bins = (shift, bins[0], bins[1], bins[2])
    return part.bins


def pass2_sum(part, cum, e, scale):
    """Σ r v x xᵀ (p, p) at the β of the last ``pass1_bins``; see ``kernels/cox.py`` pass2.
    From pass 1's buckets where it left them, else by a second pass over X."""
    p = part.mean.shape[0]
    cum = np.ascontiguousarray(cum, dtype=np.float64)
    e = np.ascontiguousarray(e, dtype=np.float64)
    buckets = part.buckets
    if buckets is not None:
        out = np.empty((p, p))
        late = buckets[2] if buckets.shape[0] == 3 else None
        _cox_c.buckets(buckets[0], buckets[1], late, cum, e, float(scale), out)
        return out

    def chunk(lo, hi, i):
        X, keep = _rows(part, lo, hi, i)
        out = np.empty((p, p))
        more = () if part.slot is None else (part.slot[lo:hi],)
        _cox_c.pass2(X, keep, part.mean, part.r[lo:hi], _cut(part.a, lo, hi), part.b[lo:hi],
                     part.flags[lo:hi], cum, e, float(scale), out, *more)
        return out

    out = _run([lambda lo=lo, hi=hi, i=i: chunk(lo, hi, i)
                for i, (lo, hi) in enumerate(_ranges(part.b.shape[0]))])
    total = out[0]
    for more in out[1:]:
        total += more
    return total


def fixed_sums(part):
    """Deaths per grid point (count, Σw) and Σ w·x over the deaths, from pass 1 at β = 0:
    there r = w, so the deaths' bins hold (Σw, Σ w x) per grid point. Pass 1's bins stay in
    the part for the fit's first evaluation, at β = 0, which then reads X no more (one read
    of X a fit less; Σ w x is summed by grid point, not row by row)."""
    G = part.grid_size
    _, dead, _, _ = pass1_bins(part, np.zeros(part.mean.shape[0]), np.inf)
    sw = dead[:, 0].copy()
    xd = dead[:, 1:].sum(axis=0)
    if part.unit_weights:   # a count of deaths is their Σw (whole numbers: exact)
        return sw.copy(), sw, xd
    count = np.bincount(part.b[part.dead] - 1, minlength=G).astype(np.float64)
    return count, sw, xd


def row_flags(b, a, a0, event, slots=False):
    """(flags, rows at risk somewhere): each row's DEAD | LATE | NOT_AT_RISK, in one pass.
    ``a`` None: everyone at risk from the first grid point; ``a0`` None: one stratum. With
    ``slots``, (flags, kept, slot): each row's grid slot too, int32 2(b − 1) + dead (+ 2^31
    entering late), which pass 2 reads in place of b and flags (4 bytes a row, not 9)."""
    flags = np.empty(b.shape[0], dtype=np.uint8)
    args = [None if v is None else np.ascontiguousarray(v, dtype=np.int64) for v in (b, a, a0)]
    slot = np.empty(b.shape[0], dtype=np.uint32) if slots else None
    kept = _cox_c.row_flags(*args, np.ascontiguousarray(event, dtype=np.float64), flags,
                            *(() if slot is None else (slot,)))
    return (flags, kept, slot) if slots else (flags, kept)


def day_ranks(t, first, table, size):
    """``searchsorted(times, t, side="right")`` for grid times that are all whole days from
    ``first``, ``table`` the rank of each day from there, ``size`` the number of grid times."""
    out = np.empty(t.shape[0], dtype=np.int64)
    _cox_c.day_ranks(np.ascontiguousarray(t, dtype=np.float64), float(first),
                     np.ascontiguousarray(table, dtype=np.int64), int(size), out)
    return out


def grid_products(s1, e1, c, e, alpha, beta, gamma):
    """(score, outer): Σ_j c_j S1_j − e_j E1_j and Σ_j α_j S1_j S1_jᵀ − β_j (S1_j E1_jᵀ +
    E1_j S1_jᵀ) + γ_j E1_j E1_jᵀ over the grid (``e1`` None: the c and α terms only), in
    one thread (BLAS on (G, p) arrays starts threads that spin on a busy machine)."""
    p = s1.shape[1]
    score, outer = np.zeros(p), np.zeros((p, p))
    f64 = [np.ascontiguousarray(v, dtype=np.float64) for v in (s1, c, e, alpha, beta, gamma)]
    e1 = None if e1 is None else np.ascontiguousarray(e1, dtype=np.float64)
    _cox_c.grid_products(f64[0], e1, *f64[1:], score, outer)
    return score, outer


# Efron's terms take the grid in two halves of the deaths (two threads) from this many
# deaths on: the split depends on the deaths alone, never on the thread count.
_EFRON_SPLIT = 1 << 16


def efron_terms(s0, e0, m, dw, underflow):
    """Efron's per-grid-point sums (c, e, alpha, beta, gamma), Σ w·log den, and whether some
    den is below ``underflow``: what ``kernels/cox.py`` ``_efron_block`` gives, one grid point
    at a time without expanding the deaths."""
    G = s0.shape[0]
    out = [np.zeros(G) for _ in range(5)]
    arrays = [np.ascontiguousarray(v, dtype=np.float64) for v in (s0, e0, m, dw)]
    deaths = np.cumsum(arrays[2])
    cut = 0
    if G > 1 and deaths[-1] >= _EFRON_SPLIT:   # the grid point where half the deaths are in
        cut = min(max(int(np.searchsorted(deaths, deaths[-1] / 2)), 1), G - 1)
    ranges = [(0, cut), (cut, G)] if cut else [(0, G)]
    parts = _run([lambda lo=lo, hi=hi: _cox_c.efron(*(a[lo:hi] for a in arrays),
                                                    float(underflow),
                                                    *(o[lo:hi] for o in out))
                  for lo, hi in ranges])
    ll = parts[0][0]
    for more, _ in parts[1:]:   # in grid order
        ll += more
    return (*out, ll, any(bad for _, bad in parts))


__all__ = ["enabled", "one_pass", "packs", "packed_bytes", "pack", "pass1_bins", "pass2_sum",
           "fixed_sums", "efron_terms", "day_ranks", "row_flags", "grid_products", "DEAD", "LATE",
           "NOT_AT_RISK"]
