"""Argument checks shared by every public function.

Errors name the argument, what it is and what was expected, in the course's
letters (n_x, n_a, n_y, m, T_x). Nothing is broadcast or cast silently.
"""

from __future__ import annotations

import numbers

import array_api_compat.numpy as compat_numpy
import numpy as np
from array_api_compat import is_array_api_obj

from .arrays import namespace_of, refuse_masked, to_numpy


def _dtype_name(dtype):
    """"float32" for NumPy's, CuPy's, torch's ("torch.float32") and array_api_strict's dtypes alike."""
    return str(dtype).rsplit(".", 1)[-1]


def check_sizes(**sizes):
    """Every named size is a positive integer (bool excluded)."""
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")


def is_floating(xp, x):
    return xp.isdtype(x.dtype, "real floating")


def is_real_number(xp, x):
    """An integer or real floating array (bool and complex excluded).

    ``xp`` may be the ``numpy`` module itself, the namespace of an array-like
    that wraps NumPy; it has ``isdtype`` only from NumPy 2.0, so
    array_api_compat's NumPy namespace answers for it, as for an ndarray.
    """
    if xp is np:
        xp = compat_numpy
    return xp.isdtype(x.dtype, ("integral", "real floating"))


def check_floating(xp, name, x):
    if not is_floating(xp, x):
        raise TypeError(
            f"{name} has dtype {_dtype_name(x.dtype)}; expected a real floating dtype (float32 or float64)"
        )


def check_ndim(name, x, ndim, layout):
    if x.ndim != ndim:
        raise ValueError(f"{name} has {x.ndim} dimensions, shape {tuple(x.shape)}; expected {ndim}: {layout}")


def check_shape(name, x, expected, layout, source):
    """Raise unless ``x.shape == expected``.

    ``layout`` spells the shape in letters, e.g. ``"(n_a, m)"``; ``source``
    says where the expectation comes from, e.g. ``"from Waa and xt"``.
    """
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {layout} = {tuple(expected)} {source}")


def check_same_dtype(arrays):
    """All arrays in the ``{name: array}`` mapping share one dtype; the first named sets it."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    first_name, first = items[0]
    for name, value in items[1:]:
        if value.dtype != first.dtype:
            raise TypeError(
                f"mixed dtypes: {name} is {_dtype_name(value.dtype)} but {first_name} is "
                f"{_dtype_name(first.dtype)}; convert them to one floating dtype first"
            )


def get_parameters(parameters, keys, where):
    """Pull ``keys`` out of a parameter dictionary, naming a missing key."""
    if not isinstance(parameters, dict):
        raise TypeError(f"parameters must be a dict with keys {list(keys)}; got {type(parameters).__name__}")
    missing = [k for k in keys if k not in parameters]
    if missing:
        raise KeyError(f"parameters is missing key {missing[0]!r} needed by {where}; expected keys {list(keys)}")
    return [parameters[k] for k in keys]


def namespace_and_checks(**arrays):
    """Common entry check: one library, floating dtypes, one dtype. Returns the namespace."""
    for name, value in arrays.items():
        if value is None:  # namespace_of skips None (optional arguments); here every array is required
            raise TypeError(f"{name} must be an array (NumPy, CuPy, PyTorch, ...); got NoneType")
    xp = namespace_of(**arrays)
    for name, value in arrays.items():
        check_floating(xp, name, value)
    check_same_dtype(arrays)
    return xp


def check_cache(cache, expected_type, function, producer):
    """A backward function was handed a cache: it must be the one its forward returns."""
    if not isinstance(cache, expected_type):
        made_by = getattr(type(cache), "made_by", None)
        got = f"a cache from {made_by}" if made_by else f"a {type(cache).__name__}"
        raise TypeError(f"{function} needs the cache returned by {producer}; got {got}")


def host_lengths(lengths, m, T_x):
    """Validate the per-example ``lengths`` of a sequence batch; return them as a host int64 array ``(m,)``.

    ``lengths`` is a 1-D integer array of any backend or a sequence of ints;
    bools (``True`` is not a length of 1), floats and masked arrays are
    refused with a TypeError, shapes and values outside ``1 <= L <= T_x``
    with a ValueError.
    """
    refuse_masked("lengths", lengths)
    if is_array_api_obj(lengths):
        host = to_numpy(lengths)
        if not np.issubdtype(host.dtype, np.integer):
            raise TypeError(f"lengths must be integers; got dtype {host.dtype}: {host.tolist()}")
    elif isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
        raise TypeError(f"lengths must be a sequence of int or a 1-D integer array; got {type(lengths).__name__}")
    else:
        items = list(lengths)
        for i, value in enumerate(items):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise TypeError(f"lengths must be integers; lengths[{i}] is {type(value).__name__} {value!r}")
        host = np.array([int(value) for value in items], dtype=object)  # object: no int64 overflow yet
    if host.ndim != 1 or host.shape[0] != m:
        raise ValueError(f"lengths has shape {host.shape}; expected (m,) = ({m},), one length per example of x")
    if ((host < 1) | (host > T_x)).any():
        raise ValueError(f"lengths must satisfy 1 <= L <= T_x = {T_x}; got {host.tolist()}")
    return host.astype(np.int64)
