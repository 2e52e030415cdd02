"""The pointwise part of one time step, for every cell, and the one place that picks its implementation.

A sequence function (``_engine``) does the matrix products itself and hands
each step's pointwise work to an *ops* object:

* :class:`ArrayAPIOps` -- the reference, written only against the array API
  standard; it runs on every backend.
* ``xseq._kernels.FusedCupyOps`` -- one CuPy ``ElementwiseKernel`` per step
  and direction, used for CuPy arrays;
* ``xseq._host_kernels.HostFusedOps`` -- the same kernels compiled for the
  CPU with the system C++ compiler, used for float32/float64 NumPy arrays
  where that build works;
* ``xseq._numpy_ops.NumpyOps`` -- the same math with NumPy's ``out=``, in
  place, used for other NumPy arrays and where there is no host build.

``XSEQ_FUSED=0`` turns every fast path off, leaving the reference everywhere;
``XSEQ_HOST_KERNELS=0`` only the host build.

:func:`ops_for` is the only place that chooses between them.

Layouts are row-major with examples as rows: a step's gate pre-activations
``z`` are ``(m, G*n_a)`` with the gate blocks side by side, in PyTorch's
order (LSTM ``i f g o``, GRU ``r z n``). The biases are already folded into
the hoisted input projection ``xw`` (all but the GRU's ``b_hn``, which the
reset gate multiplies).

The pure functions below (``lstm_pointwise_forward`` ...) are the
definitions; the kernels are tested against them element by element.
"""

from __future__ import annotations

import os


def sigmoid(xp, x):
    """Stable logistic function: never evaluates exp of a positive number."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


# ---------------------------------------------------------------- reference definitions

def rnn_pointwise_forward(xp, xw, hw):
    """h = tanh(xw + hw)."""
    return xp.tanh(xw + hw)


def rnn_pointwise_backward(xp, h, dh):
    """Gradient of the pre-activation: dz = dh * (1 - h**2)."""
    return dh * (1 - h * h)


def lstm_pointwise_forward(xp, xw, hw, c_prev):
    """Returns (gates, c, h): activated gates ``[i f g o]`` (m, 4n_a), the cell and hidden states."""
    n_a = c_prev.shape[1]
    z = xw + hw
    i = sigmoid(xp, z[:, :n_a])
    f = sigmoid(xp, z[:, n_a:2 * n_a])
    g = xp.tanh(z[:, 2 * n_a:3 * n_a])
    o = sigmoid(xp, z[:, 3 * n_a:])
    c = f * c_prev + i * g
    h = o * xp.tanh(c)
    return xp.concat([i, f, g, o], axis=1), c, h


def lstm_pointwise_backward(xp, gates, c_prev, c, dh, dc):
    """Returns (dz, dc_prev): gradients of the four pre-activations (m, 4n_a) and of c_prev."""
    n_a = c.shape[1]
    i, f, g, o = (gates[:, k * n_a:(k + 1) * n_a] for k in range(4))
    tanh_c = xp.tanh(c)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    di = dc * g * i * (1 - i)
    df = dc * c_prev * f * (1 - f)
    dg = dc * i * (1 - g * g)
    do = dh * tanh_c * o * (1 - o)
    return xp.concat([di, df, dg, do], axis=1), dc * f


def gru_pointwise_forward(xp, xw, hw, b_hn, h_prev):
    """PyTorch/cuDNN GRU step. Returns (saved, h) with saved = ``[r z n hn]`` (m, 4n_a).

    r = sigmoid(xw_r + hw_r), z = sigmoid(xw_z + hw_z), hn = hw_n + b_hn,
    n = tanh(xw_n + r * hn), h = (1 - z) * n + z * h_prev.
    """
    n_a = h_prev.shape[1]
    r = sigmoid(xp, xw[:, :n_a] + hw[:, :n_a])
    z = sigmoid(xp, xw[:, n_a:2 * n_a] + hw[:, n_a:2 * n_a])
    hn = hw[:, 2 * n_a:] + b_hn
    n = xp.tanh(xw[:, 2 * n_a:] + r * hn)
    h = n + z * (h_prev - n)
    return xp.concat([r, z, n, hn], axis=1), h


def gru_pointwise_backward(xp, saved, h_prev, dh):
    """Returns (dxw, dhw, dh_direct).

    dxw (m, 3n_a): gradient of the input projection's pre-activations; dhw (m, 3n_a):
    gradient of the recurrent product plus its bias; dh_direct (m, n_a): the part of
    dh_prev that does not pass through W_hh.
    """
    n_a = h_prev.shape[1]
    r, z, n, hn = (saved[:, k * n_a:(k + 1) * n_a] for k in range(4))
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dxw = xp.concat([dr, dz, dn], axis=1)
    dhw = xp.concat([dr, dz, dn * r], axis=1)
    return dxw, dhw, dh * z


# ---------------------------------------------------------------- ops: write into sequence buffers

class ArrayAPIOps:
    """Reference step implementation: the definitions above, stored with ``__setitem__``.

    Each method computes step ``t`` and writes its results into the sequence
    buffers: ``saved[t, ...]`` (what backward needs), ``S[t+1]`` (hidden state) and
    ``C[t+1]`` (LSTM cell state); backward methods write ``dZ[t, ...]``. A backward
    step gets the gradient of ``h<t>`` in two parts, ``dh`` (from step ``t+1``, through
    ``W_hh``) and ``dy`` (the upstream gradient of output ``t``), and adds them itself:
    one pass fewer than adding them first.
    """

    name = "array-api"

    #: The input projection is computed this many steps at a time, just before they run (here:
    #: one GEMM for the whole sequence, the GPU's choice; NumPy's ops use a few steps).
    projection_steps = 1 << 62

    def __init__(self, xp):
        self.xp = xp

    # Memory and the non-pointwise operations. ``out`` is a buffer of the result's shape (from
    # ``empty``) that an implementation may write into; callers use the returned array.
    # ``add_into`` may likewise update ``acc`` in place, so it is only given the engine's own arrays.

    def empty(self, shape, dtype, device):
        return self.xp.empty(shape, dtype=dtype, device=device)

    def matmul(self, a, b, out):
        return self.xp.matmul(a, b)

    def add_into(self, acc, x):
        return acc + x

    def copy_into(self, out, x):
        """``x`` copied into the engine's buffer ``out`` (same shape); returns ``out``."""
        out[...] = x
        return out

    def direct_steps(self, dtype, device=None):
        """An object that runs whole unmasked time loops (``_kernels.DirectSteps``), or None: the engine's loops."""
        return None

    def softmax_rows(self, z):
        """Softmax over the last axis of the 2-D array ``z`` (the engine's own, may be overwritten)."""
        from .activations import softmax_along

        return softmax_along(self.xp, z, axis=-1)

    def rnn_forward(self, xw, hw, saved, S, t):
        S[t + 1, ...] = rnn_pointwise_forward(self.xp, xw, hw)

    def rnn_backward(self, S, t, dh, dy, dZ):
        dZ[t, ...] = rnn_pointwise_backward(self.xp, S[t + 1, ...], dh + dy)

    def lstm_forward(self, xw, hw, c_prev, saved, C, S, t):
        gates, c, h = lstm_pointwise_forward(self.xp, xw, hw, c_prev)
        saved[t, ...] = gates
        C[t + 1, ...] = c
        S[t + 1, ...] = h

    def lstm_backward(self, saved, C, t, dh, dy, dc, dZ):
        dz, dc_prev = lstm_pointwise_backward(self.xp, saved[t, ...], C[t, ...], C[t + 1, ...], dh + dy, dc)
        dZ[t, ...] = dz
        return dc_prev

    def gru_forward(self, xw, hw, b_hn, h_prev, saved, S, t):
        s, h = gru_pointwise_forward(self.xp, xw, hw, b_hn, h_prev)
        saved[t, ...] = s
        S[t + 1, ...] = h

    def gru_backward(self, saved, S, t, dh, dy, dXW, dHW):
        dxw, dhw, dh_direct = gru_pointwise_backward(self.xp, saved[t, ...], S[t, ...], dh + dy)
        dXW[t, ...] = dxw
        dHW[t, ...] = dhw
        return dh_direct


def fused_enabled():
    """Whether CuPy and NumPy arrays take their fast paths (``XSEQ_FUSED=0`` turns them off)."""
    return os.environ.get("XSEQ_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def ops_for(xp, dtype=None):
    """Pick the step implementation for namespace ``xp`` (and arrays of ``dtype``): the single dispatch point."""
    from ._backend import backend_name

    name = backend_name(xp)
    if name == "cupy" and fused_enabled():
        from ._kernels import FusedCupyOps

        return FusedCupyOps(xp)
    if name == "numpy" and fused_enabled():
        from ._host_kernels import host_ops
        from ._numpy_ops import NumpyOps

        return host_ops(xp, dtype) or NumpyOps(xp)
    return ArrayAPIOps(xp)
