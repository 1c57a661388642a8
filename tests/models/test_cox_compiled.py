"""The Cox fit's compiled CPU passes (kernels/_cox_c.c through kernels/cox_cpu.py) against the
NumPy passes they replace (HPCSTUDY_NO_COMPILED=1): the same estimates to 1e-12 with ties,
weights, delayed entry, rows never at risk, strata and clustered errors, by one pass over X per
Newton step (small grids, few covariates) and by two; the same bytes run after run, whatever
the number of threads and from either compiled clone (AVX2 or baseline); exp within 1 ulp;
any memory layout of X; and the C functions refuse sizes and indices that would read or write
out of bounds instead of crashing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from hpcstudy.models import CoxPH
from hpcstudy_kernels import cox as K
from hpcstudy_kernels import cox_cpu

from .data import covariates, survival_frame


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def close(a, b, rtol=1e-12):
    """Equal to ``rtol`` of the array's largest entry (sums of mixed signs may cancel)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.max(np.abs(b))))


def test_the_compiled_passes_are_built():
    # a build without them would silently fall back to the (slower) NumPy passes
    assert cox_cpu._cox_c is not None, (
        "hpcstudy_kernels._cox_c is missing: rebuild with `pip install -e .` (needs a C "
        "compiler)")


def fit(df, ties, *, entry=False, strata=False, weights=False, robust=None, X=None):
    cols = covariates(df)
    return CoxPH(ties, robust=robust).fit(
        df[cols].to_numpy() if X is None else X, df.time, df.event,
        entry=df.entry if entry else None, strata=df.stratum if strata else None,
        weights=df.w if weights else None, cluster=df.person if robust else None)


CASES = {
    "plain": ({}, {}),
    "weights, delayed entry": ({"entry": True, "weights": True},
                               {"entry": True, "weights": True}),
    "strata, delayed entry": ({"entry": True, "strata": 4}, {"entry": True, "strata": True}),
    "clustered errors": ({"entry": True}, {"entry": True, "robust": True}),
}


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_and_numpy_fits_agree(monkeypatch, ties, case):
    make, kw = CASES[case]
    df = survival_frame(n=3000, seed=7, **make)
    df["person"] = np.arange(len(df)) // 2   # two rows per person
    if kw.get("entry"):
        # rows that leave before the first event are never at risk: prepare drops them
        first = df.time[df.event == 1].min()
        df.loc[df.index[:25], ["entry", "time", "event"]] = [0.0, first - 0.5, 0]
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    fast = fit(df, ties, **kw)
    monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
    slow = fit(df, ties, **kw)
    assert fast.n_iter_ == slow.n_iter_
    assert rel(fast.coef_, slow.coef_) < 1e-12
    assert rel(fast.se_, slow.se_) < 1e-12
    assert rel(fast.loglik_, slow.loglik_) < 1e-12


def _prepared(df, monkeypatch, compiled):
    if compiled:
        monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    else:
        monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
    X = df[covariates(df)].to_numpy()
    t, e = df.time.to_numpy(), df.event.to_numpy().astype(float)
    s = np.zeros(len(df), np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    return K.prepare(X, t, e, None, s, np.ones(len(df)), grid, X.mean(axis=0))


def test_the_switch_chooses_the_passes(monkeypatch):
    df = survival_frame(n=500, seed=2)
    assert _prepared(df, monkeypatch, True).compiled
    assert not _prepared(df, monkeypatch, False).compiled


def test_risk_sums_agree_past_exp_range(monkeypatch):
    # a trial β with |xβ| far beyond 709: both passes shift by the largest xβ, so the sums
    # (and their shift) agree instead of overflowing
    df = survival_frame(n=2000, seed=3)
    beta = np.array([900.0, -400.0, 300.0, 0.0])
    got = {}
    for compiled in (True, False):
        part = _prepared(df, monkeypatch, compiled)
        got[compiled] = K.pass1(part, beta)
    assert got[False][0] > 709
    assert got[True][0] == pytest.approx(got[False][0], rel=1e-13)
    for a, b in zip(got[True][1:], got[False][1:], strict=True):
        assert np.all(np.isfinite(a))
        close(a, b, rtol=1e-11)


@pytest.mark.parametrize("route", ["one pass", "two passes"])
def test_same_bytes_every_run_and_any_thread_count(monkeypatch, route):
    # more rows than one chunk, so the rows are split into chunks (cox_cpu.CHUNKS)
    n = 2 * cox_cpu.CHUNKS * cox_cpu._MIN_CHUNK + 17
    df = survival_frame(n=n, p=3, seed=5)
    assert len(cox_cpu._ranges(n)) == cox_cpu.CHUNKS > 1
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    if route == "two passes":
        monkeypatch.setattr(cox_cpu, "ONE_PASS_P", 0)
    seen = watch_routes(monkeypatch)
    runs = []
    for threads in ("2", "1", "2"):
        monkeypatch.setenv("HPCSTUDY_THREADS", threads)
        m = fit(df, "efron")
        runs.append(m.coef_.tobytes() + m.se_.tobytes() + np.float64(m.loglik_).tobytes())
    assert runs[0] == runs[1] == runs[2]
    assert seen == {route}


def test_any_memory_layout_of_X_gives_the_same_fit():
    df = survival_frame(n=2000, seed=4)
    X = df[covariates(df)].to_numpy()
    ref = fit(df, "efron", X=np.ascontiguousarray(X))
    wide = np.zeros((X.shape[0], 2 * X.shape[1]))
    wide[:, ::2] = X
    for other in (np.asfortranarray(X), wide[:, ::2]):
        m = fit(df, "efron", X=other)
        assert rel(m.coef_, ref.coef_) < 1e-12 and rel(m.se_, ref.se_) < 1e-12


@pytest.mark.parametrize("scale", [1.0, 1e-140, 1e160])   # risk sums near the product's
def test_efron_terms_equal_the_numpy_expansion(monkeypatch, scale):   # range (cox_cpu) and past
    rng = np.random.default_rng(3)
    G = 60
    m = rng.choice([0, 1, 2, 3, 7, 60, 1000], size=G).astype(float)
    dw = m * rng.uniform(0.5, 2.0, G)
    e0 = rng.uniform(0.5, 2.0, G) * np.maximum(m, 1) * scale
    s0 = e0 + rng.uniform(0.1, 50.0, G) * scale
    s1, e1 = rng.normal(size=(G, 3)), rng.normal(size=(G, 3))
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    fast = K.grid_terms(s0, s1, e0, e1, m, dw, "efron")
    monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
    slow = K.grid_terms(s0, s1, e0, e1, m, dw, "efron")
    for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
        if i == 2 and scale > 1:   # the information's 1/den² is subnormal there: no digits
            continue
        close(a, b)
    # a risk set that underflows makes the log-likelihood NaN (Newton halves the step)
    s0[np.argmax(m)] = 1e-200
    e0 = e0 / scale
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED")
    assert np.isnan(K.grid_terms(s0, s1, e0 * 1e-220, e1, m, dw, "efron")[0])


def test_day_ranks_equal_searchsorted_for_any_time():
    times = np.array([3.0, 4.0, 9.0, 10.0, 250.0])
    table = np.searchsorted(times, np.arange(3.0, 251.0), side="right")
    t = np.array([-1e300, -5.0, 0.0, 2.9999, 3.0, 3.5, 8.99, 9.0, 249.5, 250.0, 250.0001,
                  1e17, 1e300, -0.0])
    got = cox_cpu.day_ranks(t, 3, table, times.shape[0])
    np.testing.assert_array_equal(got, np.searchsorted(times, t, side="right"))


@pytest.mark.parametrize("kind", ["days", "negative days", "fractions", "wide span"])
def test_unique_event_times_equal_numpy_unique(kind):
    rng = np.random.default_rng(1)
    t = np.floor(rng.exponential(300, 50_000)) + 1
    if kind == "negative days":
        t -= 400
    elif kind == "fractions":
        t[::1000] += 0.5
    elif kind == "wide span":
        t[0] = 1e9
    got = K._unique_times(t)
    np.testing.assert_array_equal(got, np.unique(t))


def _pass1_args(n=100, p=3, G=5):
    rows = np.zeros((n, p))
    args = dict(X=rows, keep=np.zeros(0, np.int64), mean=np.zeros(p), beta=np.zeros(p),
                w=np.ones(n), unit=True, a=np.zeros(n, np.int64), b=np.full(n, G, np.int64),
                flags=np.zeros(n, np.uint8), shift=0.0, r=np.empty(n),
                dead=np.zeros((G, p + 1)), alive=np.zeros((G, p + 1)),
                late=np.zeros((G, p + 1)))
    return args


@pytest.mark.parametrize("bad", ["b past the grid", "b zero", "a not below b", "keep past X",
                                 "short flags", "short X", "bins not (G, 1 + p)",
                                 "read-only r", "int32 b"])
def test_c_passes_refuse_what_would_go_out_of_bounds(bad):
    args = _pass1_args()
    n, G = 100, 5
    if bad == "b past the grid":
        args["b"][37] = G + 1
    elif bad == "b zero":
        args["b"][0] = 0
    elif bad == "a not below b":
        args["a"][5] = G
    elif bad == "keep past X":
        args["keep"] = np.arange(n, dtype=np.int64)
        args["keep"][-1] = n
    elif bad == "short flags":
        args["flags"] = args["flags"][:-1]
    elif bad == "short X":
        args["X"] = args["X"][:-1]
    elif bad == "bins not (G, 1 + p)":
        args["alive"] = np.zeros((G + 1, 4))
    elif bad == "read-only r":
        args["r"].setflags(write=False)
    elif bad == "int32 b":
        args["b"] = args["b"].astype(np.int32)
    with pytest.raises((ValueError, TypeError, BufferError)):
        cox_cpu._cox_c.pass1(*args.values())
    ok = _pass1_args()
    assert cox_cpu._cox_c.pass1(*ok.values()) == (0.0, 0.0)


def test_late_flag_without_entries_is_refused():
    args = _pass1_args()
    args["a"] = None            # everyone at risk from the first grid point …
    args["flags"][3] = cox_cpu.LATE   # … yet a row says it entered late
    with pytest.raises(ValueError, match="out of range"):
        cox_cpu._cox_c.pass1(*args.values())
    args["flags"][3] = 0
    assert cox_cpu._cox_c.pass1(*args.values()) == (0.0, 0.0)


@pytest.mark.parametrize("with_a0", [False, True])
def test_row_flags_equal_their_definition(with_a0):
    rng = np.random.default_rng(8)
    n = 5000
    b = rng.integers(0, 30, n)
    a = rng.integers(0, 30, n)
    a0 = rng.integers(0, 10, n) if with_a0 else None
    event = rng.choice([0.0, 1.0, 2.5, -0.0], n)
    flags, kept = cox_cpu.row_flags(b, a, a0, event)
    late = a > (a0 if with_a0 else 0)
    want = (event != 0) * cox_cpu.DEAD + late * cox_cpu.LATE + (b <= a) * cox_cpu.NOT_AT_RISK
    np.testing.assert_array_equal(flags, want)
    assert kept == int((b > a).sum())
    flags, kept = cox_cpu.row_flags(b, None, None, event)
    np.testing.assert_array_equal(flags, (event != 0) * cox_cpu.DEAD +
                                  (b <= 0) * cox_cpu.NOT_AT_RISK)
    # each row's grid slot: 2(b − 1) + dead, 2^31 added for a late entry; b < 1 none (2^31 − 1)
    flags, kept, slot = cox_cpu.row_flags(b, a, a0, event, slots=True)
    assert slot.dtype == np.uint32 and kept == int((b > a).sum())
    want = np.where(b >= 1, 2 * (b - 1) + (event != 0) + late * 2**31, 2**31 - 1)
    np.testing.assert_array_equal(slot, want)


def test_pass2_from_the_slots_gives_the_bytes_of_b_and_flags(monkeypatch):
    # pass 2 reads each row's slot in place of b and flags: the same sums, bit for bit, with
    # late entries, rows never at risk (keep) and strata
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    monkeypatch.setattr(cox_cpu, "_MIN_CHUNK", 200)   # two chunks
    df = survival_frame(n=3000, seed=21, entry=True, strata=3)
    X = df[covariates(df)].to_numpy()
    t, e, entry = df.time.to_numpy(), df.event.to_numpy().astype(float), df.entry.to_numpy()
    s = df.stratum.to_numpy().astype(np.int64)
    after = t > t[e > 0].max() + 1   # entering after the last event time: never at risk
    entry[after] = t[after] - 1
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    part = K.prepare(X, t, e, entry, s, np.ones(len(df)), grid, X.mean(axis=0))
    assert part.slot is not None and part.late.shape[0] > 0 and part.keep.shape[0] > 0
    beta = np.linspace(0.2, -0.2, X.shape[1])
    rng = np.random.default_rng(2)
    c, ee = rng.random(grid.size), rng.random(grid.size) * 0.1
    K.pass1(part, beta)
    with_slots = K.pass2(part, beta, c, ee)
    part.slot = None
    assert with_slots.tobytes() == K.pass2(part, beta, c, ee).tobytes()


@pytest.mark.parametrize("zero", [0.0, -0.0])
def test_pass1_at_beta_zero_takes_r_as_the_weights_with_the_same_bytes(monkeypatch, zero):
    # a fit's first evaluation (β = 0) skips xβ and exp (r = w exactly); its sums must be the
    # bytes of the route that computes them (the re-laid copy: xβ, exp(0) = 1) and equal an
    # independent NumPy sum over the risk sets
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    df = survival_frame(n=2500, seed=23, entry=True, weights=True)
    X = df[covariates(df)].to_numpy()
    t, e, entry = df.time.to_numpy(), df.event.to_numpy().astype(float), df.entry.to_numpy()
    w = df.w.to_numpy()
    s = np.zeros(len(df), np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    beta = np.full(X.shape[1], zero)
    got = {}
    for budget in (0, 1 << 40):   # the row route, then the re-laid copy
        monkeypatch.setattr(cox_cpu, "PACK_BYTES", budget)
        part = K.prepare(X, t, e, entry, s, w, grid, X.mean(axis=0))
        assert (part.packed is not None) == bool(budget)
        got[budget] = K.pass1(part, beta)
        if not budget:
            assert part.r.tobytes() == w.tobytes()
    for a, b in zip(got[0], got[1 << 40], strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    times = np.asarray(grid.times)
    at_risk = (entry[None, :] < times[:, None]) & (times[:, None] <= t[None, :])
    Xc = X - X.mean(axis=0)
    close(got[0][1], at_risk.astype(float) @ w)
    close(got[0][2], (at_risk * w) @ Xc)


@pytest.mark.parametrize("weights", [False, True])
def test_fixed_sums_from_pass1_at_zero_equal_the_deaths_sums(monkeypatch, weights):
    # the deaths' count, Σw and Σ w (x − mean) per grid point now come from pass 1's bins at
    # β = 0; against a direct NumPy sum, with late entries, strata, rows never at risk, and the
    # first evaluation at β = 0 reusing those bins (no second pass: the same bytes as one)
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    df = survival_frame(n=2000, seed=29, entry=True, strata=2, weights=weights)
    X = df[covariates(df)].to_numpy()
    t, e, entry = df.time.to_numpy(), df.event.to_numpy().astype(float), df.entry.to_numpy()
    w = df.w.to_numpy() if weights else np.ones(len(df))
    s = df.stratum.to_numpy().astype(np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    mean = X.mean(axis=0)
    part = K.prepare(X, t, e, entry, s, w, grid, mean)
    count, sw, xd = K.fixed_sums(part)
    keys = np.asarray(grid.keys)
    d = e == 1
    at = np.searchsorted(keys, np.asarray(grid.key(s, t))[d], side="right") - 1
    np.testing.assert_array_equal(count, np.bincount(at, minlength=grid.size))
    close(sw, np.bincount(at, weights=w[d], minlength=grid.size))
    close(xd, ((X[d] - mean) * w[d, None]).sum(axis=0), rtol=1e-11)
    reused = K.pass1(part, np.zeros(X.shape[1]))
    part.bins = None   # the same evaluation computed afresh
    again = K.pass1(part, np.zeros(X.shape[1]))
    for a, b in zip(reused, again, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("bad", ["slot past the grid", "no slot", "late without entries",
                                 "late entering at zero", "int64 slot", "short slot"])
def test_pass2_refuses_a_slot_that_would_read_out_of_bounds(bad):
    n, p, G = 100, 3, 5
    X, mean, r = np.ones((n, p)), np.zeros(p), np.ones(n)
    b = np.full(n, G, np.int64)
    a = np.zeros(n, np.int64)
    flags = np.zeros(n, np.uint8)
    slot = np.full(n, 2 * (G - 1), np.uint32)
    cum, e, out = np.linspace(0.0, 1.0, G + 1), np.zeros(G), np.empty((p, p))
    entries = None
    if bad == "slot past the grid":
        slot[7] = 2 * G
    elif bad == "no slot":
        slot[7] = 2**31 - 1
    elif bad == "late without entries":
        slot[7] |= np.uint32(2**31)
    elif bad == "late entering at zero":
        slot[7] |= np.uint32(2**31)
        entries = a
    elif bad == "int64 slot":
        slot = slot.astype(np.int64)
    elif bad == "short slot":
        slot = slot[:-1]
    args = (X, np.zeros(0, np.int64), mean, r, entries, b, flags, cum, e, 1.0, out)
    with pytest.raises(ValueError):
        cox_cpu._cox_c.pass2(*args, slot)
    cox_cpu._cox_c.pass2(*args, np.full(n, 2 * (G - 1), np.uint32))
    np.testing.assert_array_equal(out, n * 1.0 * np.ones((p, p)))   # Σ r v x xᵀ, v = cum[G]


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_grid_products_equal_numpy(ties):
    rng = np.random.default_rng(6)
    G, p = 300, 5
    s1, e1 = rng.normal(size=(G, p)), rng.normal(size=(G, p))
    c, e, alpha, beta, gamma = rng.random((5, G))
    if ties == "breslow":
        e = beta = gamma = np.zeros(G)
    score, outer = cox_cpu.grid_products(s1, None if ties == "breslow" else e1, c, e, alpha,
                                         beta, gamma)
    cross = (s1 * beta[:, None]).T @ e1
    want = (s1 * alpha[:, None]).T @ s1 - cross - cross.T + (e1 * gamma[:, None]).T @ e1
    close(score, c @ s1 - e @ e1)
    close(outer, want)
    assert np.array_equal(outer, outer.T)


def test_finite_check_by_sum_keeps_its_answers():
    from hpcstudy.models.base import ModelError
    from hpcstudy.models.validate import as_design

    huge = np.array([[1e308, 1.0], [1e308, 2.0]])   # finite values whose sum overflows
    assert as_design(huge)[0] is not None
    for bad in (np.nan, np.inf, -np.inf):
        X = np.ones((4, 2))
        X[2, 1] = bad
        with pytest.raises(ModelError, match="missing or infinite"):
            as_design(X)
    X = np.ones((4, 2))
    X[0, 0], X[1, 1] = np.inf, -np.inf   # a sum of NaN
    with pytest.raises(ModelError, match="missing or infinite"):
        as_design(X)


def test_an_error_in_a_chunk_thread_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(cox_cpu, "_MIN_CHUNK", 100)
    monkeypatch.setenv("HPCSTUDY_THREADS", "2")
    df = survival_frame(n=1000, seed=9)
    part = _prepared(df, monkeypatch, True)
    assert len(cox_cpu._ranges(part.b.shape[0])) == cox_cpu.CHUNKS
    part.b[-1] = part.grid_size + 5   # a row of the last chunk points past the grid
    with pytest.raises(ValueError, match="out of range"):
        K.pass1(part, np.zeros(4))


# -- one pass over X per Newton step (cox_cpu.one_pass) -------------------------------------

def watch_routes(monkeypatch):
    """The set of routes ("one pass", "two passes") pass 1 takes from now on."""
    seen = set()
    real = cox_cpu.pass1_bins

    def spy(part, beta, shift_above):
        out = real(part, beta, shift_above)
        seen.add("one pass" if part.buckets is not None else "two passes")
        return out

    monkeypatch.setattr(cox_cpu, "pass1_bins", spy)
    return seen


def coarse(df, days=20):
    """The same data on a grid of about 600 / ``days`` event times (small buckets)."""
    df = df.copy()
    df["time"] = np.ceil(df.time / days)
    if "entry" in df:
        df["entry"] = np.minimum(np.floor(df.entry / days), df.time - 1)
    return df


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("route", ["one pass", "two passes"])
def test_both_routes_agree_with_the_numpy_passes(monkeypatch, ties, case, route):
    make, kw = CASES[case]
    df = coarse(survival_frame(n=3000, seed=11, **make))
    df["person"] = np.arange(len(df)) // 2
    if kw.get("entry"):   # rows never at risk, as above
        df.loc[df.index[:25], ["entry", "time", "event"]] = [0.0, 0.5, 0]
    monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
    slow = fit(df, ties, **kw)
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED")
    if route == "two passes":
        monkeypatch.setattr(cox_cpu, "ONE_PASS_P", 0)
    seen = watch_routes(monkeypatch)
    fast = fit(df, ties, **kw)
    assert seen == {route}
    assert fast.n_iter_ == slow.n_iter_
    assert rel(fast.coef_, slow.coef_) < 1e-12
    assert rel(fast.se_, slow.se_) < 1e-12
    assert rel(fast.loglik_, slow.loglik_) < 1e-12


def test_one_pass_agrees_with_lifelines(monkeypatch):
    from lifelines import CoxPHFitter

    df = coarse(survival_frame(n=1500, seed=12, entry=True, strata=3), days=40)
    cols = covariates(df)
    seen = watch_routes(monkeypatch)
    m = CoxPH("efron").fit(df[cols], df.time, df.event, entry=df.entry, strata=df.stratum)
    assert seen == {"one pass"}
    ref = CoxPHFitter().fit(df, "time", "event", entry_col="entry", strata=["stratum"],
                            fit_options={"precision": 1e-12, "step_size": 0.95,
                                         "max_steps": 200})
    assert rel(m.coef_, ref.params_[cols].values) < 1e-6
    assert rel(m.se_, ref.standard_errors_[cols].values) < 1e-6
    assert m.loglik_ == pytest.approx(ref.log_likelihood_, rel=1e-10)


@pytest.mark.parametrize("shape", [(10, 30, False, 10**5, False), (5, 30, False, 10**5, False),
                                   (4, 30, True, 30 * 3 * 8, True),
                                   (4, 30, True, 30 * 3 * 8 - 1, False),
                                   (4, 30, False, 30 * 2 * 8, True), (1, 1, False, 16, True)])
def test_one_pass_is_chosen_by_the_shape_alone(monkeypatch, shape):
    p, G, late, rows, want = shape
    # p ≤ 4, at least ONE_PASS_ROWS (8) rows per bucket row, buckets within ONE_PASS_BYTES
    assert cox_cpu.ONE_PASS_P == 4 and cox_cpu.ONE_PASS_ROWS == 8
    for threads in ("1", "2"):   # never the thread count
        monkeypatch.setenv("HPCSTUDY_THREADS", threads)
        assert cox_cpu.one_pass(rows, G, p, late) == want
    big = cox_cpu.ONE_PASS_BYTES // (8 * cox_cpu.bucket_cells(4) * 2) + 1
    assert not cox_cpu.one_pass(10**9, big, 4, False)
    assert cox_cpu.one_pass(10**9, big - 1, 4, False)


def test_bucket_cells_equal_the_c_layout():
    for p in range(1, 40):
        assert cox_cpu.bucket_cells(p) == cox_cpu._cox_c.bucket_cells(p)
        assert cox_cpu.bucket_cells(p) % 4 == 0   # whole 4-vectors


def test_buckets_refuse_the_wrong_sizes():
    G, p = 5, 3
    cells = cox_cpu.bucket_cells(p)
    args = _pass1_args(p=p, G=G)
    args.update(dead2=np.zeros((G, cells)), alive2=np.zeros((G, cells)),
                late2=np.zeros((G, cells - 4)))
    with pytest.raises(ValueError, match="late2"):
        cox_cpu._cox_c.pass1(*args.values())
    args["late2"] = np.zeros((G, cells))
    assert cox_cpu._cox_c.pass1(*args.values()) == (0.0, 0.0)
    # the buckets' first row is the bins: (r, r x) of every row (r = 1 at β = 0)
    assert args["alive2"][G - 1, 0] == 100 and args["alive"][G - 1, 0] == 100
    out = np.empty((p, p))
    with pytest.raises(ValueError):
        cox_cpu._cox_c.buckets(args["dead2"], args["alive2"], None, np.zeros(G), np.zeros(G),
                               1.0, out)   # cum must be G + 1 long
    with pytest.raises(ValueError):
        cox_cpu._cox_c.buckets(args["dead2"], args["alive2"], None, np.zeros(G + 1),
                               np.zeros(G), 1.0, np.empty((p, p + 1)))


def test_pass2_from_buckets_equals_pass2_over_the_rows(monkeypatch):
    df = coarse(survival_frame(n=4000, seed=13, entry=True))
    X = df[covariates(df)].to_numpy()
    t, e, entry = df.time.to_numpy(), df.event.to_numpy().astype(float), df.entry.to_numpy()
    s = np.zeros(len(df), np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    part = K.prepare(X, t, e, entry, s, np.ones(len(df)), grid, X.mean(axis=0))
    beta = np.array([0.3, -0.2, 0.1, 0.05])
    rng = np.random.default_rng(0)
    c, ee = rng.random(grid.size), rng.random(grid.size) * 0.1
    K.pass1(part, beta)
    assert part.buckets is not None and part.buckets.shape[0] == 3   # late entries apart
    one = K.pass2(part, beta, c, ee)
    monkeypatch.setattr(cox_cpu, "ONE_PASS_P", 0)
    K.pass1(part, beta * 1.0000001)   # a new β: pass 1 again, now without buckets
    K.pass1(part, beta)
    assert part.buckets is None
    close(one, K.pass2(part, beta, c, ee), rtol=1e-13)
    assert np.array_equal(one, one.T)


@pytest.mark.parametrize("beta", [[900.0, -400.0, 300.0, 0.0], [0.3, -0.2, 0.1, 0.05]])
def test_both_routes_give_pass2_at_any_shift(monkeypatch, beta):
    # past exp's range the risks are shifted by the largest xβ; pass 2's sums at the combined
    # shift of another partition are scaled by exp(own shift − that shift), from the buckets too
    df = coarse(survival_frame(n=3000, seed=15))
    X = df[covariates(df)].to_numpy()
    t, e = df.time.to_numpy(), df.event.to_numpy().astype(float)
    s = np.zeros(len(df), np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    beta = np.array(beta)
    rng = np.random.default_rng(1)
    c, ee = rng.random(grid.size), rng.random(grid.size) * 0.1
    got = {}
    for route in ("one pass", "two passes"):
        monkeypatch.setattr(cox_cpu, "ONE_PASS_P", 4 if route == "one pass" else 0)
        part = K.prepare(X, t, e, None, s, np.ones(len(df)), grid, X.mean(axis=0))
        shift = K.pass1(part, beta)[0]
        assert (part.buckets is not None) == (route == "one pass")
        got[route] = (shift, K.pass2(part, beta, c, ee, shift + 3.0))
    assert got["one pass"][0] == got["two passes"][0]
    assert (got["one pass"][0] > 709) == (beta[0] > 1)
    close(got["one pass"][1], got["two passes"][1], rtol=1e-12)
    assert np.all(np.isfinite(got["one pass"][1]))


# -- exp, and the two clones ----------------------------------------------------------------

def _c_exp(x):
    out = np.empty_like(x)
    cox_cpu._cox_c.exp(np.ascontiguousarray(x), out)
    return out


def test_exp_is_within_one_ulp():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-30, 30, 200_000), rng.uniform(-708, 709.7, 200_000),
                        rng.normal(0, 1e-6, 1000), np.arange(-700, 700, 0.5) * np.log(2)])
    got = _c_exp(x)
    exact = np.exp(x.astype(np.longdouble))   # 64-bit mantissa: 11 more bits than doubles
    ulp = np.spacing(exact.astype(np.float64)).astype(np.longdouble)
    assert float(np.max(np.abs(got - exact) / ulp)) < 1.0
    # where the result is subnormal, 0, inf or not a number
    edge = np.array([-np.inf, -1e300, -1001.0, -1000.0, -746.0, -745.0, -740.0, -709.5, 0.0,
                     -0.0, 5e-324, 709.78, 709.79, 710.0, 1e10, np.inf, np.nan])
    with np.errstate(over="ignore"):   # (doubles overflow before long doubles do)
        want = np.exp(edge.astype(np.longdouble)).astype(np.float64)
    got = _c_exp(edge)
    finite = np.isfinite(want) & (want != 0)
    assert (np.abs(got[finite] - want[finite]) <= np.spacing(want[finite])).all()
    assert np.array_equal(got[~finite], want[~finite], equal_nan=True)
    assert got[edge == -1000.0][0] == 0.0 and np.isinf(got[edge == 709.79][0])


_CLONE_RUN = r"""
import hashlib, importlib.util, sys
spec = importlib.util.spec_from_file_location("hpcstudy_kernels._cox_c", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["hpcstudy_kernels._cox_c"] = mod
import numpy as np
from hpcstudy_kernels import cox_cpu
assert cox_cpu._cox_c is mod
sys.path.insert(0, sys.argv[2])
from models.data import covariates, survival_frame
from hpcstudy.models import CoxPH
h = hashlib.sha256()
x = np.random.default_rng(0).uniform(-750, 712, 100_003)
out = np.empty_like(x)
mod.exp(x, out)
h.update(out.tobytes())
ranks = np.empty(x.shape[0], np.int64)   # below, inside and past a table of 1 000 days
mod.day_ranks(x, -700.0, np.arange(1000, dtype=np.int64), 1000, ranks)
h.update(ranks.tobytes())
# widths with each unrolled loop of the passes (p // 4 * 4 of 4, 8, 12, and past them)
for coarse, budget, p in ((False, 0, 4), (True, 0, 4), (False, 1 << 40, 4), (True, 1 << 40, 4),
                          (False, 1 << 40, 7), (False, 0, 10), (False, 0, 13), (False, 0, 17)):
    cox_cpu.PACK_BYTES = budget   # the caller's rows, then the re-laid copy
    df = survival_frame(n=3001, seed=3, entry=True, strata=2, weights=True, p=p)
    if coarse:   # one pass per step
        df["time"] = np.ceil(df.time / 20)
        df["entry"] = np.minimum(np.floor(df.entry / 20), df.time - 1)
    for ties in ("efron", "breslow"):
        m = CoxPH(ties).fit(df[covariates(df)], df.time, df.event, entry=df.entry,
                            strata=df.stratum, weights=df.w)
        h.update(m.coef_.tobytes() + m.se_.tobytes() + np.float64(m.loglik_).tobytes())
print(h.hexdigest())
"""


def _extension_flags():
    """The compiler flags setup builds the extension with (pyproject.toml)."""
    import tomllib
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    (ext,) = pyproject["tool"]["setuptools"]["ext-modules"]
    return ext["extra-compile-args"]


def _has_avx2():
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="the two clones are built on x86-64 Linux")
def test_avx2_and_baseline_clones_give_the_same_bytes(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or not _has_avx2():
        pytest.skip("needs a C compiler and a CPU with AVX2 and FMA")
    source = Path(cox_cpu.__file__).with_name("_cox_c.c")
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    tests = str(Path(__file__).parents[1])
    libs, builds = [], []
    for target in (1, 3):   # the baseline clone, the x86-64-v3 (AVX2 + FMA) clone, side by side
        folder = tmp_path / str(target)
        folder.mkdir()
        libs.append(folder / f"_cox_c{suffix}")
        builds.append(subprocess.Popen(
            [cc, *_extension_flags(), "-fPIC", "-shared", "-pthread",
             f"-DCOX_ONE_TARGET={target}", f"-I{include}", str(source), "-o", str(libs[-1]),
             "-lm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for b in builds:
        _, err = b.communicate()
        assert b.returncode == 0, err.decode()
    # and the installed module (whichever clone this CPU picks) gives those bytes too
    runs = [subprocess.Popen([sys.executable, "-c", _CLONE_RUN, str(lib), tests],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for lib in [*libs, Path(cox_cpu._cox_c.__file__)]]
    digests = []
    for run in runs:
        out, err = run.communicate()
        assert run.returncode == 0, err
        digests.append(out.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1] == digests[2]
    assert hashlib.sha256(b"").hexdigest() not in digests


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_partitions_mixing_both_routes_equal_the_numpy_fit(monkeypatch, ties):
    from hpcstudy.models import LocalPartitions

    # the rule looks at each partition's rows: the small one takes two passes, the large one
    df = coarse(survival_frame(n=5000, seed=14, entry=True, strata=2), days=40)
    cols = covariates(df)
    parts = []
    for lo, hi in ((0, 150), (150, 5000)):
        d = df.iloc[lo:hi]
        parts.append({"X": d[cols].to_numpy(), "time": d.time.to_numpy(float),
                      "event": d.event.to_numpy(float), "weights": np.ones(len(d)),
                      "strata": d.stratum.to_numpy(), "entry": d.entry.to_numpy(float)})
    monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
    slow = CoxPH(ties).fit_partitions(LocalPartitions(parts), cols)
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED")
    seen = watch_routes(monkeypatch)
    fast = CoxPH(ties).fit_partitions(LocalPartitions(parts), cols)
    assert seen == {"one pass", "two passes"}
    assert rel(fast.coef_, slow.coef_) < 1e-12 and rel(fast.se_, slow.se_) < 1e-12
    assert rel(fast.loglik_, slow.loglik_) < 1e-12


def _year_data(p, n, seed):
    """n rows, p covariates, the last a calendar year (mean ≈ 2000, spread of a few years:
    centring must keep its rounding small), late entries, rows never at risk."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[:, -1] = 2000.0 + rng.integers(-5, 6, n)
    beta = np.linspace(0.4, -0.3, p) / np.sqrt(p)
    beta[-1] = 0.05
    t = np.floor(rng.exponential(150.0, n) / np.exp(X[:, :-1] @ beta[:-1] if p > 1 else 0)) + 2
    e = (rng.random(n) < 0.6).astype(float)
    entry = np.where(rng.random(n) < 0.3, np.floor(rng.uniform(0, 60, n)), 0.0)
    return X, t, e, entry, beta


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 6, 7, 9, 10, 13])
def test_both_passes_equal_numpy_at_every_width(monkeypatch, p):
    # every count of last columns (p mod 4: for p ≥ 4 pass 1 takes them from the row's last
    # four), row counts that fill no whole block, late entries (pass 2 computes their v
    # itself, the others' from a table), rows dropped (keep) and a calendar-year covariate
    X, t, e, entry, beta = _year_data(p, 1237, seed=p)
    s = np.zeros(len(t), np.int64)
    pairs = K.event_pairs(t, e, s)
    grid = K.make_grid([pairs[0]], [pairs[1]])
    mean = X.mean(axis=0)
    got = {}
    for compiled in (True, False):
        if compiled:
            monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
        else:
            monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
        part = K.prepare(X, t, e, entry, s, np.ones(len(t)), grid, mean)
        assert part.compiled == compiled and part.late.shape[0] > 0
        if compiled:
            assert 0 < part.keep.shape[0] < len(t)   # some rows were never at risk
        m, dw, _ = K.fixed_sums(part)
        sums = K.pass1(part, beta)
        if not compiled:   # pass 2 of both at the same grid weights (the NumPy pass 1's)
            _, _, _, c, ee = K.grid_terms(*sums[1:], m, dw, "efron")
        got[compiled] = (part, sums)
    for a, b in zip(got[True][1], got[False][1], strict=True):
        close(a, b)
    slow = K.pass2(*got[False][:1], beta, c, ee, got[False][1][0])
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED")
    close(K.pass2(got[True][0], beta, c, ee, got[False][1][0]), slow)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_calendar_year_covariate_fits_as_numpy_and_lifelines(monkeypatch, ties):
    from lifelines import CoxPHFitter

    X, t, e, _, _ = _year_data(6, 4000, seed=21)
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    fast = CoxPH(ties).fit(X, t, e)
    monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
    slow = CoxPH(ties).fit(X, t, e)
    assert rel(fast.coef_, slow.coef_) < 1e-12 and rel(fast.se_, slow.se_) < 1e-12
    assert rel(fast.loglik_, slow.loglik_) < 1e-12
    import pandas as pd

    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    df["time"], df["event"] = t, e
    ref = CoxPHFitter().fit(df, "time", "event", fit_options={"precision": 1e-12,
                                                               "step_size": 0.95,
                                                               "max_steps": 200})
    if ties == "efron":   # lifelines fits Efron's likelihood only
        assert rel(fast.coef_, ref.params_.values) < 1e-6
        assert rel(fast.se_, ref.standard_errors_.values) < 1e-6


# -- the re-laid copy (cox_cpu.pack: centred blocks of four rows, columns side by side) -------

RELAID = 1 << 40   # a budget every test shape fits


def _fit_bytes(m):
    return m.coef_.tobytes() + m.se_.tobytes() + np.float64(m.loglik_).tobytes()


def watch_copies(monkeypatch):
    """The set of ``part.packed is not None`` over the parts pass 1 sees from now on."""
    seen = set()
    real = cox_cpu.pass1_bins

    def spy(part, beta, shift_above):
        seen.add(part.packed is not None)
        return real(part, beta, shift_above)

    monkeypatch.setattr(cox_cpu, "pass1_bins", spy)
    return seen


def test_no_fit_keeps_a_copy_by_default(monkeypatch):
    # measured to cost a fit more than it saves (docs/performance.md): off unless budgeted
    assert cox_cpu.PACK_BYTES == 0
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    seen = watch_copies(monkeypatch)
    fit(survival_frame(n=500, seed=1), "efron")
    assert seen == {False}


@pytest.mark.parametrize("p", range(1, 14))
def test_relaid_passes_give_the_bytes_of_the_row_passes(monkeypatch, p):
    # every width (p mod 4 last columns, p < 4), a row count that fills no whole block of
    # four, late entries, rows never at risk (keep) and a calendar-year covariate: pass 1's
    # sums and pass 2's matrix are the same bits from the copy as from the caller's rows,
    # and equal the NumPy passes
    X, t, e, entry, beta = _year_data(p, 1237 + p, seed=40 + p)
    s = np.zeros(len(t), np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    mean = X.mean(axis=0)
    monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
    slow = K.prepare(X, t, e, entry, s, np.ones(len(t)), grid, mean)
    want = K.pass1(slow, beta)
    m, dw, _ = K.fixed_sums(slow)
    _, _, _, c, ee = K.grid_terms(*want[1:], m, dw, "efron")
    want2 = K.pass2(slow, beta, c, ee, want[0])
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED")
    got = {}
    for budget in (0, RELAID):
        monkeypatch.setattr(cox_cpu, "PACK_BYTES", budget)
        part = K.prepare(X, t, e, entry, s, np.ones(len(t)), grid, mean)
        assert (part.packed is not None) == bool(budget)
        assert part.late.shape[0] > 0 and 0 < part.keep.shape[0] < len(t)
        sums = K.pass1(part, beta)
        got[budget] = [*sums, K.pass2(part, beta, c, ee, want[0])]
    for a, b in zip(got[0], got[RELAID], strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for a, b in zip(got[RELAID], [*want, want2], strict=True):
        close(a, b)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("case", list(CASES))
def test_relaid_fits_give_the_bytes_of_the_row_fits(monkeypatch, ties, case):
    # weights, delayed entry, strata, clustered errors; both routes of pass 2 (one pass over
    # X with buckets on the coarse grid, two passes on the fine one)
    make, kw = CASES[case]
    for df in (survival_frame(n=1501, seed=31, **make),
               coarse(survival_frame(n=1501, seed=31, **make))):
        df["person"] = np.arange(len(df)) // 2
        monkeypatch.setenv("HPCSTUDY_NO_COMPILED", "1")
        slow = fit(df, ties, **kw)
        monkeypatch.delenv("HPCSTUDY_NO_COMPILED")
        runs = {}
        for budget in (0, RELAID):
            monkeypatch.setattr(cox_cpu, "PACK_BYTES", budget)
            seen = watch_copies(monkeypatch)
            runs[budget] = fit(df, ties, **kw)
            assert seen == {bool(budget)}
        assert _fit_bytes(runs[0]) == _fit_bytes(runs[RELAID])
        assert rel(runs[RELAID].coef_, slow.coef_) < 1e-12
        assert rel(runs[RELAID].se_, slow.se_) < 1e-12


def test_relaid_fit_agrees_with_lifelines(monkeypatch):
    from lifelines import CoxPHFitter

    df = survival_frame(n=1500, seed=32, entry=True, strata=3, weights=True)
    cols = covariates(df)
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    monkeypatch.setattr(cox_cpu, "PACK_BYTES", RELAID)
    seen = watch_copies(monkeypatch)
    m = CoxPH("efron").fit(df[cols], df.time, df.event, entry=df.entry, strata=df.stratum,
                           weights=df.w)
    assert seen == {True}
    ref = CoxPHFitter().fit(df.drop(columns=[c for c in df if c == "person"]), "time", "event",
                            entry_col="entry", strata=["stratum"], weights_col="w",
                            robust=False,
                            fit_options={"precision": 1e-12, "step_size": 0.95,
                                         "max_steps": 200})
    assert rel(m.coef_, ref.params_[cols].values) < 1e-6
    assert m.loglik_ == pytest.approx(ref.log_likelihood_, rel=1e-10)


def test_relaid_same_bytes_on_one_or_two_threads(monkeypatch):
    n = 2 * cox_cpu.CHUNKS * cox_cpu._MIN_CHUNK + 3   # chunks of rows not a multiple of 4
    df = survival_frame(n=n, p=3, seed=33, entry=True, weights=True)
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    monkeypatch.setattr(cox_cpu, "ONE_PASS_P", 0)
    runs = []
    for budget, threads in ((RELAID, "2"), (RELAID, "1"), (0, "2")):
        monkeypatch.setattr(cox_cpu, "PACK_BYTES", budget)
        monkeypatch.setenv("HPCSTUDY_THREADS", threads)
        runs.append(_fit_bytes(fit(df, "breslow", entry=True, weights=True)))
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 2 * cox_cpu._MIN_CHUNK - 1,
                                  2 * cox_cpu._MIN_CHUNK + 5])
def test_the_copy_is_taken_by_its_size_alone(monkeypatch, rows):
    for p in (1, 10):
        # 4p values and 4 slots (8 bytes each) per block of four rows, blocks per chunk
        blocks = sum(-(-(hi - lo) // 4) for lo, hi in cox_cpu._ranges(rows))
        size = blocks * (4 * p + 4) * 8
        assert cox_cpu.packed_bytes(rows, p) == size
        for threads in ("1", "2"):   # never the thread count
            monkeypatch.setenv("HPCSTUDY_THREADS", threads)
            monkeypatch.setattr(cox_cpu, "PACK_BYTES", size)
            assert cox_cpu.packs(rows, p)
            monkeypatch.setattr(cox_cpu, "PACK_BYTES", size - 1)
            assert not cox_cpu.packs(rows, p)
    monkeypatch.setattr(cox_cpu, "PACK_BYTES", RELAID)
    assert not cox_cpu.packs(0, 3)   # nothing to copy


def test_prepare_keeps_a_copy_within_the_budget_only(monkeypatch):
    df = survival_frame(n=999, seed=34, entry=True)
    df.loc[df.index[:20], ["entry", "time", "event"]] = [0.0, 0.5, 0]   # never at risk
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    X = df[covariates(df)].to_numpy()
    t, e = df.time.to_numpy(), df.event.to_numpy().astype(float)
    s = np.zeros(len(df), np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    kept = None
    for extra in (0, -1):
        monkeypatch.setattr(cox_cpu, "PACK_BYTES", RELAID)
        part = K.prepare(X, t, e, df.entry.to_numpy(), s, np.ones(len(df)), grid, None)
        kept = part.keep.shape[0]
        assert 0 < kept < len(df)
        monkeypatch.setattr(cox_cpu, "PACK_BYTES", cox_cpu.packed_bytes(kept, X.shape[1]) + extra)
        part = K.prepare(X, t, e, df.entry.to_numpy(), s, np.ones(len(df)), grid, None)
        if extra == 0:
            assert sum(a.nbytes for a in part.packed) == cox_cpu.PACK_BYTES
            # the copy holds the kept rows, centred (mean 0 here), four to a block
            block = part.packed[0][:4 * X.shape[1]].reshape(X.shape[1], 4).T
            assert np.array_equal(block, X[part.keep[:4]])
        else:
            assert part.packed is None


def _relaid_part(monkeypatch, entry=True):
    df = survival_frame(n=401, seed=35, entry=entry)
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    monkeypatch.setattr(cox_cpu, "PACK_BYTES", RELAID)
    X = df[covariates(df)].to_numpy()
    t, e = df.time.to_numpy(), df.event.to_numpy().astype(float)
    s = np.zeros(len(df), np.int64)
    grid = K.make_grid(*[[a] for a in K.event_pairs(t, e, s)])
    part = K.prepare(X, t, e, df.entry.to_numpy() if entry else None, s, np.ones(len(df)),
                     grid, X.mean(axis=0))
    assert part.packed is not None and len(part.packed) == 1
    return part


@pytest.mark.parametrize("bad", ["slot past the grid", "negative slot", "late with a = 0",
                                 "late with a = b", "copy too short"])
def test_relaid_passes_refuse_what_would_go_out_of_bounds(monkeypatch, bad):
    part = _relaid_part(monkeypatch)
    p, G = part.mean.shape[0], part.grid_size
    beta = np.zeros(p)
    K.pass1(part, beta)   # the copy as made: fine
    copy = part.packed[0]
    slots = copy.reshape(-1, 4 * p + 4)[:, 4 * p:].view(np.int64)   # (blocks, 4), a view
    late = int(part.late[0])
    assert slots[late // 4, late % 4] >> 62 == 1   # the copy marks the late entry
    if bad == "slot past the grid":
        slots[1, 3] = 2 * G
    elif bad == "negative slot":
        slots[1, 3] = -2
    elif bad == "late with a = 0":
        part.a = part.a.copy()
        part.a[late] = 0
    elif bad == "late with a = b":
        part.a = part.a.copy()
        part.a[late] = part.b[late]
    else:
        part.packed = [copy[:-1]]
    part._beta = None
    with pytest.raises(ValueError):
        K.pass1(part, beta)
    c, e = np.ones(G), np.zeros(G)
    with pytest.raises(ValueError):
        cox_cpu._cox_c.pass2(part.packed[0], None, part.mean, np.ones(part.b.shape[0]),
                             part.a, part.b, part.flags, np.zeros(G + 1), e, 1.0,
                             np.empty((p, p)))
    assert c.shape == (G,)


def test_row_passes_refuse_a_late_row_entering_at_zero():
    args = _pass1_args()
    args["flags"][3] = cox_cpu.LATE   # a late entry …
    args["a"][3] = 0                  # … at grid point 0: its entry bin would be at −1
    with pytest.raises(ValueError, match="out of range"):
        cox_cpu._cox_c.pass1(*args.values())
    args["a"][3] = 1
    assert cox_cpu._cox_c.pass1(*args.values()) == (0.0, 0.0)


def test_physical_benchmark_measures_both_routes_interleaved(tmp_path):
    bench = Path(__file__).parents[2] / "benchmarks"
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path), "BENCH_RUN": "test-run"}
    r = subprocess.run([sys.executable, "physical.py", "--n", "3001", "--p", "5", "--repeats",
                        "2", "--shapes", "0.5:days", "--relayout", "both", "--bandwidth-mib",
                        "8"], cwd=bench, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in (tmp_path / "physical.jsonl").read_text().splitlines()]
    cox = [x for x in recs if x["what"] == "cox parts"]
    assert [(x["ties"], x["relaid_copy"]) for x in cox] == [
        ("efron", False), ("efron", True), ("breslow", False), ("breslow", True)]
    for x in cox:
        assert x["interleaved_routes"] == ["off", "on"] and x["parts_cpu_s"]["pass1"]["n"] == 2
    r = subprocess.run([sys.executable, "summarize.py", "--out", str(tmp_path / "R.md")],
                       cwd=bench, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "R.md").read_text()
    assert text.count("two passes, re-laid copy)") == 2   # the goal line counts the others
    worst = max(x["step_over_read_X"] for x in cox if not x["relaid_copy"])
    assert f"by wall time: worst {worst}×" in text


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                    reason="the builds are compared on x86-64 Linux")
def test_builds_benchmark_sees_whether_two_builds_give_the_same_bits(tmp_path):
    if shutil.which("gcc") is None or not _has_avx2():
        pytest.skip("needs gcc and a CPU with AVX2 and FMA")
    bench = Path(__file__).parents[2] / "benchmarks"
    source = str(Path(cox_cpu.__file__).with_name("_cox_c.c"))
    built = str(Path(cox_cpu._cox_c.__file__))
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path), "BENCH_RUN": "test-run"}
    # the installed build twice, then against its source built with multiply-adds fused where
    # the compiler likes (the AVX2 clone's sums then move in their last bits)
    for new, more in ((built, ""), (source, "-ffp-contract=fast")):
        r = subprocess.run([sys.executable, "cox_builds.py", built, new, "--n", "5003",
                            "--p", "10", "--repeats", "2", "--shapes", "0.5:days",
                            f"--new-flags={more}"], cwd=bench, env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in (tmp_path / "cox_builds.jsonl").read_text().splitlines()]
    assert [x["new_flags"] for x in recs] == ["", "-ffp-contract=fast"]
    assert recs[0]["agree"] == {"pass1": "same bits", "pass2": "same bits"}
    assert all(isinstance(v, float) and 0 < v < 1e-12 for v in recs[1]["agree"].values())
    for x in recs:
        for build in ("old", "new"):
            assert x["cpu_ms"][build]["pass2"]["n"] == 2 and x["threads"] == "1"
