"""``xseq.inference_mode``: the flag's semantics, and forward passes that keep nothing for a backward pass.

Outputs under inference mode are compared with the normal forward's bit for bit (``array_equal``): the same
arithmetic runs in the same order, only into other buffers.
"""

import itertools
import threading

import array_api_compat.numpy as xp_numpy
import numpy as np
import pytest

import xseq
from xseq.engine import sequence as engine
from xseq.ops.inference import InferenceModeError
from xseq.ops.numpy_inplace import NumpyOps
from xseq.ops.reference import ArrayAPIOps

from .helpers import random_parameters, to_backend

CLASSES = {"rnn": xseq.RNN, "lstm": xseq.LSTM, "gru": xseq.GRU}
N_X, N_A = 5, 6


def backend_name(xp):
    return xseq.backends.arrays.backend_name(xp)


def host(a):
    return np.asarray(xseq.to_numpy(a))


def states(final):
    return list(final) if isinstance(final, tuple) else [final]


# ---------------------------------------------------------------- the flag


def test_off_by_default_on_inside_and_restored_after():
    assert xseq.is_inference_mode_enabled() is False
    with xseq.inference_mode() as mode:
        assert xseq.is_inference_mode_enabled() is True
        assert mode.mode is True
    assert xseq.is_inference_mode_enabled() is False


def test_nesting_and_switching_off_inside():
    with xseq.inference_mode():
        with xseq.inference_mode(False):
            assert not xseq.is_inference_mode_enabled()
            with xseq.inference_mode():
                assert xseq.is_inference_mode_enabled()
            assert not xseq.is_inference_mode_enabled()
        assert xseq.is_inference_mode_enabled()
    assert not xseq.is_inference_mode_enabled()


def test_one_instance_entered_again_inside_itself():
    mode = xseq.inference_mode()
    with mode:
        with xseq.inference_mode(False):
            with mode:
                assert xseq.is_inference_mode_enabled()
            assert not xseq.is_inference_mode_enabled()
        assert xseq.is_inference_mode_enabled()
    assert not xseq.is_inference_mode_enabled()


def test_an_exception_leaves_the_mode_as_it_was():
    with pytest.raises(KeyError):
        with xseq.inference_mode():
            raise KeyError("inside")
    assert not xseq.is_inference_mode_enabled()


def test_decorator_with_and_without_parentheses():
    @xseq.inference_mode()
    def called():
        return xseq.is_inference_mode_enabled()

    @xseq.inference_mode
    def bare(value):
        """Docstring kept."""
        return value, xseq.is_inference_mode_enabled()

    @xseq.inference_mode(False)
    def switched_off():
        return xseq.is_inference_mode_enabled()

    assert called() is True
    assert bare(7) == (7, True)
    assert bare.__name__ == "bare" and bare.__doc__ == "Docstring kept."
    assert not xseq.is_inference_mode_enabled()
    with xseq.inference_mode():
        assert switched_off() is False
        assert xseq.is_inference_mode_enabled()


def test_bad_arguments_are_refused_with_what_was_given():
    with pytest.raises(TypeError, match=r"mode must be True or False; got 1 of type int"):
        xseq.inference_mode(1)
    with pytest.raises(TypeError, match=r"got 'yes' of type str"):
        xseq.inference_mode("yes")
    with pytest.raises(TypeError, match="decorates a function; got 3"):
        xseq.inference_mode()(3)

    def generator():
        yield xseq.is_inference_mode_enabled()

    with pytest.raises(TypeError, match="generator or coroutine function"):
        xseq.inference_mode()(generator)


def test_each_thread_has_its_own_flag():
    """A thread turns the mode on; another, running at the same time, does not see it, nor does a new thread."""
    inside, checked = threading.Event(), threading.Event()
    seen = {}

    def in_mode():
        with xseq.inference_mode():
            inside.set()
            checked.wait(10)
            seen["own"] = xseq.is_inference_mode_enabled()

    def outside():
        inside.wait(10)
        seen["other"] = xseq.is_inference_mode_enabled()
        checked.set()

    threads = [threading.Thread(target=in_mode), threading.Thread(target=outside)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"own": True, "other": False}

    with xseq.inference_mode():
        fresh = []
        t = threading.Thread(target=lambda: fresh.append(xseq.is_inference_mode_enabled()))
        t.start()
        t.join(10)
        assert fresh == [False] and xseq.is_inference_mode_enabled()


# ---------------------------------------------------------------- layers, on every backend


LAYER_CASES = list(itertools.product(CLASSES, ((1, False), (2, True)), (3, 20), (5, 12), (False, True)))


@pytest.mark.parametrize("kind, shape, m, T, with_lengths", LAYER_CASES,
                         ids=[f"{k}-l{s[0]}{'bi' if s[1] else ''}-m{m}-T{T}-{'len' if w else 'full'}"
                              for k, s, m, T, w in LAYER_CASES])
def test_layer_outputs_are_the_normal_ones_and_nothing_is_kept(xp, kind, shape, m, T, with_lengths):
    """On NumPy m = 20 takes the lanes (where the host build and two cores allow), m = 3 the step methods; T = 12
    spans two of the step methods' projection chunks."""
    num_layers, bidirectional = shape
    layer = CLASSES[kind](N_X, N_A, num_layers=num_layers, bidirectional=bidirectional, dropout=0.25,
                          backend=backend_name(xp), dtype="float32", seed=3)
    rng = np.random.default_rng(4)
    x = xseq.asarray(rng.standard_normal((N_X, m, T)), backend=xp, dtype="float32")
    n_states = num_layers * layer.num_directions
    h0 = [xseq.asarray(rng.standard_normal((n_states, N_A, m)), backend=xp, dtype="float32")
          for _ in range(2 if kind == "lstm" else 1)]
    h0 = tuple(h0) if kind == "lstm" else h0[0]
    lengths = list(rng.integers(1, T + 1, m)) if with_lengths else None

    layer.dropout_rng = np.random.default_rng(5)
    want, want_final = layer.forward(x, h0, lengths=lengths, training=True)
    assert layer._cache["traces"]
    layer.dropout_rng = np.random.default_rng(5)  # the same dropout masks
    with xseq.inference_mode():
        got, got_final = layer.forward(x, h0, lengths=lengths, training=True)
    assert np.array_equal(host(got), host(want))
    for a, b in zip(states(got_final), states(want_final), strict=True):
        assert np.array_equal(host(a), host(b))
    assert "traces" not in layer._cache and "dropout_masks" not in layer._cache
    with pytest.raises(InferenceModeError, match=f"the last {type(layer).__name__}.forward ran under "
                                                 r"xseq.inference_mode\(\)"):
        layer.backward(want)
    # out of the mode again, the next forward keeps its trace and backward runs
    layer.forward(x, h0, lengths=lengths)
    layer.backward(want)


def test_layer_keeps_nothing_but_what_it_returns():
    """Normal forward keeps the trace (every step's states and gates); inference keeps no array at all."""
    layer = xseq.LSTM(N_X, N_A, num_layers=2)
    x = np.random.default_rng(0).standard_normal((N_X, 4, 30)).astype(np.float32)

    def kept_bytes(obj):
        if isinstance(obj, np.ndarray):
            return obj.nbytes
        if isinstance(obj, dict):
            return sum(kept_bytes(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(kept_bytes(v) for v in obj)
        if isinstance(obj, engine.Trace):
            return sum(kept_bytes(v) for v in vars(obj).values())
        return 0

    layer.forward(x)
    assert kept_bytes(layer._cache) > 30 * 4 * N_A * 4  # at least every step's hidden state
    with xseq.inference_mode():
        layer.forward(x)
    assert kept_bytes(layer._cache) == 0


def test_a_thread_outside_the_mode_keeps_its_trace_while_another_is_inside():
    x = np.random.default_rng(0).standard_normal((N_X, 3, 7)).astype(np.float32)
    layers = {"inside": xseq.GRU(N_X, N_A), "outside": xseq.GRU(N_X, N_A)}
    entered, done = threading.Barrier(2, timeout=10), {}

    def run(name):
        def forward():
            entered.wait()  # both threads are running: one in the mode, one not
            layers[name].forward(x)
            done[name] = "traces" in layers[name]._cache

        if name == "inside":
            forward = xseq.inference_mode()(forward)
        forward()

    threads = [threading.Thread(target=run, args=(name,)) for name in layers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert done == {"inside": False, "outside": True}
    layers["outside"].backward(np.ones((N_A, 3, 7), dtype=np.float32))
    with pytest.raises(InferenceModeError):
        layers["inside"].backward(np.ones((N_A, 3, 7), dtype=np.float32))


def test_switched_off_inside_the_mode_the_layer_keeps_its_trace():
    layer = xseq.RNN(N_X, N_A)
    x = np.ones((N_X, 2, 3), dtype=np.float32)
    with xseq.inference_mode():
        with xseq.inference_mode(False):
            out, _ = layer.forward(x)
    layer.backward(out)
    assert float(np.abs(layer.grads["weight_hh_l0"]).sum()) > 0


def test_embedding_keeps_no_ids_and_refuses_backward(xp):
    emb = xseq.Embedding(11, 4, backend=backend_name(xp))
    ids = xp.asarray(np.array([[1, 2, 3], [10, 0, 2]]))
    want = host(emb.forward(ids))
    with xseq.inference_mode():
        got = host(emb.forward(ids))
    assert np.array_equal(got, want)
    assert emb._ids is None
    with pytest.raises(InferenceModeError, match="Embedding.backward cannot run"):
        emb.backward(xseq.asarray(want, backend=xp))
    emb.forward(ids)
    emb.backward(xseq.asarray(want, backend=xp))


# ---------------------------------------------------------------- the engine


@pytest.mark.parametrize("kind", list(CLASSES))
def test_engine_working_memory_does_not_grow_with_the_sequence(kind):
    """On NumPy's step methods (no lanes) a forward without a trace asks for O(T) only for the input's
    copy and the outputs; the one with a trace asks for every step's projection, gates and cell states too."""
    m, G = 3, engine.GATES[kind]
    rng = np.random.default_rng(0)

    def requested_bytes(T, keep):
        ops = NumpyOps(xp_numpy)
        sizes = []
        empty = ops.empty

        def counting_empty(shape, dtype, device):
            sizes.append(int(np.prod(shape)) * np.dtype(dtype).itemsize)
            return empty(shape, dtype, device)

        ops.empty = counting_empty
        assert ops.direct_steps(np.float32, None, check=engine.check_direct, rows=m, n_a=N_A, gates=G) is None

        def draw(*shape):
            return rng.standard_normal(shape).astype(np.float32)

        c0 = draw(m, N_A) if kind == "lstm" else None
        _, _, _, trace = engine.sequence_forward(kind, draw(T, m, N_X), draw(G * N_A, N_X), draw(G * N_A, N_A),
                                                 draw(G * N_A), draw(G * N_A), draw(m, N_A), c0, ops=ops, keep=keep)
        assert (trace is not None) == keep
        return sum(sizes)

    per_step_outputs = m * (N_X + 1 + N_A) * 4  # the input's copy (with the bias column) and the hidden states
    assert requested_bytes(64, keep=False) - requested_bytes(16, keep=False) == 48 * per_step_outputs
    # with a trace: every step's projection (the LSTM's gates stored over it), the LSTM's cell states, the GRU's gates
    traced = m * G * N_A + {"rnn": 0, "lstm": m * N_A, "gru": m * 4 * N_A}[kind]
    assert requested_bytes(64, keep=True) - requested_bytes(16, keep=True) == 48 * (per_step_outputs + traced * 4)


@pytest.mark.parametrize("kind, masked, reverse", list(itertools.product(CLASSES, (False, True), (False, True))))
def test_engine_without_a_trace_returns_the_same_on_every_backend(xp, kind, masked, reverse):
    G, T, m = engine.GATES[kind], 11, 4
    rng = np.random.default_rng(1)

    def draw(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(np.float32))

    args = (kind, draw(T, m, N_X), draw(G * N_A, N_X), draw(G * N_A, N_A), draw(G * N_A), draw(G * N_A),
            draw(m, N_A), draw(m, N_A) if kind == "lstm" else None)
    mask = xp.asarray(np.arange(T)[:, None, None] < np.array([11, 3, 7, 1])[None, :, None]) if masked else None
    want = engine.sequence_forward(*args, mask=mask, reverse=reverse, keep=True)
    with xseq.inference_mode():
        got = engine.sequence_forward(*args, mask=mask, reverse=reverse)
    assert got[3] is None and want[3] is not None
    for a, b in zip(got[:3], want[:3]):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(host(a), host(b))


def test_engine_keep_must_be_a_bool_or_none():
    X = np.zeros((2, 1, N_X), dtype=np.float32)
    with pytest.raises(TypeError, match="keep must be True, False or None; got 1"):
        engine.sequence_forward("rnn", X, np.zeros((N_A, N_X), np.float32), np.zeros((N_A, N_A), np.float32),
                                None, None, np.zeros((1, N_A), np.float32), keep=1)


def test_the_direct_loops_self_check_runs_inside_inference_mode():
    """A direct loop is checked at its first use, which may come inside the mode: the check keeps its trace."""

    class Device:
        dtype = np.dtype(np.float64)

    with xseq.inference_mode():
        engine.check_direct(Device(), xseq.backend("numpy"), (ArrayAPIOps(xp_numpy), ArrayAPIOps(xp_numpy)))


# ---------------------------------------------------------------- the course's functions


COURSE = {
    "rnn": (xseq.rnn_forward, xseq.rnn_backward, xseq.rnn_cell_forward, xseq.rnn_cell_backward),
    "lstm": (xseq.lstm_forward, xseq.lstm_backward, xseq.lstm_cell_forward, xseq.lstm_cell_backward),
    "gru": (xseq.gru_forward, xseq.gru_backward, xseq.gru_cell_forward, xseq.gru_cell_backward),
}


@pytest.mark.parametrize("kind", list(COURSE))
def test_course_functions_return_no_caches_and_their_backward_says_why(xp, kind):
    forward, backward, cell_forward, cell_backward = COURSE[kind]
    n_x, n_a, n_y, m, T = 3, 5, 2, 4, 6
    rng = np.random.default_rng(2)
    p = to_backend(xp, random_parameters(kind, n_x, n_a, n_y))
    x = xp.asarray(rng.standard_normal((n_x, m, T)))
    a0 = xp.asarray(rng.standard_normal((n_a, m)))

    want = forward(x, a0, p)
    with xseq.inference_mode():
        got = forward(x, a0, p)
    assert got[-1] is None and want[-1] is not None
    for a, b in zip(got[:-1], want[:-1], strict=True):  # a, y (and the LSTM's c)
        assert np.array_equal(host(a), host(b))
    with pytest.raises(TypeError, match=f"{kind}_backward needs the cache returned by {kind}_forward; got a "
                                        r"NoneType, which is what .* xseq.inference_mode\(\)"):
        backward(want[0], got[-1])

    step = (x[:, :, 0], a0) + ((xp.asarray(rng.standard_normal((n_a, m))),) if kind == "lstm" else ())
    want = cell_forward(*step, p)
    with xseq.inference_mode():
        got = cell_forward(*step, p)
    assert got[-1] is None and want[-1] is not None
    for a, b in zip(got[:-1], want[:-1], strict=True):
        assert np.array_equal(host(a), host(b))
    gradients = (want[0],) + ((want[1],) if kind == "lstm" else ())
    with pytest.raises(TypeError, match=f"{kind}_cell_backward needs the cache returned by {kind}_cell_forward; "
                                        "got a NoneType"):
        cell_backward(*gradients, got[-1])


# ---------------------------------------------------------------- benchmarks/bench_inference.py's check


def test_the_benchmarks_check_passes_and_catches_an_inference_forward_that_differs(torch, monkeypatch):
    """The check before timing compares every contender with the reference, and xseq-inference with xseq bit for
    bit: an inference forward off by one part in 10^7 (well inside the tolerances) fails it."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_inference")
    size = [(3, 5, 2, 11)]  # T_x past NumPy's 8-step projection chunk
    lines = []
    assert bench.check(size, out=lines.append).passed
    assert "xseq-inference equals xseq bit for bit" in lines[0]

    original = engine.sequence_forward

    def off_in_inference(*args, **kwargs):
        Y, h, c, trace = original(*args, **kwargs)
        return (Y * (1 + 1e-7) if trace is None else Y), h, c, trace

    monkeypatch.setattr(engine, "sequence_forward", off_in_inference)
    result = bench.check(size, out=lines.append)
    assert not result.passed
    assert result.failures == ["3x5x2x11: xseq-inference's outputs is not bit for bit xseq's"]
