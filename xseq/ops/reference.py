"""The reference step implementation: the pointwise definitions, written only against the array API standard.

It runs on every backend (PyTorch and array-api-strict use it; CuPy and NumPy
use it where their fast paths are off, ``XSEQ_FUSED=0``), and every fast path
subclasses it and is tested against it.
"""

from __future__ import annotations

from .pointwise import (
    gru_pointwise_backward,
    gru_pointwise_forward,
    lstm_pointwise_backward,
    lstm_pointwise_forward,
    rnn_pointwise_backward,
    rnn_pointwise_forward,
    softmax_along,
)


class ArrayAPIOps:
    """Reference step implementation: the definitions of :mod:`xseq.ops.pointwise`, stored with ``__setitem__``.

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

    def direct_steps(self, dtype, device=None, check=None, rows=None, n_a=None, gates=None):
        """An object that runs whole unmasked time loops (:class:`~xseq.ops.fused.DirectSteps`), or None.

        None here: the engine runs its own loops.
        """
        return None

    def softmax_rows(self, z):
        """Softmax over the last axis of the 2-D array ``z`` (the engine's own, may be overwritten)."""
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
