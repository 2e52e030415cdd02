"""xseq.RNN / LSTM / GRU layer objects: gradients, PyTorch parity, variable lengths, dropout, saving, errors."""

import copy
import itertools

import numpy as np
import pytest
from array_api_compat import array_namespace

import xseq

CLASSES = {"rnn": xseq.RNN, "lstm": xseq.LSTM, "gru": xseq.GRU}
N_X, N_A, M, T = 3, 4, 3, 4
UNEQUAL = [2, 4, 1]  # unsorted, with a full-length, a middle and a length-1 example
CONFIGS = list(itertools.product(CLASSES, (1, 2), (False, True), (None, UNEQUAL)))


def config_id(config):
    kind, layers, bidirectional, lengths = config
    return f"{kind}-l{layers}-{'bi' if bidirectional else 'uni'}-{'len' if lengths else 'full'}"


def backend_name(xp):
    return xseq.backends.arrays.backend_name(xp)


def make_layer(kind, xp, num_layers=1, bidirectional=False, dtype="float64", **kwargs):
    return CLASSES[kind](N_X, N_A, num_layers=num_layers, bidirectional=bidirectional,
                         backend=backend_name(xp), dtype=dtype, **kwargs)


def problem(layer, seed=1):
    """Host (NumPy float64) input, initial states and loss weights of a random problem for ``layer``."""
    rng = np.random.default_rng(seed)
    D, L = layer.num_directions, layer.num_layers
    n_states = 2 if layer.kind == "lstm" else 1
    return {
        "x": rng.standard_normal((N_X, M, T)),
        "states": [rng.standard_normal((L * D, N_A, M)) for _ in range(n_states)],
        "R": rng.standard_normal((D * N_A, M, T)),  # loss = sum(outputs * R) + sum(state_i * Rs_i)
        "Rs": [rng.standard_normal((L * D, N_A, M)) for _ in range(n_states)],
    }


def as_state(layer, arrays):
    """The layer's state argument (array, or (h, c) for the LSTM) from a list of arrays."""
    return tuple(arrays) if layer.kind == "lstm" else arrays[0]


def state_list(state):
    return list(state) if isinstance(state, tuple) else [state]


def to_xp(xp, a, dtype="float64"):
    return xseq.asarray(a, backend=xp, dtype=dtype)


def loss_value(layer, xp, p, lengths, training=False):
    out, final = layer.forward(to_xp(xp, p["x"]), as_state(layer, [to_xp(xp, s) for s in p["states"]]),
                               lengths=lengths, training=training)
    total = np.sum(xseq.to_numpy(out) * p["R"])
    for s, r in zip(state_list(final), p["Rs"]):
        total += np.sum(xseq.to_numpy(s) * r)
    return total


def analytic_gradients(layer, xp, p, lengths, training=False):
    layer.zero_grad()
    loss_value(layer, xp, p, lengths, training)
    dx = layer.backward(to_xp(xp, p["R"]), as_state(layer, [to_xp(xp, r) for r in p["Rs"]]))
    grads = {"x": xseq.to_numpy(dx)}
    for i, d in enumerate(state_list(layer.d_initial_state)):
        grads[f"state{i}"] = xseq.to_numpy(d)
    grads.update({k: xseq.to_numpy(v) for k, v in layer.grads.items()})
    return grads


def gradient_check(layer, xp, lengths, probes=3, training=False, eps=1e-6):
    """Compare backward with central differences at ``probes`` random entries of every input and parameter.

    With ``training=True`` the dropout generator is rewound before every forward, so all
    evaluations share one dropout mask.
    """
    p = problem(layer)
    rng_start = copy.deepcopy(layer.dropout_rng)

    def evaluate():
        layer.dropout_rng = copy.deepcopy(rng_start)
        return loss_value(layer, xp, p, lengths, training)

    analytic = analytic_gradients(layer, xp, p, lengths, training)
    host_params = layer.state_dict()
    targets = {"x": p["x"], **{f"state{i}": s for i, s in enumerate(p["states"])}, **host_params}
    pick = np.random.default_rng(7)
    approx, exact = [], []
    for name, array in targets.items():
        for flat in pick.choice(array.size, size=min(probes, array.size), replace=False):
            idx = np.unravel_index(flat, array.shape)
            diffs = []
            for sign in (1, -1):
                array[idx] += sign * eps
                if name in host_params:
                    layer.parameters[name] = to_xp(xp, array)
                diffs.append(evaluate())
                array[idx] -= sign * eps
            if name in host_params:
                layer.parameters[name] = to_xp(xp, array)
            approx.append((diffs[0] - diffs[1]) / (2 * eps))
            exact.append(analytic[name][idx])
    approx, exact = np.array(approx), np.array(exact)
    rel = np.linalg.norm(approx - exact) / (np.linalg.norm(approx) + np.linalg.norm(exact))
    assert rel < 1e-6, f"relative error {rel:.2e}"


def assert_array(xp, a, shape, dtype):
    assert array_namespace(a) is xp
    assert tuple(a.shape) == tuple(shape)
    assert a.dtype == dtype


# ---------------------------------------------------------------- gradient checks

@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_gradient_check_numpy(config):
    kind, num_layers, bidirectional, lengths = config
    xp = xseq.backend("numpy")
    gradient_check(make_layer(kind, xp, num_layers, bidirectional), xp, lengths)


@pytest.mark.parametrize("kind", CLASSES)
def test_gradient_check_every_backend(xp, kind):
    gradient_check(make_layer(kind, xp, 2, True), xp, UNEQUAL, probes=2)


@pytest.mark.parametrize("kind", CLASSES)
def test_gradient_check_with_dropout(kind):
    xp = xseq.backend("numpy")
    layer = make_layer(kind, xp, 2, True, dropout=0.5)
    gradient_check(layer, xp, UNEQUAL, training=True)


# ---------------------------------------------------------------- PyTorch parity

def torch_reference(torch, module, p, lengths):
    """PyTorch autograd on the same problem, returned in xseq's layouts as NumPy arrays."""
    x = torch.tensor(p["x"].transpose(2, 1, 0), requires_grad=True)  # (T_x, m, n_x)
    states = [torch.tensor(s.transpose(0, 2, 1), requires_grad=True) for s in p["states"]]
    hx = tuple(states) if len(states) == 2 else states[0]
    if lengths is None:
        out, final = module(x, hx)
    else:
        rnn_utils = torch.nn.utils.rnn
        packed = rnn_utils.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        out, final = module(packed, hx)
        out, _ = rnn_utils.pad_packed_sequence(out, total_length=T)
    finals = list(final) if isinstance(final, tuple) else [final]
    loss = (out * torch.tensor(p["R"].transpose(2, 1, 0))).sum()
    for f, r in zip(finals, p["Rs"]):
        loss = loss + (f * torch.tensor(r.transpose(0, 2, 1))).sum()
    loss.backward()
    ref = {
        "outputs": out.detach().numpy().transpose(2, 1, 0),
        "x": x.grad.numpy().transpose(2, 1, 0),
    }
    for i, (f, s) in enumerate(zip(finals, states)):
        ref[f"final{i}"] = f.detach().numpy().transpose(0, 2, 1)
        ref[f"state{i}"] = s.grad.numpy().transpose(0, 2, 1)
    ref.update({k: v.grad.numpy() for k, v in module.named_parameters()})
    return ref


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_parity_with_torch(xp, torch, config):
    kind, num_layers, bidirectional, lengths = config
    torch.manual_seed(0)
    module = getattr(torch.nn, CLASSES[kind].__name__)(
        N_X, N_A, num_layers=num_layers, bidirectional=bidirectional, dtype=torch.float64)
    layer = CLASSES[kind].from_torch(module, backend=backend_name(xp))
    assert layer.dtype == xp.float64
    p = problem(layer)
    ref = torch_reference(torch, module, p, lengths)

    out, final = layer.forward(to_xp(xp, p["x"]), as_state(layer, [to_xp(xp, s) for s in p["states"]]),
                               lengths=lengths)
    got = {"outputs": out, **{f"final{i}": f for i, f in enumerate(state_list(final))}}
    dx = layer.backward(to_xp(xp, p["R"]), as_state(layer, [to_xp(xp, r) for r in p["Rs"]]))
    got["x"] = dx
    got.update({f"state{i}": d for i, d in enumerate(state_list(layer.d_initial_state))})
    got.update(layer.grads)
    assert set(got) == set(ref)
    for name, value in got.items():
        assert_array(xp, value, ref[name].shape, xp.float64)
        np.testing.assert_allclose(xseq.to_numpy(value), ref[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_torch_round_trip(xp, torch):
    for kind in CLASSES:
        layer = make_layer(kind, xp, 2, True, seed=3)
        module = layer.to_torch()
        assert isinstance(module, getattr(torch.nn, CLASSES[kind].__name__))
        assert module.num_layers == 2 and module.bidirectional and module.weight_ih_l0.dtype == torch.float64
        back = CLASSES[kind].from_torch(module, backend=backend_name(xp))
        for k, v in layer.state_dict().items():
            np.testing.assert_array_equal(module.state_dict()[k].numpy(), v)
            np.testing.assert_array_equal(back.state_dict()[k], v)
        with torch.no_grad():
            module.weight_hh_l0.zero_()  # the layers hold copies, not views of the module's tensors
        assert np.any(layer.state_dict()["weight_hh_l0"] != 0) and np.any(back.state_dict()["weight_hh_l0"] != 0)


def test_from_torch_dtype_and_batch_first(torch):
    module = torch.nn.GRU(N_X, N_A, num_layers=2, batch_first=True)
    layer = xseq.GRU.from_torch(module)
    assert layer.dtype_name == "float32" and layer.num_layers == 2
    assert xseq.GRU.from_torch(module, dtype="float64").dtype_name == "float64"


def test_from_torch_rejects_unsupported(torch):
    with pytest.raises(ValueError, match="nonlinearity='relu'"):
        xseq.RNN.from_torch(torch.nn.RNN(N_X, N_A, nonlinearity="relu"))
    with pytest.raises(ValueError, match="bias=False"):
        xseq.GRU.from_torch(torch.nn.GRU(N_X, N_A, bias=False))
    with pytest.raises(ValueError, match="proj_size=2"):
        xseq.LSTM.from_torch(torch.nn.LSTM(N_X, N_A, proj_size=2))
    with pytest.raises(TypeError, match="torch.nn.RNN; got LSTM"):
        xseq.RNN.from_torch(torch.nn.LSTM(N_X, N_A))


# ---------------------------------------------------------------- layouts and the API

@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shapes_namespaces_dtypes(xp, kind, dtype):
    layer = make_layer(kind, xp, 2, True, dtype=dtype)
    dt = getattr(xp, dtype)
    for k, v in layer.parameters.items():
        assert_array(xp, v, layer.grads[k].shape, dt)
    assert layer.parameters["weight_ih_l0"].shape == (layer.gates * N_A, N_X)
    assert layer.parameters["weight_ih_l1_reverse"].shape == (layer.gates * N_A, 2 * N_A)
    assert layer.parameters["bias_hh_l1"].shape == (layer.gates * N_A,)
    x = to_xp(xp, problem(layer)["x"], dtype)
    out, final = layer.forward(x, lengths=UNEQUAL)
    assert_array(xp, out, (2 * N_A, M, T), dt)
    assert isinstance(final, tuple) == (kind == "lstm")
    for f in state_list(final):
        assert_array(xp, f, (4, N_A, M), dt)
    dx = layer.backward(xp.ones_like(out), None)
    assert_array(xp, dx, (N_X, M, T), dt)
    assert isinstance(layer.d_initial_state, tuple) == (kind == "lstm")
    for d in state_list(layer.d_initial_state):
        assert_array(xp, d, (4, N_A, M), dt)
    for k, v in layer.grads.items():
        assert_array(xp, v, layer.parameters[k].shape, dt)


@pytest.mark.parametrize("kind", CLASSES)
def test_float32_matches_float64(xp, kind):
    layers = {dt: make_layer(kind, xp, 2, True, dtype=dt) for dt in ("float32", "float64")}
    p = problem(layers["float64"])
    results = {}
    for dt, layer in layers.items():
        out, _ = layer.forward(to_xp(xp, p["x"], dt), lengths=UNEQUAL)
        dx = layer.backward(to_xp(xp, p["R"], dt))
        results[dt] = [xseq.to_numpy(out), xseq.to_numpy(dx), xseq.to_numpy(layer.grads["weight_hh_l0"])]
    for a, b in zip(results["float32"], results["float64"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_seed_gives_same_weights_on_every_backend(xp):
    for kind in CLASSES:
        here = make_layer(kind, xp, 2, True, dtype="float32", seed=5).state_dict()
        ref = make_layer(kind, xseq.backend("numpy"), 2, True, dtype="float32", seed=5).state_dict()
        other = make_layer(kind, xseq.backend("numpy"), 2, True, dtype="float32", seed=6).state_dict()
        bound = 1 / np.sqrt(N_A)
        for k in ref:
            np.testing.assert_array_equal(here[k], ref[k])
            assert not np.array_equal(here[k], other[k])
            assert np.all(np.abs(here[k]) <= bound)


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_outputs_and_gradients_are_zero(xp, kind, bidirectional):
    layer = make_layer(kind, xp, 2, bidirectional)
    p = problem(layer)
    out, final = layer.forward(to_xp(xp, p["x"]), lengths=UNEQUAL)
    dx = layer.backward(to_xp(xp, p["R"]), as_state(layer, [to_xp(xp, r) for r in p["Rs"]]))
    out, dx = xseq.to_numpy(out), xseq.to_numpy(dx)
    for i, L in enumerate(UNEQUAL):
        assert np.all(out[:, i, L:] == 0) and np.all(dx[:, i, L:] == 0)
        assert np.all(out[:, i, :L] != 0) and np.all(np.any(dx[:, i, :L] != 0, axis=0))


@pytest.mark.parametrize("kind", CLASSES)
def test_lengths_equal_to_running_each_example_alone(kind):
    """An example of length L gives what a separate call on its first L steps gives."""
    xp = xseq.backend("numpy")
    layer = make_layer(kind, xp, 2, True)
    x = problem(layer)["x"]
    out, final = layer.forward(x, lengths=np.array(UNEQUAL))
    for i, L in enumerate(UNEQUAL):
        out_i, final_i = layer.forward(x[:, i:i + 1, :L])
        np.testing.assert_allclose(out[:, i:i + 1, :L], out_i, rtol=1e-12, atol=1e-14)
        for f, f_i in zip(state_list(final), state_list(final_i)):
            np.testing.assert_allclose(f[:, :, i:i + 1], f_i, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", CLASSES)
def test_lengths_as_array_of_the_backend(xp, kind):
    layer = make_layer(kind, xp)
    x = to_xp(xp, problem(layer)["x"])
    expected, _ = layer.forward(x, lengths=UNEQUAL)
    got, _ = layer.forward(x, lengths=xp.asarray(UNEQUAL))
    np.testing.assert_array_equal(xseq.to_numpy(got), xseq.to_numpy(expected))


@pytest.mark.parametrize("kind", CLASSES)
def test_truncated_bptt_carry(xp, kind):
    layer = make_layer(kind, xp, 2)
    p = problem(layer)
    h0 = as_state(layer, [to_xp(xp, s) for s in p["states"]])
    full, full_final = layer.forward(to_xp(xp, p["x"]), h0)
    first, carry = layer.forward(to_xp(xp, p["x"][:, :, :2]), h0)
    second, second_final = layer.forward(to_xp(xp, p["x"][:, :, 2:]), carry)
    joined = np.concatenate([xseq.to_numpy(first), xseq.to_numpy(second)], axis=2)
    np.testing.assert_allclose(joined, xseq.to_numpy(full), rtol=1e-12, atol=1e-14)
    for a, b in zip(state_list(second_final), state_list(full_final)):
        np.testing.assert_allclose(xseq.to_numpy(a), xseq.to_numpy(b), rtol=1e-12, atol=1e-14)
    layer.backward(xp.ones_like(second))
    for d, s in zip(state_list(layer.d_initial_state), state_list(carry)):
        assert_array(xp, d, s.shape, s.dtype)


def test_backward_accumulates_and_zero_grad_clears(xp):
    layer = make_layer("lstm", xp, 2, True)
    p = problem(layer)
    out, _ = layer.forward(to_xp(xp, p["x"]))
    layer.backward(to_xp(xp, p["R"]))
    once = {k: xseq.to_numpy(v).copy() for k, v in layer.grads.items()}
    layer.backward(to_xp(xp, p["R"]))
    for k, v in layer.grads.items():
        np.testing.assert_allclose(xseq.to_numpy(v), 2 * once[k], rtol=1e-12)
    layer.zero_grad()
    assert all(np.all(xseq.to_numpy(v) == 0) for v in layer.grads.values())


def test_backward_with_final_state_gradient_only(xp):
    layer = make_layer("gru", xp, 2, True)
    p = problem(layer)
    layer.forward(to_xp(xp, p["x"]), lengths=UNEQUAL)
    dx = layer.backward(None, to_xp(xp, p["Rs"][0]))
    assert_array(xp, dx, (N_X, M, T), xp.float64)
    assert np.any(xseq.to_numpy(dx) != 0)


# ---------------------------------------------------------------- dropout

@pytest.mark.parametrize("kind", CLASSES)
def test_dropout_reproducible_and_inactive_in_eval(xp, kind):
    def run(layer, training):
        return xseq.to_numpy(layer.forward(x, training=training)[0])

    a, b = (make_layer(kind, xp, 3, True, dropout=0.5, seed=2) for _ in range(2))
    plain = make_layer(kind, xp, 3, True, seed=2)
    x = to_xp(xp, problem(a)["x"])
    first = run(a, True)
    np.testing.assert_array_equal(first, run(b, True))
    assert not np.allclose(first, run(a, True)), "a second training call draws a new mask"
    assert not np.allclose(first, run(plain, True))
    np.testing.assert_array_equal(run(a, False), run(plain, False))


def test_no_dropout_after_the_last_layer(xp):
    layer = make_layer("rnn", xp, 1, True, dropout=0.9)
    x = to_xp(xp, problem(layer)["x"])
    train, _ = layer.forward(x, training=True)
    evaluate, _ = layer.forward(x)
    np.testing.assert_array_equal(xseq.to_numpy(train), xseq.to_numpy(evaluate))


def pass_through_top_layer(parameters, top, num_directions, n_a, to_array):
    """Make layer ``top`` of an RNN stack output ``tanh`` of its input, so ``arctanh`` of its output is its input.

    Each direction's ``W_ih`` passes on its own half of the input (the identity
    there, zeros elsewhere); ``W_hh`` and the biases are zero.
    """
    D = num_directions
    for direction in range(D):
        suffix = f"_l{top}" + ("_reverse" if direction else "")
        w_ih = np.zeros((n_a, D * n_a))
        w_ih[:, direction * n_a:(direction + 1) * n_a] = np.eye(n_a)
        parameters[f"weight_ih{suffix}"] = to_array(w_ih)
        parameters[f"weight_hh{suffix}"] = to_array(np.zeros((n_a, n_a)))
        parameters[f"bias_ih{suffix}"] = to_array(np.zeros(n_a))
        parameters[f"bias_hh{suffix}"] = to_array(np.zeros(n_a))


def assert_inverted_dropout(dropped, undropped, p):
    """Each unit of ``dropped`` is 0 or exactly ``undropped / (1 - p)``, kept with probability ``1 - p``."""
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], undropped[kept] / (1 - p), rtol=1e-9, atol=1e-12)
    assert kept.mean() == pytest.approx(1 - p, abs=0.02)
    # What the 1/(1 - p) is for: on average over many units, a unit passes on its input unchanged.
    assert np.mean(dropped / undropped) == pytest.approx(1, abs=0.03)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_dropout_zeroes_units_and_scales_the_others_by_1_over_1_minus_p(xp, bidirectional):
    """What the second layer receives, read through a pass-through second layer, in training and in evaluation."""
    p, n_a, m, T_x = 0.3, 64, 16, 8
    layer = xseq.RNN(N_X, n_a, num_layers=2, bidirectional=bidirectional, dropout=p,
                     backend=backend_name(xp), dtype="float64", seed=4)
    pass_through_top_layer(layer.parameters, 1, layer.num_directions, n_a, lambda a: to_xp(xp, a))
    x = to_xp(xp, np.random.default_rng(5).standard_normal((N_X, m, T_x)))
    undropped = np.arctanh(xseq.to_numpy(layer.forward(x)[0]))
    dropped = np.arctanh(xseq.to_numpy(layer.forward(x, training=True)[0]))
    assert dropped.shape == (layer.num_directions * n_a, m, T_x)
    assert_inverted_dropout(dropped, undropped, p)


def test_the_character_models_dropout_is_inverted_dropout():
    """CharLM(dropout=p) in training: its logits are the second layer's outputs (Wy = [I; 0]), read as above."""
    p, n_a = 0.3, 16
    vocab = xseq.Vocabulary.from_text(["abcdefghijklmnopqrstuvwxyz"])
    V = len(vocab)
    model = xseq.CharLM(vocab, n_a, cell="rnn", num_layers=2, dropout=p, dtype="float64", seed=4)
    params = model.parameters()
    pass_through_top_layer(params, 1, 1, n_a, lambda a: to_xp(model.xp, a))
    params["Wy"] = to_xp(model.xp, np.eye(V, n_a))
    params["by"] = to_xp(model.xp, np.zeros((V, 1)))
    rng = np.random.default_rng(6)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    X, _, _ = model.batch([vocab.encode("".join(rng.choice(letters, 20))) for _ in range(64)])
    undropped = np.arctanh(xseq.to_numpy(model.forward(X)[0])[:n_a])
    dropped = np.arctanh(xseq.to_numpy(model.forward(X, training=True)[0])[:n_a])
    assert_inverted_dropout(dropped, undropped, p)


# ---------------------------------------------------------------- saving

@pytest.mark.parametrize("kind", CLASSES)
def test_state_dict_round_trip(xp, kind):
    source = make_layer(kind, xp, 2, True, seed=0)
    target = make_layer(kind, xp, 2, True, seed=1)
    x = to_xp(xp, problem(source)["x"])
    state = source.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert list(state) == list(source.parameters)
    assert not np.allclose(xseq.to_numpy(target.forward(x)[0]), xseq.to_numpy(source.forward(x)[0]))
    target.load_state_dict(state)
    np.testing.assert_array_equal(xseq.to_numpy(target.forward(x)[0]), xseq.to_numpy(source.forward(x)[0]))
    state["weight_hh_l0"][...] = 0  # a host copy: the layer is unchanged
    assert np.any(xseq.to_numpy(source.parameters["weight_hh_l0"]) != 0)


def test_load_state_dict_errors():
    layer = xseq.LSTM(N_X, N_A, num_layers=2)
    state = layer.state_dict()
    with pytest.raises(KeyError, match="missing keys \\['bias_hh_l1'\\]"):
        layer.load_state_dict({k: v for k, v in state.items() if k != "bias_hh_l1"})
    with pytest.raises(KeyError, match="unexpected keys \\['weight_ih_l0_reverse'\\]"):
        layer.load_state_dict({**state, "weight_ih_l0_reverse": state["weight_ih_l0"]})
    with pytest.raises(ValueError, match=r"'weight_hh_l1' has shape \(16, 5\); expected \(16, 4\)"):
        layer.load_state_dict({**state, "weight_hh_l1": np.zeros((16, 5))})


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kind", CLASSES)
def test_bad_input(xp, kind):
    layer = make_layer(kind, xp, 2, True)
    x = to_xp(xp, problem(layer)["x"])
    good_state = xp.zeros((4, N_A, M), dtype=xp.float64)
    bad_state = xp.zeros((2, N_A, M), dtype=xp.float64)
    with pytest.raises(RuntimeError, match="backward was called before forward"):
        layer.backward(xp.zeros((2 * N_A, M, T), dtype=xp.float64))
    with pytest.raises(ValueError, match=r"x has shape \(5, 3, 4\); expected \(n_x, m, T_x\) = \(3, 3, 4\) "
                                         r"from input_size=3"):
        layer.forward(xp.zeros((5, M, T), dtype=xp.float64))
    with pytest.raises(ValueError, match="x has 2 dimensions"):
        layer.forward(x[:, :, 0])
    with pytest.raises(ValueError, match="T_x = 0"):
        layer.forward(xp.zeros((N_X, M, 0), dtype=xp.float64))
    with pytest.raises(TypeError, match="x has dtype .*int64; expected a real floating dtype"):
        layer.forward(xp.zeros((N_X, M, T), dtype=xp.int64))
    with pytest.raises(TypeError, match=f"x has dtype .*float32 but this {type(layer).__name__} holds float64"):
        layer.forward(xp.zeros((N_X, M, T), dtype=xp.float32))
    with pytest.raises(ValueError, match=r"lengths has shape \(2,\); expected \(m,\) = \(3,\)"):
        layer.forward(x, lengths=[1, 2])
    with pytest.raises(ValueError, match=r"1 <= L <= T_x = 4; got \[1, 5, 2\]"):
        layer.forward(x, lengths=[1, 5, 2])
    with pytest.raises(ValueError, match=r"1 <= L <= T_x = 4; got \[0, 4, 2\]"):
        layer.forward(x, lengths=[0, 4, 2])
    with pytest.raises(TypeError, match="lengths must be integers"):
        layer.forward(x, lengths=[1.0, 2.5, 3.0])
    if kind == "lstm":
        with pytest.raises(TypeError, match=r"h0 of an LSTM must be a tuple \(h, c\)"):
            layer.forward(x, good_state)
        with pytest.raises(ValueError, match=r"h0\[1\] has shape \(2, 4, 3\); expected \(num_layers\*D, n_a, m\) "
                                             r"= \(4, 4, 3\)"):
            layer.forward(x, (good_state, bad_state))
    else:
        with pytest.raises(ValueError, match=r"h0 has shape \(2, 4, 3\); expected \(num_layers\*D, n_a, m\) "
                                             r"= \(4, 4, 3\) from num_layers=2, bidirectional=True"):
            layer.forward(x, bad_state)
    out, _ = layer.forward(x)
    with pytest.raises(ValueError, match=r"d_outputs has shape \(4, 3, 4\); expected \(D\*n_a, m, T_x\) "
                                         r"= \(8, 3, 4\) from the last forward"):
        layer.backward(out[:N_A, ...])


def test_mixed_backends_are_rejected(xp):
    other = "array_api_strict" if backend_name(xp) == "numpy" else "numpy"
    layer = xseq.GRU(N_X, N_A, dtype="float64", backend=other)
    x = xp.zeros((N_X, M, T), dtype=xp.float64)
    with pytest.raises(TypeError, match=f"x is a {backend_name(xp)} array but this GRU holds {other} parameters"):
        layer.forward(x)
    with pytest.raises(TypeError, match=f"h0 is a {backend_name(xp)} array"):
        layer.forward(xseq.asarray(np.zeros((N_X, M, T)), backend=other), xp.zeros((1, N_A, M), dtype=xp.float64))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer; got 0"):
        xseq.RNN(N_X, 0)
    with pytest.raises(ValueError, match="num_layers must be a positive integer; got 1.5"):
        xseq.RNN(N_X, N_A, num_layers=1.5)
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\); got 1"):
        xseq.RNN(N_X, N_A, dropout=1)
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        xseq.RNN(N_X, N_A, bidirectional="yes")
    with pytest.raises(ValueError, match="dtype must be one of"):
        xseq.RNN(N_X, N_A, dtype="float16")
