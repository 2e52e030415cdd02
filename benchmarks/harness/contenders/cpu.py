"""``bench_cpu.py``'s contenders -- the naive course version, xseq and torch on the CPU -- and their check.

Contenders: ``naive``, ``xseq``, ``torch`` and, where JAX is installed, ``jax``
(``jaxscan.py``: a jitted ``lax.scan`` with stacked gates and a hoisted input
projection).

Models:

* ``lstm``, ``rnn``: the course's functional API. ``naive`` (``naive.py``),
  ``xseq`` (``lstm_forward``/``lstm_backward``, ``rnn_forward``/``rnn_backward``)
  and ``torch`` (``nn.LSTM``/``nn.RNN`` + ``nn.Linear`` + softmax, autograd),
  all from the same course parameters.
* ``lstm-layer``, ``gru``, ``lstm-2layer-bidirectional``: xseq's layer API
  (``xseq.LSTM``, ``xseq.GRU``, ``xseq.LSTM(num_layers=2, bidirectional=True)``: ``forward`` then
  ``zero_grad`` and ``backward``) and ``nn.GRU``/``nn.LSTM`` with the same
  options, both loaded with the same weights.

Modes: ``forward`` (torch under ``torch.set_grad_enabled(False)``, i.e.
inference; xseq and naive always keep their caches, as the course's forward
does) and ``forward+backward`` (the loss is ``sum(a * da)`` for a fixed random
``da`` for every contender; torch runs ``(out * da).sum().backward()`` with the
input and the initial hidden state requiring gradients, so it computes ``dx``
and ``da0`` like the others). The output softmax of ``lstm``/``rnn`` is
computed in the forward pass by every contender but not back-propagated, as in
the course.

:func:`build` makes one contender's :class:`Step` for one case, the function the
method times; :func:`check` runs every step as it will be timed, at the timed
size, and compares every output and gradient with xseq's array-API reference
(the same xseq call under ``XSEQ_FUSED=0``).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from .. import checks
from . import naive

MODELS = ("lstm", "rnn", "lstm-layer", "gru", "lstm-2layer-bidirectional")
FUNCTIONAL = ("lstm", "rnn")
MODES = ("forward", "forward+backward")
# xseq-onednn: xseq with its optional oneDNN matrix products turned on (XSEQ_ONEDNN=1, xseq/ops/blas.py)
ONEDNN = "xseq-onednn"
GROUPS = {"naive": "numpy", "xseq": "numpy", ONEDNN: "numpy", "torch": "torch", "jax": "jax"}  # which server forks a contender's workers
JAX_INSTALL = "pip install jax==0.10.2 jaxlib==0.10.2"
# Outputs every contender of a model reports (torch's nn.LSTM does not return every cell state c).
REQUIRED_OUTPUTS = {"lstm": ("a", "y"), "rnn": ("a", "y"), "lstm-layer": ("outputs", "h_n", "c_n"),
                    "gru": ("outputs", "h_n"), "lstm-2layer-bidirectional": ("outputs", "h_n", "c_n")}
COURSE_GATES = "ifco"  # the course's gate letters in torch's stacking order i, f, g, o


def jax_available():
    """Whether JAX (the optional ``jax`` contender) is installed; it is not imported here."""
    import importlib.util

    return importlib.util.find_spec("jax") is not None


def contenders_for(model, jax=None, onednn=False):
    """The contenders of ``model``; ``jax`` (None: whether it is installed) adds the JAX contender,
    ``onednn`` the ``xseq-onednn`` one."""
    jax = jax_available() if jax is None else jax
    names = ("naive", "xseq") if model in FUNCTIONAL else ("xseq",)
    names += (ONEDNN,) if onednn else ()
    names += ("torch",)
    return names + ("jax",) if jax else names


def size_name(size):
    """``(64, 256, 64, 100)`` -> ``"64x256x64x100"``, the form a worker's command line carries."""
    return "x".join(str(v) for v in size)


def layer_options(model):
    return {"num_layers": 2, "bidirectional": True} if model == "lstm-2layer-bidirectional" else {}


def layer_shapes(model, n_x, n_a):
    """torch's parameter names and shapes of a layer model, in torch's order."""
    gates = 3 if model == "gru" else 4
    options = layer_options(model)
    layers, directions = options.get("num_layers", 1), 2 if options.get("bidirectional") else 1
    shapes = {}
    for layer in range(layers):
        n_in = n_x if layer == 0 else directions * n_a
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            shapes.update({f"weight_ih{suffix}": (gates * n_a, n_in), f"weight_hh{suffix}": (gates * n_a, n_a),
                           f"bias_ih{suffix}": (gates * n_a,), f"bias_hh{suffix}": (gates * n_a,)})
    return shapes


def make_problem(model, size, seed=0):
    """NumPy float32 inputs in the course's layout: x (n_x, m, T_x), a0, da (width, m, T_x), parameters.

    ``lstm``/``rnn``: the course's parameters, with an output layer of size
    n_y = n_x (a character model predicting its next input). Layer models:
    torch's parameter names and shapes. Weights are uniform in +-1/sqrt(n_a)
    like PyTorch's default initialisation.
    """
    n_x, n_a, m, T = size
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(n_a)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(np.float32)

    p = {}
    if model == "lstm":
        for g in "fico":
            p[f"W{g}"] = u(n_a, n_a + n_x)
            p[f"b{g}"] = u(n_a, 1)
        p["Wy"], p["by"] = u(n_x, n_a), u(n_x, 1)
    elif model == "rnn":
        p = {"Wax": u(n_a, n_x), "Waa": u(n_a, n_a), "ba": u(n_a, 1)}
        p["Wya"], p["by"] = u(n_x, n_a), u(n_x, 1)
    x = rng.standard_normal((n_x, m, T)).astype(np.float32)
    a0 = np.zeros((n_a, m), dtype=np.float32)
    width = 2 * n_a if model == "lstm-2layer-bidirectional" else n_a
    da = rng.standard_normal((width, m, T)).astype(np.float32)
    if model not in FUNCTIONAL:
        p = {name: u(*shape) for name, shape in layer_shapes(model, n_x, n_a).items()}
    return x, a0, da, p


# ---------------------------------------------------------------- results, named alike for every contender


def gradient_name(parameter):
    """The name of a parameter's gradient in the results: torch's ``weight_hh_l1_reverse`` -> ``dW_hh_l1_reverse``."""
    return "d" + parameter.replace("weight_", "W_").replace("bias_", "b_")


def course_results(model, out, grads):
    """The results of the course's functional API (naive or xseq), as NumPy arrays named like torch's.

    ``out`` is what ``lstm_forward``/``rnn_forward`` returned, ``grads`` what
    the backward returned (None in forward mode). Gate gradients are stacked
    the way torch stacks its weights, so every element is compared once.
    """
    results = {"a": out[0], "y": out[1]}
    if model == "lstm":
        results["c"] = out[2]
    if grads is None:
        return {k: np.asarray(v) for k, v in results.items()}
    results.update(dx=grads["dx"], da0=grads["da0"])
    if model == "lstm":
        n_a = grads["dWf"].shape[0]
        w_ih = np.concatenate([np.asarray(grads[f"dW{g}"])[:, n_a:] for g in COURSE_GATES])
        w_hh = np.concatenate([np.asarray(grads[f"dW{g}"])[:, :n_a] for g in COURSE_GATES])
        b = np.concatenate([np.asarray(grads[f"db{g}"])[:, 0] for g in COURSE_GATES])
    else:
        w_ih, w_hh, b = grads["dWax"], grads["dWaa"], np.asarray(grads["dba"])[:, 0]
    # torch has two biases; the course's one bias is their sum, so both get its gradient.
    results.update({"dW_ih_l0": w_ih, "dW_hh_l0": w_hh, "db_ih_l0": b, "db_hh_l0": b})
    return {k: np.asarray(v) for k, v in results.items()}


class Step:
    """One contender's iteration of one case: calling it runs the iteration (what is timed).

    ``run(kept)`` runs one iteration; where ``kept`` is a dict (only in the
    check), it also puts there what the iteration computed, which ``collect``
    turns into NumPy arrays in the course's layout, named alike for every
    contender. A timed iteration keeps nothing: holding results into the next
    iteration would change which buffers xseq's pool can reuse.
    """

    def __init__(self, run, collect):
        self.run, self.collect = run, collect

    def __call__(self):
        self.run(None)

    def results(self):
        """Run one more iteration and return everything it computed."""
        kept = {}
        self.run(kept)
        return self.collect(kept)


def build(contender, model, size_text, mode):
    """The :class:`Step` of ``contender`` for one case; ``size_text`` is ``n_x x n_a x m x T_x``."""
    if contender == ONEDNN:
        with onednn_on():
            step = build("xseq", model, size_text, mode)

        def run(kept):
            with onednn_on():
                step.run(kept)

        return Step(run, step.collect)
    size = tuple(int(v) for v in size_text.split("x"))
    backward = mode == "forward+backward"
    x, a0, da, p = make_problem(model, size)

    if contender in ("naive", "xseq") and model in FUNCTIONAL:
        if contender == "naive":
            fwd, bwd = {"lstm": (naive.lstm_forward, naive.lstm_backward),
                        "rnn": (naive.rnn_forward, naive.rnn_backward)}[model]
        else:
            import xseq

            fwd, bwd = {"lstm": (xseq.lstm_forward, xseq.lstm_backward),
                        "rnn": (xseq.rnn_forward, xseq.rnn_backward)}[model]

        def run(kept):
            out = fwd(x, a0, p)
            grads = bwd(da, out[-1]) if backward else None
            if kept is not None:
                kept.update(out=out, grads=grads)

        return Step(run, lambda kept: course_results(model, kept["out"], kept["grads"]))

    if contender == "xseq":
        return _xseq_layer_step(model, size, x, da, p, backward)
    if contender == "torch":
        return _torch_step(model, size, x, da, p, backward)
    if contender == "jax":
        from . import jaxscan

        return jaxscan.build(model, size, x, da, p, backward)
    raise ValueError(f"unknown contender {contender!r} for model {model!r}")


def _xseq_layer_step(model, size, x, da, p, backward):
    import xseq

    n_x, n_a, m, T = size
    layer = (xseq.GRU if model == "gru" else xseq.LSTM)(n_x, n_a, **layer_options(model), backend="numpy",
                                                        dtype="float32")
    layer.load_state_dict(p)

    def run(kept):
        outputs, final = layer.forward(x)
        dx = None
        if backward:
            layer.zero_grad()  # a training step starts from zero, as torch's starts from grad = None
            dx = layer.backward(da)
        if kept is not None:
            kept.update(outputs=outputs, final=final, dx=dx)

    def collect(kept):
        h_n, c_n = kept["final"] if isinstance(kept["final"], tuple) else (kept["final"], None)
        res = {"outputs": kept["outputs"], "h_n": h_n}
        if c_n is not None:
            res["c_n"] = c_n
        if kept["dx"] is not None:
            d0 = layer.d_initial_state
            dh0, dc0 = d0 if isinstance(d0, tuple) else (d0, None)
            res.update(dx=kept["dx"], dh0=dh0)
            if dc0 is not None:
                res["dc0"] = dc0
            res.update({gradient_name(k): g for k, g in layer.grads.items()})
        return {k: np.asarray(v) for k, v in res.items()}

    return Step(run, collect)


def _torch_step(model, size, x, da, p, backward):
    import torch

    torch.manual_seed(0)
    if os.environ.get("BENCH_TORCH_MKLDNN", "1") == "0":
        torch.backends.mkldnn.enabled = False  # torch's own per-step cells instead of oneDNN's fused RNN
    n_x, n_a, m, T = size
    X = torch.from_numpy(x.transpose(2, 1, 0).copy())  # (T, m, n_x): torch's native layout
    dA = torch.from_numpy(da.transpose(2, 1, 0).copy())
    modules = torch_modules(torch, model, size, p)
    rnn = modules[0]
    states = rnn.num_layers * (2 if rnn.bidirectional else 1)
    # The initial states are passed (zero, like everyone's) so that torch computes their gradient too.
    h0 = torch.zeros(states, m, n_a)
    c0 = torch.zeros(states, m, n_a) if isinstance(rnn, torch.nn.LSTM) else None
    if backward:
        X.requires_grad_(True)
        h0.requires_grad_(True)
        if c0 is not None and model not in FUNCTIONAL:  # the course's c<0> is a constant zero
            c0.requires_grad_(True)
    hx = h0 if c0 is None else (h0, c0)
    params = [q for mod in modules for q in mod.parameters()]

    def run(kept):
        with torch.set_grad_enabled(backward):
            for q in params:
                q.grad = None
            X.grad = h0.grad = None
            if c0 is not None:
                c0.grad = None
            out, final = rnn(X, hx)
            y = torch.softmax(modules[1](out), dim=-1) if len(modules) > 1 else None
            if backward:
                (out * dA).sum().backward()
        if kept is not None:
            kept.update(out=out, final=final, y=y)

    def collect(kept):
        def course(t):  # (T, m, n) -> (n, m, T)
            return t.detach().numpy().transpose(2, 1, 0)

        def state(t):  # (L*D, m, n_a) -> (L*D, n_a, m)
            return t.detach().numpy().transpose(0, 2, 1)

        if model in FUNCTIONAL:
            res = {"a": course(kept["out"]), "y": course(kept["y"])}
            if backward:
                res.update(dx=course(X.grad), da0=state(h0.grad)[0])
        else:
            h_n, c_n = kept["final"] if isinstance(kept["final"], tuple) else (kept["final"], None)
            res = {"outputs": course(kept["out"]), "h_n": state(h_n)}
            if c_n is not None:
                res["c_n"] = state(c_n)
            if backward:
                res.update(dx=course(X.grad), dh0=state(h0.grad))
                if c0 is not None:
                    res["dc0"] = state(c0.grad)
        if backward:
            res.update({gradient_name(name): q.grad.numpy() for name, q in rnn.named_parameters()})
        return res

    return Step(run, collect)


def torch_modules(torch, model, size, p):
    """torch modules for a model, loaded with the parameters ``p`` of :func:`make_problem`."""
    n_x, n_a, m, T = size
    nn = torch.nn
    if model not in FUNCTIONAL:
        rnn = (nn.GRU if model == "gru" else nn.LSTM)(n_x, n_a, **layer_options(model))
        rnn.load_state_dict({k: torch.from_numpy(v) for k, v in p.items()})
        return [rnn]
    rnn = nn.LSTM(n_x, n_a) if model == "lstm" else nn.RNN(n_x, n_a, nonlinearity="tanh")
    stacked = stacked_course_parameters(model, p)
    Wy, by = stacked.pop("Wy"), stacked.pop("by")
    lin = nn.Linear(n_a, Wy.shape[0])
    with torch.no_grad():
        for name, value in stacked.items():
            getattr(rnn, name).copy_(torch.from_numpy(value))
        lin.weight.copy_(torch.from_numpy(Wy))
        lin.bias.copy_(torch.from_numpy(by[:, 0].copy()))
    return [rnn, lin]


def stacked_course_parameters(model, p):
    """The course parameters of ``lstm``/``rnn`` in torch's stacked layout, contiguous.

    Returns ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0`` (the course's
    bias), ``bias_hh_l0`` (zero: the course has one bias), and the output
    layer's ``Wy`` (n_y, n_a) and ``by`` (n_y, 1).
    """
    if model == "lstm":
        n_a = p["Wf"].shape[0]
        W = np.concatenate([p[f"W{g}"] for g in COURSE_GATES], axis=0)
        b = np.concatenate([p[f"b{g}"] for g in COURSE_GATES], axis=0)[:, 0]
        w_ih, w_hh, Wy, by = W[:, n_a:], W[:, :n_a], p["Wy"], p["by"]
    else:
        w_ih, w_hh, b, Wy, by = p["Wax"], p["Waa"], p["ba"][:, 0], p["Wya"], p["by"]
    stacked = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b, "bias_hh_l0": np.zeros_like(b),
               "Wy": Wy, "by": by}
    return {k: np.ascontiguousarray(v) for k, v in stacked.items()}


# ---------------------------------------------------------------- the check


@contextlib.contextmanager
def _environment(name, value):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def reference_path():
    """xseq's array-API reference steps (``XSEQ_FUSED=0``) for the calls inside the block."""
    return _environment("XSEQ_FUSED", "0")


def onednn_on():
    """xseq's oneDNN matrix products (``XSEQ_ONEDNN=1``) for the calls inside the block."""
    return _environment("XSEQ_ONEDNN", "1")


def check(models, sizes, modes, out=print, jax=None, onednn=False):
    """Every contender of every case, built and run as it will be timed, against xseq's reference.

    For each model and size, xseq's reference (the same call under
    ``XSEQ_FUSED=0``) computes every output and gradient once; each contender
    then builds its step for each mode exactly as a worker does, runs it twice
    (the warm-up, then an iteration like a timed one, which reuses the buffers
    the first left behind) and must match every output and gradient: xseq within
    :data:`checks.SAME_FORMULAS`, naive and torch within
    :data:`checks.OTHER_IMPLEMENTATION`.

    ``jax`` (None: whether JAX is installed) includes the JAX contender. JAX
    starts threads that make a later ``os.fork`` unsafe (and warn), so a
    process that forks afterwards, such as a test run, passes ``jax=False``
    and checks JAX in a process of its own (``bench_cpu.py --check``).
    ``onednn`` includes ``xseq-onednn`` (within ``SAME_FORMULAS`` too); where
    xseq would not use oneDNN (not installed, not loadable) that is a failure.

    Returns
    -------
    checks.Check
        The comparisons made; :meth:`~checks.Check.exit_if_failed` reports a failure.
    """
    check_ = checks.Check()
    if onednn:
        from xseq.ops import blas

        with onednn_on():
            if blas.matmul_for(np.float32) is None:
                check_.failures.append(f"{ONEDNN}: xseq would not use oneDNN: {blas.status()}")
    for model in models:
        for size in sizes:
            text = size_name(size)
            reference = build("xseq", model, text, "forward+backward")
            with reference_path():
                want = reference.results()
            worst = {}
            for mode in modes:
                required = list(REQUIRED_OUTPUTS[model])
                if mode == "forward+backward":
                    required += checks.gradient_names(want)
                for contender in contenders_for(model, jax, onednn):
                    step = build(contender, model, text, mode)
                    step()
                    same = contender in ("xseq", ONEDNN)
                    tolerance = checks.SAME_FORMULAS if same else checks.OTHER_IMPLEMENTATION
                    label = f"{model} {text} {mode}: {contender}"
                    error = check_.compare(label, step.results(), want, tolerance, required)
                    worst[contender] = max(worst.get(contender, 0.0), error)
            out(f"check {model} {text} ({', '.join(modes)}): "
                + ", ".join(f"{c} {e:.1e}" for c, e in worst.items())
                + " (largest difference from the reference, relative to its largest value)")
    return check_
