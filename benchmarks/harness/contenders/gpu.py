"""``bench_gpu.py``'s contenders -- xseq's engine on CuPy three ways and ``torch.nn.LSTM`` on cuDNN -- and their check.

A one-layer LSTM in float32, time-major, over a whole sequence:

* ``fused``: ``xseq.engine.sequence.sequence_forward``/``sequence_backward`` on CuPy
  arrays as dispatched by default: the direct loop (``xseq.ops.fused.DirectSteps``),
  per step one cuBLAS gemm and one launch of the fused kernel, by address;
* ``fused-steps``: the same with ``XSEQ_DIRECT=0``: the engine's own loop over
  the fused step methods;
* ``array-api``: the same calls with ``XSEQ_FUSED=0``: the array-API
  reference steps; the reference the check compares the others with;
* ``cudnn``: ``torch.nn.LSTM`` on CUDA, which PyTorch runs with cuDNN.

The engine is called directly, with the gate matrices stacked as
``torch.nn.LSTM`` stacks them and time-major input, because that is exactly
what ``nn.LSTM`` computes. Every contender can also run on the CPU
(``device="cpu"``: NumPy arrays, where ``fused`` is xseq's host build of the
same kernels, and torch on the CPU), so that the check itself runs on a
machine without a GPU (``tests/test_benchmarks.py``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import checks

CONTENDERS = ("fused", "fused-steps", "array-api", "cudnn")
REFERENCE = "array-api"
XSEQ_ENV = {  # the switches each xseq contender runs under
    "fused": {"XSEQ_FUSED": "1", "XSEQ_DIRECT": "1"},
    "fused-steps": {"XSEQ_FUSED": "1", "XSEQ_DIRECT": "0"},
    "array-api": {"XSEQ_FUSED": "0", "XSEQ_DIRECT": "1"},
}
MODES = ("forward", "forward+backward")
OUTPUTS = ("Y", "h_T", "c_T")
GRADIENTS = ("dX", "dW_ih", "dW_hh", "db_ih", "db_hh", "dh0", "dc0")


def lstm_problem(size, seed=0):
    """NumPy float32 weights shaped like torch.nn.LSTM's (uniform in +-1/sqrt(H)), input, states and dY."""
    I, H, N, T = size
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(np.float32)

    return dict(
        W_ih=u(4 * H, I), W_hh=u(4 * H, H), b_ih=u(4 * H), b_hh=u(4 * H),
        x=rng.standard_normal((T, N, I)).astype(np.float32),
        h0=np.zeros((N, H), np.float32), c0=np.zeros((N, H), np.float32),
        dY=rng.standard_normal((T, N, H)).astype(np.float32),
    )


@dataclass
class Contender:
    """One contender built for one size.

    ``forward(kept=None)`` and ``forward_backward(kept=None)`` are the timed
    calls; where ``kept`` is a dict (only in the check) they also put there what
    they computed, which ``collect(kept)`` turns into NumPy arrays named like
    the engine's results (``Y``, ``h_T``, ``c_T``, ``dX``, ``dW_ih``, ...).
    ``sync()`` waits for the device; ``describe()`` names the path that ran.
    """

    forward: Callable
    forward_backward: Callable
    sync: Callable
    describe: Callable
    collect: Callable


@contextlib.contextmanager
def switches(contender):
    """The environment switches of an xseq contender (``XSEQ_FUSED``, ``XSEQ_DIRECT``) inside the block."""
    env = XSEQ_ENV.get(contender, {})
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def xseq_contender(size, device="cuda"):
    """xseq's engine on CuPy (``device="cuda"``) or NumPy (``"cpu"``); the XSEQ_* switches are the caller's."""
    import array_api_compat

    from xseq.engine import sequence as engine
    from xseq.ops.select import ops_for

    if device == "cuda":
        import cupy

        to_device, to_host, sync = cupy.asarray, cupy.asnumpy, cupy.cuda.Device().synchronize
    else:
        to_device, to_host, sync = np.asarray, np.asarray, lambda: None
    a = {k: to_device(v) for k, v in lstm_problem(size).items()}
    xp = array_api_compat.array_namespace(a["x"])

    def forward(kept=None):
        out = engine.sequence_forward("lstm", a["x"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"])
        if kept is not None:
            kept.update(zip(OUTPUTS, out[:3]))
        return out

    def forward_backward(kept=None):
        *_, trace = forward(kept)
        grads = engine.sequence_backward(trace, dY=a["dY"])
        if kept is not None:
            kept.update({k: grads[k] for k in GRADIENTS})

    def describe():  # after a first run: whether the direct loop passed its self-check
        ops = type(ops_for(xp, a["x"].dtype)).__name__
        if ops != "FusedCupyOps":
            return ops
        from xseq.ops.cuda import direct_status

        return f"{ops}, {direct_status()}"

    def collect(kept):
        return {k: to_host(v) for k, v in kept.items()}

    return Contender(forward, forward_backward, sync, describe, collect)


def torch_lstm(size, tf32, device="cuda"):
    """torch.nn.LSTM with the problem's weights; input and initial states require gradients, like xseq's."""
    import torch

    if device == "cuda":
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    w = lstm_problem(size)
    I, H, N, T = size
    lstm = torch.nn.LSTM(I, H).to(device)
    with torch.no_grad():
        for name, key in (("weight_ih_l0", "W_ih"), ("weight_hh_l0", "W_hh"), ("bias_ih_l0", "b_ih"), ("bias_hh_l0", "b_hh")):
            getattr(lstm, name).copy_(torch.from_numpy(w[key]))

    def tensor(key, requires_grad=False):
        return torch.from_numpy(w[key]).to(device).requires_grad_(requires_grad)

    x, dY = tensor("x", True), tensor("dY")
    h0, c0 = (torch.from_numpy(w[k]).to(device)[None].requires_grad_(True) for k in ("h0", "c0"))
    return lstm, x, h0, c0, dY


def cudnn_contender(size, tf32=False, device="cuda"):
    import torch

    lstm, x, h0, c0, dY = torch_lstm(size, tf32, device)
    names = {"dW_ih": lstm.weight_ih_l0, "dW_hh": lstm.weight_hh_l0, "db_ih": lstm.bias_ih_l0, "db_hh": lstm.bias_hh_l0}

    def forward(kept=None):
        y, (h_n, c_n) = out = lstm(x, (h0, c0))
        if kept is not None:
            kept.update(Y=y, h_T=h_n[0], c_T=c_n[0])
        return out

    def forward_backward(kept=None):
        lstm.zero_grad(set_to_none=True)
        x.grad = h0.grad = c0.grad = None
        y, _ = forward(kept)
        y.backward(dY)
        if kept is not None:
            kept.update(dX=x.grad, dh0=h0.grad[0], dc0=c0.grad[0], **{k: p.grad for k, p in names.items()})

    def collect(kept):
        return {k: v.detach().cpu().numpy() for k, v in kept.items()}

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    where = "cuDNN" if device == "cuda" else "CPU"
    return Contender(forward, forward_backward, sync, lambda: f"torch.nn.LSTM ({where})", collect)


def contender(name, size, tf32=False, device="cuda"):
    """The :class:`Contender` ``name`` for ``size``; an xseq one must run under :func:`switches` (name)."""
    return cudnn_contender(size, tf32, device) if name == "cudnn" else xseq_contender(size, device)


def check(sizes, contenders, tf32=False, device="cuda", out=print):
    """Every contender, at every timed size and in both modes, against xseq's array-API path.

    The reference (``array-api``, ``XSEQ_FUSED=0``) computes every output and
    gradient once per size; each contender is built as its worker builds it,
    runs each mode once untimed (as the warm-up does) and once more, and every
    output (``Y``, ``h_T``, ``c_T``) and, for forward+backward, every gradient
    (``dX``, ``dW_ih``, ``dW_hh``, ``db_ih``, ``db_hh``, ``dh0``, ``dc0``) must
    match: xseq's fused paths within :data:`checks.SAME_FORMULAS_GPU` (on the
    CPU :data:`checks.SAME_FORMULAS`), cuDNN within
    :data:`checks.OTHER_IMPLEMENTATION`. On the GPU the ``fused`` contender
    must also run the direct loop (not the step methods it falls back to when
    its self-check fails).

    Returns
    -------
    checks.Check
    """
    result = checks.Check()
    for size in sizes:
        label_size = "x".join(map(str, size))
        with switches(REFERENCE):
            reference = contender(REFERENCE, size, tf32, device)
            kept = {}
            reference.forward_backward(kept)
            want = reference.collect(kept)
        for name in contenders:
            with switches(name):
                c = contender(name, size, tf32, device)
                worst = 0.0
                for mode, run in (("forward", c.forward), ("forward+backward", c.forward_backward)):
                    run()
                    kept = {}
                    run(kept)
                    c.sync()
                    required = OUTPUTS + (GRADIENTS if mode == "forward+backward" else ())
                    tolerance = (checks.OTHER_IMPLEMENTATION if name == "cudnn"
                                 else checks.SAME_FORMULAS_GPU if device == "cuda" else checks.SAME_FORMULAS)
                    worst = max(worst, result.compare(f"{label_size} {mode}: {name}", c.collect(kept), want,
                                                      tolerance, required))
                status = c.describe()
            out(f"check {label_size}: {name} runs {status}; largest difference from the reference {worst:.1e} "
                "of its largest value")
            if device == "cuda" and name == "fused" and ": direct launches" not in status:
                result.failures.append(f"{label_size}: fused does not run the direct loop ({status})")
    return result
