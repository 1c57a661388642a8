"""Where a partition's arrays live: the CPU, a CuPy GPU, or the CPU stand-in for a GPU.

A :class:`Device` carries the array namespace its arrays belong to (``device.xp``: ``numpy``,
``cupy`` or the stand-in's namespace) and the only two doors between host and device,
``to_device`` and ``to_host``, which count their calls and bytes. Engine code asks for a device
once per partition task, moves the columns it read onto it once, computes with ``xp`` only, and
brings back small reductions and the final per-person table through ``to_host``::

    dev = get_device("auto")            # gpu where CuPy finds one, else cpu
    day = dev.to_device(host_days)      # counted host -> device transfer
    n = int(dev.to_host(dev.xp.count_nonzero(day > 0)))
    dev.transfers.to_host_calls         # 1

The stand-in (``get_device("standin")``) is NumPy underneath, but its arrays behave like CuPy's
in the ways that catch host-only code: ``numpy.asarray(x)``, ``np.<function>(x)``, mixing with a
NumPy array, ``float(x)``, ``int(x)``, ``bool(x)``, ``x.tolist()``, ``x.item()``, ``x.get()``
and iterating all raise ``TypeError``. Running the engine on it proves, on any CI machine, that
partition code never hands a device array to NumPy and never moves data to the host unnoticed.
It is stricter than CuPy on purpose where CuPy would silently synchronise and copy (scalars,
``item``), and mimics CuPy's narrower API where NumPy's is wider (``lexsort`` takes one 2-D
array, ``repeat`` takes an int or a list, not an array of counts).
"""

from __future__ import annotations

import operator
import resource
import threading
from types import ModuleType

import numpy as np

__all__ = ["DeviceUnavailable", "Device", "Transfers", "get_device", "StandinArray",
           "DEVICE_NAMES"]

DEVICE_NAMES = ("cpu", "gpu", "standin", "auto")


class DeviceUnavailable(Exception):
    """The device asked for cannot be used here (the message is one line: what and the fix)."""


class Transfers:
    """Counters of host <-> device transfers: calls and bytes each way."""

    __slots__ = ("to_device_calls", "to_device_bytes", "to_host_calls", "to_host_bytes",
                 "_lock")

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.to_device_calls = self.to_device_bytes = 0
        self.to_host_calls = self.to_host_bytes = 0

    def add(self, direction: str, nbytes: int) -> None:
        with self._lock:
            if direction == "to_device":
                self.to_device_calls += 1
                self.to_device_bytes += int(nbytes)
            else:
                self.to_host_calls += 1
                self.to_host_bytes += int(nbytes)

    @property
    def calls(self) -> int:
        return self.to_device_calls + self.to_host_calls

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("to_device_calls", "to_device_bytes",
                                              "to_host_calls", "to_host_bytes")}

    def __repr__(self) -> str:
        return f"Transfers({self.as_dict()})"


class Device:
    """One place arrays live; ``xp`` is its array namespace."""

    name: str
    xp: ModuleType

    def __init__(self, name: str, xp):
        self.name = name
        self.xp = xp
        self.transfers = Transfers()

    # pickled by name: a task shipped to a worker builds its own device there
    def __reduce__(self):
        return (get_device, (self.name,))

    def to_device(self, host_array):
        """``host_array`` (a NumPy array) as an array of this device: one counted transfer."""
        a = np.asarray(host_array)
        self.transfers.add("to_device", a.nbytes)
        return self._put(a)

    def to_host(self, array) -> np.ndarray:
        """``array`` of this device as a NumPy array: one counted transfer."""
        out = self._get(array)
        self.transfers.add("to_host", out.nbytes)
        return out

    def memory_free(self) -> int | None:
        """Bytes free on the device (None where unknown)."""
        return None

    def peak_memory(self) -> int | None:
        """Peak bytes in use on the device so far (None where unknown)."""
        return None

    def _put(self, a):
        return a

    def _get(self, array):
        return np.asarray(array)

    def __repr__(self) -> str:
        return f"Device({self.name!r})"


class _CPU(Device):
    def __init__(self):
        super().__init__("cpu", np)

    def memory_free(self) -> int | None:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def peak_memory(self) -> int | None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _GPU(Device):
    def __init__(self, cupy):
        super().__init__("gpu", cupy)
        self._peak = 0

    def _sample(self) -> None:
        used = self.xp.get_default_memory_pool().total_bytes()
        self._peak = max(self._peak, int(used))

    def _put(self, a):
        out = self.xp.asarray(a)
        self._sample()
        return out

    def _get(self, array):
        self._sample()
        return self.xp.asnumpy(array)

    def memory_free(self) -> int | None:
        free, _ = self.xp.cuda.runtime.memGetInfo()
        pool = self.xp.get_default_memory_pool()
        return int(free) + int(pool.free_bytes())

    def peak_memory(self) -> int | None:
        """Largest memory-pool size seen at a transfer (the pool only grows within a task)."""
        self._sample()
        return self._peak


class _Standin(Device):
    def __init__(self):
        super().__init__("standin", None)
        self.xp = StandinNamespace(self)
        self.memory_limit: int | None = None  # set it to test how a full device is handled

    def memory_free(self) -> int | None:
        return self.memory_limit

    def _put(self, a):
        return StandinArray(np.array(a, copy=True), self.xp)

    def _get(self, array):
        if not isinstance(array, StandinArray):
            raise TypeError(f"to_host takes an array of the stand-in device, not "
                            f"{type(array).__name__}")
        return array._a.copy()


def _cupy_or_unavailable():
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library CuPy could not load
        raise DeviceUnavailable(
            f"--device gpu needs CuPy, which is not usable here ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'not installed'}); "
            "install cupy for your CUDA version or run with --device cpu") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DeviceUnavailable(
            f"--device gpu: CuPy found no usable GPU ({why}); "
            "run on a GPU node or with --device cpu") from None
    if n < 1:
        raise DeviceUnavailable("--device gpu: CuPy found no GPU on this machine; "
                                "run on a GPU node or with --device cpu")
    return cupy


def get_device(name: str) -> Device:
    """A fresh device (with its own transfer counters) by name: cpu, gpu, standin or auto.

    ``auto`` is the GPU where CuPy is installed and finds a device, else the CPU. ``gpu`` where
    that fails raises :class:`DeviceUnavailable` with a one-line reason.
    """
    if name == "cpu":
        return _CPU()
    if name == "standin":
        return _Standin()
    if name == "gpu":
        return _GPU(_cupy_or_unavailable())
    if name == "auto":
        try:
            return _GPU(_cupy_or_unavailable())
        except DeviceUnavailable:
            return _CPU()
    raise ValueError(f"unknown device {name!r}: use one of {', '.join(DEVICE_NAMES)}")


def device_of(array) -> str:
    """'gpu', 'standin' or 'cpu': where an array lives (without importing CuPy)."""
    if isinstance(array, StandinArray):
        return "standin"
    if type(array).__module__.split(".", 1)[0] == "cupy":
        return "gpu"
    return "cpu"


# -- the stand-in ------------------------------------------------------------------------------

def _refuse(what: str):
    raise TypeError(f"{what} of a device array: bring it to the host with device.to_host(x) "
                    "(implicit device-to-host conversion is refused, as on a GPU)")


_SCALARS = (bool, int, float, complex, np.generic)


def _unwrap(x, where: str):
    """NumPy view of a stand-in value; host NumPy arrays are refused (they live elsewhere)."""
    if isinstance(x, StandinArray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"{where}: a NumPy (host) array mixed with device arrays; "
                        "move it with device.to_device(x) first")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, where) for k, v in x.items()}
    return x


def _wrap(x, ns):
    if isinstance(x, np.ndarray):
        return StandinArray(x, ns)
    if isinstance(x, np.generic):  # CuPy reductions give 0-d arrays, not host scalars
        return StandinArray(np.asarray(x), ns)
    if isinstance(x, tuple):
        return tuple(_wrap(v, ns) for v in x)
    if isinstance(x, list):
        return [_wrap(v, ns) for v in x]
    return x


def _binary(op, name):
    def method(self, other):
        return StandinArray(op(self._a, _unwrap(other, f"operator {name}")), self._ns)

    def reflected(self, other):
        return StandinArray(op(_unwrap(other, f"operator {name}"), self._a), self._ns)

    method.__name__ = f"__{name}__"
    reflected.__name__ = f"__r{name}__"
    return method, reflected


class StandinArray:
    """An array of the stand-in device (NumPy inside; refuses implicit host conversion)."""

    __slots__ = ("_a", "_ns")
    __array_ufunc__ = None  # NumPy ufuncs and ndarray operators defer to us, and we refuse
    __hash__ = None

    def __init__(self, a: np.ndarray, ns: StandinNamespace):
        self._a = a
        self._ns = ns

    # -- refusals ---------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        _refuse("numpy.asarray")

    def __array_function__(self, func, types, args, kwargs):
        _refuse(f"numpy.{func.__name__}")

    def __float__(self):
        _refuse("float()")

    def __int__(self):
        _refuse("int()")

    def __index__(self):
        _refuse("operator.index()")

    def __complex__(self):
        _refuse("complex()")

    def __bool__(self):
        _refuse("bool() (an if or while on an array)")

    def __iter__(self):
        _refuse("iterating")

    def tolist(self):
        _refuse("tolist()")

    def item(self, *args):
        _refuse("item()")

    def get(self, *args, **kwargs):
        _refuse("get()")

    def tobytes(self, *args, **kwargs):
        _refuse("tobytes()")

    def __array_namespace__(self, api_version=None):
        return self._ns

    def __reduce__(self):
        # as a CuPy array pickles (dask moving a partition between workers): through the host,
        # counted on this device, and arriving on the receiving process's stand-in
        self._ns._device.transfers.add("to_host", self._a.nbytes)
        return (_standin_received, (self._a,))

    # -- attributes -------------------------------------------------------------------------
    @property
    def shape(self):
        return self._a.shape

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def size(self):
        return self._a.size

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def nbytes(self):
        return self._a.nbytes

    @property
    def T(self):
        return StandinArray(self._a.T, self._ns)

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"StandinArray(shape={self._a.shape}, dtype={self._a.dtype})"

    # -- indexing ---------------------------------------------------------------------------
    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, "indexing")], self._ns)

    def __setitem__(self, key, value):
        self._a[_unwrap(key, "indexing")] = _unwrap(value, "assignment")

    # -- methods (each a device operation) --------------------------------------------------
    def astype(self, dtype, copy=True):
        return StandinArray(self._a.astype(dtype, copy=copy), self._ns)

    def copy(self):
        return StandinArray(self._a.copy(), self._ns)

    def view(self, dtype=None):
        return StandinArray(self._a.view(dtype) if dtype is not None else self._a.view(),
                            self._ns)

    def __getattr__(self, name):
        # reductions and shape methods (sum, min, max, any, all, cumsum, argsort, nonzero,
        # ravel, reshape, ...) run on the device and return device arrays
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            raise AttributeError(name)

        def method(*args, **kwargs):
            return _wrap(attr(*_unwrap(args, f".{name}()"), **_unwrap(kwargs, f".{name}()")),
                         self._ns)

        return method

    def __neg__(self):
        return StandinArray(-self._a, self._ns)

    def __pos__(self):
        return StandinArray(+self._a, self._ns)

    def __invert__(self):
        return StandinArray(~self._a, self._ns)

    def __abs__(self):
        return StandinArray(abs(self._a), self._ns)

    def __iadd__(self, other):
        self._a += _unwrap(other, "operator +=")
        return self

    def __isub__(self, other):
        self._a -= _unwrap(other, "operator -=")
        return self

    def __imul__(self, other):
        self._a *= _unwrap(other, "operator *=")
        return self

    def __iand__(self, other):
        self._a &= _unwrap(other, "operator &=")
        return self

    def __ior__(self, other):
        self._a |= _unwrap(other, "operator |=")
        return self

    def __ixor__(self, other):
        self._a ^= _unwrap(other, "operator ^=")
        return self


for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("floordiv", operator.floordiv),
                   ("mod", operator.mod), ("pow", operator.pow), ("and", operator.and_),
                   ("or", operator.or_), ("xor", operator.xor), ("lshift", operator.lshift),
                   ("rshift", operator.rshift), ("matmul", operator.matmul)]:
    _m, _r = _binary(_op, _name)
    setattr(StandinArray, f"__{_name}__", _m)
    setattr(StandinArray, f"__r{_name}__", _r)
for _name, _op in [("eq", operator.eq), ("ne", operator.ne), ("lt", operator.lt),
                   ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge)]:
    setattr(StandinArray, f"__{_name}__", _binary(_op, _name)[0])


_RECEIVED: dict = {}


def _standin_received(a: np.ndarray) -> StandinArray:
    """A pickled stand-in array arriving in this process: on one stand-in device per process
    (its transfers count the arrivals)."""
    dev = _RECEIVED.get("standin") or _RECEIVED.setdefault("standin", get_device("standin"))
    return dev.to_device(a)


class StandinNamespace(ModuleType):
    """The stand-in's ``xp``: NumPy's functions, taking and giving stand-in arrays.

    Functions that create arrays from host data (``asarray``, ``array``) count a
    host-to-device transfer, as CuPy would make one; every other function refuses NumPy arrays.
    """

    # CuPy's signatures where they are narrower than NumPy's
    _CREATE = ("asarray", "array", "ascontiguousarray")

    def __init__(self, device: Device):
        super().__init__("hpcstudy.devices.standin")
        self._device = device

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(np, name)
        if isinstance(attr, (type, ModuleType)) or not callable(attr):
            return attr  # dtypes (int64, bool_), constants (nan, inf), finfo/iinfo
        if name in self._CREATE:
            return self._creator(attr, name)
        if name == "lexsort":
            return self._lexsort
        if name == "repeat":
            return self._repeat

        def fn(*args, **kwargs):
            where = f"{self.__name__}.{name}"
            return _wrap(attr(*_unwrap(args, where), **_unwrap(kwargs, where)), self)

        fn.__name__ = name
        return fn

    def _creator(self, attr, name):
        def fn(obj, *args, **kwargs):
            if isinstance(obj, StandinArray):
                return _wrap(attr(obj._a, *args, **kwargs), self)
            host = np.asarray(obj)
            self._device.transfers.add("to_device", host.nbytes)
            return StandinArray(np.array(attr(host, *args, **kwargs), copy=True), self)

        fn.__name__ = name
        return fn

    def _lexsort(self, keys, axis=-1):
        if not isinstance(keys, StandinArray) or keys.ndim != 2:
            raise TypeError("lexsort takes one 2-D device array of keys (as cupy.lexsort), "
                            "e.g. xp.lexsort(xp.stack([minor, major]))")
        return StandinArray(np.lexsort(keys._a, axis=axis), self)

    def _repeat(self, a, repeats, axis=None):
        if isinstance(repeats, StandinArray):
            raise TypeError("repeat takes an int or a list of repeats (as cupy.repeat), not "
                            "a device array")
        return StandinArray(np.repeat(_unwrap(a, "repeat"), _unwrap(repeats, "repeat"),
                                      axis=axis), self)

