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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ._pointwise import ArrayAPIOps

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
    """Step implementation for CuPy arrays: one ``ElementwiseKernel`` launch per step and direction.

    The step methods are :class:`FusedSteps`'; the rest -- buffers, products,
    the output softmax -- is the reference's. Launches go through the
    module-level :func:`kernel`, which is also what lets
    ``tests/test_kernels_exec.py`` run these methods with a host build of
    the same sources.
    """

    name = "fused-cupy"

    def _launch(self, name, *args):
        kernel(name)(*args)

    def _step_array(self, key, like):
        return self.xp.empty_like(like)
