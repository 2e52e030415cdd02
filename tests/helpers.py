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
