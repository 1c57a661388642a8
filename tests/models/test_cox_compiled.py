"""The Cox fit's compiled CPU passes (kernels/_cox_c.c through kernels/cox_cpu.py) against the
NumPy passes they replace (HPCSTUDY_NO_COMPILED=1): the same estimates to 1e-12 with ties,
weights, delayed entry, rows never at risk, strata and clustered errors; the same bytes run
after run and whatever the number of threads; any memory layout of X; and the C functions
refuse sizes and indices that would read or write out of bounds instead of crashing."""

from __future__ import annotations

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


def test_same_bytes_every_run_and_any_thread_count(monkeypatch):
    # more rows than one chunk, so the rows are split into chunks (cox_cpu.CHUNKS)
    n = 2 * cox_cpu.CHUNKS * cox_cpu._MIN_CHUNK + 17
    df = survival_frame(n=n, p=3, seed=5)
    assert len(cox_cpu._ranges(n)) == cox_cpu.CHUNKS > 1
    monkeypatch.delenv("HPCSTUDY_NO_COMPILED", raising=False)
    runs = []
    for threads in ("2", "1", "2"):
        monkeypatch.setenv("HPCSTUDY_THREADS", threads)
        m = fit(df, "efron")
        runs.append(m.coef_.tobytes() + m.se_.tobytes() + np.float64(m.loglik_).tobytes())
    assert runs[0] == runs[1] == runs[2]


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
