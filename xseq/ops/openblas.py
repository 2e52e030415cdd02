"""NumPy's own OpenBLAS, found among the libraries NumPy has loaded: the lanes' products and threads.

Only a library already in the process is taken (``RTLD_NOLOAD``): nothing is
loaded that NumPy did not load itself. The lanes (:mod:`xseq.ops.lanes`) call
its ``gemm`` by address from C++, set its thread count around a run and run
on its own threads (``gotoblas_pthread``).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import numpy as np


class OpenBLAS:
    """NumPy's bundled OpenBLAS (scipy-openblas, 64-bit integers), as NumPy loaded it."""

    def __init__(self, lib, path):
        self.path = path
        # called by address from the C++ loops (CBLAS, 64-bit integers: loops.h's gemm_t)
        self.gemm = {np.dtype(np.float32): lib.scipy_cblas_sgemm64_, np.dtype(np.float64): lib.scipy_cblas_dgemm64_}
        self.set_threads_local = lib.openblas_set_num_threads_local  # OpenBLAS >= 0.3.27
        self.set_threads_local.argtypes, self.set_threads_local.restype = [ctypes.c_int], ctypes.c_int
        self._threads = lib.scipy_openblas_get_num_threads64_
        self._threads.argtypes, self._threads.restype = [], ctypes.c_int
        # gotoblas_pthread(n, function, args, stride): function(args + i * stride) for i < n, the first on the
        # calling thread and the others on OpenBLAS's own threads, and back when all are done (the pthreads
        # build's server; the OpenMP build has none, and then there are no lanes)
        self.run_on_threads = lib.gotoblas_pthread
        self.run_on_threads.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.run_on_threads.restype = ctypes.c_int

    def threads(self):
        """OpenBLAS's thread count now (what NumPy's products use)."""
        return int(self._threads())


@functools.cache
def numpy_openblas():
    """``(OpenBLAS, "")`` for the OpenBLAS NumPy has loaded, or ``(None, reason)``."""
    if not hasattr(os, "RTLD_NOLOAD"):
        return None, "this platform cannot look up a loaded library (no RTLD_NOLOAD)"
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    candidates = sorted(libs.glob("libscipy_openblas64_*.so*")) if libs.is_dir() else []
    reason = "NumPy's BLAS is not its bundled OpenBLAS (scipy-openblas64)"
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        except OSError:
            reason = f"{path.name} is not loaded in this process"
            continue
        try:
            return OpenBLAS(lib, path), ""
        except AttributeError as exc:
            reason = f"{path.name} lacks {exc} (the pthreads build of OpenBLAS 0.3.27 or later is needed)"
    return None, reason
