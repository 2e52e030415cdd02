"""Central finite-difference checks, in float64, of every gradient of every backward function."""

import numpy as np
import pytest

import xseq

from .helpers import numeric_gradient, random_parameters, relative_error, to_backend

N_Y = 2
MODELS = {
    "rnn": (xseq.rnn_cell_forward, xseq.rnn_cell_backward, xseq.rnn_forward, xseq.rnn_backward),
    "lstm": (xseq.lstm_cell_forward, xseq.lstm_cell_backward, xseq.lstm_forward, xseq.lstm_backward),
    "gru": (xseq.gru_cell_forward, xseq.gru_cell_backward, xseq.gru_forward, xseq.gru_backward),
}
OUTPUT_KEYS = ("Wy", "Wya", "by")  # y is not back-propagated by these functions: the loss does that


def _problem(kind, n_x, n_a, m, T_x, seed=1):
    rng = np.random.default_rng(seed)
    arrays = {f"p_{k}": v for k, v in random_parameters(kind, n_x, n_a, N_Y, seed).items()}
    arrays.update(x=rng.standard_normal((n_x, m, T_x)), a0=rng.standard_normal((n_a, m)) * 0.5,
                  c0=rng.standard_normal((n_a, m)) * 0.5)
    weights = {"R": rng.standard_normal((n_a, m, T_x)), "R2": rng.standard_normal((n_a, m))}
    return arrays, weights


def _split(xp, arrays):
    on = to_backend(xp, arrays)
    params = {k[2:]: v for k, v in on.items() if k.startswith("p_")}
    return params, on


def _check(loss, arrays, analytic, pairs):
    for array_name, grad_key in pairs:
        numeric = numeric_gradient(loss, arrays, array_name)
        error = relative_error(numeric, xseq.to_numpy(analytic[grad_key]))
        assert error < 1e-6, f"{grad_key}: relative error {error:.2e}"


def _param_pairs(arrays):
    return [(k, "d" + k[2:]) for k in arrays if k.startswith("p_") and k[2:] not in OUTPUT_KEYS]


def check_cell(xp, kind, n_x, n_a, m):
    cell_forward, cell_backward, _, _ = MODELS[kind]
    arrays, w = _problem(kind, n_x, n_a, m, 1)
    arrays["xt"] = arrays.pop("x")[:, :, 0]
    R, R2 = xp.asarray(w["R"][:, :, 0]), xp.asarray(w["R2"])

    def run(arrs):
        params, on = _split(xp, arrs)
        if kind == "lstm":
            a_next, c_next, _, cache = cell_forward(on["xt"], on["a0"], on["c0"], params)
            return float(xp.sum(a_next * R) + xp.sum(c_next * R2)), cache
        a_next, _, cache = cell_forward(on["xt"], on["a0"], params)
        return float(xp.sum(a_next * R)), cache

    _, cache = run(arrays)
    grads = cell_backward(R, R2, cache) if kind == "lstm" else cell_backward(R, cache)
    pairs = [("xt", "dxt"), ("a0", "da_prev")] + ([("c0", "dc_prev")] if kind == "lstm" else [])
    _check(lambda a: run(a)[0], arrays, grads, pairs + _param_pairs(arrays))


def check_sequence(xp, kind, n_x, n_a, m, T_x):
    _, _, forward, backward = MODELS[kind]
    arrays, w = _problem(kind, n_x, n_a, m, T_x)
    del arrays["c0"]  # the course's lstm_forward starts from c<0> = 0
    R = xp.asarray(w["R"])

    def run(arrs):
        params, on = _split(xp, arrs)
        outputs = forward(on["x"], on["a0"], params)
        return float(xp.sum(outputs[0] * R)), outputs[-1]

    _, caches = run(arrays)
    grads = backward(R, caches)
    _check(lambda a: run(a)[0], arrays, grads, [("x", "dx"), ("a0", "da0")] + _param_pairs(arrays))


SHAPES = [(3, 4, 1, 1), (3, 4, 3, 4), (2, 3, 1, 5), (4, 2, 5, 1)]


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("n_x,n_a,m,T_x", SHAPES)
def test_cell_gradients_numpy(kind, n_x, n_a, m, T_x):
    check_cell(xseq.backend("numpy"), kind, n_x, n_a, m)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("n_x,n_a,m,T_x", SHAPES)
def test_sequence_gradients_numpy(kind, n_x, n_a, m, T_x):
    check_sequence(xseq.backend("numpy"), kind, n_x, n_a, m, T_x)


@pytest.mark.parametrize("kind", MODELS)
def test_gradients_every_backend(xp, kind):
    check_cell(xp, kind, 2, 3, 2)
    check_sequence(xp, kind, 2, 3, 2, 3)
