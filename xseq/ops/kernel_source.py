"""The fused step kernels' source: one CUDA string per step and direction, the single definition of the fast paths.

Each kernel is the pointwise part of one time step (:mod:`xseq.ops.pointwise`
defines what it computes), written once and built three ways: as a CuPy
``ElementwiseKernel`` (:mod:`xseq.ops.cuda`), as standalone ``__global__``
functions for the direct loop (:func:`raw_kernel_module`, compiled by
``cupy.RawModule``), and for the CPU with the system C++ compiler
(:mod:`xseq.ops.host`). The tests compile it with NVRTC and run it on the host.

The kernel runs over the ``(m, n_a)`` elements of the state. The gate rows
are ``(m, G*n_a)`` with the gate blocks side by side, so a thread that owns
element ``i = row*n_a + col`` finds gate ``k`` of its unit at
``row*G*n_a + k*n_a + col``; those arrays are ``raw`` parameters indexed by
hand, the ``(m, n_a)`` ones are ordinary elementwise parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# Helpers shared by every kernel. Templates rather than float/double
# overloads so one source serves both dtypes; CuPy defines ``T`` as a typedef
# before the preamble, and a template parameter may shadow it.
PREAMBLE = r"""
// The row (example) of flat element i of an (m, n_a) state. The host build of
// these kernels (xseq/ops/host.py) loops over rows and columns and
// defines this as its row counter, so that the loop has no division.
#ifndef XSEQ_ROW
#define XSEQ_ROW(i, n_a) ((i) / (n_a))
#endif
template <typename T> __device__ __forceinline__ T sigmoid(T x) {
    // Same formula as pointwise.sigmoid: exp of a non-positive number only,
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
# functions in pointwise.py, so that the host test can demand agreement to a
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
