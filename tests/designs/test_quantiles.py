"""Exact quantiles over partitions (hpcstudy.designs.quantiles) against NumPy on the gathered
values, bit for bit: ties, equal values, empty partitions, one value, q = 0 and 1, neighbours
in the last bit, huge and tiny magnitudes, ±inf and NaN, many partitions, the device stand-in;
and what the client receives does not grow with the values."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcstudy.designs import quantiles as Q
from hpcstudy.designs.balance import smooth_quantile
from hpcstudy.models.partitions import LocalPartitions

SMOOTH_QS = (0.5, 0.25, 0.75, 0.0, 1.0, 0.1)


def one(part):
    return part["x"]


def two(part):
    return [part["x"], part["x"][::2]]


def split(x, cuts):
    """``x`` in partitions at the sorted positions ``cuts`` (repeated cuts: empty ones)."""
    return [{"x": c} for c in np.split(np.asarray(x, float), sorted(cuts))]


def bits(a):
    """Values as bit patterns, NaN as one pattern: equality of these is bit-for-bit equality."""
    a = np.array(a, np.float64).reshape(-1)
    out = a.view(np.uint64).copy()
    out[np.isnan(a)] = 0x7FF8000000000000
    return out


def same(got, want):
    assert np.shape(got) == np.shape(want)
    assert np.array_equal(bits(got), bits(want)), (got, want)


def expect_smooth(parts, k):
    series = [np.concatenate([p["x"] for p in parts]),
              np.concatenate([p["x"][::2] for p in parts])]
    return [[smooth_quantile(np.sort(s), q, k) for q in SMOOTH_QS] for s in series]


def check_all(parts, qs, k=5):
    """Every figure equals NumPy's on the gathered values (both overflow alike: huge values'
    differences and sums are ±inf, with NumPy's warnings)."""
    with np.errstate(over="ignore", invalid="ignore"):
        _check_all(parts, qs, k)


def _check_all(parts, qs, k):
    x = np.concatenate([p["x"] for p in parts])
    P = LocalPartitions(parts)
    same(Q.quantile(P, qs, one), np.quantile(x, qs))
    same(Q.percentile(P, np.asarray(qs) * 100, one), np.percentile(x, np.asarray(qs) * 100))
    for q in qs:   # a scalar q: NumPy's scalar path
        same(Q.quantile(P, float(q), one), np.quantile(x, float(q)))
    got = Q.smooth_quantiles(P, SMOOTH_QS, k, two)
    want = expect_smooth(parts, k)
    for g, w in zip(got, want, strict=True):
        same(g, w)


POOL = [0.0, 1.0, -1.0, 0.5, 2.0, 1e-300, -1e-300, 5e-324, 1e308, -1e308, 0.1, 0.2,
        0.30000000000000004, np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0), 3.0, 1e-10]
values = st.lists(st.one_of(st.sampled_from(POOL),
                            st.floats(allow_nan=False, allow_infinity=False, width=64)),
                  min_size=1, max_size=60).map(lambda v: [x + 0.0 for x in v])   # no -0.0


@settings(max_examples=150, deadline=None)
@given(x=values, cuts=st.lists(st.integers(0, 60), max_size=6),
       qs=st.lists(st.floats(0, 1), min_size=1, max_size=5), k=st.integers(1, 12))
def test_equals_numpy_on_the_gathered_values(x, cuts, qs, k):
    cuts = [min(c, len(x)) for c in cuts]
    check_all(split(x, cuts), np.array([0.0, 1.0, *qs]), k)


@pytest.mark.parametrize("x", [
    [7.0] * 50,                                       # all equal
    [3.25],                                           # one value
    [1.0, 2.0] * 40 + [1.5],                          # ties everywhere
    1.0 + np.arange(40) * np.finfo(float).eps,        # 1 and its next 39 floats
    (np.uint64(0xBFF0000000000000) + np.arange(30, dtype=np.uint64)).view(np.float64),   # -1…
    [5e-324, 1e-323, 2.2250738585072014e-308, 0.0, 1e308, 1.7976931348623157e308],
    [-1.7976931348623157e308, 1.7976931348623157e308, 0.0, 1.0],   # the whole range
    [-5e-324, 5e-324, -1e-320, 1e-320],               # subnormals about zero
    list(np.random.default_rng(1).integers(0, 4, 500).astype(float)),
])
def test_attacker_values(x):
    x = list(x)
    for cuts in ([], [0, 0, len(x)], [len(x) // 2, len(x) // 2, len(x) - 1]):
        check_all(split(x, cuts), np.array([0.0, 0.25, 0.5, 1 / 3, 0.999999, 1.0]), k=5)


def test_infinities_give_numpys_results_nan_included():
    """With ±inf among the values NumPy's interpolation can give inf or nan (inf − inf): the
    same here, as the same arithmetic runs on the same two values."""
    for x in ([-np.inf, 0.0, 1.0, np.inf], [np.inf] * 5, [1.0, np.inf], [-np.inf, -np.inf, 2.0]):
        P = LocalPartitions(split(x, [1]))
        qs = np.array([0.0, 0.3, 0.5, 0.9, 1.0])
        with np.errstate(invalid="ignore"):
            want = np.quantile(np.array(x), qs)
            same(Q.quantile(P, qs, one), want)
            for g, w in zip(Q.smooth_quantiles(P, SMOOTH_QS, 2, two),
                            expect_smooth(split(x, [1]), 2), strict=True):
                same(g, w)


def test_nan_gives_nan_as_numpy():
    """NaN is not refused: np.quantile of values with a NaN is NaN (every q), and a smoothed
    quantile's window reaching the NaNs (sorted last) is NaN, as with np.sort."""
    x = [3.0, np.nan, 1.0, 2.0, 5.0, 4.0, np.nan]
    parts = split(x, [2, 5])
    P = LocalPartitions(parts)
    same(Q.quantile(P, [0.0, 0.5], one), np.quantile(np.array(x), [0.0, 0.5]))
    got = Q.smooth_quantiles(P, SMOOTH_QS, 2, two)
    same(got[0], [smooth_quantile(np.sort(np.array(x)), q, 2) for q in SMOOTH_QS])


def test_integer_q_takes_the_rank_as_numpy():
    """q given as integers (0, 1): NumPy takes the ranks without interpolating, so +inf at
    q = 1 stays inf (with q = 1.0 it is nan)."""
    x = [1.0, 2.0, np.inf]
    P = LocalPartitions(split(x, [1]))
    same(Q.quantile(P, np.array([0, 1]), one), np.quantile(np.array(x), np.array([0, 1])))
    with np.errstate(invalid="ignore"):
        same(Q.quantile(P, 1.0, one), np.quantile(np.array(x), 1.0))


def test_many_partitions_and_other_dtypes():
    """64 partitions, some empty, of int16 values (read as float64, as np.quantile would on the
    float64 values)."""
    rng = np.random.default_rng(3)
    x = rng.integers(-300, 300, 5000).astype(np.int16)
    cuts = sorted(rng.integers(0, x.shape[0], 63))
    parts = [{"x": c} for c in np.split(x, cuts)] + [{"x": x[:0]}]
    qs = np.linspace(0, 1, 11)
    same(Q.quantile(LocalPartitions(parts), qs, one), np.quantile(x.astype(float), qs))


def test_refused_inputs():
    P = LocalPartitions(split([1.0, 2.0], [1]))
    with pytest.raises(ValueError, match=r"Quantiles must be in the range \[0, 1\]"):
        Q.quantile(P, [0.5, 1.5], one)
    with pytest.raises(ValueError, match=r"Percentiles must be in the range \[0, 100\]"):
        Q.percentile(P, [-1], one)
    with pytest.raises(ValueError, match="Quantiles"):
        Q.quantile(P, np.nan, one)
    with pytest.raises(ValueError, match="no values"):
        Q.quantile(LocalPartitions(split([], [])), 0.5, one)
    # a smoothed quantile of no values is NaN (as balance.smooth_quantile)
    got = Q.smooth_quantiles(LocalPartitions(split([], [0])), (0.5,), 3, two)
    assert all(np.isnan(v) for row in got for v in row)


def test_signed_zeros_agree_in_value():
    """-0.0 and 0.0 together: equal to NumPy's figures as numbers (the sign of a zero result
    may differ: the module's docstring says so)."""
    x = [0.0, -0.0, -0.0, 0.0, 1.0, -1.0]
    P = LocalPartitions(split(x, [3]))
    qs = np.linspace(0, 1, 7)
    assert np.array_equal(Q.quantile(P, qs, one), np.quantile(np.array(x), qs))


def test_keys_order_as_the_floats():
    x = np.array([-np.inf, -1e308, -1.0, -5e-324, -0.0, 0.0, 5e-324, 1.0, 1e308, np.inf, np.nan])
    k = Q.key_of(x)
    assert np.all(np.diff(k.astype(object)) > 0)
    same(Q.value_of(k), x)


class Counting(LocalPartitions):
    """Local partitions that count the bytes of every partition's reduction result: what a
    client would receive."""

    def __init__(self, parts, log):
        super().__init__(parts)
        self.log = log

    def map(self, fn, *args):
        return Counting([fn(p, *args) for p in self.parts], self.log)

    def map_reduce(self, fn, *args, combine=None):
        got = [fn(p, *args) for p in self.parts]
        self.log["bytes"] += sum(_nbytes(r) for r in got)
        self.log["calls"] += 1
        return reduce(combine, got)


def _nbytes(x):
    if isinstance(x, tuple | list):
        return sum(_nbytes(v) for v in x)
    return np.asarray(x).nbytes


def test_the_client_receives_the_same_few_numbers_whatever_the_number_of_values():
    """Nine deciles and Table 1's quartiles of 10 000 and 1 000 000 values in 8 partitions:
    the reductions' results are a few kB a partition either way (the rounds narrow a key range
    of at most 2⁶⁴, so their number is bounded whatever the values), far below the values."""
    rng = np.random.default_rng(5)
    got = {}
    for n in (10_000, 1_000_000):
        x = 1 / (1 + np.exp(-2 * rng.normal(size=n)))
        parts = [{"x": c} for c in np.array_split(x, 8)]
        log = {"bytes": 0, "calls": 0}
        qs = np.arange(1, 10) / 10
        same(Q.quantile(Counting(parts, log), qs, one), np.quantile(x, qs))
        smooth = Q.smooth_quantiles(Counting(parts, log), SMOOTH_QS, 10, two)
        same(smooth, expect_smooth(parts, 10))
        got[n] = log
    small, big = got[10_000]["bytes"], got[1_000_000]["bytes"]
    # partitions × ranks (2 a decile, 2 a smoothed window) × rounds × numbers × 8 bytes
    rounds = 64 // int(np.log2(Q.BINS)) + 2
    bound = 8 * (9 * 2 + 2 * len(SMOOTH_QS) * 2 + 2) * rounds * (Q.BINS + 3) * 8
    assert big <= bound and small <= bound
    assert big < 2 * small, got
    assert big < 1_000_000 * 8 / 20, got


@pytest.mark.parametrize("device", ["standin", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_on_the_device_stand_in(device):
    """Per-partition work runs on the stand-in's arrays (which refuse NumPy and implicit host
    copies; with ``make test-gpu``, on CuPy's); a partition sends per round one array of
    counts, nothing the size of its values."""
    from hpcstudy.devices import DeviceUnavailable, get_device

    try:
        dev = get_device(device)
    except DeviceUnavailable as e:
        pytest.skip(str(e))
    rng = np.random.default_rng(7)
    x = np.round(rng.normal(size=200_000), 3)
    chunks = np.array_split(x, 5) + [np.zeros(0)]
    parts = LocalPartitions([{"x": dev.to_device(c)} for c in chunks], device="standin")
    dev.transfers.reset()
    qs = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    same(Q.quantile(parts, qs, one), np.quantile(x, qs))
    t = dev.transfers.as_dict()
    assert t["to_host_bytes"] < x.nbytes / 20, t
    assert t["to_host_calls"] <= len(chunks) * (64 // int(np.log2(Q.BINS)) + 3), t
    host = [{"x": c} for c in chunks]
    same(Q.smooth_quantiles(parts, SMOOTH_QS, 5, two), expect_smooth(host, 5))


def test_the_design_step_gets_numpys_figures_on_the_gathered_values(small_data):
    """On a real cohort (three partitions): the truncation percentiles are np.percentile of all
    the weights and Table 1's median and quartiles the smoothed quantiles of all of a number's
    values in an arm, to the bit (no trim, so no person leaves before the weights)."""
    from hpcstudy.designs.apply import ipt_weights
    from hpcstudy.engines import run as R

    from .test_designs import study

    s = study(propensity={"covariates": ["age", "sex", "diabetes", "charlson"],
                          "method": "weighting",
                          "weighting": {"estimand": "ate", "stabilised": True,
                                        "truncate": [2.5, 97.5]}})
    _, plan, ds = R.prepare(s, small_data)
    built = R.person_table(plan, ds, "dask")
    assert len(built.tables) == 3
    t = R.combined(plan, built.tables)
    exposed = t["group"] == 1
    w = ipt_weights(t["ps"], exposed, "ate", True, exposed.mean())
    got = built.design["design"]["truncated_at"]
    assert got == [float(v) for v in np.percentile(w, [2.5, 97.5])]
    k = plan.min_cell
    t1 = built.design["table1"]
    shown = 0
    for row in t1:
        if row["variable"] in ("age", "charlson") and row["median"] is not None:
            arm = next(g.code for g in plan.groups if g.label == row["arm"])
            v = np.sort(t[row["variable"]][t["group"] == arm].astype(float))
            assert [row["median"], row["q1"], row["q3"]] == \
                [smooth_quantile(v, q, k) for q in (0.5, 0.25, 0.75)], row
            shown += 1
    assert shown == 4
