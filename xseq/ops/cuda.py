"""Fused CuPy kernels: a time step's pointwise work in one launch.

The array-API reference (:class:`xseq.ops.reference.ArrayAPIOps`) spends tens
of kernel launches on the pointwise part of a step (about forty for an LSTM
forward step), each reading and writing a temporary array; on a GPU that launch
overhead and memory traffic, not the arithmetic, is what the pointwise part
costs. Here each step and direction is one ``cupy.ElementwiseKernel`` that
reads its operands straight from the sequence buffers and writes its results
straight into them (``saved[t]``, ``S[t+1]``, ``C[t+1]``, ``dZ[t]`` ...), as
Chainer's ``chainer/functions/rnn/lstm.py`` does.

The kernel runs over the ``(m, n_a)`` elements of the state. The gate rows
are ``(m, G*n_a)`` with the gate blocks side by side, so a thread that owns
element ``i = row*n_a + col`` finds gate ``k`` of its unit at
``row*G*n_a + k*n_a + col``; those arrays are ``raw`` parameters indexed by
hand, the ``(m, n_a)`` ones are ordinary elementwise parameters.

The CUDA source lives in :data:`KERNELS`, a registry of plain strings, so
that the tests can compile it with NVRTC and run it on the host with a C++
compiler where there is no GPU. Nothing here imports CuPy until a kernel is
first launched: ``import xseq`` never touches CUDA.

Unmasked sequences skip the step methods altogether: :class:`DirectSteps`
runs the engine's time loops with one cuBLAS gemm and one ``RawKernel``
launch of the same source per step, by address (see "direct launches"
below), because at small sizes the host's time per call, not the GPU's,
sets the pace.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from .fused import DirectSteps, FusedSteps, checked_once, colmajor_gemm
from .kernel_source import CTYPES, KERNELS, THREADS, raw_kernel_module
from .reference import ArrayAPIOps
from .switches import direct_enabled


@functools.cache
def kernel(name):
    """The ``cupy.ElementwiseKernel`` for ``KERNELS[name]``, built on first use.

    Building the object is cheap and touches no GPU; CuPy compiles it on the
    first launch and keeps one binary per device and dtype (and on disk in
    its kernel cache), so memoizing the object by name gives one compilation
    per (name, device, dtype).
    """
    import cupy

    src = KERNELS[name]
    return cupy.ElementwiseKernel(
        src.in_params, src.out_params, src.operation, name=name, preamble=src.preamble
    )


class FusedCupyOps(FusedSteps, ArrayAPIOps):
    """Step implementation for CuPy arrays: one kernel launch per step and direction.

    The step methods are :class:`FusedSteps`'; the rest -- buffers, products,
    the output softmax -- is the reference's. Launches go through the
    module-level :func:`kernel`, which is also what lets
    ``tests/test_kernels_exec.py`` run these methods with a host build of
    the same sources.

    Where a whole unmasked sequence runs, the engine takes the time loop from
    :meth:`direct_steps` instead: the same kernels launched by address
    (:class:`DirectSteps`), without the step methods' array views.
    ``direct`` picks the device that launches them: None for the checked
    CuPy device of :func:`cupy_direct_device` (``XSEQ_DIRECT=0`` turns it
    off), False for never, or a device object (the tests' host build).
    """

    name = "fused-cupy"

    def __init__(self, xp, direct=None):
        super().__init__(xp)
        self._direct = direct

    def _launch(self, name, *args):
        kernel(name)(*args)

    def _step_array(self, key, like):
        return self.xp.empty_like(like)

    def direct_steps(self, dtype, device=None, check=None, rows=None, n_a=None, gates=None):
        """:class:`DirectSteps` for arrays of ``dtype`` on ``device``, or None for the engine's loop.

        ``check(device)`` proves a new :class:`CupyDevice` against the step methods
        (the engine passes its ``check_direct``: it runs the engine, which lives above
        the ops); without one the direct loop is not used.
        """
        if self._direct is not None:
            return DirectSteps(self._direct) if self._direct else None
        # The kernels launch, and cuBLAS runs, on the current device: arrays elsewhere take the step
        # methods, where CuPy checks the device itself.
        current = _device_id()
        if device is not None and getattr(device, "id", None) != current:
            return None
        if check is None:
            return None
        launcher = cupy_direct_device(dtype, check, current)
        return DirectSteps(launcher) if launcher else None


class CupyDevice:
    """Direct launches on the current CUDA device for one dtype: raw kernels and cuBLAS's gemm.

    The kernels are :func:`raw_kernel_module` compiled by ``cupy.RawModule``
    (with ``-ftz=true``, as ElementwiseKernel compiles); the gemm is CuPy's
    binding of ``cublas<S|D>gemm`` on CuPy's handle for the device, alpha and
    beta in host memory. Use inside :meth:`session`, which binds the handle
    to the current stream and to host pointers, and restores the mode after.
    """

    def __init__(self, dtype):
        import cupy
        from cupy_backends.cuda.libs import cublas

        self.dtype = np.dtype(dtype)
        ctype = CTYPES[self.dtype]
        module = cupy.RawModule(code=raw_kernel_module(ctype), options=("-ftz=true",))
        self._kernels = {
            name: (module.get_function(name), [typ == "int32" for _, typ, _, _ in src.parameters()])
            for name, src in KERNELS.items()
        }
        self._int32, self._address_type, self._size_type = np.int32, np.uint64, np.int64
        self._cupy, self._cublas = cupy, cublas
        self._gemm = cublas.sgemm if ctype == "float" else cublas.dgemm
        self._handle = cupy.cuda.device.get_cublas_handle()
        self._scalars = np.array([0, 1], dtype=self.dtype)  # beta = 0, alpha = beta = 1
        self._zero = self._scalars.ctypes.data
        self._one = self._zero + self.dtype.itemsize

    @contextlib.contextmanager
    def session(self):
        cublas = self._cublas
        cublas.setStream(self._handle, self._cupy.cuda.get_current_stream().ptr)
        mode = cublas.getPointerMode(self._handle)
        cublas.setPointerMode(self._handle, cublas.CUBLAS_POINTER_MODE_HOST)
        try:
            yield self
        finally:
            cublas.setPointerMode(self._handle, mode)

    def address(self, a):
        return a.data.ptr

    def launch(self, name, n, args):
        function, is_int = self._kernels[name]
        typed = [self._int32(v) if i else self._address_type(v) for i, v in zip(is_int, args)]
        typed.append(self._size_type(n))
        function(((n + THREADS - 1) // THREADS,), (THREADS,), tuple(typed))

    def gemm(self, m, n, k, a, lda, b, ldb, beta, c, ldc):
        M, N, K, A, LDA, B, LDB, C, LDC = colmajor_gemm(m, n, k, a, lda, b, ldb, c, ldc)
        op_n = self._cublas.CUBLAS_OP_N
        self._gemm(self._handle, op_n, op_n, M, N, K, self._one, A, LDA, B, LDB,
                   self._one if beta else self._zero, C, LDC)


#: ``(dtype name, device id) -> (CupyDevice or None, reason)``: built and checked once each.
_DIRECT = {}


def cupy_direct_device(dtype, check, device_id=None):
    """The checked :class:`CupyDevice` for ``dtype`` on the current device (id ``device_id``), or None.

    Built on first use and checked once per process, dtype and device:
    ``check(device)`` must return without raising (the engine's
    ``check_direct``: a small RNN, LSTM and GRU, forward and backward, through
    the direct loop and through the step methods must agree). The
    cuBLAS binding it calls is CuPy's low-level one, not its documented API;
    if that ever changes, or anything else fails, the engine keeps the step
    methods (same results, more host time per step), the reason is in
    :func:`direct_status` and a ``RuntimeWarning`` says so once.
    """
    if not direct_enabled():
        return None
    dtype = np.dtype(dtype)
    if dtype not in CTYPES:
        return None
    def build():
        device = CupyDevice(dtype)
        check(device)
        return device

    key = (dtype.name, _device_id() if device_id is None else device_id)
    return checked_once(_DIRECT, key, build, "direct CuPy launches", "the step methods")


def _device_id():
    import cupy

    return cupy.cuda.Device().id


def direct_status():
    """How CuPy's time loops run, and why: a line for humans (bench_gpu.py prints it)."""
    if not direct_enabled():
        return "step methods (XSEQ_DIRECT=0)"
    if not _DIRECT:
        return "direct launches (not used yet in this process)"
    return "; ".join(
        f"{dtype} on device {dev}: " + ("direct launches" if device else f"step methods ({reason})")
        for (dtype, dev), (device, reason) in sorted(_DIRECT.items())
    )
