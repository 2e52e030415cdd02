"""An optional second matrix-product library for NumPy float32 sequences: oneDNN's ``dnnl_sgemm``.

NumPy's matrix products run on the OpenBLAS it bundles. oneDNN's CPU build
(``pip install onednn-cpu-gomp``, or the extra ``xseq[onednn]``; Apache-2.0,
a 39 MB wheel that installs 164 MB: its one library three times) has its own
JIT-generated AVX-512 kernels; on the benchmark machine (2-core AMD EPYC,
Zen 4) ``dnnl_sgemm`` was 10-25% faster than OpenBLAS at the engine's large
products (the input projection, ``dX``, the weight gradients) and within
noise of it at the per-step products (``docs/decisions/007-onednn-opt-in.md`` has the runs).

It is off unless ``XSEQ_ONEDNN=1``. The two libraries keep separate thread
pools, and on a machine with few cores a product by one of them right after
products by the other waits for the other's idle threads to stop spinning
(GNU OpenMP's spin for milliseconds without yielding): measured, sequences that
left the small products to OpenBLAS and gave the large ones to oneDNN ran 2x
slower than either library alone. So where it is turned on, it takes every
float32 product of the engine of at least :data:`MIN_FLOPS` operations (0 by
default: all of them), and the products outside the engine (a language
model's output layer, the user's own) still switch pools.

Nothing is compiled and ``import xseq`` never loads it: the library is
opened (``ctypes``) at the first float32 NumPy sequence call with
``XSEQ_ONEDNN=1``, from the files of the installed distribution only, and
checked against NumPy's product on a small problem of every operand layout it
is given; if it is absent, fails to load or disagrees, OpenBLAS does every
product and :func:`status` says why.

Threads: oneDNN runs each product on ``OMP_NUM_THREADS`` threads (GNU
OpenMP's own reading of it); where only ``OPENBLAS_NUM_THREADS`` is set it is
given that number, so that a user who limited NumPy's BLAS limits this one
alike; otherwise one thread per core, like OpenBLAS.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from importlib import metadata

import numpy as np

# Why: see docs/decisions/007-onednn-opt-in.md
#: Products of fewer floating-point operations (2 M N K) go to OpenBLAS. 0: none, since switching
#: between the two libraries' thread pools within a sequence costs more than any product gains (see
#: the module docstring); a threshold is for a machine with cores to spare.
MIN_FLOPS = 0

#: The PyPI distributions searched for ``libdnnl.so.3``, in order.
DISTRIBUTIONS = ("onednn-cpu-gomp",)
LIBRARY = "libdnnl.so.3"


def enabled():
    """Whether the accelerator may be used (``XSEQ_ONEDNN=1`` turns it on; read at each call)."""
    return os.environ.get("XSEQ_ONEDNN", "0").strip().lower() in ("1", "true", "yes", "on")


def thread_count():
    """Threads for oneDNN's products, or None for GNU OpenMP's default (``OMP_NUM_THREADS``, else every core)."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return None
    value = os.environ.get("OPENBLAS_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


class _Library:
    """The loaded library (``gemm`` None where it is not used) and what :func:`status` says about it."""

    def __init__(self, gemm=None, set_threads=None, description="", reason=""):
        self.gemm, self.set_threads = gemm, set_threads
        self.description, self.reason = description, reason


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


def _find():
    """``(path, distribution)`` of the installed ``libdnnl.so.3``, or ``(None, reason)``."""
    for name in DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for file in dist.files or ():
            if file.name == LIBRARY:
                return os.path.realpath(dist.locate_file(file)), f"{name} {dist.version}"
        return None, f"{name} {dist.version} is installed but holds no {LIBRARY}"
    return None, f"{' or '.join(DISTRIBUTIONS)} is not installed (pip install onednn-cpu-gomp)"


@functools.lru_cache(maxsize=1)
def library():
    """Load oneDNN once per process and check it; a :class:`_Library` either way."""
    path, found = _find()
    if path is None:
        return _Library(reason=found)
    try:
        lib = ctypes.CDLL(path)
        gemm = lib.dnnl_sgemm
        gemm.restype = ctypes.c_int
        D, F, P, Ch = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_char
        gemm.argtypes = [Ch, Ch, D, D, D, F, P, D, P, D, F, P, D]
        version = lib.dnnl_version
        version.restype = ctypes.POINTER(_Version)
        v = version().contents
        gomp = ctypes.CDLL("libgomp.so.1")  # the OpenMP runtime oneDNN was linked against, already loaded
        set_threads = gomp.omp_set_num_threads
        set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
    except (OSError, AttributeError) as exc:
        return _Library(reason=f"{found}: {path} could not be loaded ({exc})")
    loaded = _Library(gemm, set_threads, f"oneDNN {v.major}.{v.minor}.{v.patch} from {found} ({path})")
    problem = _self_check(loaded)
    if problem:
        return _Library(reason=f"{loaded.description}: not used, {problem}")
    return loaded


def _self_check(lib):
    """None if oneDNN's products of every layout :func:`matmul` passes it agree with NumPy's, else what differs."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 29)).astype(np.float32)
    b = rng.standard_normal((29, 23)).astype(np.float32)
    for left, right in ((a, b), (np.asfortranarray(a), b), (a, np.asfortranarray(b)),
                        (np.asfortranarray(a), np.asfortranarray(b))):
        want = np.matmul(left, right)
        got = np.empty_like(want)
        if not _call(lib, left, right, got):
            return "a product was refused"
        err = float(np.abs(got - want).max() / np.abs(want).max())
        if not err < 1e-5:
            return f"its product differs from NumPy's by {err:.1e} (relative)"
    return None


def _layout(a):
    """``(transpose flag, leading dimension)`` of a 2-D float32 array as a row-major matrix, or None."""
    s0, s1 = a.strides
    rows, cols = a.shape
    if s1 == 4 and s0 % 4 == 0 and s0 // 4 >= max(1, cols):
        return b"N", s0 // 4
    if s0 == 4 and s1 % 4 == 0 and s1 // 4 >= max(1, rows):
        return b"T", s1 // 4
    return None


_threads_set = threading.local()


def _call(lib, a, b, out):
    """``out[...] = a @ b`` by oneDNN; False (nothing written) where a layout does not suit it."""
    la, lb = _layout(a), _layout(b)
    if la is None or lb is None or out.strides[1] != 4 or out.strides[0] % 4:
        return False
    (m, k), n = a.shape, b.shape[1]
    threads = thread_count()
    if threads is not None and getattr(_threads_set, "value", None) != threads:
        lib.set_threads(threads)  # GNU OpenMP keeps the count per calling thread
        _threads_set.value = threads
    status = lib.gemm(la[0], lb[0], m, n, k, 1.0, a.ctypes.data, la[1], b.ctypes.data, lb[1], 0.0,
                      out.ctypes.data, out.strides[0] // 4)
    return status == 0


def matmul_for(dtype):
    """:func:`matmul` where oneDNN serves arrays of ``dtype`` (float32, enabled, loaded and checked), else None.

    Called once per sequence call (``ops_for``), so the products of a call that
    oneDNN cannot serve cost nothing more than NumPy's.
    """
    if dtype is None or np.dtype(dtype) != np.float32 or not enabled():
        return None
    return matmul if library().gemm is not None else None


def matmul(a, b, out):
    """``a @ b`` written into ``out`` by oneDNN where it is used for this shape; None where it is not.

    Used for 2-D float32 NumPy arrays whose product takes at least
    :data:`MIN_FLOPS` operations, with unit stride along one axis, ``out``
    row-major and sharing no memory with ``a`` or ``b``; the caller computes
    every other product itself. Only call it once :func:`matmul_for` has
    returned it (the library is loaded and checked).
    """
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2:
        return None
    (m, k), (k2, n) = a.shape, b.shape
    if 2 * m * n * k < MIN_FLOPS or k2 != k or out.shape != (m, n):
        return None
    if not (a.dtype == b.dtype == out.dtype == np.float32):
        return None
    if np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return None
    return out if _call(library(), a, b, out) else None


def status():
    """Which library computes NumPy float32 matrix products, and why: a line for humans."""
    if not enabled():
        path, found = _find()
        installed = f"{found} is installed" if path else found
        return f"OpenBLAS (NumPy's matmul) for every product; oneDNN is off unless XSEQ_ONEDNN=1 ({installed})"
    lib = library()
    if lib.gemm is None:
        return f"OpenBLAS (NumPy's matmul) for every product; oneDNN not used: {lib.reason}"
    threads = thread_count()
    how = f"{threads} threads (OPENBLAS_NUM_THREADS)" if threads else "OMP_NUM_THREADS or one thread per core"
    which = f"of >= {MIN_FLOPS / 1e6:g} MFLOP" if MIN_FLOPS else "of the engine"
    return (f"{lib.description}: dnnl_sgemm for every float32 product {which} on {how}; "
            "OpenBLAS (NumPy's matmul) for the others")
