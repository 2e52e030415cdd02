"""Creating the course's parameter dictionaries, and exchanging them with PyTorch.

Initialisation draws every value with NumPy's ``Generator`` and then moves it
to the backend, so a seed gives the same parameters on every backend:

* every weight matrix ~ uniform(-1/sqrt(n_a), 1/sqrt(n_a)) (PyTorch's scale for
  recurrent layers);
* biases 0, except the LSTM's forget-gate bias ``bf = 1`` (so the cell starts
  out remembering, Jozefowicz et al. 2015).

Weight exchange maps PyTorch's stacked blocks onto the course's keys:
``torch.nn.LSTM`` stacks ``i, f, g, o`` -> ``Wi, Wf, Wc, Wo``; ``torch.nn.GRU``
stacks ``r, z, n`` -> ``Wr, Wz, Wn``. A course gate matrix is
``[W_hh block, W_ih block]`` side by side (it acts on ``[a_prev; xt]``).
PyTorch's two biases are summed into the course's one (for the GRU's
candidate they stay apart: ``bn`` and ``bhn``); going back, the sum goes into
``bias_ih`` and ``bias_hh`` is 0, which computes the same function.
torch is imported only inside the exchange functions.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.arrays import asarray, backend, dtype_of, to_numpy
from ..backends.checks import check_sizes

RNN_WEIGHTS = ("Wax", "Waa", "Wya")
LSTM_GATES = ("i", "f", "c", "o")  # PyTorch's i, f, g, o
GRU_GATES = ("r", "z", "n")


def _finish(params, backend_name, dtype):
    xp = backend(backend_name)
    dt = dtype_of(xp, dtype)
    return {k: xp.asarray(v, dtype=dt) for k, v in params.items()}


def init_rnn_parameters(n_x, n_a, n_y, *, backend="numpy", dtype="float32", seed=0):
    """Parameters of the basic RNN: Wax (n_a, n_x), Waa (n_a, n_a), Wya (n_y, n_a), ba (n_a, 1), by (n_y, 1)."""
    check_sizes(n_x=n_x, n_a=n_a, n_y=n_y)
    rng = np.random.default_rng(seed)
    k = 1 / math.sqrt(n_a)
    params = {
        "Wax": rng.uniform(-k, k, (n_a, n_x)),
        "Waa": rng.uniform(-k, k, (n_a, n_a)),
        "Wya": rng.uniform(-k, k, (n_y, n_a)),
        "ba": np.zeros((n_a, 1)),
        "by": np.zeros((n_y, 1)),
    }
    return _finish(params, backend, dtype)


def init_lstm_parameters(n_x, n_a, n_y, *, backend="numpy", dtype="float32", seed=0):
    """Parameters of the LSTM: Wf, Wi, Wc, Wo (n_a, n_a + n_x); bf, bi, bc, bo (n_a, 1); Wy (n_y, n_a); by (n_y, 1).

    bf starts at 1, the other biases at 0.
    """
    check_sizes(n_x=n_x, n_a=n_a, n_y=n_y)
    rng = np.random.default_rng(seed)
    k = 1 / math.sqrt(n_a)
    params = {}
    for gate in ("f", "i", "c", "o"):
        params[f"W{gate}"] = rng.uniform(-k, k, (n_a, n_a + n_x))
        params[f"b{gate}"] = np.full((n_a, 1), 1.0 if gate == "f" else 0.0)
    params["Wy"] = rng.uniform(-k, k, (n_y, n_a))
    params["by"] = np.zeros((n_y, 1))
    return _finish(params, backend, dtype)


def init_gru_parameters(n_x, n_a, n_y, *, backend="numpy", dtype="float32", seed=0):
    """Parameters of the GRU: Wr, Wz, Wn (n_a, n_a + n_x); br, bz, bn, bhn (n_a, 1); Wy (n_y, n_a); by (n_y, 1)."""
    check_sizes(n_x=n_x, n_a=n_a, n_y=n_y)
    rng = np.random.default_rng(seed)
    k = 1 / math.sqrt(n_a)
    params = {}
    for gate in GRU_GATES:
        params[f"W{gate}"] = rng.uniform(-k, k, (n_a, n_a + n_x))
        params[f"b{gate}"] = np.zeros((n_a, 1))
    params["bhn"] = np.zeros((n_a, 1))
    params["Wy"] = rng.uniform(-k, k, (n_y, n_a))
    params["by"] = np.zeros((n_y, 1))
    return _finish(params, backend, dtype)


# ---------------------------------------------------------------- PyTorch exchange

def _torch_weights(module, kind):
    """Host copies of a single-layer, unidirectional torch recurrent module's weights (cells accepted too)."""
    import torch

    expected = {"rnn": (torch.nn.RNN, torch.nn.RNNCell), "lstm": (torch.nn.LSTM, torch.nn.LSTMCell),
                "gru": (torch.nn.GRU, torch.nn.GRUCell)}[kind]
    if not isinstance(module, expected):
        names = " or ".join(f"torch.nn.{c.__name__}" for c in expected)
        raise TypeError(f"module must be a {names}; got {type(module).__name__}")
    if isinstance(module, torch.nn.RNNBase):
        if module.num_layers != 1 or module.bidirectional:
            raise ValueError(
                f"module has num_layers={module.num_layers}, bidirectional={module.bidirectional}; the course's "
                "parameter dictionaries describe one unidirectional layer (use xseq.LSTM/GRU/RNN.from_torch)"
            )
        if getattr(module, "proj_size", 0):
            raise ValueError(f"module has proj_size={module.proj_size}; xseq has no projected LSTM")
        suffix = "_l0"
    else:
        suffix = ""
    if kind == "rnn" and getattr(module, "nonlinearity", "tanh") != "tanh":
        raise ValueError(f"module has nonlinearity={module.nonlinearity!r}; the course's RNN uses 'tanh'")
    if not module.bias:
        raise ValueError("module has bias=False; the course's cells have biases")
    get = lambda name: to_numpy(getattr(module, name + suffix))  # noqa: E731
    return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")


def _linear_weights(linear, n_a, key="Wy"):
    """The output projection {key, by} from a ``torch.nn.Linear``, or nothing without one."""
    if linear is None:
        return {}
    W, b = to_numpy(linear.weight), to_numpy(linear.bias)
    if W.shape[1] != n_a:
        raise ValueError(f"linear has in_features={W.shape[1]}; expected n_a = {n_a} from the recurrent module")
    return {key: W, "by": b[:, None]}


def _to_backend(params, backend_name):
    return {k: asarray(np.ascontiguousarray(v), backend=backend_name) for k, v in params.items()}


def rnn_parameters_from_torch(module, linear=None, *, backend="numpy"):
    """Course parameters {Wax, Waa, ba[, Wya, by]} from a ``torch.nn.RNN``/``RNNCell`` (and an optional ``Linear``).

    ``Wya``/``by`` come from ``linear`` (n_y = out_features); without it they are left out.
    dtype is the module's.
    """
    W_ih, W_hh, b_ih, b_hh = _torch_weights(module, "rnn")
    params = {"Wax": W_ih, "Waa": W_hh, "ba": (b_ih + b_hh)[:, None]}
    params.update(_linear_weights(linear, W_hh.shape[1], key="Wya"))
    return _to_backend(params, backend)


def _gate_blocks(W_ih, W_hh, gates):
    """``(gate, rows, W)`` for each of torch's stacked blocks: W = [W_hh block, W_ih block] acts on [a_prev; xt]."""
    n_a = W_hh.shape[1]
    for k, gate in enumerate(gates):
        rows = slice(k * n_a, (k + 1) * n_a)
        yield gate, rows, np.concatenate([W_hh[rows], W_ih[rows]], axis=1)


def lstm_parameters_from_torch(module, linear=None, *, backend="numpy"):
    """Course parameters {Wf, bf, Wi, bi, Wc, bc, Wo, bo[, Wy, by]} from a ``torch.nn.LSTM``/``LSTMCell``."""
    W_ih, W_hh, b_ih, b_hh = _torch_weights(module, "lstm")
    params = {}
    for gate, rows, W in _gate_blocks(W_ih, W_hh, LSTM_GATES):
        params[f"W{gate}"] = W
        params[f"b{gate}"] = (b_ih[rows] + b_hh[rows])[:, None]
    params.update(_linear_weights(linear, W_hh.shape[1]))
    return _to_backend(params, backend)


def gru_parameters_from_torch(module, linear=None, *, backend="numpy"):
    """Course-keyed GRU parameters {Wr, br, Wz, bz, Wn, bn, bhn[, Wy, by]} from a ``torch.nn.GRU``/``GRUCell``."""
    W_ih, W_hh, b_ih, b_hh = _torch_weights(module, "gru")
    params = {}
    for gate, rows, W in _gate_blocks(W_ih, W_hh, GRU_GATES):
        params[f"W{gate}"] = W
        # r multiplies the candidate's recurrent bias, so that one stays apart as bhn
        params[f"b{gate}"] = (b_ih[rows] if gate == "n" else b_ih[rows] + b_hh[rows])[:, None]
        if gate == "n":
            params["bhn"] = b_hh[rows, None]
    params.update(_linear_weights(linear, W_hh.shape[1]))
    return _to_backend(params, backend)


def _torch_pair(kind, n_x, n_a, W_ih, W_hh, b_ih, b_hh, Wy, by):
    """Build ``(torch.nn.RNN/LSTM/GRU, torch.nn.Linear or None)`` holding exactly these weights."""
    import torch

    dtype = torch.float64 if W_ih.dtype == np.float64 else torch.float32
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    module = cls(n_x, n_a, dtype=dtype)
    linear = None
    with torch.no_grad():
        for name, value in (("weight_ih_l0", W_ih), ("weight_hh_l0", W_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(module, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
        if Wy is not None:
            linear = torch.nn.Linear(n_a, Wy.shape[0], dtype=dtype)
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(Wy)))
            linear.bias.copy_(torch.from_numpy(np.ascontiguousarray(by[:, 0])))
    return module, linear


def _host(parameters, keys):
    missing = [k for k in keys if k not in parameters]
    if missing:
        raise KeyError(f"parameters is missing key {missing[0]!r}; expected keys {list(keys)}")
    return {k: to_numpy(v) for k, v in parameters.items()}


def rnn_parameters_to_torch(parameters):
    """``(torch.nn.RNN, torch.nn.Linear or None)`` computing the same as the course parameters."""
    p = _host(parameters, ("Wax", "Waa", "ba"))
    n_a, n_x = p["Wax"].shape
    return _torch_pair("rnn", n_x, n_a, p["Wax"], p["Waa"], p["ba"][:, 0], np.zeros_like(p["ba"][:, 0]),
                       p.get("Wya"), p.get("by"))


def lstm_parameters_to_torch(parameters):
    """``(torch.nn.LSTM, torch.nn.Linear or None)`` computing the same as the course parameters."""
    p = _host(parameters, tuple(f"{w}{g}" for g in LSTM_GATES for w in "Wb"))
    n_a = p["Wf"].shape[0]
    n_x = p["Wf"].shape[1] - n_a
    W = np.concatenate([p[f"W{g}"] for g in LSTM_GATES], axis=0)
    b = np.concatenate([p[f"b{g}"][:, 0] for g in LSTM_GATES])
    return _torch_pair("lstm", n_x, n_a, W[:, n_a:], W[:, :n_a], b, np.zeros_like(b), p.get("Wy"), p.get("by"))


def gru_parameters_to_torch(parameters):
    """``(torch.nn.GRU, torch.nn.Linear or None)`` computing the same as the course-keyed GRU parameters."""
    p = _host(parameters, tuple(f"{w}{g}" for g in GRU_GATES for w in "Wb") + ("bhn",))
    n_a = p["Wr"].shape[0]
    n_x = p["Wr"].shape[1] - n_a
    W = np.concatenate([p[f"W{g}"] for g in GRU_GATES], axis=0)
    b_ih = np.concatenate([p[f"b{g}"][:, 0] for g in GRU_GATES])
    b_hh = np.concatenate([np.zeros(2 * n_a, dtype=b_ih.dtype), p["bhn"][:, 0]])
    return _torch_pair("gru", n_x, n_a, W[:, n_a:], W[:, :n_a], b_ih, b_hh, p.get("Wy"), p.get("by"))
