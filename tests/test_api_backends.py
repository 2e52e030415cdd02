"""Every public function on every backend, in float32 and float64.

For each output array: its namespace is the input's (``array_namespace(out) is
xp``), its device is the input's, its dtype is the input's, its shape is the
documented one and its values are finite. Values are compared with NumPy's.
"""

import contextlib
import math
import warnings

import array_api_compat
import numpy as np
import pytest

import xseq
from xseq.backends.arrays import backend_name

N_X, N_A, N_Y, M, T_X = 3, 5, 2, 4, 6
DTYPES = ("float32", "float64")
INIT = {"rnn": xseq.init_rnn_parameters, "lstm": xseq.init_lstm_parameters, "gru": xseq.init_gru_parameters}
TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}

PARAMETER_SHAPES = {
    "rnn": {"Wax": (N_A, N_X), "Waa": (N_A, N_A), "Wya": (N_Y, N_A), "ba": (N_A, 1), "by": (N_Y, 1)},
    "lstm": {
        **{f"W{g}": (N_A, N_A + N_X) for g in "fico"},
        **{f"b{g}": (N_A, 1) for g in "fico"},
        "Wy": (N_Y, N_A),
        "by": (N_Y, 1),
    },
    "gru": {
        **{f"W{g}": (N_A, N_A + N_X) for g in "rzn"},
        **{b: (N_A, 1) for b in ("br", "bz", "bn", "bhn")},
        "Wy": (N_Y, N_A),
        "by": (N_Y, 1),
    },
}

CELL_GRADIENTS = {
    "rnn": {"dxt": (N_X, M), "da_prev": (N_A, M), "dWax": (N_A, N_X), "dWaa": (N_A, N_A), "dba": (N_A, 1)},
    "lstm": {
        "dxt": (N_X, M),
        "da_prev": (N_A, M),
        "dc_prev": (N_A, M),
        **{f"dW{g}": (N_A, N_A + N_X) for g in "fico"},
        **{f"db{g}": (N_A, 1) for g in "fico"},
    },
    "gru": {
        "dxt": (N_X, M),
        "da_prev": (N_A, M),
        **{f"dW{g}": (N_A, N_A + N_X) for g in "rzn"},
        **{b: (N_A, 1) for b in ("dbr", "dbz", "dbn", "dbhn")},
    },
}

SEQUENCE_GRADIENTS = {
    "rnn": {"dx": (N_X, M, T_X), "da0": (N_A, M), "dWax": (N_A, N_X), "dWaa": (N_A, N_A), "dba": (N_A, 1)},
    "lstm": {
        "dx": (N_X, M, T_X),
        "da0": (N_A, M),
        **{f"dW{g}": (N_A, N_A + N_X) for g in "fico"},
        **{f"db{g}": (N_A, 1) for g in "fico"},
    },
    "gru": {
        "dx": (N_X, M, T_X),
        "da0": (N_A, M),
        **{f"dW{g}": (N_A, N_A + N_X) for g in "rzn"},
        **{b: (N_A, 1) for b in ("dbr", "dbz", "dbn", "dbhn")},
    },
}


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


def host(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def on(xp, dtype, value):
    return xseq.asarray(value, backend=backend_name(xp), dtype=dtype)


def check(out, xp, dtype, shape, like):
    """``out`` is an array of ``xp`` on ``like``'s device, of ``dtype`` and ``shape``, all finite."""
    assert array_api_compat.array_namespace(out) is xp
    assert out.dtype == getattr(xp, dtype), f"dtype {out.dtype}, expected {dtype}"
    assert tuple(out.shape) == shape
    assert array_api_compat.device(out) == array_api_compat.device(like)
    assert np.all(np.isfinite(xseq.to_numpy(out)))


def check_gradients(gradients, expected, xp, dtype, like):
    assert isinstance(gradients, dict)
    assert set(gradients) == set(expected)
    for key, shape in expected.items():
        check(gradients[key], xp, dtype, shape, like)


def check_columns_sum_to_one(y, dtype):
    sums = np.sum(xseq.to_numpy(y).astype(np.float64), axis=0)
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-6 if dtype == "float32" else 1e-12)


def close(a, b, dtype):
    np.testing.assert_allclose(xseq.to_numpy(a), xseq.to_numpy(b), **TOL[dtype])


def problem(xp, dtype, kind):
    """(parameters, xt, a_prev, c_prev, x, a0) of ``xp``; biases made non-zero."""
    params = INIT[kind](N_X, N_A, N_Y, backend=backend_name(xp), dtype=dtype, seed=7)
    for k, key in enumerate(params):
        if key.startswith("b"):
            params[key] = on(xp, dtype, 0.3 * host(params[key].shape, 100 + k))
    return (params, on(xp, dtype, host((N_X, M), 1)), on(xp, dtype, host((N_A, M), 2)),
            on(xp, dtype, host((N_A, M), 3)), on(xp, dtype, host((N_X, M, T_X), 4)), on(xp, dtype, host((N_A, M), 5)))


@contextlib.contextmanager
def no_warnings():
    """Fail on any warning and on NumPy overflow / invalid / divide-by-zero (underflow to 0 is fine)."""
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        yield


NUMPY = xseq.backend("numpy")


# ---------------------------------------------------------------- activations

def test_sigmoid(xp, dtype):
    values = host((3, 4, 2), 0)
    x = on(xp, dtype, values)
    with no_warnings():
        y = xseq.sigmoid(x)
    check(y, xp, dtype, (3, 4, 2), x)
    np.testing.assert_allclose(xseq.to_numpy(y), 1 / (1 + np.exp(-values)), **TOL[dtype])


def test_sigmoid_is_stable_at_plus_minus_1000(xp, dtype):
    x = on(xp, dtype, [[-1000.0, -100.0, -1.0, 0.0, 1.0, 100.0, 1000.0]])
    with no_warnings():
        y = xseq.sigmoid(x)
    check(y, xp, dtype, (1, 7), x)
    out = xseq.to_numpy(y)[0]
    assert out[0] == 0.0 and out[-1] == 1.0 and out[3] == 0.5
    assert np.all(np.diff(out) >= 0)
    np.testing.assert_allclose(out[2], 1 / (1 + math.e), rtol=1e-6)


def test_sigmoid_of_a_scalar_array(xp, dtype):
    x = on(xp, dtype, 1000.0)
    with no_warnings():
        y = xseq.sigmoid(x)
    check(y, xp, dtype, (), x)
    assert float(xseq.to_numpy(y)) == 1.0


def test_softmax(xp, dtype):
    values = host((N_Y + 2, M), 0)
    x = on(xp, dtype, values)
    with no_warnings():
        y = xseq.softmax(x)
    check(y, xp, dtype, (N_Y + 2, M), x)
    check_columns_sum_to_one(y, dtype)
    e = np.exp(values)
    np.testing.assert_allclose(xseq.to_numpy(y), e / e.sum(axis=0), **TOL[dtype])


def test_softmax_runs_over_axis_0_of_a_sequence(xp, dtype):
    values = host((N_Y, M, T_X), 1)
    x = on(xp, dtype, values)
    y = xseq.softmax(x)
    check(y, xp, dtype, (N_Y, M, T_X), x)
    check_columns_sum_to_one(y, dtype)
    e = np.exp(values)
    np.testing.assert_allclose(xseq.to_numpy(y), e / e.sum(axis=0), **TOL[dtype])


def test_softmax_is_stable_at_plus_minus_1000(xp, dtype):
    x = on(xp, dtype, [[1000.0, -1000.0, 1000.0, -1000.0],
                       [0.0, 1000.0, 1000.0, -1000.0],
                       [-1000.0, -1000.0, 1000.0, -1000.0]])
    with no_warnings():
        y = xseq.softmax(x)
    check(y, xp, dtype, (3, 4), x)
    check_columns_sum_to_one(y, dtype)
    expected = np.array([[1, 0, 1 / 3, 1 / 3], [0, 1, 1 / 3, 1 / 3], [0, 0, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(xseq.to_numpy(y), expected, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- cells

def test_rnn_cell(xp, dtype):
    params, xt, a_prev, _, _, _ = problem(xp, dtype, "rnn")
    a_next, yt_pred, cache = xseq.rnn_cell_forward(xt, a_prev, params)
    check(a_next, xp, dtype, (N_A, M), xt)
    check(yt_pred, xp, dtype, (N_Y, M), xt)
    check_columns_sum_to_one(yt_pred, dtype)
    check(cache.a_next, xp, dtype, (N_A, M), xt)
    check(cache.a_prev, xp, dtype, (N_A, M), xt)
    check(cache.xt, xp, dtype, (N_X, M), xt)
    gradients = xseq.rnn_cell_backward(on(xp, dtype, host((N_A, M), 9)), cache)
    check_gradients(gradients, CELL_GRADIENTS["rnn"], xp, dtype, xt)

    # the course's formula, in NumPy float64
    p = {k: xseq.to_numpy(v).astype(np.float64) for k, v in params.items()}
    xt_h, a_h = xseq.to_numpy(xt).astype(np.float64), xseq.to_numpy(a_prev).astype(np.float64)
    a_ref = np.tanh(p["Wax"] @ xt_h + p["Waa"] @ a_h + p["ba"])
    close(a_next, a_ref, dtype)


def test_lstm_cell(xp, dtype):
    params, xt, a_prev, c_prev, _, _ = problem(xp, dtype, "lstm")
    a_next, c_next, yt_pred, cache = xseq.lstm_cell_forward(xt, a_prev, c_prev, params)
    check(a_next, xp, dtype, (N_A, M), xt)
    check(c_next, xp, dtype, (N_A, M), xt)
    check(yt_pred, xp, dtype, (N_Y, M), xt)
    check_columns_sum_to_one(yt_pred, dtype)
    for name in ("a_next", "c_next", "a_prev", "c_prev", "ft", "it", "cct", "ot"):
        check(getattr(cache, name), xp, dtype, (N_A, M), xt)
    check(cache.xt, xp, dtype, (N_X, M), xt)
    gradients = xseq.lstm_cell_backward(on(xp, dtype, host((N_A, M), 9)), on(xp, dtype, host((N_A, M), 10)), cache)
    check_gradients(gradients, CELL_GRADIENTS["lstm"], xp, dtype, xt)


def test_gru_cell(xp, dtype):
    params, xt, a_prev, _, _, _ = problem(xp, dtype, "gru")
    a_next, yt_pred, cache = xseq.gru_cell_forward(xt, a_prev, params)
    check(a_next, xp, dtype, (N_A, M), xt)
    check(yt_pred, xp, dtype, (N_Y, M), xt)
    check_columns_sum_to_one(yt_pred, dtype)
    for name in ("a_next", "a_prev", "rt", "zt", "nt", "hn"):
        check(getattr(cache, name), xp, dtype, (N_A, M), xt)
    gradients = xseq.gru_cell_backward(on(xp, dtype, host((N_A, M), 9)), cache)
    check_gradients(gradients, CELL_GRADIENTS["gru"], xp, dtype, xt)


# ---------------------------------------------------------------- sequences

def run_sequence(xp, dtype, kind):
    params, _, _, _, x, a0 = problem(xp, dtype, kind)
    forward = {"rnn": xseq.rnn_forward, "lstm": xseq.lstm_forward, "gru": xseq.gru_forward}[kind]
    backward = {"rnn": xseq.rnn_backward, "lstm": xseq.lstm_backward, "gru": xseq.gru_backward}[kind]
    outputs = forward(x, a0, params)
    gradients = backward(on(xp, dtype, host((N_A, M, T_X), 11)), outputs[-1])
    return x, outputs, gradients


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_sequence(xp, dtype, kind):
    x, outputs, gradients = run_sequence(xp, dtype, kind)
    a, y_pred = outputs[0], outputs[1]
    check(a, xp, dtype, (N_A, M, T_X), x)
    check(y_pred, xp, dtype, (N_Y, M, T_X), x)
    check_columns_sum_to_one(y_pred, dtype)
    if kind == "lstm":
        assert len(outputs) == 4
        check(outputs[2], xp, dtype, (N_A, M, T_X), x)
    else:
        assert len(outputs) == 3
    check_gradients(gradients, SEQUENCE_GRADIENTS[kind], xp, dtype, x)

    # the same numbers as NumPy
    x_np, outputs_np, gradients_np = run_sequence(NUMPY, dtype, kind)
    for ours, ref in zip(outputs[:-1], outputs_np[:-1]):
        close(ours, ref, dtype)
    for key in gradients:
        close(gradients[key], gradients_np[key], dtype)


# ---------------------------------------------------------------- parameters

@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_init_parameters(xp, dtype, kind):
    name = backend_name(xp)
    params = INIT[kind](N_X, N_A, N_Y, backend=name, dtype=dtype, seed=3)
    assert set(params) == set(PARAMETER_SHAPES[kind])
    for key, shape in PARAMETER_SHAPES[kind].items():
        assert array_api_compat.array_namespace(params[key]) is xp
        assert params[key].dtype == getattr(xp, dtype)
        assert tuple(params[key].shape) == shape

    # the same values for a seed on every backend; other values for another seed
    reference = INIT[kind](N_X, N_A, N_Y, backend="numpy", dtype=dtype, seed=3)
    other = INIT[kind](N_X, N_A, N_Y, backend=name, dtype=dtype, seed=4)
    for key in params:
        np.testing.assert_array_equal(xseq.to_numpy(params[key]), xseq.to_numpy(reference[key]))
        if key.startswith("W"):
            assert not np.array_equal(xseq.to_numpy(params[key]), xseq.to_numpy(other[key]))

    # documented scales: weights uniform in +-1/sqrt(n_a); biases 0 except the LSTM's bf = 1
    bound = 1 / math.sqrt(N_A)
    for key, value in params.items():
        v = xseq.to_numpy(value)
        if key.startswith("W"):
            assert np.all(np.abs(v) <= bound * (1 + 1e-6))
            assert np.std(v) > 0.2 * bound  # really drawn, not constant
        elif key == "bf":
            assert np.all(v == 1.0)
        else:
            assert np.all(v == 0.0), key


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_init_parameters_defaults(kind):
    params = INIT[kind](N_X, N_A, N_Y)
    again = INIT[kind](N_X, N_A, N_Y, seed=0)
    for key, value in params.items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        np.testing.assert_array_equal(value, again[key])


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_init_parameters_float32_is_float64_rounded(kind):
    p32 = INIT[kind](N_X, N_A, N_Y, dtype="float32", seed=5)
    p64 = INIT[kind](N_X, N_A, N_Y, dtype="float64", seed=5)
    for key in p32:
        np.testing.assert_array_equal(p32[key], p64[key].astype(np.float32))


def test_init_parameters_run_in_the_functions(xp, dtype):
    """Initialised parameters are accepted as they are by the forward functions."""
    name = backend_name(xp)
    x = on(xp, dtype, host((N_X, M, T_X), 0))
    a0 = on(xp, dtype, np.zeros((N_A, M)))
    for kind, forward in (("rnn", xseq.rnn_forward), ("lstm", xseq.lstm_forward), ("gru", xseq.gru_forward)):
        params = INIT[kind](N_X, N_A, N_Y, backend=name, dtype=dtype)
        check(forward(x, a0, params)[0], xp, dtype, (N_A, M, T_X), x)
