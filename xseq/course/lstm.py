"""The course's long short-term memory network: one cell, a whole sequence, and their backward passes.

Gate names follow the course: the forget gate ``ft`` (Wf, bf), the update
gate ``it`` (Wi, bi), the candidate ``cct`` (Wc, bc) and the output gate
``ot`` (Wo, bo). Each gate matrix is ``(n_a, n_a + n_x)`` and acts on the
concatenation ``[a_prev; xt]``: its first ``n_a`` columns multiply ``a_prev``.

Caches
------
``lstm_cell_forward`` returns an :class:`LSTMCellCache`, the course's tuple
``(a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)`` with
names. ``lstm_forward`` returns an :class:`LSTMCache`: the parameters and the
engine's time-major buffers (input, hidden and cell states, activated gates).
Under :class:`xseq.inference_mode` both return ``None`` for it (see :mod:`xseq.course.rnn`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..backends.checks import (
    check_ndim,
    check_shape,
    get_parameters,
    namespace_and_checks,
)
from ..engine import sequence as engine
from .activations import sigmoid, softmax
from .rnn import check_caches, check_input, check_sequence_gradient, kept, output_softmax, time_major

LSTM_KEYS = ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo", "Wy", "by")
GATE_KEYS = ("i", "f", "c", "o")  # stacking order in the engine: PyTorch's i, f, g, o


class LSTMCellCache(NamedTuple):
    """What :func:`lstm_cell_backward` needs, in the course's order."""

    a_next: Any
    c_next: Any
    a_prev: Any
    c_prev: Any
    ft: Any
    it: Any
    cct: Any
    ot: Any
    xt: Any
    parameters: dict


LSTMCellCache.made_by = "lstm_cell_forward"


class LSTMCache(NamedTuple):
    """What :func:`lstm_backward` needs: the parameters and the engine's trace of the sequence."""

    parameters: dict
    trace: Any


LSTMCache.made_by = "lstm_forward"


def check_lstm_parameters(parameters, x_name, x, states, where):
    """Validate the parameters against an input and the states in ``states`` ({name: (n_a, m) array}).

    Returns the namespace and the parameter dict's arrays in ``LSTM_KEYS`` order.
    """
    arrays = get_parameters(parameters, LSTM_KEYS, where)
    named = dict(zip(LSTM_KEYS, arrays))
    xp = namespace_and_checks(**{x_name: x}, **states, **named)
    check_input(x_name, x)
    # Wf and Wy give n_a and n_y; every other array is checked against its whole shape, rank included
    check_ndim("Wf", named["Wf"], 2, "(n_a, n_a + n_x)")
    check_ndim("Wy", named["Wy"], 2, "(n_y, n_a)")
    n_x, m = x.shape[0], x.shape[1]
    n_a = named["Wf"].shape[0]
    n_y = named["Wy"].shape[0]
    for gate in ("f", "i", "c", "o"):
        check_shape(f"W{gate}", named[f"W{gate}"], (n_a, n_a + n_x), "(n_a, n_a + n_x)", f"from Wf and {x_name}")
        check_shape(f"b{gate}", named[f"b{gate}"], (n_a, 1), "(n_a, 1)", "from Wf")
    for name, arr in states.items():
        check_shape(name, arr, (n_a, m), "(n_a, m)", f"from Wf and {x_name}")
    check_shape("Wy", named["Wy"], (n_y, n_a), "(n_y, n_a)", "from Wy's rows and Wf")
    check_shape("by", named["by"], (n_y, 1), "(n_y, 1)", "from Wy")
    return xp, arrays


def lstm_cell_forward(xt, a_prev, c_prev, parameters):
    """One step of the LSTM.

    Parameters
    ----------
    xt : (n_x, m) input at step t
    a_prev, c_prev : (n_a, m) hidden and cell states of step t-1
    parameters : dict with Wf, Wi, Wc, Wo (n_a, n_a + n_x); bf, bi, bc, bo (n_a, 1);
        Wy (n_y, n_a); by (n_y, 1)

    Returns
    -------
    a_next, c_next : (n_a, m)
    yt_pred : (n_y, m), columns sum to 1
    cache : LSTMCellCache, or None under :class:`xseq.inference_mode`
    """
    xp, (Wf, bf, Wi, bi, Wc, bc, Wo, bo, Wy, by) = check_lstm_parameters(
        parameters, "xt", xt, {"a_prev": a_prev, "c_prev": c_prev}, "lstm_cell_forward"
    )
    concat = xp.concat([a_prev, xt], axis=0)

    ft = sigmoid(Wf @ concat + bf)
    it = sigmoid(Wi @ concat + bi)
    cct = xp.tanh(Wc @ concat + bc)
    c_next = ft * c_prev + it * cct
    ot = sigmoid(Wo @ concat + bo)
    a_next = ot * xp.tanh(c_next)

    yt_pred = softmax(Wy @ a_next + by)
    cache = kept(LSTMCellCache(a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters))
    return a_next, c_next, yt_pred, cache


def lstm_cell_backward(da_next, dc_next, cache):
    """Backward pass of one LSTM step (the state path; ``yt_pred`` is the loss's business).

    Parameters
    ----------
    da_next, dc_next : (n_a, m) gradients of the loss with respect to a_next and c_next
    cache : LSTMCellCache from :func:`lstm_cell_forward`

    Returns
    -------
    dict with dxt (n_x, m); da_prev, dc_prev (n_a, m); dWf, dWi, dWc, dWo (n_a, n_a + n_x);
    dbf, dbi, dbc, dbo (n_a, 1)
    """
    check_caches(cache, LSTMCellCache, "lstm_cell_backward", "lstm_cell_forward")
    a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters = cache
    xp = namespace_and_checks(da_next=da_next, dc_next=dc_next, a_next=a_next)
    check_shape("da_next", da_next, a_next.shape, "(n_a, m)", "from the cache")
    check_shape("dc_next", dc_next, c_next.shape, "(n_a, m)", "from the cache")
    n_a = a_next.shape[0]

    tanh_c = xp.tanh(c_next)
    dc = dc_next + da_next * ot * (1 - tanh_c**2)
    dot = da_next * tanh_c * ot * (1 - ot)
    dcct = dc * it * (1 - cct**2)
    dit = dc * cct * it * (1 - it)
    dft = dc * c_prev * ft * (1 - ft)

    concat = xp.concat([a_prev, xt], axis=0)
    gradients = {"dxt": 0, "da_prev": 0, "dc_prev": dc * ft}
    for gate, dgate in (("f", dft), ("i", dit), ("c", dcct), ("o", dot)):
        W = parameters[f"W{gate}"]
        gradients[f"dW{gate}"] = dgate @ concat.T
        gradients[f"db{gate}"] = xp.sum(dgate, axis=1, keepdims=True)
        gradients["da_prev"] = gradients["da_prev"] + W[:, :n_a].T @ dgate
        gradients["dxt"] = gradients["dxt"] + W[:, n_a:].T @ dgate
    return gradients


def stack_lstm_parameters(xp, parameters):
    """The four course gate matrices as the engine's stacked (W_ih, W_hh, b), in order i, f, g, o."""
    n_a = parameters["Wf"].shape[0]
    W = xp.concat([parameters[f"W{g}"] for g in GATE_KEYS], axis=0)
    b = xp.concat([parameters[f"b{g}"] for g in GATE_KEYS], axis=0)
    W_hh = xp.asarray(W[:, :n_a], copy=True)
    W_ih = xp.asarray(W[:, n_a:], copy=True)
    return W_ih, W_hh, b[:, 0]


def lstm_forward(x, a0, parameters):
    """Forward pass of the LSTM over a whole sequence, starting from c<0> = 0.

    Equal to looping :func:`lstm_cell_forward`, computed with the four gate matrices
    stacked (one GEMM a step) and the input projection of all steps hoisted out of the loop.

    Parameters
    ----------
    x : (n_x, m, T_x)
    a0 : (n_a, m) initial hidden state
    parameters : dict with Wf, bf, Wi, bi, Wc, bc, Wo, bo, Wy, by (see :func:`lstm_cell_forward`)

    Returns
    -------
    a : (n_a, m, T_x) hidden states
    y : (n_y, m, T_x) predictions
    c : (n_a, m, T_x) cell states
    caches : LSTMCache, or None under :class:`xseq.inference_mode`

    Every cell state is an output here, so under inference mode the engine still
    writes them all; the trace that holds them is dropped once ``c`` is taken.
    """
    xp, arrays = check_lstm_parameters(parameters, "x", x, {"a0": a0}, "lstm_forward")
    Wy, by = arrays[-2:]
    W_ih, W_hh, b = stack_lstm_parameters(xp, parameters)
    c0 = xp.zeros_like(a0.T)
    Y, _, _, trace = engine.sequence_forward("lstm", time_major(xp, x), W_ih, W_hh, b, None, a0.T, c0, keep=True)
    c = time_major(xp, trace.C[1:, ...])
    return time_major(xp, Y), output_softmax(xp, Y, Wy, by), c, kept(LSTMCache(parameters, trace))


def lstm_backward(da, caches):
    """Back-propagation through time for the LSTM.

    Parameters
    ----------
    da : (n_a, m, T_x) upstream gradient of every hidden state a<t>
    caches : LSTMCache from :func:`lstm_forward`

    Returns
    -------
    dict with dx (n_x, m, T_x), da0 (n_a, m), dWf, dWi, dWc, dWo (n_a, n_a + n_x),
    dbf, dbi, dbc, dbo (n_a, 1)
    """
    check_caches(caches, LSTMCache, "lstm_backward", "lstm_forward")
    trace = caches.trace
    xp = namespace_and_checks(da=da, x=trace.X)
    check_sequence_gradient(da, trace, "lstm_forward")
    g = engine.sequence_backward(trace, time_major(xp, da))
    n_a = trace.W_hh.shape[1]
    dW = xp.concat([g["dW_hh"], g["dW_ih"]], axis=1)
    gradients = {"dx": time_major(xp, g["dX"]), "da0": g["dh0"].T}
    for k, gate in enumerate(GATE_KEYS):
        rows = slice(k * n_a, (k + 1) * n_a)
        gradients[f"dW{gate}"] = dW[rows, :]
        gradients[f"db{gate}"] = xp.reshape(g["db_ih"][rows], (n_a, 1))
    return gradients
