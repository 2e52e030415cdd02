"""The NumPy buffer pool (xseq/ops/workspace.py): reuse what callers dropped, never what they hold."""

import gc

import numpy as np
import pytest

import xseq
from xseq.engine import sequence as engine
from xseq.ops import workspace as _workspace
from xseq.ops.workspace import Workspace


def _problem(seed=0, n_x=3, n_a=5, m=4, T=6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_x, m, T))
    a0 = rng.standard_normal((n_a, m))
    da = rng.standard_normal((n_a, m, T))
    p = xseq.init_lstm_parameters(n_x, n_a, n_x, dtype="float64", seed=seed)
    return x, a0, da, p


def test_a_free_buffer_is_handed_out_again_and_a_held_one_is_not():
    ws = Workspace()
    a = ws.empty((3, 4), np.float32)
    b = ws.empty((3, 4), np.float32)
    assert a is not b and ws.allocations == 2
    view = b[1:]  # a view keeps its base held
    del b
    c = ws.empty((3, 4), np.float32)
    assert c is not a and c.base is None and not np.shares_memory(c, view)
    assert ws.allocations == 3
    del a, c
    d = ws.empty((3, 4), np.float32)
    assert ws.allocations == 3 and not np.shares_memory(d, view)
    assert ws.empty((3, 4), np.float64).dtype == np.float64 and ws.allocations == 4  # dtype is part of the key


def test_free_bytes_and_clear():
    ws = Workspace()
    held = ws.empty((100,), np.float64)
    ws.empty((50,), np.float64)  # dropped at once
    assert ws.free_bytes() == 400
    ws.clear()
    assert ws.free_bytes() == 0
    held[...] = 1.0  # a held buffer survives clear() with its user
    assert ws.empty((100,), np.float64) is not held


def test_the_limit_drops_free_buffers(monkeypatch):
    monkeypatch.setenv("XSEQ_WORKSPACE_MB", str(1000 / 2**20))  # 1000 bytes
    ws = Workspace()
    ws.empty((100,), np.float64)  # 800 bytes, dropped by the caller
    ws.empty((50,), np.float64)  # 400 more would exceed the limit: the free 800 go first
    assert ws.free_bytes() == 400


def test_zero_turns_the_pool_off(monkeypatch):
    monkeypatch.setenv("XSEQ_WORKSPACE_MB", "0")
    ws = Workspace()
    ws.empty((4,), np.float32)
    ws.empty((4,), np.float32)
    assert ws.allocations == 2 and ws.free_bytes() == 0


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_a_bad_limit_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("XSEQ_WORKSPACE_MB", value)
    with pytest.raises(ValueError, match=f"XSEQ_WORKSPACE_MB is '{value}'; expected a number of megabytes"):
        Workspace().empty((2,), np.float32)


def test_a_second_call_allocates_nothing_once_the_first_results_are_dropped(monkeypatch):
    monkeypatch.setenv("XSEQ_FUSED", "1")
    x, a0, da, p = _problem()
    for _ in range(2):  # the first round fills the pool
        a, y, c, caches = xseq.lstm_forward(x, a0, p)
        grads = xseq.lstm_backward(da, caches)
        del a, y, c, caches, grads
        gc.collect()
    before = _workspace.WORKSPACE.allocations
    a, y, c, caches = xseq.lstm_forward(x, a0, p)
    grads = xseq.lstm_backward(da, caches)
    assert _workspace.WORKSPACE.allocations == before


@pytest.mark.parametrize("fused", ["1", "0"])
def test_results_the_caller_holds_survive_later_calls(monkeypatch, fused):
    monkeypatch.setenv("XSEQ_FUSED", fused)
    x, a0, da, p = _problem(seed=1)
    a, y, c, caches = xseq.lstm_forward(x, a0, p)
    grads = xseq.lstm_backward(da, caches)
    kept = {"a": a.copy(), "y": y.copy(), "c": c.copy(), **{k: v.copy() for k, v in grads.items()}}
    x2, a02, da2, p2 = _problem(seed=2)
    for _ in range(3):  # same shapes, other values: would overwrite anything wrongly reused
        out = xseq.lstm_forward(x2, a02, p2)
        xseq.lstm_backward(da2, out[-1])
        del out
    for name, value in {"a": a, "y": y, "c": c, **grads}.items():
        np.testing.assert_array_equal(value, kept[name], err_msg=name)
    # and the caches still give the same gradients
    again = xseq.lstm_backward(da, caches)
    for name in grads:
        np.testing.assert_array_equal(again[name], kept[name], err_msg=name)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("fused", ["1", "0"])
def test_the_engine_never_writes_to_its_inputs(monkeypatch, kind, fused):
    monkeypatch.setenv("XSEQ_FUSED", fused)
    rng = np.random.default_rng(3)
    T, m, n_x, n_a = 5, 3, 4, 6
    G = engine.GATES[kind]
    inputs = {
        "X": rng.standard_normal((T, m, n_x)), "W_ih": rng.standard_normal((G * n_a, n_x)),
        "W_hh": rng.standard_normal((G * n_a, n_a)), "b_ih": rng.standard_normal(G * n_a),
        "b_hh": rng.standard_normal(G * n_a), "h0": rng.standard_normal((m, n_a)),
        "dY": rng.standard_normal((T, m, n_a)), "dh_T": rng.standard_normal((m, n_a)),
    }
    if kind == "lstm":
        inputs.update(c0=rng.standard_normal((m, n_a)), dc_T=rng.standard_normal((m, n_a)))
    original = {k: v.copy() for k, v in inputs.items()}
    i = inputs
    _, _, _, trace = engine.sequence_forward(kind, i["X"], i["W_ih"], i["W_hh"], i["b_ih"], i["b_hh"], i["h0"],
                                              i.get("c0"))
    engine.sequence_backward(trace, i["dY"], i["dh_T"], i.get("dc_T"))
    for name, value in inputs.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)
