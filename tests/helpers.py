"""Test helpers: random course-shaped problems and central finite differences."""

import numpy as np
import pytest

import xseq

from .gpu import cuda_verdict, driver_gpu_count

EPS = 1e-6


def namespace_or_skip(name):
    """The namespace of backend ``name``, or a skip that says why it cannot run here.

    CuPy skips only where no GPU is present; where one is and CUDA does not start, the test fails
    (``tests/gpu.py``).
    """
    if name == "cupy":
        verdict, detail = cuda_verdict(driver_gpu_count())
        if verdict == "skip":
            pytest.skip(detail)
        if verdict == "fail":
            pytest.fail(detail)
    try:
        return xseq.backend(name)
    except xseq.BackendUnavailableError as exc:
        pytest.skip(str(exc))


def random_parameters(kind, n_x, n_a, n_y, seed=0):
    """Random float64 NumPy parameters with the course's keys, biases non-zero so their gradients matter."""
    init = {"rnn": xseq.init_rnn_parameters, "lstm": xseq.init_lstm_parameters, "gru": xseq.init_gru_parameters}[kind]
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape) * 0.5 for k, v in init(n_x, n_a, n_y, dtype="float64").items()}


def to_backend(xp, arrays, dtype="float64"):
    dt = getattr(xp, dtype)
    return {k: xp.asarray(np.asarray(v), dtype=dt) for k, v in arrays.items()}


def relative_error(numeric, analytic):
    """The course's gradient-check measure ||a - b|| / (||a|| + ||b||)."""
    numeric, analytic = np.asarray(numeric), np.asarray(analytic)
    denominator = np.linalg.norm(numeric) + np.linalg.norm(analytic)
    if denominator == 0:
        return 0.0
    return np.linalg.norm(numeric - analytic) / denominator


def numeric_gradient(loss, arrays, name):
    """Central differences of ``loss(arrays)`` (a float) with respect to every entry of ``arrays[name]``."""
    base = arrays[name]
    grad = np.zeros_like(base)
    for index in np.ndindex(base.shape):
        for sign in (1, -1):
            shifted = base.copy()
            shifted[index] += sign * EPS
            value = loss({**arrays, name: shifted})
            grad[index] += sign * value / (2 * EPS)
    return grad


#: Steps of :func:`engine_sequence`.
ENGINE_STEPS = 6


def engine_sequence(kind, ops, *, m=3, reverse=False, with_dY=True, with_final=True, dtype=np.float64, mask=None,
                    n_x=4, n_a=5):
    """A small random sequence through the engine's forward and backward on ``ops`` (None: ``ops_for``'s choice).

    ``ENGINE_STEPS`` steps of ``m`` examples, ``n_x`` inputs, ``n_a`` units, every bias; the output gradient
    ``dY`` and the final states' gradients as asked. Returns every output and gradient that is not None, as
    NumPy arrays.
    """
    from xseq.engine import sequence as engine

    rng = np.random.default_rng(11)
    T, G = ENGINE_STEPS, engine.GATES[kind]

    def draw(*shape):
        return (rng.standard_normal(shape) * 0.7).astype(dtype)

    args = dict(X=draw(T, m, n_x), W_ih=draw(G * n_a, n_x), W_hh=draw(G * n_a, n_a), b_ih=draw(G * n_a),
                b_hh=draw(G * n_a), h0=draw(m, n_a), c0=draw(m, n_a) if kind == "lstm" else None)
    final = dict(dh_T=draw(m, n_a), dc_T=draw(m, n_a) if kind == "lstm" else None)
    grads_in = dict(dY=draw(T, m, n_a) if with_dY else None, **(final if with_final else {}))
    Y, h_T, c_T, trace = engine.sequence_forward(kind, **args, mask=mask, reverse=reverse, ops=ops)
    grads = engine.sequence_backward(trace, **grads_in, ops=ops)
    out = dict(Y=Y, h_T=h_T, c_T=c_T, **grads)
    return {k: np.array(v) for k, v in out.items() if v is not None}
