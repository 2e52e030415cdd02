"""NumPy step implementation: the reference math, computed in place.

The array-API reference (:class:`xseq.ops.reference.ArrayAPIOps`) is written
as pure expressions: every operator allocates a temporary, a step's gates are
concatenated, and the results are copied into the sequence buffers. On the
CPU that is about forty passes over memory per LSTM step. NumPy's ``out=``
lets the same math write straight into the buffers (``saved[t]``, ``C[t+1]``,
``S[t+1]``, ``dZ[t]``), and the four gates are activated as one block:
``sigmoid(z) = 0.5 * tanh(0.5 * z) + 0.5`` (overflow-free), so one
``tanh`` with a per-column scale and offset covers ``i f o`` and ``g`` alike.

The step's scratch arrays, the per-step products (``matmul`` with ``out=``)
and the engine's sequence buffers (``empty``) come from the reuse pool in
:mod:`xseq.ops.workspace`, so a sequence allocates nothing per step and, from
the second call of the same shapes on, nothing at all.

Same methods, arguments, results and buffer writes as ``ArrayAPIOps``;
``tests/test_numpy_ops.py`` holds the two to agreement. The GRU steps are
inherited from the reference.
"""

from __future__ import annotations

import functools

import numpy as np

from .reference import ArrayAPIOps
from .workspace import WORKSPACE


@functools.lru_cache(maxsize=32)
def _lstm_constants(n_a, dtype):
    """Per-column constants for the stacked ``[i f g o]`` block.

    ``scale``/``offset`` make ``tanh(scale*z)*scale + offset`` the sigmoid on
    i, f, o and tanh on g; ``shift`` makes ``(a + shift) * (1 - a)`` the
    derivative from the activation: ``a(1 - a)`` for a sigmoid, ``(1 + a)(1 - a)``
    for the tanh.
    """
    def per_gate(i, f, g, o):
        return np.repeat(np.array([i, f, g, o], dtype=dtype), n_a)

    return per_gate(0.5, 0.5, 1.0, 0.5), per_gate(0.5, 0.5, 0.0, 0.5), per_gate(0.0, 0.0, 1.0, 0.0)


# Why: see docs/decisions/001-numpy-steps-in-place.md
class NumpyOps(ArrayAPIOps):
    """In-place NumPy version of the RNN and LSTM steps (see the module docstring).

    One instance serves one sequence call (``ops_for`` makes a new one each
    time); its scratch arrays are allocated on the first step and reused by
    the others, so the time loop allocates nothing.
    """

    name = "numpy-inplace"
    # The projection of 8 steps (m = 64, 4 n_a = 1024: 2 MB) is still in cache when the steps read
    # it; the whole sequence's is not (measured 1.05x for the LSTM at (64, 256, 64, 100)).
    projection_steps = 8

    def __init__(self, xp):
        super().__init__(xp)
        self._scratch = {}

    def _buffer(self, name, shape, dtype):
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._scratch[name] = WORKSPACE.empty(shape, dtype)
        return buf

    def empty(self, shape, dtype, device):
        return WORKSPACE.empty(shape, dtype)

    #: A faster product for some shapes, set by ``ops_for`` (``blas.matmul``: returns None for the
    #: shapes it leaves to NumPy); None: NumPy's for every product.
    gemm = None

    def matmul(self, a, b, out):
        if self.gemm is not None:
            done = self.gemm(a, b, out)
            if done is not None:
                return done
        return np.matmul(a, b, out=out)

    def add_into(self, acc, x):
        acc += x
        return acc

    def copy_into(self, out, x):
        # The course layout read time-major, (n, m, T) viewed as (T, m, n), copied in one go makes
        # NumPy gather every element from a different cache line; one example (axis 1) at a time,
        # a (T, n) block stays in cache: 1.8x faster for (256, 64, 100) here.
        if x.ndim == 3 and not x.flags.c_contiguous:
            for k in range(x.shape[1]):
                out[:, k, :] = x[:, k, :]
        else:
            out[...] = x
        return out

    def softmax_rows(self, z):
        z -= z.max(axis=-1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=-1, keepdims=True)
        return z

    def rnn_forward(self, xw, hw, saved, S, t):
        h = S[t + 1]
        np.add(xw, hw, out=h)
        np.tanh(h, out=h)

    def rnn_backward(self, S, t, dh, dy, dZ):
        h, dz = S[t + 1], dZ[t]
        dh_total = self._buffer("dh_total", dh.shape, dh.dtype)
        np.add(dh, dy, out=dh_total)
        np.multiply(h, h, out=dz)
        np.subtract(1, dz, out=dz)
        dz *= dh_total

    def lstm_forward(self, xw, hw, c_prev, saved, C, S, t):
        n_a = c_prev.shape[1]
        scale, offset, _ = _lstm_constants(n_a, xw.dtype)
        gates, c, h = saved[t], C[t + 1], S[t + 1]
        np.add(xw, hw, out=gates)
        gates *= scale
        np.tanh(gates, out=gates)
        gates *= scale
        gates += offset
        i, f, g, o = (gates[:, k * n_a:(k + 1) * n_a] for k in range(4))
        ig = self._buffer("ig", c.shape, c.dtype)
        np.multiply(f, c_prev, out=c)
        np.multiply(i, g, out=ig)
        c += ig
        np.tanh(c, out=h)
        h *= o

    def lstm_backward(self, saved, C, t, dh, dy, dc, dZ):
        # The saved gates and cell states were written long before (forward step t) and dZ[t] is a
        # block of a sequence-sized buffer: all out of cache. So the gates are read first in one
        # contiguous pass, the products go to a scratch block that stays in cache, and dZ[t] is
        # written once, contiguously, at the end (measured 1.3x faster than writing dZ[t] gate by gate).
        n_a = dh.shape[1]
        _, _, shift = _lstm_constants(n_a, dh.dtype)
        dh_total = self._buffer("dh_total", dh.shape, dh.dtype)
        np.add(dh, dy, out=dh_total)
        dh = dh_total
        gates, c_prev = saved[t], C[t]
        i, f, g, o = (gates[:, k * n_a:(k + 1) * n_a] for k in range(4))
        # derivative of each activation from its output: a(1 - a), and (1 + a)(1 - a) for g
        derivative = self._buffer("derivative", gates.shape, gates.dtype)
        one_minus = self._buffer("one_minus", gates.shape, gates.dtype)
        np.add(gates, shift, out=derivative)
        np.subtract(1, gates, out=one_minus)
        derivative *= one_minus
        tanh_c = self._buffer("tanh_c", dh.shape, dh.dtype)
        np.tanh(C[t + 1], out=tanh_c)
        # dc_prev is returned and comes back as next step's dc: alternate two buffers
        dc_total = self._buffer(f"dc{t % 2}", dh.shape, dh.dtype)
        np.multiply(tanh_c, tanh_c, out=dc_total)
        np.subtract(1, dc_total, out=dc_total)
        dc_total *= o
        dc_total *= dh
        dc_total += dc
        # gradients with respect to the activated gates, then through the activations
        d_gates = one_minus  # free again
        np.multiply(dc_total, g, out=d_gates[:, :n_a])
        np.multiply(dc_total, c_prev, out=d_gates[:, n_a:2 * n_a])
        np.multiply(dc_total, i, out=d_gates[:, 2 * n_a:3 * n_a])
        np.multiply(dh, tanh_c, out=d_gates[:, 3 * n_a:])
        np.multiply(d_gates, derivative, out=dZ[t])
        dc_total *= f
        return dc_total
