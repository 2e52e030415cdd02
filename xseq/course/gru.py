"""The gated recurrent unit: one cell, a whole sequence, and their backward passes.

xseq's GRU is the cuDNN / PyTorch form, so that its three gates are one
stacked GEMM and its weights exchange exactly with ``torch.nn.GRU``::

    r  = sigmoid(Wr [a_prev; xt] + br)                         reset gate
    z  = sigmoid(Wz [a_prev; xt] + bz)                         keep gate
    n  = tanh(Wn_x xt + bn + r * (Wn_a a_prev + bhn))          candidate
    a_next = (1 - z) * n + z * a_prev

``Wn_a = Wn[:, :n_a]`` and ``Wn_x = Wn[:, n_a:]``, like the LSTM's gate matrices
acting on ``[a_prev; xt]``.

How the course's gates map onto it: the course's relevance gate Gamma_r is
``r``; its update gate Gamma_u is ``1 - z`` (the course writes
``c = Gamma_u * c~ + (1 - Gamma_u) * c_prev``); its candidate ``c~`` is ``n``.
The one difference is where Gamma_r acts: the course multiplies ``c_prev``
*before* the matrix (``Wc [Gamma_r * c_prev; xt]``), cuDNN multiplies the
recurrent product *after* it, plus its own bias ``bhn``.

Caches
------
``gru_cell_forward`` returns a :class:`GRUCellCache`
``(a_next, a_prev, rt, zt, nt, hn, xt, parameters)`` where ``hn = Wn_a a_prev + bhn``.
``gru_forward`` returns a :class:`GRUCache` holding the parameters and the engine's trace.
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

GRU_KEYS = ("Wr", "br", "Wz", "bz", "Wn", "bn", "bhn", "Wy", "by")


class GRUCellCache(NamedTuple):
    """What :func:`gru_cell_backward` needs."""

    a_next: Any
    a_prev: Any
    rt: Any
    zt: Any
    nt: Any
    hn: Any
    xt: Any
    parameters: dict


GRUCellCache.made_by = "gru_cell_forward"


class GRUCache(NamedTuple):
    """What :func:`gru_backward` needs: the parameters and the engine's trace of the sequence."""

    parameters: dict
    trace: Any


GRUCache.made_by = "gru_forward"


def check_gru_parameters(parameters, x_name, x, a_name, a_prev, where):
    arrays = get_parameters(parameters, GRU_KEYS, where)
    named = dict(zip(GRU_KEYS, arrays))
    xp = namespace_and_checks(**{x_name: x, a_name: a_prev}, **named)
    check_input(x_name, x)
    # Wr and Wy give n_a and n_y; every other array is checked against its whole shape, rank included
    check_ndim("Wr", named["Wr"], 2, "(n_a, n_a + n_x)")
    check_ndim("Wy", named["Wy"], 2, "(n_y, n_a)")
    n_x, m = x.shape[0], x.shape[1]
    n_a = named["Wr"].shape[0]
    n_y = named["Wy"].shape[0]
    for gate in ("r", "z", "n"):
        check_shape(f"W{gate}", named[f"W{gate}"], (n_a, n_a + n_x), "(n_a, n_a + n_x)", f"from Wr and {x_name}")
    for bias in ("br", "bz", "bn", "bhn"):
        check_shape(bias, named[bias], (n_a, 1), "(n_a, 1)", "from Wr")
    check_shape(a_name, a_prev, (n_a, m), "(n_a, m)", f"from Wr and {x_name}")
    check_shape("Wy", named["Wy"], (n_y, n_a), "(n_y, n_a)", "from Wy's rows and Wr")
    check_shape("by", named["by"], (n_y, 1), "(n_y, 1)", "from Wy")
    return xp, arrays


def gru_cell_forward(xt, a_prev, parameters):
    """One step of the GRU (cuDNN form, see the module docstring).

    Parameters
    ----------
    xt : (n_x, m)
    a_prev : (n_a, m)
    parameters : dict with Wr, Wz, Wn (n_a, n_a + n_x); br, bz, bn, bhn (n_a, 1);
        Wy (n_y, n_a); by (n_y, 1)

    Returns
    -------
    a_next : (n_a, m)
    yt_pred : (n_y, m)
    cache : GRUCellCache, or None under :class:`xseq.inference_mode`
    """
    xp, (Wr, br, Wz, bz, Wn, bn, bhn, Wy, by) = check_gru_parameters(
        parameters, "xt", xt, "a_prev", a_prev, "gru_cell_forward"
    )
    n_a = a_prev.shape[0]
    concat = xp.concat([a_prev, xt], axis=0)

    rt = sigmoid(Wr @ concat + br)
    zt = sigmoid(Wz @ concat + bz)
    hn = Wn[:, :n_a] @ a_prev + bhn
    nt = xp.tanh(Wn[:, n_a:] @ xt + bn + rt * hn)
    a_next = (1 - zt) * nt + zt * a_prev

    yt_pred = softmax(Wy @ a_next + by)
    return a_next, yt_pred, kept(GRUCellCache(a_next, a_prev, rt, zt, nt, hn, xt, parameters))


def gru_cell_backward(da_next, cache):
    """Backward pass of one GRU step.

    Parameters
    ----------
    da_next : (n_a, m)
    cache : GRUCellCache from :func:`gru_cell_forward`

    Returns
    -------
    dict with dxt (n_x, m), da_prev (n_a, m), dWr, dWz, dWn (n_a, n_a + n_x),
    dbr, dbz, dbn, dbhn (n_a, 1)
    """
    check_caches(cache, GRUCellCache, "gru_cell_backward", "gru_cell_forward")
    a_next, a_prev, rt, zt, nt, hn, xt, parameters = cache
    xp = namespace_and_checks(da_next=da_next, a_next=a_next)
    check_shape("da_next", da_next, a_next.shape, "(n_a, m)", "from the cache")
    n_a = a_next.shape[0]
    Wr, Wz, Wn = parameters["Wr"], parameters["Wz"], parameters["Wn"]

    dn = da_next * (1 - zt) * (1 - nt**2)
    dz = da_next * (a_prev - nt) * zt * (1 - zt)
    dr = dn * hn * rt * (1 - rt)
    dhn = dn * rt

    concat = xp.concat([a_prev, xt], axis=0)
    return {
        "dxt": Wr[:, n_a:].T @ dr + Wz[:, n_a:].T @ dz + Wn[:, n_a:].T @ dn,
        "da_prev": da_next * zt + Wr[:, :n_a].T @ dr + Wz[:, :n_a].T @ dz + Wn[:, :n_a].T @ dhn,
        "dWr": dr @ concat.T,
        "dWz": dz @ concat.T,
        "dWn": xp.concat([dhn @ a_prev.T, dn @ xt.T], axis=1),
        "dbr": xp.sum(dr, axis=1, keepdims=True),
        "dbz": xp.sum(dz, axis=1, keepdims=True),
        "dbn": xp.sum(dn, axis=1, keepdims=True),
        "dbhn": xp.sum(dhn, axis=1, keepdims=True),
    }


def stack_gru_parameters(xp, parameters):
    """The course-keyed GRU parameters as the engine's (W_ih, W_hh, b_ih, b_hh), gate order r, z, n."""
    n_a = parameters["Wr"].shape[0]
    W = xp.concat([parameters["Wr"], parameters["Wz"], parameters["Wn"]], axis=0)
    zeros = xp.zeros_like(parameters["bhn"])
    b_ih = xp.concat([parameters["br"], parameters["bz"], parameters["bn"]], axis=0)[:, 0]
    b_hh = xp.concat([zeros, zeros, parameters["bhn"]], axis=0)[:, 0]
    return xp.asarray(W[:, n_a:], copy=True), xp.asarray(W[:, :n_a], copy=True), b_ih, b_hh


def gru_forward(x, a0, parameters):
    """Forward pass of the GRU over a whole sequence (equal to looping :func:`gru_cell_forward`).

    Parameters
    ----------
    x : (n_x, m, T_x)
    a0 : (n_a, m)
    parameters : dict with Wr, br, Wz, bz, Wn, bn, bhn, Wy, by

    Returns
    -------
    a : (n_a, m, T_x)
    y_pred : (n_y, m, T_x)
    caches : GRUCache, or None under :class:`xseq.inference_mode`
    """
    xp, arrays = check_gru_parameters(parameters, "x", x, "a0", a0, "gru_forward")
    Wy, by = arrays[-2:]
    W_ih, W_hh, b_ih, b_hh = stack_gru_parameters(xp, parameters)
    Y, _, _, trace = engine.sequence_forward("gru", time_major(xp, x), W_ih, W_hh, b_ih, b_hh, a0.T)
    return time_major(xp, Y), output_softmax(xp, Y, Wy, by), None if trace is None else GRUCache(parameters, trace)


def gru_backward(da, caches):
    """Back-propagation through time for the GRU.

    Parameters
    ----------
    da : (n_a, m, T_x) upstream gradient of every hidden state
    caches : GRUCache from :func:`gru_forward`

    Returns
    -------
    dict with dx (n_x, m, T_x), da0 (n_a, m), dWr, dWz, dWn (n_a, n_a + n_x), dbr, dbz, dbn, dbhn (n_a, 1)
    """
    check_caches(caches, GRUCache, "gru_backward", "gru_forward")
    trace = caches.trace
    xp = namespace_and_checks(da=da, x=trace.X)
    check_sequence_gradient(da, trace, "gru_forward")
    g = engine.sequence_backward(trace, time_major(xp, da))
    n_a = trace.W_hh.shape[1]
    dW = xp.concat([g["dW_hh"], g["dW_ih"]], axis=1)
    gradients = {"dx": time_major(xp, g["dX"]), "da0": g["dh0"].T}
    for k, gate in enumerate("rzn"):
        rows = slice(k * n_a, (k + 1) * n_a)
        gradients[f"dW{gate}"] = dW[rows, :]
        gradients[f"db{gate}"] = xp.reshape(g["db_ih"][rows], (n_a, 1))
    gradients["dbhn"] = xp.reshape(g["db_hh"][2 * n_a:], (n_a, 1))
    return gradients
