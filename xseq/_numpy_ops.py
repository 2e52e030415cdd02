"""NumPy step implementation: the reference math, computed in place.

The array-API reference (``_pointwise.ArrayAPIOps``) is written as pure
expressions: every operator allocates a temporary, a step's gates are
concatenated, and the results are copied into the sequence buffers. On the
CPU that is about forty passes over memory per LSTM step. NumPy's ``out=``
lets the same math write straight into the buffers (``saved[t]``, ``C[t+1]``,
``S[t+1]``, ``dZ[t]``), and the four gates are activated as one block:
``sigmoid(z) = 0.5 * tanh(0.5 * z) + 0.5`` (overflow-free), so one
``tanh`` with a per-column scale and offset covers ``i f o`` and ``g`` alike.

Same methods, arguments, results and buffer writes as ``ArrayAPIOps``;
``tests/test_numpy_ops.py`` holds the two to agreement. The GRU steps are
inherited from the reference.
"""

from __future__ import annotations

import functools

import numpy as np

from ._pointwise import ArrayAPIOps


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


class NumpyOps(ArrayAPIOps):
    """In-place NumPy version of the RNN and LSTM steps (see the module docstring)."""

    name = "numpy-inplace"

    def rnn_forward(self, xw, hw, saved, S, t):
        h = S[t + 1]
        np.add(xw, hw, out=h)
        np.tanh(h, out=h)

    def rnn_backward(self, S, t, dh, dZ):
        h, dz = S[t + 1], dZ[t]
        np.multiply(h, h, out=dz)
        np.subtract(1, dz, out=dz)
        dz *= dh

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
        np.multiply(f, c_prev, out=c)
        c += i * g
        np.tanh(c, out=h)
        h *= o

    def lstm_backward(self, saved, C, t, dh, dc, dZ):
        n_a = dh.shape[1]
        _, _, shift = _lstm_constants(n_a, dh.dtype)
        gates, c_prev, dz = saved[t], C[t], dZ[t]
        i, f, g, o = (gates[:, k * n_a:(k + 1) * n_a] for k in range(4))
        tanh_c = np.tanh(C[t + 1])
        dc_total = np.multiply(tanh_c, tanh_c)
        np.subtract(1, dc_total, out=dc_total)
        dc_total *= o
        dc_total *= dh
        dc_total += dc
        # gradients with respect to the activated gates, then through the activations
        np.multiply(dc_total, g, out=dz[:, :n_a])
        np.multiply(dc_total, c_prev, out=dz[:, n_a:2 * n_a])
        np.multiply(dc_total, i, out=dz[:, 2 * n_a:3 * n_a])
        np.multiply(dh, tanh_c, out=dz[:, 3 * n_a:])
        derivative = gates + shift
        derivative *= 1 - gates
        dz *= derivative
        dc_total *= f
        return dc_total
