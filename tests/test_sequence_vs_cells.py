"""The fast sequence functions equal looping the readable cell functions; float32 tracks float64."""

import numpy as np
import pytest

import xseq

from .helpers import random_parameters, to_backend

N_X, N_A, N_Y = 3, 5, 4
KINDS = ("rnn", "lstm", "gru")


def _forward_backward_by_cells(xp, kind, x, a0, da, params):
    """The course's rnn_forward / rnn_backward loops, written with the cell functions."""
    cell_forward = getattr(xseq, f"{kind}_cell_forward")
    cell_backward = getattr(xseq, f"{kind}_cell_backward")
    T_x = x.shape[2]
    a_next, c_next = a0, xp.zeros_like(a0)
    a, y, c, caches = [], [], [], []
    for t in range(T_x):
        if kind == "lstm":
            a_next, c_next, yt, cache = cell_forward(x[:, :, t], a_next, c_next, params)
            c.append(c_next)
        else:
            a_next, yt, cache = cell_forward(x[:, :, t], a_next, params)
        a.append(a_next)
        y.append(yt)
        caches.append(cache)

    da_prev, dc_prev = xp.zeros_like(a0), xp.zeros_like(a0)
    totals, dx = {}, [None] * T_x
    for t in reversed(range(T_x)):
        if kind == "lstm":
            g = cell_backward(da[:, :, t] + da_prev, dc_prev, caches[t])
            dc_prev = g["dc_prev"]
        else:
            g = cell_backward(da[:, :, t] + da_prev, caches[t])
        da_prev, dx[t] = g["da_prev"], g["dxt"]
        for key, value in g.items():
            if key.startswith(("dW", "db")):
                totals[key] = totals[key] + value if key in totals else value
    stack = lambda arrays: xp.stack(arrays, axis=2)  # noqa: E731
    outputs = {"a": stack(a), "y": stack(y)}
    if kind == "lstm":
        outputs["c"] = stack(c)
    return outputs, {"dx": stack(dx), "da0": da_prev, **totals}


def _sequence(kind, x, a0, da, params):
    outputs = getattr(xseq, f"{kind}_forward")(x, a0, params)
    named = {"a": outputs[0], "y": outputs[1]}
    if kind == "lstm":
        named["c"] = outputs[2]
    return named, getattr(xseq, f"{kind}_backward")(da, outputs[-1])


def _problem(kind, m, T_x, seed=0):
    rng = np.random.default_rng(seed)
    params = random_parameters(kind, N_X, N_A, N_Y, seed)
    return params, rng.standard_normal((N_X, m, T_x)), rng.standard_normal((N_A, m)), rng.standard_normal((N_A, m, T_x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m,T_x", [(1, 1), (4, 7)])
def test_sequence_equals_looped_cells(xp, kind, m, T_x):
    params, x, a0, da = _problem(kind, m, T_x)
    on = to_backend(xp, {**params, "x": x, "a0": a0, "da": da})
    p = {k: on[k] for k in params}
    looped_out, looped_grads = _forward_backward_by_cells(xp, kind, on["x"], on["a0"], on["da"], p)
    seq_out, seq_grads = _sequence(kind, on["x"], on["a0"], on["da"], p)
    assert looped_out.keys() == seq_out.keys()
    assert looped_grads.keys() == seq_grads.keys()
    for key in looped_out:
        np.testing.assert_allclose(xseq.to_numpy(seq_out[key]), xseq.to_numpy(looped_out[key]), atol=1e-12,
                                   err_msg=key)
    for key in looped_grads:
        np.testing.assert_allclose(xseq.to_numpy(seq_grads[key]), xseq.to_numpy(looped_grads[key]), atol=1e-11,
                                   err_msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_close_to_float64(xp, kind):
    params, x, a0, da = _problem(kind, 3, 20, seed=4)
    results = {}
    for dtype in ("float32", "float64"):
        on = to_backend(xp, {**params, "x": x, "a0": a0, "da": da}, dtype)
        out, grads = _sequence(kind, on["x"], on["a0"], on["da"], {k: on[k] for k in params})
        assert out["a"].dtype == getattr(xp, dtype)
        assert grads["dx"].dtype == getattr(xp, dtype)
        results[dtype] = ({k: xseq.to_numpy(v) for k, v in out.items()}, {k: xseq.to_numpy(v) for k, v in grads.items()})
    for single, double in zip(results["float32"], results["float64"]):
        for key in double:
            scale = np.abs(double[key]).max()
            np.testing.assert_allclose(single[key], double[key], atol=2e-5 * max(scale, 1), err_msg=key)
