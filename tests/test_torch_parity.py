"""Parity with torch.nn.RNN / LSTM / GRU in float64, through the weight exchange functions."""

import numpy as np
import pytest

import xseq

N_X, N_A, N_Y, M, T_X = 3, 5, 4, 2, 6

KINDS = {
    "rnn": ("RNN", xseq.rnn_parameters_from_torch, xseq.rnn_parameters_to_torch, xseq.rnn_forward, xseq.rnn_backward),
    "lstm": ("LSTM", xseq.lstm_parameters_from_torch, xseq.lstm_parameters_to_torch, xseq.lstm_forward,
             xseq.lstm_backward),
    "gru": ("GRU", xseq.gru_parameters_from_torch, xseq.gru_parameters_to_torch, xseq.gru_forward, xseq.gru_backward),
}
# course key -> (torch gate block index, which torch weights make it)
GATE_BLOCKS = {
    "lstm": {"i": 0, "f": 1, "c": 2, "o": 3},
    "gru": {"r": 0, "z": 1, "n": 2},
}


def _torch_problem(torch, kind, seed=0):
    torch.manual_seed(seed)
    module = getattr(torch.nn, KINDS[kind][0])(N_X, N_A, dtype=torch.float64)
    linear = torch.nn.Linear(N_A, N_Y, dtype=torch.float64)
    with torch.no_grad():  # non-zero, distinct biases so that bias handling is tested
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_X, M, T_X))
    a0 = rng.standard_normal((N_A, M)) * 0.5
    R = rng.standard_normal((N_A, M, T_X))
    return module, linear, x, a0, R


def _torch_run(torch, kind, module, linear, x, a0, R):
    """torch forward and autograd backward of sum(a * R); returns outputs and gradients as NumPy."""
    xt = torch.tensor(x.transpose(2, 1, 0), requires_grad=True)  # (T_x, m, n_x)
    h0 = torch.tensor(a0.T[None].copy(), requires_grad=True)
    state = (h0, torch.zeros_like(h0)) if kind == "lstm" else h0
    out, final = module(xt, state)
    y = torch.softmax(linear(out), dim=-1)
    module.zero_grad()
    (out * torch.tensor(R.transpose(2, 1, 0))).sum().backward()
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    to_course = lambda t: t.detach().numpy().transpose(2, 1, 0)  # noqa: E731
    return {
        "a": to_course(out), "y": to_course(y), "final": final, "dx": xt.grad.numpy().transpose(2, 1, 0),
        "da0": h0.grad.numpy()[0].T, "grads": grads,
    }


def _expected_weight_grads(kind, grads):
    """torch's weight gradients rearranged under the course's gradient keys."""
    if kind == "rnn":
        return {"dWax": grads["weight_ih_l0"], "dWaa": grads["weight_hh_l0"], "dba": grads["bias_ih_l0"][:, None]}
    expected = {}
    for gate, k in GATE_BLOCKS[kind].items():
        rows = slice(k * N_A, (k + 1) * N_A)
        expected[f"dW{gate}"] = np.concatenate([grads["weight_hh_l0"][rows], grads["weight_ih_l0"][rows]], axis=1)
        expected[f"db{gate}"] = grads["bias_ih_l0"][rows][:, None]
    if kind == "gru":
        expected["dbhn"] = grads["bias_hh_l0"][2 * N_A:][:, None]
    return expected


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_gradients_match_torch(xp, torch, kind):
    _, from_torch, _, forward, backward = KINDS[kind]
    module, linear, x, a0, R = _torch_problem(torch, kind)
    ref = _torch_run(torch, kind, module, linear, x, a0, R)

    params = from_torch(module, linear, backend=xp)
    dt = xp.float64
    outputs = forward(xp.asarray(x, dtype=dt), xp.asarray(a0, dtype=dt), params)
    a, y = outputs[0], outputs[1]
    np.testing.assert_allclose(xseq.to_numpy(a), ref["a"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xseq.to_numpy(y), ref["y"], rtol=1e-12, atol=1e-12)
    if kind == "lstm":
        c = outputs[2]
        np.testing.assert_allclose(xseq.to_numpy(c)[:, :, -1], ref["final"][1][0].detach().numpy().T, atol=1e-12)

    grads = backward(xp.asarray(R, dtype=dt), outputs[-1])
    np.testing.assert_allclose(xseq.to_numpy(grads["dx"]), ref["dx"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xseq.to_numpy(grads["da0"]), ref["da0"], rtol=1e-10, atol=1e-12)
    for key, value in _expected_weight_grads(kind, ref["grads"]).items():
        np.testing.assert_allclose(xseq.to_numpy(grads[key]), value, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_to_torch_computes_the_same(torch, kind):
    _, _, to_torch, forward, _ = KINDS[kind]
    init = {"rnn": xseq.init_rnn_parameters, "lstm": xseq.init_lstm_parameters, "gru": xseq.init_gru_parameters}
    params = init[kind](N_X, N_A, N_Y, dtype="float64", seed=3)
    rng = np.random.default_rng(3)
    for key in params:  # non-zero biases everywhere
        params[key] = params[key] + rng.uniform(-0.3, 0.3, params[key].shape)
    x = rng.standard_normal((N_X, M, T_X))
    a0 = rng.standard_normal((N_A, M))
    module, linear = to_torch(params)
    ref = _torch_run(torch, kind, module, linear, x, a0, np.ones((N_A, M, T_X)))
    a, y = forward(x, a0, params)[:2]
    np.testing.assert_allclose(a, ref["a"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, ref["y"], rtol=1e-12, atol=1e-12)


def test_from_torch_refuses_what_the_course_cannot_express(torch):
    with pytest.raises(ValueError, match="num_layers=2"):
        xseq.lstm_parameters_from_torch(torch.nn.LSTM(3, 4, num_layers=2))
    with pytest.raises(ValueError, match="nonlinearity='relu'"):
        xseq.rnn_parameters_from_torch(torch.nn.RNN(3, 4, nonlinearity="relu"))
    with pytest.raises(TypeError, match="torch.nn.LSTM or torch.nn.LSTMCell"):
        xseq.lstm_parameters_from_torch(torch.nn.GRU(3, 4))
    with pytest.raises(ValueError, match="in_features=3; expected n_a = 4"):
        xseq.lstm_parameters_from_torch(torch.nn.LSTM(3, 4), torch.nn.Linear(3, 2))


def test_cells_exchange_too(torch):
    cell = torch.nn.LSTMCell(N_X, N_A, dtype=torch.float64)
    params = xseq.lstm_parameters_from_torch(cell)
    x = np.random.default_rng(0).standard_normal((M, N_X))
    h, c = cell(torch.tensor(x))
    params.update(Wy=np.zeros((1, N_A)), by=np.zeros((1, 1)))
    a_next, c_next, _, _ = xseq.lstm_cell_forward(x.T.copy(), np.zeros((N_A, M)), np.zeros((N_A, M)), params)
    np.testing.assert_allclose(a_next, h.detach().numpy().T, atol=1e-12)
    np.testing.assert_allclose(c_next, c.detach().numpy().T, atol=1e-12)
