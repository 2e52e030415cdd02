"""Choosing an array library, and moving arrays into and out of it.

Every xseq function takes its namespace from its input arrays
(:func:`namespace_of`); this module is where a user picks one by name.
Nothing here imports CuPy or torch until that backend is asked for, so
``import xseq`` works on a machine with neither.
"""

from __future__ import annotations

import importlib

import array_api_compat
import numpy as np

BACKENDS = ("numpy", "cupy", "torch", "array_api_strict", "auto")
FLOAT_DTYPES = ("float32", "float64")


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run on this machine."""


def _cupy_or_reason():
    """Return ``(cupy, None)`` when CuPy can run here, else ``(None, reason)``."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        return None, f"CuPy is not installed ({exc}); install the extra: pip install 'xseq[cupy]'"
    try:
        available = cupy.is_available()
    except Exception as exc:  # a broken CUDA install raises from deep inside CuPy
        return None, f"CuPy is installed but CUDA failed to initialise: {exc}"
    if not available:
        return None, "CuPy is installed but no usable CUDA device was found"
    return cupy, None


def backend(name="numpy"):
    """Return the array API namespace of a backend.

    Parameters
    ----------
    name : {"numpy", "cupy", "torch", "array_api_strict", "auto"} or namespace
        ``"auto"`` is CuPy when ``cupy.is_available()``, else NumPy. A
        namespace (anything with ``asarray``) is returned unchanged.

    Raises
    ------
    BackendUnavailableError
        ``"cupy"`` where CuPy is missing or has no usable GPU, or ``"torch"`` /
        ``"array_api_strict"`` where that package is not installed.
    ValueError
        An unknown name.
    """
    if not isinstance(name, str):
        if hasattr(name, "asarray"):
            return name
        raise TypeError(f"backend must be one of {BACKENDS} or an array namespace; got {name!r}")
    if name == "auto":
        cupy, _ = _cupy_or_reason()
        name = "cupy" if cupy is not None else "numpy"
    if name == "numpy":
        return array_api_compat.array_namespace(np.empty(0))
    if name == "cupy":
        cupy, reason = _cupy_or_reason()
        if cupy is None:
            raise BackendUnavailableError(f'backend "cupy" cannot run: {reason}')
        return array_api_compat.array_namespace(cupy.empty(0))
    if name == "torch":
        try:
            torch = importlib.import_module("torch")
        except ImportError as exc:
            raise BackendUnavailableError(f'backend "torch" cannot run: PyTorch is not installed ({exc})') from None
        return array_api_compat.array_namespace(torch.empty(0))
    if name == "array_api_strict":
        try:
            return importlib.import_module("array_api_strict")
        except ImportError as exc:
            raise BackendUnavailableError(
                f'backend "array_api_strict" cannot run: it is not installed ({exc})'
            ) from None
    raise ValueError(f"backend must be one of {BACKENDS}; got {name!r}")


_backend_named = backend


def backend_name(xp):
    """The short name ("numpy", "cupy", "torch", "array_api_strict") of a namespace."""
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    if array_api_compat.is_array_api_strict_namespace(xp):
        return "array_api_strict"
    return getattr(xp, "__name__", repr(xp))


def dtype_of(xp, dtype):
    """Resolve ``"float32"``/``"float64"`` (or a dtype of ``xp``) to a dtype of ``xp``."""
    if isinstance(dtype, str):
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}; got {dtype!r}")
        return getattr(xp, dtype)
    return dtype


def asarray(obj, backend="numpy", dtype=None):
    """Create an array of ``backend`` from ``obj`` (a list, NumPy array, ...).

    ``dtype`` is ``"float32"``, ``"float64"``, a dtype of that backend, or None
    to keep what ``obj`` has. Arrays already on another device are moved
    explicitly through host memory.
    """
    refuse_masked("obj", obj)
    xp = _backend_named(backend)
    if _is_array(obj) and not _same_library(obj, xp):
        obj = to_numpy(obj)
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = dtype_of(xp, dtype)
    return xp.asarray(obj, **kwargs)


def to_numpy(x):
    """Copy an array of any supported backend to a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    try:
        return np.from_dlpack(x)
    except (TypeError, AttributeError, RuntimeError, BufferError):
        return np.asarray(x)


def refuse_masked(name, value):
    """TypeError for a NumPy masked array: every conversion drops its mask, so its hidden entries would count."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} is a NumPy masked array; xseq does not read masks, so its masked entries would "
                        f"be used as data. Pass an ordinary array ({name}.filled(...)); for sequences of "
                        "different lengths use lengths= (layers) or mask= (softmax_cross_entropy)")


def _is_array(obj):
    return array_api_compat.is_array_api_obj(obj)


def _same_library(x, xp):
    return array_api_compat.array_namespace(x) is xp


def namespace_of(**arrays):
    """The namespace shared by the named arrays; TypeError naming both libraries if they differ.

    None values are ignored. Called with keyword arguments so that the error can
    name the arguments.
    """
    first_name = first_xp = None
    for name, value in arrays.items():
        if value is None:
            continue
        refuse_masked(name, value)
        if not _is_array(value):
            raise TypeError(f"{name} must be an array (NumPy, CuPy, PyTorch, ...); got {type(value).__name__}")
        xp = array_api_compat.array_namespace(value)
        if first_xp is None:
            first_name, first_xp = name, xp
        elif xp is not first_xp:
            raise TypeError(
                f"arrays of two libraries in one call: {first_name} is a {backend_name(first_xp)} array "
                f"but {name} is a {backend_name(xp)} array; convert one with xseq.asarray(..., backend=...)"
            )
    if first_xp is None:
        raise TypeError("no array arguments were given")
    return first_xp
