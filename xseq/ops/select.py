"""The one place that picks the step implementation for an array namespace (and dtype).

* :class:`~xseq.ops.reference.ArrayAPIOps` -- the reference, written only against
  the array API standard; it runs on every backend (PyTorch, array-api-strict).
* :class:`~xseq.ops.cuda.FusedCupyOps` -- one CuPy kernel per step and direction,
  for CuPy arrays, with the direct loop for unmasked sequences;
* ``HostFusedOps`` (:mod:`xseq.ops.host`) -- the same kernels compiled for the CPU
  with the system C++ compiler, for float32/float64 NumPy arrays where that build works;
* :class:`~xseq.ops.numpy_inplace.NumpyOps` -- the same math with NumPy's ``out=``, in
  place, for other NumPy arrays and where there is no host build.

NumPy's ops take their float32 matrix products from :mod:`xseq.ops.blas`
(oneDNN's ``dnnl_sgemm``) where that is installed and ``XSEQ_ONEDNN=1``, and
from NumPy's OpenBLAS otherwise.

``XSEQ_FUSED=0`` turns every fast path off, leaving the reference everywhere;
``XSEQ_HOST_KERNELS=0`` only the host build; ``XSEQ_DIRECT=0`` only CuPy's direct loop.
"""

from __future__ import annotations

from ..backends.arrays import backend_name
from . import blas
from .cuda import FusedCupyOps
from .host import host_ops
from .numpy_inplace import NumpyOps
from .reference import ArrayAPIOps
from .switches import fused_enabled

__all__ = ["ops_for", "fused_enabled"]


def ops_for(xp, dtype=None):
    """Pick the step implementation for namespace ``xp`` (and arrays of ``dtype``): the single dispatch point."""
    name = backend_name(xp)
    if name == "cupy" and fused_enabled():
        return FusedCupyOps(xp)
    if name == "numpy" and fused_enabled():
        ops = host_ops(xp, dtype) or NumpyOps(xp)
        ops.gemm = blas.matmul_for(dtype)  # oneDNN for the large float32 products, where installed
        return ops
    return ArrayAPIOps(xp)
