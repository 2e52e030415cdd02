"""Flat buffers: many arrays summed over the ranks with one all-reduce per bucket.

An all-reduce has a fixed cost per call (latency) on top of its cost per byte
(bandwidth); summing a model's twenty gradient arrays one by one pays the
first twenty times. So the arrays are packed into one contiguous buffer per
dtype, cut into buckets of at most ``bucket_bytes`` (an array is never split;
one larger than a bucket makes a bucket of its own), each bucket summed with
one call, and the sums unpacked into arrays of the original shapes. Buckets
bound the extra memory of the packed copy for a large model.

Examples
--------
>>> import numpy as np
>>> from xseq.distributed import SingleProcess, allreduce_arrays
>>> summed = allreduce_arrays(SingleProcess(), {"W": np.ones((2, 2)), "b": np.zeros(2)})
>>> summed["W"].shape, summed["b"].shape
((2, 2), (2,))
"""

from __future__ import annotations

import dataclasses
import math

from ..backends.arrays import namespace_of
from ..backends.checks import _dtype_name

DEFAULT_BUCKET_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Arrays of one dtype summed together: their names, shapes and sizes, in packing order."""

    dtype: str
    names: tuple
    shapes: tuple

    @property
    def sizes(self):
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def nbytes(self):
        return sum(self.sizes) * _itemsize(self.dtype)


def plan_buckets(arrays, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """Group arrays by dtype, in the dict's order, into buckets of at most ``bucket_bytes``.

    Parameters
    ----------
    arrays : dict[str, array]
        Arrays of one library; any shapes and numeric dtypes.
    bucket_bytes : int >= 1
        The most bytes of one bucket, unless a single array is larger.

    Returns
    -------
    list of Bucket
        The dtypes in the order of their first array; every name exactly once.
    """
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be an int >= 1; got {bucket_bytes!r}")
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of name -> array; got {type(arrays).__name__}")
    if arrays:
        namespace_of(**{f"arrays[{k!r}]": v for k, v in arrays.items()})
    by_dtype = {}
    for name, a in arrays.items():
        by_dtype.setdefault(_dtype_name(a.dtype), []).append((name, tuple(a.shape)))
    buckets = []
    for dtype, members in by_dtype.items():
        itemsize = _itemsize(dtype)
        names, shapes, used = [], [], 0
        for name, shape in members:
            nbytes = math.prod(shape) * itemsize
            if names and used + nbytes > bucket_bytes:
                buckets.append(Bucket(dtype, tuple(names), tuple(shapes)))
                names, shapes, used = [], [], 0
            names.append(name)
            shapes.append(shape)
            used += nbytes
        buckets.append(Bucket(dtype, tuple(names), tuple(shapes)))
    return buckets


def pack(arrays, bucket):
    """One flat (1-D) array of ``bucket``'s arrays, one after the other, each in C order."""
    xp = namespace_of(**{f"arrays[{k!r}]": arrays[k] for k in bucket.names})
    for name, shape in zip(bucket.names, bucket.shapes):
        a = arrays[name]
        if _dtype_name(a.dtype) != bucket.dtype or tuple(a.shape) != shape:
            raise ValueError(f"arrays[{name!r}] has dtype {_dtype_name(a.dtype)} and shape {tuple(a.shape)}; "
                             f"the bucket expects {bucket.dtype} {shape}")
    return xp.concat([xp.reshape(arrays[name], (-1,)) for name in bucket.names])


def unpack(flat, bucket):
    """The arrays of ``bucket`` from a flat array made by :func:`pack` (views of ``flat`` where the library
    has views)."""
    xp = namespace_of(flat=flat)
    expected = sum(bucket.sizes)
    if flat.ndim != 1 or flat.shape[0] != expected:
        raise ValueError(f"flat has shape {tuple(flat.shape)}; the bucket holds ({expected},)")
    out, start = {}, 0
    for name, shape, size in zip(bucket.names, bucket.shapes, bucket.sizes):
        out[name] = xp.reshape(flat[start:start + size], shape)
        start += size
    return out


def allreduce_arrays(comm, arrays, bucket_bytes=DEFAULT_BUCKET_BYTES):
    """The sum over all ranks of every array of ``arrays``, with one all-reduce per bucket.

    Every rank must pass the same names, shapes and dtypes in the same order.

    Parameters
    ----------
    comm : Communicator
    arrays : dict[str, array]
    bucket_bytes : int
        See :func:`plan_buckets`.

    Returns
    -------
    dict[str, array]
        The same keys, in the same order; the arrays may share memory with the
        packed buffers (not with ``arrays``).
    """
    summed = {}
    for bucket in plan_buckets(arrays, bucket_bytes):
        summed.update(unpack(comm.allreduce_sum(pack(arrays, bucket)), bucket))
    return {name: summed[name] for name in arrays}


_ITEMSIZES = {"float16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
              "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1}


def _itemsize(dtype):
    if dtype not in _ITEMSIZES:
        raise TypeError(f"cannot pack arrays of dtype {dtype}; expected one of {sorted(_ITEMSIZES)}")
    return _ITEMSIZES[dtype]
