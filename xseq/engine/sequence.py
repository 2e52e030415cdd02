"""Fast whole-sequence forward and backward passes shared by every public sequence function.

The per-cell functions of :mod:`xseq.course` (``rnn.py``/``lstm.py``/``gru.py``) are the readable
definitions; this module computes the same thing quickly:

* time-major, examples-as-rows layout: ``X`` is ``(T_x, m, n_x)`` and every
  step's block ``X[t]`` is contiguous;
* the gate matrices are stacked (``W_ih`` is ``(G*n_a, n_x)``, ``W_hh`` is
  ``(G*n_a, n_a)``, PyTorch's block order), so a step is one GEMM;
* the input projection is hoisted out of the recurrence: one GEMM for all
  ``T_x`` steps before the loop (NumPy: one per 8 steps, just before they run,
  so that it is read from cache); the biases ride along as one more column of
  ``W_ih`` against a column of ones in ``X``, and their gradient comes out of
  the ``dW_ih`` GEMM the same way;
* backward stores the pre-activation gradients of every step and computes
  each weight gradient with one GEMM after the loop;
* a direct loop may make the products with ``W_ih`` itself (the host's
  lanes of units with 512 inputs or more: each lane its columns of the
  projection before its loop and of ``dX`` after it,
  :meth:`xseq.ops.lanes.UnitSteps.input_products`); the engine then hands it
  ``X1``, ``W_ih`` and the folded biases instead of making those GEMMs;
* the pointwise work of a step, the buffers and the products go to an ops
  object (:func:`xseq.ops.select.ops_for`), which is where the fused kernels (CuPy's,
  and their host build for NumPy), NumPy's in-place steps and its reused
  buffers (:mod:`xseq.ops.workspace`) plug in.

Variable lengths are a boolean ``mask`` ``(T_x, m, 1)``: where it is False the
step is skipped for that example (state carried unchanged, output zero,
gradient zero). ``reverse=True`` runs the recurrence from the last step to the
first; with a mask, each example's reverse pass starts at its own last step.

Inference (``keep=False``, the default under :class:`xseq.inference_mode`):
the forward pass returns no trace and keeps nothing; the same outputs, bit for
bit, from fewer writes. On NumPy the LSTM's cell state and the gates of a step
(``saved``) are one ``(m, n)`` block each, rewritten at every step (a
time-strided view with stride 0, so that every step method and time loop
writes where it always does), and the step methods' input projection is one
chunk, refilled chunk by chunk, instead of the whole sequence's. What a call
still allocates for the whole sequence is its input's copy and its outputs
(and, where one GEMM projects every step -- lanes, GPU -- the projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as device_of

from ..ops.cuda import FusedCupyOps
from ..ops.inference import is_inference_mode_enabled
from ..ops.select import ops_for

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


@dataclass
class Trace:
    """What a forward pass keeps for its backward pass (all time-major, in processing order)."""

    kind: str
    X: Any  # (T, m, n_x) input, flipped in time when reverse: a view of X1
    X1: Any  # (T, m, n_x + 1) the input with a column of ones (the bias's "input")
    W_ih: Any  # (G*n_a, n_x)
    W_hh: Any  # (G*n_a, n_a)
    S: Any  # (T+1, m, n_a) hidden states, S[0, ...] = h0
    C: Any  # (T+1, m, n_a) LSTM cell states, C[0, ...] = c0; None otherwise
    saved: Any  # (T, m, 4*n_a) gates: LSTM i f g o (stored over XW), GRU r z n hn; None for the RNN
    mask: Any  # (T, m, 1) bool or None
    reverse: bool


def c_order(xp, a):
    """``a`` laid out in row-major order (reshaping a non-contiguous array to 1-D copies it that way)."""
    return xp.reshape(xp.reshape(a, (-1,)), a.shape)


def _flip(xp, a):
    return None if a is None else xp.flip(a, axis=0)


def sequence_forward(kind, X, W_ih, W_hh, b_ih, b_hh, h0, c0=None, mask=None, reverse=False, ops=None, *,
                     keep=None):
    """Run a whole sequence.

    Parameters
    ----------
    kind : {"rnn", "lstm", "gru"}
    X : (T, m, n_x)
    W_ih, W_hh : (G*n_a, n_x), (G*n_a, n_a)
    b_ih, b_hh : (G*n_a,) or None for zero
    h0, c0 : (m, n_a); c0 only for the LSTM
    mask : (T, m, 1) bool or None
    ops : the step implementation; None for ``ops_for`` (the arrays' default)
    keep : bool or None
        Keep what :func:`sequence_backward` needs and return it as the trace.
        None (the default): keep it unless the calling thread is in
        :class:`xseq.inference_mode`.

    Returns
    -------
    Y : (T, m, n_a) hidden state after every step (zero where masked)
    h_T, c_T : (m, n_a) final states (c_T is None but for the LSTM)
    trace : Trace, or None where nothing was kept
    """
    if keep is None:
        keep = not is_inference_mode_enabled()
    elif not isinstance(keep, bool):
        raise TypeError(f"keep must be True, False or None; got {keep!r}")
    xp = array_namespace(X)
    ops = ops_for(xp, X.dtype) if ops is None else ops
    T, m, n_x = X.shape
    n_a = W_hh.shape[1]
    G = GATES[kind]
    dtype, dev = X.dtype, device_of(X)
    if reverse:
        X, mask = _flip(xp, X), _flip(xp, mask)

    # Every buffer comes from ops.empty: NumPy's reuses them between calls (xseq/ops/workspace.py).
    def empty(*shape):
        return ops.empty(shape, dtype, dev)

    # Why: see docs/decisions/003-input-projection-bias-column-and-chunks.md
    # One row-major copy of the input (the course layout arrives as a permuted view), with a
    # column of ones: the projection GEMM adds the biases (the last column of [W_ih b]) and the
    # backward GEMM for dW_ih yields their gradient (its last column) without a pass of its own.
    X1 = empty(T, m, n_x + 1)
    X = ops.copy_into(X1[:, :, :n_x], X)
    X1[:, :, n_x] = 1
    bias = _folded_bias(xp, kind, b_ih, b_hh, G * n_a, dtype, dev)
    X1_rows = xp.reshape(X1, (T * m, n_x + 1))
    # The time loop: the ops' direct loop (CuPy's launches by address, NumPy's lanes) where it has one
    # for this shape, else the step methods below.
    direct = (ops.direct_steps(dtype, dev, check=check_direct, rows=m, n_a=n_a, gates=G)
              if mask is None else None)
    # A direct loop that projects (the host's lanes of units) computes XW itself, from X1, W_ih and the biases,
    # before its steps; else the GEMMs below do, by [W_ih b].
    inputs = direct is not None and direct.input_products(n_x)
    W_ih1 = None if inputs else xp.concat([W_ih, xp.reshape(bias, (G * n_a, 1))], axis=1)
    # The projection of every step, in chunks of ops.projection_steps steps (all of them for the
    # GPU and for a direct loop: one GEMM; a few for NumPy's steps, each computed just before its
    # steps read it, from cache).
    chunk = T if direct is not None else min(T, ops.projection_steps)
    # Without a trace the chunks take turns in one chunk-sized buffer (step t reads its row t % chunk);
    # a trace keeps the whole sequence's (the LSTM's gates are stored over it).
    XW_rows = empty((T if keep else chunk) * m, G * n_a)

    def project(t0):
        t1 = min(t0 + chunk, T)
        first = t0 if keep else 0  # the buffer's step that receives step t0
        dest = XW_rows[first * m:(first + t1 - t0) * m, ...]
        out = ops.matmul(X1_rows[t0 * m:t1 * m, ...], W_ih1.T, dest)
        if out is not dest:  # an ops that does not write into ``out``
            dest[...] = out

    if chunk == T and not inputs:
        XW_rows = ops.matmul(X1_rows, W_ih1.T, XW_rows)
    XW = xp.reshape(XW_rows, (-1, m, G * n_a))

    S = empty(T + 1, m, n_a)
    S[0, ...] = h0
    C = saved = b_hn = None
    if kind == "lstm":
        C = empty(T + 1, m, n_a) if keep else _one_block(ops, xp, T + 1, (m, n_a), dtype, dev)
        C[0, ...] = c0
        # Step t reads XW[t] once and then stores its activated gates, the same (m, 4*n_a) block,
        # in its place: one sequence-sized buffer fewer.
        saved = XW if keep or XW.shape[0] == T else _one_block(ops, xp, T, (m, 4 * n_a), dtype, dev)
    elif kind == "gru":
        saved = empty(T, m, 4 * n_a) if keep else _one_block(ops, xp, T, (m, 4 * n_a), dtype, dev)
        b_hn = b_hh[2 * n_a:] if b_hh is not None else xp.zeros((n_a,), dtype=dtype, device=dev)

    hw_buffer = empty(m, G * n_a)
    # The same loop with two host calls per step and no array views (ops.fused.DirectSteps), or the
    # whole loop in one (the host's lanes, which take W_hh itself: direct.forward_weight).
    if direct is not None:
        weight = c_order(xp, W_hh if direct.forward_weight == "W_hh" else W_hh.T)
        projection = {"projection": (X1_rows, c_order(xp, W_ih), bias)} if inputs else {}
        direct.forward(kind, XW, weight, None if b_hn is None else c_order(xp, b_hn), saved, S, C, hw_buffer,
                       **projection)
    else:
        W_hhT = c_order(xp, W_hh.T)  # a contiguous right operand makes the per-step GEMM faster
        _forward_steps(ops, xp, kind, XW, W_hhT, b_hn, saved, S, C, mask, hw_buffer,
                       project if chunk < T else None, chunk)
    h, c = S[T, ...], (C[T, ...] if C is not None else None)

    Y = S[1:, ...]
    if mask is not None:
        Y = xp.where(mask, Y, xp.zeros((), dtype=dtype, device=dev))
    if reverse:
        Y = _flip(xp, Y)
    trace = Trace(kind, X, X1, W_ih, W_hh, S, C, saved, mask, reverse) if keep else None
    return Y, h, c, trace


def _one_block(ops, xp, steps, shape, dtype, dev):
    """A ``(steps, *shape)`` buffer whose steps are all one block (stride 0 in time), or a whole one.

    The block is rewritten at every step: only the last step's values remain.
    NumPy arrays allow such a view (the other backends get ``steps`` blocks;
    their views cannot alias).
    """
    block = ops.empty(shape, dtype, dev)
    if not isinstance(block, np.ndarray):
        return ops.empty((steps, *shape), dtype, dev)
    # as np.lib.stride_tricks.as_strided(block, ..., writeable=True) makes it, at a quarter of the cost
    return np.ndarray((steps, *shape), block.dtype, buffer=block, strides=(0, *block.strides))


def _one_block_in_time(a):
    """Whether every step of the time-major ``a`` is one block (:func:`_one_block`'s view)."""
    return isinstance(a, np.ndarray) and a.shape[0] > 1 and a.strides[0] == 0


def _forward_steps(ops, xp, kind, XW, W_hhT, b_hn, saved, S, C, mask, hw_buffer, project, chunk):
    """The forward time loop through the ops' step methods (any ops, masks included).

    ``XW`` holds every step's projection, or (without a trace) one chunk's, step ``t`` in row ``t % chunk``.
    ``C`` may be one block for every step (:func:`_one_block`).
    """
    T = S.shape[0] - 1
    h, c = S[0, ...], (C[0, ...] if C is not None else None)
    # Where every step's cell state is one block, a masked step needs the state it must carry kept apart.
    carried = (ops.empty(c.shape, c.dtype, device_of(c))
               if mask is not None and C is not None and T > 0 and _one_block_in_time(C) else None)
    for t in range(T):
        if project is not None and t % chunk == 0:
            project(t)
        hw = ops.matmul(h, W_hhT, hw_buffer)
        xw = XW[t % XW.shape[0], ...]
        if carried is not None:
            carried[...] = c
            c = carried
        if kind == "rnn":
            ops.rnn_forward(xw, hw, saved, S, t)
        elif kind == "lstm":
            ops.lstm_forward(xw, hw, c, saved, C, S, t)
        else:
            ops.gru_forward(xw, hw, b_hn, h, saved, S, t)
        if mask is not None:
            S[t + 1, ...] = xp.where(mask[t, ...], S[t + 1, ...], h)
            if C is not None:
                C[t + 1, ...] = xp.where(mask[t, ...], C[t + 1, ...], c)
        h = S[t + 1, ...]
        if C is not None:
            c = C[t + 1, ...]


def _folded_bias(xp, kind, b_ih, b_hh, size, dtype, dev):
    """The bias added to the hoisted input projection (GRU keeps b_hn out: r multiplies it)."""
    bias = xp.zeros((size,), dtype=dtype, device=dev)
    if b_ih is not None:
        bias = bias + b_ih
    if b_hh is not None:
        if kind == "gru":
            n_a = size // 3
            bias = bias + xp.concat([b_hh[:2 * n_a], xp.zeros((n_a,), dtype=dtype, device=dev)])
        else:
            bias = bias + b_hh
    return bias


def sequence_backward(trace, dY=None, dh_T=None, dc_T=None, ops=None):
    """Back-propagate through a whole sequence.

    Parameters
    ----------
    trace : Trace from :func:`sequence_forward`
    dY : (T, m, n_a) gradient of the outputs Y, or None
    dh_T, dc_T : (m, n_a) gradients of the final states, or None
    ops : the step implementation; None for ``ops_for`` (the arrays' default)

    Returns
    -------
    dict with dX (T, m, n_x), dW_ih, dW_hh, db_ih, db_hh (G*n_a,), dh0 and dc0 (m, n_a)
    (dc0 None but for the LSTM).
    """
    tr = trace
    xp = array_namespace(tr.X)
    ops = ops_for(xp, tr.X.dtype) if ops is None else ops
    kind, X, S, C, mask = tr.kind, tr.X, tr.S, tr.C, tr.mask
    T, m, n_x = X.shape
    n_a = tr.W_hh.shape[1]
    G = GATES[kind]
    dtype, dev = X.dtype, device_of(X)
    zero = xp.zeros((), dtype=dtype, device=dev)

    def empty(*shape):
        return ops.empty(shape, dtype, dev)

    if dY is not None:
        # the course layout's da arrives as a strided view; each step reads one contiguous block
        dY = ops.copy_into(empty(T, m, n_a), dY)
        if tr.reverse:
            dY = _flip(xp, dY)
        if mask is not None:
            dY = xp.where(mask, dY, zero)
    # dh is xseq's own array from here on, never the caller's.
    dh = xp.zeros((m, n_a), dtype=dtype, device=dev)
    if dh_T is not None:
        dh = dh + dh_T
    dc = None
    if kind == "lstm":
        dc = dc_T if dc_T is not None else xp.zeros((m, n_a), dtype=dtype, device=dev)

    dZ = empty(T, m, G * n_a)
    dHW = empty(T, m, G * n_a) if kind == "gru" else dZ
    W_hh = tr.W_hh
    direct = ops.direct_steps(dtype, dev, check=check_direct, rows=m, n_a=n_a, gates=G) if mask is None else None
    # A direct loop with the input's products (the host's lanes of units) writes dX = dZ @ W_ih itself, after
    # its steps; else the GEMM below does.
    dX_rows = empty(T * m, n_x) if direct is not None and direct.input_products(n_x) else None
    if direct is not None:
        input_grad = {"input_grad": (dX_rows, c_order(xp, tr.W_ih))} if dX_rows is not None else {}
        dh, dc = direct.backward(kind, tr.saved, S, C, c_order(xp, W_hh), dY, c_order(xp, dh),
                                 None if dc is None else c_order(xp, dc), dZ, dHW, empty, **input_grad)
    else:
        dh, dc = _backward_steps(ops, xp, kind, tr.saved, S, C, W_hh, dY, dh, dc, dZ, dHW, mask, empty)

    dZ2 = xp.reshape(dZ, (T * m, G * n_a))
    dHW2 = xp.reshape(dHW, (T * m, G * n_a))
    if dX_rows is None:
        dX_rows = ops.matmul(dZ2, tr.W_ih, empty(T * m, n_x))
    dX = xp.reshape(dX_rows, (T, m, n_x))
    if tr.reverse:
        dX = _flip(xp, dX)
    dW_ih1 = ops.matmul(dZ2.T, xp.reshape(tr.X1, (T * m, n_x + 1)), empty(G * n_a, n_x + 1))
    db_ih = dW_ih1[:, n_x]
    # Without the GRU's split both biases get the same gradient (as a separate array).
    db_hh = xp.sum(dHW2, axis=0) if kind == "gru" else xp.asarray(db_ih, copy=True)
    grads = {
        "dX": dX,
        "dW_ih": dW_ih1[:, :n_x],
        "dW_hh": ops.matmul(dHW2.T, xp.reshape(S[:-1, ...], (T * m, n_a)), empty(G * n_a, n_a)),
        "db_ih": db_ih,
        "db_hh": db_hh,
        "dh0": dh,
        "dc0": dc,
    }
    return grads


def _backward_steps(ops, xp, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, mask, empty):
    """The backward time loop through the ops' step methods (any ops, masks included); returns (dh0, dc0)."""
    T, m, _ = dZ.shape
    n_a = S.shape[2]
    zero = xp.zeros((), dtype=dZ.dtype, device=device_of(dZ))
    dh_buffers = [empty(m, n_a) for _ in range(2)]
    no_dy = xp.zeros((m, n_a), dtype=dZ.dtype, device=device_of(dZ)) if dY is None else None
    for t in range(T - 1, -1, -1):
        # The step adds dY[t] to dh itself; dh stays the part that came through W_hh.
        dy = dY[t, ...] if dY is not None else no_dy
        dh_direct = dc_prev = None
        if kind == "rnn":
            ops.rnn_backward(S, t, dh, dy, dZ)
        elif kind == "lstm":
            dc_prev = ops.lstm_backward(saved, C, t, dh, dy, dc, dZ)
        else:
            dh_direct = ops.gru_backward(saved, S, t, dh, dy, dZ, dHW)
        if mask is not None:
            dZ[t, ...] = xp.where(mask[t, ...], dZ[t, ...], zero)
            if kind == "gru":
                dHW[t, ...] = xp.where(mask[t, ...], dHW[t, ...], zero)
                dh_direct = xp.where(mask[t, ...], dh_direct, dh)
            else:
                dh_direct = xp.where(mask[t, ...], zero, dh)
            if dc_prev is not None:
                dc_prev = xp.where(mask[t, ...], dc_prev, dc)
        # two buffers in turn: the product never lands in the array this step read as dh
        dh_prev = ops.matmul(dHW[t, ...], W_hh, dh_buffers[t % 2])
        if dh_direct is not None:
            dh_prev = dh_prev + dh_direct
        dh, dc = dh_prev, dc_prev
    return dh, dc


# ---------------------------------------------------------------- the direct loop's self-check

def check_direct(device, xp=None, ops=None):
    """Run a small sequence of each cell through ``device``'s direct loop and the step methods; raise if they differ.

    Both sides launch the same kernel source and differ only in the gemm's
    implementation (rounding); a wrong address, stride or gemm argument
    differs by the size of the values. ``xp`` is the arrays' namespace
    (CuPy's by default); ``ops`` the two ops to compare, without and with the
    direct loop (by default CuPy's fused ops without and with ``device``).
    """
    if xp is None:
        import array_api_compat.cupy as xp
    if ops is None:
        ops = (FusedCupyOps(xp, direct=False), FusedCupyOps(xp, direct=device))
    dtype = device.dtype
    tol = 1e-4 if dtype == np.float32 else 1e-10
    rng = np.random.default_rng(12345)
    T, m, n_x, n_a = 3, 4, 3, 5

    def draw(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(dtype))

    for kind, G in GATES.items():
        args = (kind, draw(T, m, n_x), draw(G * n_a, n_x), draw(G * n_a, n_a), draw(G * n_a), draw(G * n_a),
                draw(m, n_a), draw(m, n_a) if kind == "lstm" else None)
        grads = dict(dY=draw(T, m, n_a), dh_T=draw(m, n_a), dc_T=draw(m, n_a) if kind == "lstm" else None)
        results = []
        for each in ops:
            Y, h, c, trace = sequence_forward(*args, ops=each, keep=True)
            back = sequence_backward(trace, **grads, ops=each)
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
