"""The basic recurrent neural network of the course: one cell, a whole sequence, and their backward passes.

Shapes use the course's letters: ``n_x`` input size, ``n_a`` hidden size,
``n_y`` output size, ``m`` examples (columns), ``T_x`` time steps. A step is
``(n, m)``, a sequence ``(n, m, T_x)``.

Caches
------
``rnn_cell_forward`` returns an :class:`RNNCellCache`, the course's tuple
``(a_next, a_prev, xt, parameters)`` with names. ``rnn_forward`` returns an
:class:`RNNCache`: the parameters and the engine's time-major buffers (input,
every hidden state). Each backward function accepts only its forward's cache.

Under :class:`xseq.inference_mode` every forward function (cell and sequence,
here and in :mod:`xseq.course.lstm` and :mod:`xseq.course.gru`) returns the
same outputs and ``None`` for its cache: nothing is kept for a backward pass.
A backward function given ``None`` raises a ``TypeError`` that says so (as for
any cache that is not its forward's).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device as device_of

from ..backends.checks import (
    check_cache,
    check_ndim,
    check_shape,
    get_parameters,
    namespace_and_checks,
)
from ..engine import sequence as engine
from ..ops.inference import is_inference_mode_enabled
from ..ops.select import ops_for
from .activations import softmax

RNN_KEYS = ("Wax", "Waa", "Wya", "ba", "by")


class RNNCellCache(NamedTuple):
    """What :func:`rnn_cell_backward` needs: the course's ``(a_next, a_prev, xt, parameters)``."""

    a_next: Any
    a_prev: Any
    xt: Any
    parameters: dict


RNNCellCache.made_by = "rnn_cell_forward"


class RNNCache(NamedTuple):
    """What :func:`rnn_backward` needs: the parameters and the engine's trace of the sequence."""

    parameters: dict
    trace: Any


RNNCache.made_by = "rnn_forward"


def kept(cache):
    """``cache``, or None under :class:`xseq.inference_mode` (a forward function's last result)."""
    return None if is_inference_mode_enabled() else cache


def check_caches(caches, expected_type, function, producer):
    """``caches`` must be what ``producer`` returns outside inference mode; None (what it returns inside) is
    refused with a TypeError that says so."""
    if caches is None:
        raise TypeError(f"{function} needs the cache returned by {producer}; got a NoneType, which is what "
                        f"{producer} returns for it under xseq.inference_mode() (nothing is kept for a backward "
                        f"pass there): run {producer} outside inference mode to back-propagate")
    check_cache(caches, expected_type, function, producer)


def check_input(x_name, x):
    """``xt`` is a step (n_x, m); ``x`` a sequence (n_x, m, T_x) with T_x >= 1."""
    if x_name == "xt":
        check_ndim("xt", x, 2, "(n_x, m)")
    else:
        check_ndim("x", x, 3, "(n_x, m, T_x)")
        if x.shape[2] == 0:
            raise ValueError(f"x has shape {tuple(x.shape)}: T_x = 0; a sequence needs at least one time step")


def check_rnn_parameters(parameters, x_name, x, a_name, a_prev, where):
    """Validate ``parameters`` against an input (step ``xt`` or sequence ``x``) and a state.

    Returns the namespace and the five arrays in ``RNN_KEYS`` order.
    """
    Wax, Waa, Wya, ba, by = get_parameters(parameters, RNN_KEYS, where)
    xp = namespace_and_checks(**{x_name: x, a_name: a_prev}, Wax=Wax, Waa=Waa, Wya=Wya, ba=ba, by=by)
    check_input(x_name, x)
    # Waa and Wya give n_a and n_y; every other array is checked against its whole shape, rank included
    check_ndim("Waa", Waa, 2, "(n_a, n_a)")
    check_ndim("Wya", Wya, 2, "(n_y, n_a)")
    n_a = Waa.shape[0]
    n_x, m = x.shape[0], x.shape[1]
    n_y = Wya.shape[0]
    check_shape("Waa", Waa, (n_a, n_a), "(n_a, n_a)", "from Waa's rows")
    check_shape("Wax", Wax, (n_a, n_x), "(n_a, n_x)", f"from Waa and {x_name}")
    check_shape(a_name, a_prev, (n_a, m), "(n_a, m)", f"from Waa and {x_name}")
    check_shape("ba", ba, (n_a, 1), "(n_a, 1)", "from Waa")
    check_shape("Wya", Wya, (n_y, n_a), "(n_y, n_a)", "from Wya's rows and Waa")
    check_shape("by", by, (n_y, 1), "(n_y, 1)", "from Wya")
    return xp, (Wax, Waa, Wya, ba, by)


def rnn_cell_forward(xt, a_prev, parameters):
    """One step of the basic RNN.

    a_next = tanh(Wax xt + Waa a_prev + ba), yt_pred = softmax(Wya a_next + by).

    Parameters
    ----------
    xt : (n_x, m) input at step t
    a_prev : (n_a, m) hidden state of step t-1
    parameters : dict with Wax (n_a, n_x), Waa (n_a, n_a), Wya (n_y, n_a), ba (n_a, 1), by (n_y, 1)

    Returns
    -------
    a_next : (n_a, m)
    yt_pred : (n_y, m), columns sum to 1
    cache : RNNCellCache, or None under :class:`xseq.inference_mode`
    """
    xp, (Wax, Waa, Wya, ba, by) = check_rnn_parameters(parameters, "xt", xt, "a_prev", a_prev, "rnn_cell_forward")
    a_next = xp.tanh(Wax @ xt + Waa @ a_prev + ba)
    yt_pred = softmax(Wya @ a_next + by)
    return a_next, yt_pred, kept(RNNCellCache(a_next, a_prev, xt, parameters))


def rnn_cell_backward(da_next, cache):
    """Backward pass of one RNN step (the hidden-state path; ``yt_pred`` is the loss's business).

    Parameters
    ----------
    da_next : (n_a, m) gradient of the loss with respect to a_next
    cache : RNNCellCache from :func:`rnn_cell_forward`

    Returns
    -------
    dict with dxt (n_x, m), da_prev (n_a, m), dWax (n_a, n_x), dWaa (n_a, n_a), dba (n_a, 1)
    """
    check_caches(cache, RNNCellCache, "rnn_cell_backward", "rnn_cell_forward")
    a_next, a_prev, xt, parameters = cache
    xp = namespace_and_checks(da_next=da_next, a_next=a_next)
    check_shape("da_next", da_next, a_next.shape, "(n_a, m)", "from the cache")
    Wax, Waa = parameters["Wax"], parameters["Waa"]

    dtanh = (1 - a_next**2) * da_next
    return {
        "dxt": Wax.T @ dtanh,
        "da_prev": Waa.T @ dtanh,
        "dWax": dtanh @ xt.T,
        "dWaa": dtanh @ a_prev.T,
        "dba": xp.sum(dtanh, axis=1, keepdims=True),
    }


def time_major(xp, x):
    """(n, m, T_x) course layout -> (T_x, m, n) engine layout, and back (the permutation is its own inverse)."""
    return xp.permute_dims(x, (2, 1, 0))


def output_softmax(xp, Y, Wy, by):
    """softmax(Wy a<t> + by) for every step at once, one GEMM: Y (T_x, m, n_a) -> (n_y, m, T_x)."""
    T_x, m, n_a = Y.shape
    n_y = Wy.shape[0]
    ops = ops_for(xp, Y.dtype)
    logits = ops.matmul(xp.reshape(Y, (T_x * m, n_a)), Wy.T, ops.empty((T_x * m, n_y), Y.dtype, device_of(Y)))
    logits = ops.add_into(logits, by[:, 0])
    return time_major(xp, xp.reshape(ops.softmax_rows(logits), (T_x, m, n_y)))


def rnn_forward(x, a0, parameters):
    """Forward pass of the basic RNN over a whole sequence.

    Equal to looping :func:`rnn_cell_forward` over the steps, but computed with one
    GEMM for the input projection of all steps and one GEMM per step.

    Parameters
    ----------
    x : (n_x, m, T_x)
    a0 : (n_a, m) initial hidden state
    parameters : dict with Wax, Waa, Wya, ba, by (see :func:`rnn_cell_forward`)

    Returns
    -------
    a : (n_a, m, T_x) hidden state of every step
    y_pred : (n_y, m, T_x) prediction of every step
    caches : RNNCache, or None under :class:`xseq.inference_mode`
    """
    xp, (Wax, Waa, Wya, ba, by) = check_rnn_parameters(parameters, "x", x, "a0", a0, "rnn_forward")
    Y, _, _, trace = engine.sequence_forward("rnn", time_major(xp, x), Wax, Waa, ba[:, 0], None, a0.T)
    return time_major(xp, Y), output_softmax(xp, Y, Wya, by), None if trace is None else RNNCache(parameters, trace)


def check_sequence_gradient(da, trace, function):
    T, m, _ = trace.X.shape
    n_a = trace.W_hh.shape[1]
    check_ndim("da", da, 3, "(n_a, m, T_x)")
    check_shape("da", da, (n_a, m, T), "(n_a, m, T_x)", f"from the caches of {function}")


def rnn_backward(da, caches):
    """Back-propagation through time for the basic RNN.

    Parameters
    ----------
    da : (n_a, m, T_x) upstream gradient of every hidden state a<t>
    caches : RNNCache from :func:`rnn_forward`

    Returns
    -------
    dict with dx (n_x, m, T_x), da0 (n_a, m), dWax (n_a, n_x), dWaa (n_a, n_a), dba (n_a, 1)
    """
    check_caches(caches, RNNCache, "rnn_backward", "rnn_forward")
    trace = caches.trace
    xp = namespace_and_checks(da=da, x=trace.X)
    check_sequence_gradient(da, trace, "rnn_forward")
    g = engine.sequence_backward(trace, time_major(xp, da))
    return {
        "dx": time_major(xp, g["dX"]),
        "da0": g["dh0"].T,
        "dWax": g["dW_ih"],
        "dWaa": g["dW_hh"],
        "dba": xp.reshape(g["db_ih"], (-1, 1)),
    }
