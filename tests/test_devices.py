"""The device layer: the CPU stand-in refuses every implicit host conversion CuPy refuses (and
the ones it would make silently), and counts every transfer."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import hpcstudy_kernels as K
from hpcstudy.devices import DeviceUnavailable, StandinArray, get_device


@pytest.fixture
def dev():
    return get_device("standin")


@pytest.fixture
def x(dev):
    return dev.to_device(np.arange(6, dtype=np.int64))


REFUSALS = {
    "numpy.asarray": lambda x: np.asarray(x),
    "numpy.array": lambda x: np.array(x),
    "np.sum": lambda x: np.sum(x),
    "np.unique": lambda x: np.unique(x),
    "np.isin": lambda x: np.isin(x, [1, 2]),
    "np.concatenate": lambda x: np.concatenate([x, x]),
    "np.where": lambda x: np.where(x > 2, x, 0),
    "np.add ufunc": lambda x: np.add(x, 1),
    "np.maximum ufunc": lambda x: np.maximum(x, np.zeros(6, np.int64)),
    "ndarray + device": lambda x: np.ones(6, np.int64) + x,
    "device + ndarray": lambda x: x + np.ones(6, np.int64),
    "device == ndarray": lambda x: x == np.ones(6, np.int64),
    "ndarray < device": lambda x: np.ones(6, np.int64) < x,
    "ndarray index": lambda x: x[np.array([0, 1])],
    "assign ndarray": lambda x: x.__setitem__(slice(0, 2), np.array([7, 8])),
    "float()": lambda x: float(x[0]),
    "int()": lambda x: int(x.sum()),
    "int() of non-scalar": lambda x: int(x),
    "bool()": lambda x: bool(x.any()),
    "if": lambda x: 1 if x[0] == 0 else 2,
    "operator.index": lambda x: [1, 2, 3][x[0]],
    "tolist": lambda x: x.tolist(),
    "item": lambda x: x.sum().item(),
    "get": lambda x: x.get(),
    "iterate": lambda x: list(x),
    "pandas": lambda x: __import__("pandas").Series(x),
    "xp fn given ndarray": lambda x: x._ns.concatenate([x, np.arange(3)]),
    "xp.lexsort of a tuple (cupy takes one 2-D array)": lambda x: x._ns.lexsort((x, x)),
    "xp.repeat by a device array (cupy takes int or list)": lambda x: x._ns.repeat(x, x),
    "in-place with ndarray": lambda x: x.__iadd__(np.ones(6, np.int64)),
    "to_host of a host array": lambda x: x._ns._device.to_host(np.arange(3)),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_standin_refuses_implicit_host_conversion(x, name):
    with pytest.raises(TypeError):
        REFUSALS[name](x)


def test_pyarrow_cannot_read_a_device_array(x):
    import pyarrow as pa

    with pytest.raises((TypeError, pa.ArrowInvalid)):
        pa.array(x)


def test_refusal_message_names_the_fix(x):
    with pytest.raises(TypeError, match=r"device\.to_host"):
        np.asarray(x)
    with pytest.raises(TypeError, match=r"device\.to_device"):
        x + np.ones(6, np.int64)


def test_standin_computes_like_numpy_and_stays_on_device(dev, x):
    xp = dev.xp
    host = np.arange(6, dtype=np.int64)
    cases = [
        (x * 2 + 1, host * 2 + 1), (-x, -host), (x[x > 2], host[host > 2]),
        (xp.where(x > 2, x, 0), np.where(host > 2, host, 0)),
        (xp.cumsum(x), np.cumsum(host)), (x.sum(), host.sum()),
        (xp.searchsorted(x, xp.full(2, 3)), np.searchsorted(host, np.full(2, 3))),
        (xp.lexsort(xp.stack([x % 2, -x])), np.lexsort((host % 2, -host))),
        (xp.repeat(x, 2), np.repeat(host, 2)), (xp.nonzero(x > 3)[0], np.nonzero(host > 3)[0]),
        (x.astype(np.int8), host.astype(np.int8)), (3 - x, 3 - host), (x // 2, host // 2),
        (xp.bincount(x % 3, minlength=4), np.bincount(host % 3, minlength=4)),
    ]
    for got, want in cases:
        assert isinstance(got, StandinArray)
        assert got.dtype == want.dtype and got.shape == np.shape(want)
        np.testing.assert_array_equal(dev.to_host(got), want)
    y = x.copy()
    y[1:3] = xp.full(2, 9)
    y += 1
    y[y > 8] = 0
    np.testing.assert_array_equal(dev.to_host(y), [1, 0, 0, 4, 5, 6])
    assert np.asarray(dev.to_host(x)).tolist() == list(range(6))  # x untouched
    assert K.array_namespace(x) is xp


def test_kernels_reject_mixing_devices(dev, x):
    with pytest.raises(TypeError, match="different devices"):
        K.linkage.lookup(x, np.arange(3))


def test_transfers_are_counted_each_way(dev):
    t = dev.transfers
    assert (t.to_device_calls, t.to_device_bytes, t.to_host_calls, t.to_host_bytes) == \
        (0, 0, 0, 0)
    a = dev.to_device(np.zeros(10, np.int64))
    b = dev.to_device(np.zeros(3, np.int8))
    assert (t.to_device_calls, t.to_device_bytes) == (2, 83)
    dev.to_host(a)
    dev.to_host(b[:2])
    dev.to_host(a.sum())
    assert (t.to_host_calls, t.to_host_bytes) == (3, 80 + 2 + 8)
    # computing on the device moves nothing
    dev.xp.sort(a * 2 + b[0])
    assert t.calls == 5
    # creating from host data is a transfer, as on CuPy
    dev.xp.asarray(np.arange(4, dtype=np.int32))
    dev.xp.asarray([1, 2])
    assert (t.to_device_calls, t.to_device_bytes) == (4, 83 + 16 + 16)
    dev.xp.asarray(a)  # already on the device
    assert t.to_device_calls == 4
    t.reset()
    assert t.calls == 0 and t.to_host_bytes == 0 and t.to_device_bytes == 0


def test_devices_have_their_own_counters_and_host_copies_are_detached(dev):
    other = get_device("standin")
    a = dev.to_device(np.arange(3))
    assert other.transfers.calls == 0
    h = dev.to_host(a)
    h[0] = 99
    assert dev.to_host(a)[0] == 0
    src = np.arange(3)
    b = dev.to_device(src)
    src[0] = 99
    assert dev.to_host(b)[0] == 0


def test_cpu_device_counts_and_is_numpy():
    dev = get_device("cpu")
    assert dev.xp is np
    a = dev.to_device(np.arange(4, dtype=np.int64))
    assert isinstance(a, np.ndarray)
    dev.to_host(a)
    assert dev.transfers.as_dict() == {"to_device_calls": 1, "to_device_bytes": 32,
                                       "to_host_calls": 1, "to_host_bytes": 32}
    assert dev.peak_memory() > 0
    assert dev.memory_free() is None or dev.memory_free() > 0


def test_devices_pickle_by_name():
    for name in ("cpu", "standin"):
        d = pickle.loads(pickle.dumps(get_device(name)))
        assert d.name == name and d.transfers.calls == 0


def test_unknown_device_name():
    with pytest.raises(ValueError, match="cpu, gpu, standin, auto"):
        get_device("tpu")


def test_gpu_without_cupy_is_one_line_with_the_fix():
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    with pytest.raises(DeviceUnavailable) as e:
        get_device("gpu")
    msg = str(e.value)
    assert "\n" not in msg and "CuPy" in msg and "--device cpu" in msg
    assert get_device("auto").name == "cpu"


@pytest.mark.gpu
def test_gpu_device_round_trip():
    cupy = pytest.importorskip("cupy")
    dev = get_device("gpu")
    a = dev.to_device(np.arange(5, dtype=np.int64))
    assert isinstance(a, cupy.ndarray)
    np.testing.assert_array_equal(dev.to_host(a * 2), np.arange(5) * 2)
    assert dev.transfers.as_dict() == {"to_device_calls": 1, "to_device_bytes": 40,
                                       "to_host_calls": 1, "to_host_bytes": 40}
    assert dev.peak_memory() > 0 and dev.memory_free() > 0
