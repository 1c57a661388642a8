"""NumPy arrays to and from Arrow arrays, for the plain numeric columns of the registers and the
per-person tables: the same arrays ``to_numpy``/``pa.array`` give, by their buffers.

Why: pyarrow's own conversions consult pandas (is this a Series? a categorical?) and so import
it, about 0.6 s of CPU, inside the first partition task of every run that never uses pandas.
A column of another kind (nulls, strings, dictionaries) takes pyarrow's own path.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Arrow's fixed-width numeric types and their NumPy dtypes
_NUMPY = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
          pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32,
          pa.uint64(): np.uint64, pa.float32(): np.float32, pa.float64(): np.float64}
_ARROW = {np.dtype(v): k for k, v in _NUMPY.items()}


def to_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``col.to_numpy()``: a read-only view of a single chunk, else a copy."""
    if isinstance(col, pa.ChunkedArray):
        col = col.chunks[0] if col.num_chunks == 1 else col.combine_chunks()
    dtype = _NUMPY.get(col.type)
    if dtype is None or col.null_count:
        return col.to_numpy(zero_copy_only=False)
    return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col),
                         offset=col.offset * np.dtype(dtype).itemsize)


def from_numpy(v: np.ndarray) -> pa.Array:
    """``pa.array(v)`` for a 1-D NumPy array (numeric: its buffer, no copy where contiguous;
    NaN stays a value, as in ``pa.array``)."""
    t = _ARROW.get(v.dtype)
    if t is None or v.ndim != 1:
        return pa.array(v)
    v = np.ascontiguousarray(v)
    return pa.Array.from_buffers(t, len(v), [None, pa.py_buffer(v)])


def table(columns: dict[str, np.ndarray]) -> pa.Table:
    """``pa.table({name: pa.array(v)})`` of NumPy columns."""
    return pa.Table.from_arrays([from_numpy(v) for v in columns.values()], names=list(columns))
