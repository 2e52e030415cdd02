"""Fused CuPy kernels: a time step's pointwise work in one launch.

The array-API reference (``_pointwise.ArrayAPIOps``) spends tens of kernel
launches on the pointwise part of a step (about forty for an LSTM forward
step), each reading and writing a temporary array; on a GPU that launch
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
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ._pointwise import ArrayAPIOps

#: The element types the kernels are built for, and their C names (``T`` in the source).
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Helpers shared by every kernel. Templates rather than float/double
# overloads so one source serves both dtypes; CuPy defines ``T`` as a typedef
# before the preamble, and a template parameter may shadow it.
PREAMBLE = r"""
// The row (example) of flat element i of an (m, n_a) state. The host build of
// these kernels (xseq/_host_kernels.py) loops over rows and columns and
// defines this as its row counter, so that the loop has no division.
#ifndef XSEQ_ROW
#define XSEQ_ROW(i, n_a) ((i) / (n_a))
#endif
template <typename T> __device__ __forceinline__ T sigmoid(T x) {
    // Same formula as _pointwise.sigmoid: exp of a non-positive number only,
    // so no overflow for any x, in float as in double.
    const T e = exp(-fabs(x));
    return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}
// Derivatives in terms of the activation's output, which is what was saved.
template <typename T> __device__ __forceinline__ T grad_sigmoid(T y) { return y * (T(1) - y); }
template <typename T> __device__ __forceinline__ T grad_tanh(T y) { return T(1) - y * y; }
"""


@dataclass(frozen=True)
class KernelSource:
    """The four strings that define one ``cupy.ElementwiseKernel``."""

    in_params: str
    out_params: str
    operation: str
    preamble: str = PREAMBLE

    def parameters(self):
        """``[(name, type, raw, is_output)]`` in kernel argument order (inputs first)."""
        params = []
        for spec, is_output in ((self.in_params, False), (self.out_params, True)):
            for item in spec.split(","):
                *keywords, typ, name = item.split()
                params.append((name, typ, "raw" in keywords, is_output))
        return params


def elementwise_signature(name, src):
    """``(parameters, bindings)`` of a ``KernelSource`` as ``cupy.ElementwiseKernel`` binds them.

    ``raw`` parameters are plain pointers indexed by hand; every other parameter
    is a pointer ``_raw_NAME`` with a reference ``NAME`` bound to element ``i``.
    Inputs are const. ``bindings`` is the C++ that goes at the top of the loop body.
    """
    params, bindings = [], []
    for pname, typ, raw, is_output in src.parameters():
        const = "" if is_output else "const "
        if typ == "int32":
            params.append(f"const int {pname}")
        elif typ != "T":
            raise ValueError(f"kernel {name}: parameter type {typ!r}; the standalone builds (host, direct) know only T and int32")
        elif raw:
            params.append(f"{const}T* {pname}")
        else:
            params.append(f"{const}T* _raw_{pname}")
            bindings.append(f"{const}T &{pname} = _raw_{pname}[i];")
    params.append("const ptrdiff_t _n")
    return params, "\n            ".join(bindings)


# Operations. Expressions keep the association order of the reference
# functions in _pointwise.py, so that the host test can demand agreement to a
# few ulps. ``i`` is CuPy's flat index over the (m, n_a) elements.

_RNN_FORWARD = r"""
h = tanh(xw + hw);
"""

# dh is the gradient coming back from step t+1 (through W_hh), dy the upstream
# gradient of this step's output: the hidden state's gradient is their sum.
_RNN_BACKWARD = r"""
dz = (dh + dy) * grad_tanh(h);
"""

# ``at`` is gate i's offset: row*4*n_a + col with col = i - row*n_a.
_LSTM_FORWARD = r"""
const ptrdiff_t at = i + 3 * n_a * XSEQ_ROW(i, n_a);
const T gate_i = sigmoid(xw[at] + hw[at]);
const T gate_f = sigmoid(xw[at + n_a] + hw[at + n_a]);
const T gate_g = tanh(xw[at + 2 * n_a] + hw[at + 2 * n_a]);
const T gate_o = sigmoid(xw[at + 3 * n_a] + hw[at + 3 * n_a]);
gates[at] = gate_i;
gates[at + n_a] = gate_f;
gates[at + 2 * n_a] = gate_g;
gates[at + 3 * n_a] = gate_o;
const T c_new = gate_f * c_prev + gate_i * gate_g;
c = c_new;
h = gate_o * tanh(c_new);
"""

_LSTM_BACKWARD = r"""
const ptrdiff_t at = i + 3 * n_a * XSEQ_ROW(i, n_a);
const T gate_i = gates[at];
const T gate_f = gates[at + n_a];
const T gate_g = gates[at + 2 * n_a];
const T gate_o = gates[at + 3 * n_a];
const T tanh_c = tanh(c);
const T dh_total = dh + dy;
// The cell gradient from the next step plus the part that flows through h.
const T dc_total = dc + dh_total * gate_o * grad_tanh(tanh_c);
dz[at] = dc_total * gate_g * grad_sigmoid(gate_i);
dz[at + n_a] = dc_total * c_prev * grad_sigmoid(gate_f);
dz[at + 2 * n_a] = dc_total * gate_i * grad_tanh(gate_g);
dz[at + 3 * n_a] = dh_total * tanh_c * grad_sigmoid(gate_o);
dc_prev = dc_total * gate_f;
"""

# xw and hw rows hold 3 gate blocks [r z n], saved rows 4 [r z n hn].
# hn (the recurrent part of n, before r scales it) is saved because the
# backward pass needs it and cannot recover it from n.
_GRU_FORWARD = r"""
const ptrdiff_t row = XSEQ_ROW(i, n_a);
const ptrdiff_t at3 = i + 2 * n_a * row;
const ptrdiff_t at4 = i + 3 * n_a * row;
const T r = sigmoid(xw[at3] + hw[at3]);
const T z = sigmoid(xw[at3 + n_a] + hw[at3 + n_a]);
const T hn = hw[at3 + 2 * n_a] + b_hn[i - row * n_a];
const T n = tanh(xw[at3 + 2 * n_a] + r * hn);
saved[at4] = r;
saved[at4 + n_a] = z;
saved[at4 + 2 * n_a] = n;
saved[at4 + 3 * n_a] = hn;
h = n + z * (h_prev - n);
"""

# dxw and dhw differ only in the n block: r scales hn, not xw_n.
_GRU_BACKWARD = r"""
const ptrdiff_t row = XSEQ_ROW(i, n_a);
const ptrdiff_t at3 = i + 2 * n_a * row;
const ptrdiff_t at4 = i + 3 * n_a * row;
const T r = saved[at4];
const T z = saved[at4 + n_a];
const T n = saved[at4 + 2 * n_a];
const T hn = saved[at4 + 3 * n_a];
const T dh_total = dh + dy;
const T dn = dh_total * (T(1) - z) * grad_tanh(n);
const T dz = dh_total * (h_prev - n) * grad_sigmoid(z);
const T dr = dn * hn * grad_sigmoid(r);
dxw[at3] = dr;
dxw[at3 + n_a] = dz;
dxw[at3 + 2 * n_a] = dn;
dhw[at3] = dr;
dhw[at3 + n_a] = dz;
dhw[at3 + 2 * n_a] = dn * r;
dh_direct = dh_total * z;
"""

#: Every fused kernel, by the name it is compiled under.
KERNELS = {
    "xseq_rnn_forward": KernelSource("T xw, T hw", "T h", _RNN_FORWARD),
    "xseq_rnn_backward": KernelSource("T h, T dh, T dy", "T dz", _RNN_BACKWARD),
    "xseq_lstm_forward": KernelSource(
        "raw T xw, raw T hw, T c_prev, int32 n_a", "raw T gates, T c, T h", _LSTM_FORWARD
    ),
    "xseq_lstm_backward": KernelSource(
        "raw T gates, T c_prev, T c, T dh, T dy, T dc, int32 n_a", "raw T dz, T dc_prev", _LSTM_BACKWARD
    ),
    "xseq_gru_forward": KernelSource(
        "raw T xw, raw T hw, raw T b_hn, T h_prev, int32 n_a", "raw T saved, T h", _GRU_FORWARD
    ),
    "xseq_gru_backward": KernelSource(
        "raw T saved, T h_prev, T dh, T dy, int32 n_a", "raw T dxw, raw T dhw, T dh_direct", _GRU_BACKWARD
    ),
}


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


class FusedSteps:
    """The six step methods of ``_pointwise.ArrayAPIOps``, each one kernel launch.

    Same arguments, results and buffer writes as the reference; the buffer
    views (``S[t+1]``, ``saved[t]`` ...) are passed to the kernel as its
    outputs, so nothing is copied. A subclass says how a kernel is launched
    (``_launch``) and where an array a step returns lives (``_step_array``):
    :class:`FusedCupyOps` on the GPU, ``xseq._host_kernels.HostFusedOps`` on
    the CPU.
    """

    def _launch(self, name, *args):
        raise NotImplementedError

    def _step_array(self, key, like):
        """An array shaped like ``like`` for a step's result; ``key`` names the role."""
        raise NotImplementedError

    def rnn_forward(self, xw, hw, saved, S, t):
        self._launch("xseq_rnn_forward", xw, hw, S[t + 1])

    def rnn_backward(self, S, t, dh, dy, dZ):
        self._launch("xseq_rnn_backward", S[t + 1], dh, dy, dZ[t])

    def lstm_forward(self, xw, hw, c_prev, saved, C, S, t):
        n_a = c_prev.shape[1]
        self._launch("xseq_lstm_forward", xw, hw, c_prev, n_a, saved[t], C[t + 1], S[t + 1])

    def lstm_backward(self, saved, C, t, dh, dy, dc, dZ):
        n_a = dh.shape[1]
        # returned, and read back as the next step's dc: two arrays in turn
        dc_prev = self._step_array(f"dc{t % 2}", dh)
        self._launch("xseq_lstm_backward", saved[t], C[t], C[t + 1], dh, dy, dc, n_a, dZ[t], dc_prev)
        return dc_prev

    def gru_forward(self, xw, hw, b_hn, h_prev, saved, S, t):
        n_a = h_prev.shape[1]
        self._launch("xseq_gru_forward", xw, hw, b_hn, h_prev, n_a, saved[t], S[t + 1])

    def gru_backward(self, saved, S, t, dh, dy, dXW, dHW):
        n_a = dh.shape[1]
        dh_direct = self._step_array("dh_direct", dh)
        self._launch("xseq_gru_backward", saved[t], S[t], dh, dy, n_a, dXW[t], dHW[t], dh_direct)
        return dh_direct


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

    def direct_steps(self, dtype, device=None):
        """:class:`DirectSteps` for arrays of ``dtype`` on ``device``, or None for the engine's loop."""
        if self._direct is not None:
            return DirectSteps(self._direct) if self._direct else None
        # The kernels launch, and cuBLAS runs, on the current device: arrays elsewhere take the step
        # methods, where CuPy checks the device itself.
        current = _device_id()
        if device is not None and getattr(device, "id", None) != current:
            return None
        launcher = cupy_direct_device(dtype, current)
        return DirectSteps(launcher) if launcher else None


# ---------------------------------------------------------------- direct launches
#
# At the sizes a GPU finishes a step in a few microseconds, the fused path is bound by the host:
# per step, the engine slices half a dozen step views out of the sequence buffers, CuPy's matmul
# checks and dispatches its operands, and ElementwiseKernel analyses seven arguments -- tens of
# microseconds of Python and CuPy per step for microseconds of GPU work. The direct loop below does
# the same work with two host calls per step: cuBLAS's gemm and the raw kernel, both given
# addresses computed from each buffer's base address and its stride per step.

#: Threads per block of a direct launch (ElementwiseKernel's default too).
THREADS = 128


def raw_kernel_function(name, src):
    """One kernel as a standalone ``extern "C" __global__`` function.

    Binds the parameters the way ``cupy.ElementwiseKernel`` does (``raw``
    arrays as pointers indexed by hand, the others as references to element
    ``i``, inputs const; :func:`elementwise_signature`) inside
    a grid-stride loop over the ``_n`` elements, the last parameter.
    """
    params, bindings = elementwise_signature(name, src)
    return f"""
extern "C" __global__ void {name}({", ".join(params)}) {{
    for (ptrdiff_t i = static_cast<ptrdiff_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < _n;
         i += static_cast<ptrdiff_t>(blockDim.x) * gridDim.x) {{
        {bindings}
        {src.operation}
    }}
}}
"""


def raw_kernel_module(ctype, kernels=None):
    """The CUDA module of every kernel in ``kernels`` (default :data:`KERNELS`) for one element type.

    What the direct loop compiles with ``cupy.RawModule``, what
    ``tests/test_kernels_compile.py`` compiles with NVRTC and what
    ``tests/test_kernels_exec.py`` runs on the host.
    """
    kernels = KERNELS if kernels is None else kernels
    preambles = {src.preamble for src in kernels.values()}
    if len(preambles) != 1:
        raise ValueError("the kernels of one module must share their preamble")
    functions = "".join(raw_kernel_function(name, src) for name, src in kernels.items())
    return f"typedef {ctype} T;\n{preambles.pop()}{functions}"


def colmajor_gemm(m, n, k, a, lda, b, ldb, c, ldc):
    """BLAS arguments (column-major, no transposes) for the row-major product ``C = A @ B``.

    ``A`` is ``(m, k)``, ``B`` is ``(k, n)``, ``C`` is ``(m, n)``, each given by
    address and row stride in elements. Read column-major, a row-major matrix
    is its transpose, so the call computes ``C.T = B.T @ A.T``: returns
    ``(M, N, K, A', lda', B', ldb', C', ldc')`` for ``gemm('N', 'N', ...)``.
    """
    return n, m, k, b, ldb, a, lda, c, ldc


def _c_contiguous(shape, strides, itemsize):
    expected = itemsize
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size > 1 and stride != expected:
            return False
        expected *= size
    return True


def block_address(device, a):
    """The address of ``a``, which the kernels and the gemm read as one C-contiguous block of the device's dtype."""
    if a.dtype != device.dtype or not _c_contiguous(a.shape, a.strides, a.itemsize):
        raise ValueError(f"direct steps need C-contiguous {device.dtype} blocks; got {a.dtype} "
                         f"of shape {a.shape} with strides {a.strides}")
    return device.address(a)


def step_blocks(device, a):
    """``(address of a[0], bytes from a[t] to a[t+1])`` for a ``(T, rows, cols)`` buffer.

    Each step's block must be C-contiguous; the stride between steps may be
    anything, negative for a view flipped in time.
    """
    return block_address(device, a[0, ...]), a.strides[0]


class DirectSteps:
    """The time loops of ``_engine`` with one gemm and one kernel launch per step, by address.

    ``device`` has ``dtype``, and inside its ``session()`` context it offers
    ``address(array)``, ``launch(name, n, args)`` (kernel ``name`` of
    :data:`KERNELS` over ``n`` elements; ``args`` its parameters as Python
    ints: addresses, and ``n_a``) and ``gemm(m, n, k, a, lda, b, ldb, beta,
    c, ldc)`` (row-major ``C = A @ B + beta*C`` by address, ``beta`` 0 or 1).
    :class:`CupyDevice` is the GPU's; the tests drive the same loops with a
    host build. Same arithmetic and buffer writes as the engine's loops over
    the :class:`FusedSteps` methods.
    """

    def __init__(self, device):
        self.device = device

    def forward(self, kind, XW, W_hhT, b_hn, saved, S, C, hw):
        """Steps ``0..T-1`` of an unmasked forward pass: writes ``S[1:]``, ``C[1:]``, ``saved``."""
        with self.device.session() as dev:
            self._forward(dev, kind, XW, W_hhT, b_hn, saved, S, C, hw)

    @staticmethod
    def _forward(dev, kind, XW, W_hhT, b_hn, saved, S, C, hw):
        T, m, GN = XW.shape
        if T == 0:
            return
        n_a = S.shape[2]
        n = m * n_a
        xw0, xw_step = step_blocks(dev, XW)
        s0, s_step = step_blocks(dev, S)
        hw_p, w_p = block_address(dev, hw), block_address(dev, W_hhT)
        if kind == "lstm":
            c0, c_step = step_blocks(dev, C)
            g0, g_step = step_blocks(dev, saved)
        elif kind == "gru":
            g0, g_step = step_blocks(dev, saved)
            b_hn_p = block_address(dev, b_hn)
        for t in range(T):
            h = s0 + t * s_step
            dev.gemm(m, GN, n_a, h, n_a, w_p, GN, 0, hw_p, GN)  # hw = h @ W_hh.T
            xw = xw0 + t * xw_step
            if kind == "rnn":
                dev.launch("xseq_rnn_forward", n, (xw, hw_p, h + s_step))
            elif kind == "lstm":
                c = c0 + t * c_step
                dev.launch("xseq_lstm_forward", n, (xw, hw_p, c, n_a, g0 + t * g_step, c + c_step, h + s_step))
            else:
                dev.launch("xseq_gru_forward", n, (xw, hw_p, b_hn_p, h, n_a, g0 + t * g_step, h + s_step))

    def backward(self, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty):
        """Steps ``T-1..0`` of an unmasked backward pass: writes ``dZ`` (and ``dHW``); returns ``(dh0, dc0)``.

        ``dY`` is ``(T, m, n_a)`` or None, ``dh``/``dc`` the gradients of the
        final states (C-contiguous, ``dc`` None but for the LSTM), ``empty(*shape)``
        allocates the loop's own buffers.
        """
        with self.device.session() as dev:
            return self._backward(dev, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty)

    @staticmethod
    def _backward(dev, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty):
        T, m, GN = dZ.shape
        if T == 0:
            return dh, dc
        n_a = S.shape[2]
        n = m * n_a
        s0, s_step = step_blocks(dev, S)
        z0, z_step = step_blocks(dev, dZ)
        hw0, hw_step = step_blocks(dev, dHW)
        w_p = block_address(dev, W_hh)
        if dY is None:  # no output gradient: every step reads one block of zeros
            dY = empty(1, m, n_a)
            dY[...] = 0
            dy0, dy_step = block_address(dev, dY), 0
        else:
            dy0, dy_step = step_blocks(dev, dY)
        if kind != "rnn":
            g0, g_step = step_blocks(dev, saved)
        if kind == "lstm":
            c0, c_step = step_blocks(dev, C)
            dc_buffers = [empty(m, n_a) for _ in range(2)]
            dc_p = block_address(dev, dc)
        dh_buffers = [empty(m, n_a) for _ in range(2)]
        dh_p = block_address(dev, dh)
        # Two buffers in turn for dh (and dc): a step never writes the array it reads.
        for t in range(T - 1, -1, -1):
            dh_prev = dh_buffers[t % 2]
            dh_prev_p, dy, dz = dev.address(dh_prev), dy0 + t * dy_step, z0 + t * z_step
            beta = 0
            if kind == "rnn":
                dev.launch("xseq_rnn_backward", n, (s0 + (t + 1) * s_step, dh_p, dy, dz))
            elif kind == "lstm":
                dc_prev = dc_buffers[t % 2]
                dc_prev_p, c = dev.address(dc_prev), c0 + t * c_step
                args = (g0 + t * g_step, c, c + c_step, dh_p, dy, dc_p, n_a, dz, dc_prev_p)
                dev.launch("xseq_lstm_backward", n, args)
                dc, dc_p = dc_prev, dc_prev_p
            else:
                # the kernel writes the direct part of dh_prev; the gemm adds the part through W_hh
                args = (g0 + t * g_step, s0 + t * s_step, dh_p, dy, n_a, dz, hw0 + t * hw_step, dh_prev_p)
                dev.launch("xseq_gru_backward", n, args)
                beta = 1
            dev.gemm(m, n_a, GN, hw0 + t * hw_step, GN, w_p, n_a, beta, dh_prev_p, n_a)  # dh_prev (+)= dHW[t] @ W_hh
            dh, dh_p = dh_prev, dh_prev_p
        return dh, dc


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


def direct_enabled():
    """Whether CuPy arrays may take the direct loop (``XSEQ_DIRECT=0`` turns it off)."""
    return os.environ.get("XSEQ_DIRECT", "1").strip().lower() not in ("0", "false", "no", "off")


#: ``(dtype name, device id) -> (CupyDevice or None, reason)``: built and checked once each.
_DIRECT = {}


def cupy_direct_device(dtype, device_id=None):
    """The checked :class:`CupyDevice` for ``dtype`` on the current device (id ``device_id``), or None.

    Built on first use and checked once per process, dtype and device: a
    small RNN, LSTM and GRU, forward and backward, through the direct loop
    and through the step methods must agree (:func:`check_direct`). The
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
    key = (dtype.name, _device_id() if device_id is None else device_id)
    if key not in _DIRECT:
        _DIRECT[key] = (None, "being checked")  # a check that re-enters gets the step methods
        try:
            device = CupyDevice(dtype)
            check_direct(device)
            _DIRECT[key] = (device, "")
        except Exception as exc:  # any failure is a reason to keep the step methods
            reason = f"{type(exc).__name__}: {exc}"
            _DIRECT[key] = (None, reason)
            warnings.warn(f"xseq: direct CuPy launches disabled for {dtype.name}, using the step methods ({reason})",
                          RuntimeWarning, stacklevel=3)
    return _DIRECT[key][0]


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


def check_direct(device, xp=None):
    """Run a small sequence of each cell through ``device``'s direct loop and the step methods; raise if they differ.

    Both sides launch the same kernel source and differ only in the gemm's
    implementation (rounding); a wrong address, stride or gemm argument
    differs by the size of the values. ``xp`` is the arrays' namespace
    (CuPy's by default).
    """
    from . import _engine

    if xp is None:
        import array_api_compat.cupy as xp
    dtype = device.dtype
    tol = 1e-4 if dtype == np.float32 else 1e-10
    rng = np.random.default_rng(12345)
    T, m, n_x, n_a = 3, 4, 3, 5

    def draw(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(dtype))

    for kind, G in _engine.GATES.items():
        args = (kind, draw(T, m, n_x), draw(G * n_a, n_x), draw(G * n_a, n_a), draw(G * n_a), draw(G * n_a),
                draw(m, n_a), draw(m, n_a) if kind == "lstm" else None)
        grads = dict(dY=draw(T, m, n_a), dh_T=draw(m, n_a), dc_T=draw(m, n_a) if kind == "lstm" else None)
        results = []
        for ops in (FusedCupyOps(xp, direct=False), FusedCupyOps(xp, direct=device)):
            Y, h, c, trace = _engine.sequence_forward(*args, ops=ops)
            back = _engine.sequence_backward(trace, **grads, ops=ops)
            results.append(dict(Y=Y, h=h, c=c, **back))
        for key, want in results[0].items():
            if want is None:
                continue
            want = np.asarray(_to_host(want), dtype=np.float64)
            got = np.asarray(_to_host(results[1][key]), dtype=np.float64)
            scale = max(float(np.max(np.abs(want), initial=0.0)), 1.0)
            err = float(np.max(np.abs(got - want), initial=0.0))
            if not err <= tol * scale:
                raise RuntimeError(f"self-check: {kind} {key} differs from the step methods by {err:.3g}")


def _to_host(a):
    get = getattr(a, "get", None)  # CuPy arrays copy to the host with .get()
    return get() if callable(get) else a
