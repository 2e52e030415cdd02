"""CPU benchmark: xseq (NumPy float32) against a naive course-style NumPy version and PyTorch.

What is timed
-------------
Models (``--models``):

* ``lstm``, ``rnn`` -- xseq's course functional API (``lstm_forward`` /
  ``lstm_backward``, ``rnn_forward`` / ``rnn_backward``) against

  - ``naive``: what a reader of the course writes, defined in this file: per
    step ``concat([a_prev; xt])``, one GEMM per gate, sigmoid/tanh, softmax
    output, caches in a list; backward per step with the course's per-gate
    formulas, accumulating every dW per step;
  - ``torch``: ``torch.nn.LSTM`` / ``torch.nn.RNN`` + ``nn.Linear`` + softmax
    on CPU, autograd for the backward pass.

* ``gru``, ``lstm-2layer-bidirectional`` -- xseq's layer API (``xseq.GRU`` /
  ``xseq.LSTM(num_layers=2, bidirectional=True)``, ``forward`` then
  ``backward``) against ``torch.nn.GRU`` / ``torch.nn.LSTM`` with the same
  options. No naive contender, no output projection. Skipped with a note
  when the layers are not importable.

Modes: ``forward`` (torch under ``torch.set_grad_enabled(False)``, i.e.
inference; xseq and naive always keep their caches, as the course's forward
does) and ``forward+backward`` (the loss is the same for every contender:
``sum(a * da)`` for a fixed random ``da``; torch runs
``(out * da).sum().backward()`` with ``x.requires_grad``, so it computes
``dx`` like the others. The output softmax is computed in the forward pass by
every contender of ``lstm``/``rnn`` but not back-propagated, as in the course).

Method
------
For every round of every (model, size, mode) the parent starts a fresh worker
process per contender. By default the parent starts two servers -- one that
has imported NumPy and xseq (for the naive and xseq contenders), one that has
imported torch -- which compute nothing and ``fork`` the workers: each starts
like a new interpreter that has just imported its library (no thread pool,
allocator or cache state left by an earlier measurement) without paying the
import again (about 2 s for torch). ``--spawn`` starts every worker as a new
interpreter instead (``bench_cpu.py --worker CONTENDER MODEL SIZE MODE``, also
usable by hand, with ``--profile`` for a cProfile listing).

A worker builds its inputs, runs one warm-up iteration and connects back to
the parent (a Unix socket, JSON messages). The parent then times the
contenders in interleaved turns (A B C A B C ...), order rotated from round
to round, until each has ``--iters`` timed iterations (default 3; a
contender's result for the round is their median). A turn runs two
iterations and times the second, which finds the caches warm again after the
other contenders' turns. Before each turn the parent pauses ``--gap`` seconds
(0.2) so that the previous worker's idle BLAS/OpenMP threads stop spinning.
The table shows, over the ``--repeats`` rounds (default 7), the median time
of each contender and the median of the ratios computed within each round:
this machine's speed drifts over seconds and differs from process to
process, and contenders timed seconds apart in fresh processes see the same
conditions. Thread counts are left at the
libraries' defaults (every core); a worker keeps only one numeric library
busy (naive and xseq workers never import torch). On a machine shared with
other work, ``--wait-idle SECONDS`` waits before each turn until the CPUs are
idle.

OpenBLAS environment: on some processors the machine sets
``OPENBLAS_CORETYPE`` (and ``OPENBLAS_L2_SIZE``) because older OpenBLAS
builds compute wrong results or crash there; they slow down a current NumPy.
The xseq and naive worker processes are started with both variables removed
(together); the torch workers get the environment unchanged.

Before timing, a check process (``--no-check`` skips it) verifies on a tiny
size that naive, xseq and torch compute the same outputs and gradients.

torch's CPU LSTM runs oneDNN's fused LSTM kernels (``aten::mkldnn_rnn_layer``
and its backward) when oneDNN is available, as in the default wheels;
``--torch-no-mkldnn`` turns oneDNN off to time torch's own per-step cells.
torch has no such path for the GRU and the plain RNN.

Usage::

    python benchmarks/bench_cpu.py                      # everything, ~4-6 min on 2 cores
    python benchmarks/bench_cpu.py --wait-idle 30       # the same on a machine others are using
    python benchmarks/bench_cpu.py --models lstm rnn --sizes small
    python benchmarks/bench_cpu.py --quick              # tiny sizes, 1 round: smoke run
    python benchmarks/bench_cpu.py --worker xseq lstm 64x256x64x100 forward+backward --profile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {"small": (64, 256, 64, 100), "large": (123, 320, 64, 100)}
QUICK_SIZE = (10, 16, 4, 6)
MODELS = ("lstm", "rnn", "gru", "lstm-2layer-bidirectional")
FUNCTIONAL = ("lstm", "rnn")
MODES = ("forward", "forward+backward")
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
TORCH_NO_MKLDNN = False  # --torch-no-mkldnn
TARGET = 1.5  # xseq fwd+bwd <= 1.5x torch; naive fwd+bwd >= 1.5x xseq


def size_name(size):
    return "x".join(str(v) for v in size)


def parse_size(text):
    if text in SIZES:
        return SIZES[text]
    parts = text.replace(",", "x").split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: expected small, large or n_x x n_a x m x T_x, e.g. 64x256x64x100")
    return tuple(int(p) for p in parts)


def contenders_for(model):
    return ("naive", "xseq", "torch") if model in FUNCTIONAL else ("xseq", "torch")


# ---------------------------------------------------------------- the problem, shared by all contenders

def make_problem(model, size, seed=0):
    """NumPy float32 inputs in the course's layout: x (n_x, m, T_x), a0, da (n_a, m, T_x), parameters.

    The output size n_y is n_x (a character model predicting its next input).
    Weights are uniform in +-1/sqrt(n_a) like PyTorch's default initialisation.
    """
    import numpy as np

    n_x, n_a, m, T = size
    rng = np.random.default_rng(seed)
    f32 = np.float32
    s = 1.0 / np.sqrt(n_a)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(f32)

    if model == "lstm":
        p = {}
        for g in "fico":
            p[f"W{g}"] = u(n_a, n_a + n_x)
            p[f"b{g}"] = u(n_a, 1)
    elif model == "rnn":
        p = {"Wax": u(n_a, n_x), "Waa": u(n_a, n_a), "ba": u(n_a, 1)}
    else:
        p = {}
    if model == "lstm":
        p["Wy"], p["by"] = u(n_x, n_a), u(n_x, 1)
    elif model == "rnn":
        p["Wya"], p["by"] = u(n_x, n_a), u(n_x, 1)
    x = rng.standard_normal((n_x, m, T)).astype(f32)
    a0 = np.zeros((n_a, m), dtype=f32)
    width = 2 * n_a if model == "lstm-2layer-bidirectional" else n_a
    da = rng.standard_normal((width, m, T)).astype(f32)
    return x, a0, da, p


# ---------------------------------------------------------------- naive: what a reader of the course writes

def _np():
    import numpy as np

    return np


def naive_sigmoid(z):
    return 1 / (1 + _np().exp(-z))


def naive_softmax(z):
    np = _np()
    e = np.exp(z - np.max(z))
    return e / e.sum(axis=0)


def naive_lstm_cell_forward(xt, a_prev, c_prev, parameters):
    np = _np()
    Wf, bf = parameters["Wf"], parameters["bf"]
    Wi, bi = parameters["Wi"], parameters["bi"]
    Wc, bc = parameters["Wc"], parameters["bc"]
    Wo, bo = parameters["Wo"], parameters["bo"]
    Wy, by = parameters["Wy"], parameters["by"]
    concat = np.concatenate((a_prev, xt), axis=0)
    ft = naive_sigmoid(Wf @ concat + bf)
    it = naive_sigmoid(Wi @ concat + bi)
    cct = np.tanh(Wc @ concat + bc)
    c_next = ft * c_prev + it * cct
    ot = naive_sigmoid(Wo @ concat + bo)
    a_next = ot * np.tanh(c_next)
    yt_pred = naive_softmax(Wy @ a_next + by)
    cache = (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)
    return a_next, c_next, yt_pred, cache


def naive_lstm_forward(x, a0, parameters):
    np = _np()
    n_x, m, T_x = x.shape
    n_y, n_a = parameters["Wy"].shape
    a = np.zeros((n_a, m, T_x), dtype=x.dtype)
    c = np.zeros((n_a, m, T_x), dtype=x.dtype)
    y = np.zeros((n_y, m, T_x), dtype=x.dtype)
    a_next = a0
    c_next = np.zeros_like(a0)
    caches = []
    for t in range(T_x):
        a_next, c_next, yt, cache = naive_lstm_cell_forward(x[:, :, t], a_next, c_next, parameters)
        a[:, :, t] = a_next
        c[:, :, t] = c_next
        y[:, :, t] = yt
        caches.append(cache)
    return a, y, c, (caches, x)


def naive_lstm_cell_backward(da_next, dc_next, cache):
    np = _np()
    a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters = cache
    n_a = a_next.shape[0]
    tanh_c = np.tanh(c_next)
    dot = da_next * tanh_c * ot * (1 - ot)
    dcct = (dc_next * it + ot * (1 - tanh_c**2) * it * da_next) * (1 - cct**2)
    dit = (dc_next * cct + ot * (1 - tanh_c**2) * cct * da_next) * it * (1 - it)
    dft = (dc_next * c_prev + ot * (1 - tanh_c**2) * c_prev * da_next) * ft * (1 - ft)
    concat = np.concatenate((a_prev, xt), axis=0)
    Wf, Wi, Wc, Wo = parameters["Wf"], parameters["Wi"], parameters["Wc"], parameters["Wo"]
    return {
        "dWf": dft @ concat.T, "dWi": dit @ concat.T, "dWc": dcct @ concat.T, "dWo": dot @ concat.T,
        "dbf": np.sum(dft, axis=1, keepdims=True), "dbi": np.sum(dit, axis=1, keepdims=True),
        "dbc": np.sum(dcct, axis=1, keepdims=True), "dbo": np.sum(dot, axis=1, keepdims=True),
        "da_prev": Wf[:, :n_a].T @ dft + Wi[:, :n_a].T @ dit + Wc[:, :n_a].T @ dcct + Wo[:, :n_a].T @ dot,
        "dc_prev": dc_next * ft + ot * (1 - tanh_c**2) * ft * da_next,
        "dxt": Wf[:, n_a:].T @ dft + Wi[:, n_a:].T @ dit + Wc[:, n_a:].T @ dcct + Wo[:, n_a:].T @ dot,
    }


def naive_lstm_backward(da, caches):
    np = _np()
    caches, x = caches
    n_a, m, T_x = da.shape
    n_x = x.shape[0]
    dx = np.zeros((n_x, m, T_x), dtype=da.dtype)
    da_prevt = np.zeros((n_a, m), dtype=da.dtype)
    dc_prevt = np.zeros((n_a, m), dtype=da.dtype)
    grads = {f"dW{g}": np.zeros((n_a, n_a + n_x), dtype=da.dtype) for g in "fico"}
    grads.update({f"db{g}": np.zeros((n_a, 1), dtype=da.dtype) for g in "fico"})
    for t in reversed(range(T_x)):
        g = naive_lstm_cell_backward(da[:, :, t] + da_prevt, dc_prevt, caches[t])
        da_prevt, dc_prevt = g["da_prev"], g["dc_prev"]
        dx[:, :, t] = g["dxt"]
        for k in grads:
            grads[k] += g[k]
    grads["dx"], grads["da0"] = dx, da_prevt
    return grads


def naive_rnn_forward(x, a0, parameters):
    np = _np()
    n_x, m, T_x = x.shape
    Wax, Waa, Wya, ba, by = (parameters[k] for k in ("Wax", "Waa", "Wya", "ba", "by"))
    n_y, n_a = Wya.shape
    a = np.zeros((n_a, m, T_x), dtype=x.dtype)
    y = np.zeros((n_y, m, T_x), dtype=x.dtype)
    a_next = a0
    caches = []
    for t in range(T_x):
        xt, a_prev = x[:, :, t], a_next
        a_next = np.tanh(Wax @ xt + Waa @ a_prev + ba)
        y[:, :, t] = naive_softmax(Wya @ a_next + by)
        a[:, :, t] = a_next
        caches.append((a_next, a_prev, xt, parameters))
    return a, y, (caches, x)


def naive_rnn_backward(da, caches):
    np = _np()
    caches, x = caches
    n_a, m, T_x = da.shape
    n_x = x.shape[0]
    dx = np.zeros((n_x, m, T_x), dtype=da.dtype)
    dWax = np.zeros((n_a, n_x), dtype=da.dtype)
    dWaa = np.zeros((n_a, n_a), dtype=da.dtype)
    dba = np.zeros((n_a, 1), dtype=da.dtype)
    da_prevt = np.zeros((n_a, m), dtype=da.dtype)
    for t in reversed(range(T_x)):
        a_next, a_prev, xt, parameters = caches[t]
        dtanh = (1 - a_next**2) * (da[:, :, t] + da_prevt)
        dx[:, :, t] = parameters["Wax"].T @ dtanh
        da_prevt = parameters["Waa"].T @ dtanh
        dWax += dtanh @ xt.T
        dWaa += dtanh @ a_prev.T
        dba += np.sum(dtanh, axis=1, keepdims=True)
    return {"dx": dx, "da0": da_prevt, "dWax": dWax, "dWaa": dWaa, "dba": dba}


# ---------------------------------------------------------------- one step function per contender

def xseq_layer_class(model):
    """The xseq layer class for a layer-based model, or None when not importable yet."""
    try:
        import xseq
    except Exception:
        return None
    name = "GRU" if model == "gru" else "LSTM"
    cls = getattr(xseq, name, None)
    if cls is None:
        try:
            from xseq import layers
        except Exception:
            return None
        cls = getattr(layers, name, None)
    return cls


def layer_options(model):
    return {"num_layers": 2, "bidirectional": True} if model == "lstm-2layer-bidirectional" else {"num_layers": 1, "bidirectional": False}


def build_step(contender, model, size, mode):
    """Return ``step()``, a function running one iteration (forward, or forward then backward)."""
    backward = mode == "forward+backward"
    x, a0, da, p = make_problem(model, size)
    n_x, n_a, m, T = size

    if contender == "naive":
        fwd, bwd = {"lstm": (naive_lstm_forward, naive_lstm_backward), "rnn": (naive_rnn_forward, naive_rnn_backward)}[model]

        def step():
            out = fwd(x, a0, p)
            if backward:
                bwd(da, out[-1])

        return step

    if contender == "xseq":
        if model in FUNCTIONAL:
            import xseq

            fwd, bwd = {"lstm": (xseq.lstm_forward, xseq.lstm_backward), "rnn": (xseq.rnn_forward, xseq.rnn_backward)}[model]

            def step():
                out = fwd(x, a0, p)
                if backward:
                    bwd(da, out[-1])

            return step
        cls = xseq_layer_class(model)
        layer = cls(n_x, n_a, **layer_options(model), backend="numpy", dtype="float32", seed=0)

        def step():
            outputs, _ = layer.forward(x)
            if backward:
                layer.backward(da)

        return step

    if contender == "torch":
        import torch

        torch.manual_seed(0)
        if os.environ.get("BENCH_TORCH_MKLDNN", "1") == "0":
            torch.backends.mkldnn.enabled = False  # torch's own per-step cells instead of oneDNN's fused RNN
        X = torch.from_numpy(x.transpose(2, 1, 0).copy())  # (T, m, n_x): torch's native layout
        dA = torch.from_numpy(da.transpose(2, 1, 0).copy())
        modules = torch_modules(torch, model, size, p)
        if backward:
            X.requires_grad_(True)
        params = [q for mod in modules for q in mod.parameters()]

        def step():
            with torch.set_grad_enabled(backward):
                for q in params:
                    q.grad = None
                X.grad = None
                out, _ = modules[0](X)
                if len(modules) > 1:
                    torch.softmax(modules[1](out), dim=-1)
                if backward:
                    (out * dA).sum().backward()

        return step

    raise ValueError(f"unknown contender {contender!r}")


def torch_modules(torch, model, size, p):
    """torch modules for a model; for lstm/rnn, loaded with the course parameters ``p``."""
    n_x, n_a, m, T = size
    nn = torch.nn
    if model == "gru":
        return [nn.GRU(n_x, n_a)]
    if model == "lstm-2layer-bidirectional":
        return [nn.LSTM(n_x, n_a, num_layers=2, bidirectional=True)]
    import numpy as np

    if model == "lstm":
        rnn = nn.LSTM(n_x, n_a)
        W = np.concatenate([p[f"W{g}"] for g in "ifco"], axis=0)  # torch's gate order i, f, g, o
        b = np.concatenate([p[f"b{g}"] for g in "ifco"], axis=0)[:, 0]
        w_ih, w_hh, Wy, by = W[:, n_a:], W[:, :n_a], p["Wy"], p["by"]
    else:
        rnn = nn.RNN(n_x, n_a, nonlinearity="tanh")
        w_ih, w_hh, b, Wy, by = p["Wax"], p["Waa"], p["ba"][:, 0], p["Wya"], p["by"]
    lin = nn.Linear(n_a, Wy.shape[0])
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(w_ih)))
        rnn.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(w_hh)))
        rnn.bias_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(b)))
        rnn.bias_hh_l0.zero_()
        lin.weight.copy_(torch.from_numpy(Wy))
        lin.bias.copy_(torch.from_numpy(by[:, 0].copy()))
    return [rnn, lin]


# ---------------------------------------------------------------- processes

GROUPS = {"naive": "numpy", "xseq": "numpy", "torch": "torch"}  # which server forks a contender's workers


def time_iterations(step, iters):
    """``iters`` timed iterations of ``step``; returns their times in milliseconds."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def serve_case(contender, model, size, mode, address):
    """A worker: build the case, run one warm-up iteration, then time iterations on request.

    Connects to the parent at ``address`` and answers ``{"iters": k}`` with the
    times of k iterations, until ``{"quit": true}`` or the connection closes.
    Messages are JSON (``send_bytes``), never pickles.
    """
    from multiprocessing.connection import Client

    with Client(address, family="AF_UNIX") as conn:
        try:
            step = build_step(contender, model, size, mode)
            step()  # warm-up
        except BaseException:
            import traceback

            conn.send_bytes(json.dumps({"error": traceback.format_exc()}).encode())
            return 1
        conn.send_bytes(json.dumps({"ready": os.getpid()}).encode())
        while True:
            try:
                req = json.loads(conn.recv_bytes())
            except EOFError:
                return 0
            if req.get("quit"):
                return 0
            conn.send_bytes(json.dumps({"ms": time_iterations(step, int(req["iters"]))}).encode())


def run_worker(args):
    contender, model, size_text, mode = args.worker
    size = parse_size(size_text)
    if args.connect:
        return serve_case(contender, model, size, mode, args.connect)
    step = build_step(contender, model, size, mode)
    step()
    if not args.profile:
        times = time_iterations(step, args.iters)
        print(json.dumps({"ms": statistics.median(times), "all_ms": times}), flush=True)
        return 0
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(args.iters):
        step()
    prof.disable()
    ms = (time.perf_counter() - t0) / args.iters * 1e3
    print(f"{contender} {model} {size_name(size)} {mode}: {ms:.1f} ms/iteration under cProfile")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


def run_server(group):
    """Import one group's libraries, then fork a fresh worker for every request read from stdin.

    A request is a JSON list ``[contender, model, size, mode, address]``; the
    forked child runs :func:`serve_case`, talking to the parent at ``address``;
    the server answers with the child's pid and reaps children as they exit.
    The server itself never computes anything, so each child starts like a new
    interpreter that has just imported the library (no thread pool, allocator
    or cache state from an earlier measurement), without paying the import
    again (about 2 s for torch).
    """
    import numpy  # noqa: F401  (both groups: torch imports it too)

    if group == "torch":
        import torch  # noqa: F401
    else:
        import xseq  # noqa: F401

        xseq_layer_class("gru")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        contender, model, size_text, mode, address = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = serve_case(contender, model, parse_size(size_text), mode, address)
            finally:
                os._exit(code)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        while True:  # reap the workers that have finished
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if done == 0:
                break
    return 0


def worker_env(contender):
    env = dict(os.environ)
    env["BENCH_TORCH_MKLDNN"] = "0" if TORCH_NO_MKLDNN else "1"
    if contender in ("naive", "xseq"):
        for var in OPENBLAS_VARS:
            env.pop(var, None)
    return env


def spawn(argv, contender=None):
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(contender), cwd=str(ROOT))
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


class Case:
    """One round of one (model, size, mode): a fresh worker process per contender, all alive at once, timed in turns."""

    def __init__(self, runner, model, size, mode, contenders):
        self.conns = {}
        for contender in contenders:
            self.conns[contender] = runner.start_worker(contender, model, size, mode)

    def time(self, contender, iters):
        conn = self.conns[contender]
        conn.send_bytes(json.dumps({"iters": iters}).encode())
        return json.loads(conn.recv_bytes())["ms"]

    def close(self):
        for conn in self.conns.values():
            try:
                conn.send_bytes(json.dumps({"quit": True}).encode())
            except OSError:
                pass
            conn.close()
        self.conns = {}


class Runner:
    """Starts worker processes: forked from a per-library server, or (``spawn``) new interpreters."""

    def __init__(self, spawn_each=False):
        import tempfile
        from multiprocessing.connection import Listener

        self.spawn_each = spawn_each or not hasattr(os, "fork")
        self.servers = {}
        self.procs = []
        self.tmp = tempfile.TemporaryDirectory(prefix="bench_cpu_")
        self.address = os.path.join(self.tmp.name, "parent.sock")
        self.listener = Listener(self.address, family="AF_UNIX")

    def start_worker(self, contender, model, size, mode):
        if self.spawn_each:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", contender, model, size_name(size), mode,
                   "--connect", self.address]
            self.procs.append(subprocess.Popen(cmd, env=worker_env(contender), cwd=str(ROOT)))
        else:
            server = self._server(GROUPS[contender], contender)
            server.stdin.write(json.dumps([contender, model, size_name(size), mode, self.address]) + "\n")
            server.stdin.flush()
            if not server.stdout.readline():
                raise RuntimeError(f"the {GROUPS[contender]} server exited (exit {server.wait()})")
        conn = self.listener.accept()
        hello = json.loads(conn.recv_bytes())
        if "error" in hello:
            raise RuntimeError(f"{contender} {model} {size_name(size)} {mode} failed:\n{hello['error']}")
        return conn

    def _server(self, group, contender):
        if group not in self.servers:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--server", group]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env=worker_env(contender), cwd=str(ROOT))
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {group} server failed to start (exit {proc.wait()})")
            self.servers[group] = proc
        return self.servers[group]

    def close(self):
        for proc in self.servers.values():
            proc.stdin.close()
            proc.wait()
        for proc in self.procs:
            proc.wait()
        self.servers, self.procs = {}, []
        self.listener.close()
        self.tmp.cleanup()


# ---------------------------------------------------------------- agreement check (tiny size, one process)

def run_check():
    """naive, xseq and torch give the same outputs and gradients on a tiny problem (one process, all libraries)."""
    import numpy as np
    import torch

    import xseq

    size = (5, 7, 3, 4)
    worst, checked = 0.0, []

    def compare(model, name, ref, got):
        nonlocal worst
        ref, got = np.asarray(ref), np.asarray(got)
        err = float(np.max(np.abs(ref - got)) / (np.max(np.abs(ref)) + 1e-30))
        worst = max(worst, err)
        if not err < 1e-4:
            print(f"MISMATCH {model} {name}: relative error {err:.2e}")
            sys.exit(1)

    def course(t):  # torch (T, m, n) -> course (n, m, T)
        return t.detach().numpy().transpose(2, 1, 0)

    for model in FUNCTIONAL:
        x, a0, da, p = make_problem(model, size, seed=1)
        if model == "lstm":
            a_n, y_n, _, c_n = naive_lstm_forward(x, a0, p)
            g_n = naive_lstm_backward(da, c_n)
            a_x, y_x, _, c_x = xseq.lstm_forward(x, a0, p)
            g_x = xseq.lstm_backward(da, c_x)
            keys = ["dx", "da0"] + [f"{k}{g}" for k in ("dW", "db") for g in "fico"]
        else:
            a_n, y_n, c_n = naive_rnn_forward(x, a0, p)
            g_n = naive_rnn_backward(da, c_n)
            a_x, y_x, c_x = xseq.rnn_forward(x, a0, p)
            g_x = xseq.rnn_backward(da, c_x)
            keys = ["dx", "da0", "dWax", "dWaa", "dba"]
        mods = torch_modules(torch, model, size, p)
        X = torch.from_numpy(x.transpose(2, 1, 0).copy()).requires_grad_(True)
        out, _ = mods[0](X)
        y_t = torch.softmax(mods[1](out), dim=-1)
        (out * torch.from_numpy(da.transpose(2, 1, 0).copy())).sum().backward()
        for name, ref, got in [("a", a_n, a_x), ("y", y_n, y_x)] + [(k, g_n[k], g_x[k]) for k in keys]:
            compare(model, f"naive vs xseq {name}", ref, got)
        compare(model, "torch a", a_x, course(out))
        compare(model, "torch y", y_x, course(y_t))
        compare(model, "torch dx", g_x["dx"], course(X.grad))
        if model == "lstm":
            dW_x = np.concatenate([g_x[f"dW{g}"][:, :size[1]] for g in "ifco"], axis=0)
        else:
            dW_x = g_x["dWaa"]
        compare(model, "torch dW_hh", dW_x, mods[0].weight_hh_l0.grad.numpy())
        checked.append(f"{model} (naive, xseq, torch)")

    for model in MODELS[2:]:
        cls = xseq_layer_class(model)
        if cls is None:
            continue
        n_x, n_a, m, T = size
        torch.manual_seed(1)
        module = getattr(torch.nn, cls.__name__)(n_x, n_a, **layer_options(model))
        layer = cls.from_torch(module, backend="numpy", dtype="float32")
        x, a0, da, p = make_problem(model, size, seed=1)
        out, _ = layer.forward(x)
        dx = layer.backward(da)
        X = torch.from_numpy(x.transpose(2, 1, 0).copy()).requires_grad_(True)
        out_t, _ = module(X)
        (out_t * torch.from_numpy(da.transpose(2, 1, 0).copy())).sum().backward()
        compare(model, "outputs", course(out_t), out)
        compare(model, "dx", course(X.grad), dx)
        compare(model, "dW_hh_l0", module.weight_hh_l0.grad.numpy(), layer.grads["weight_hh_l0"])
        checked.append(f"{model} (xseq, torch)")
    print(json.dumps({"worst_relative_error": worst, "checked": ", ".join(checked)}))


# ---------------------------------------------------------------- machine description

def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    lines = [
        f"CPU: {cpu} ({platform.machine()}), {os.cpu_count()} logical cores, {usable} usable",
        f"OS: {platform.platform()}; Python {platform.python_version()}",
    ]
    info = json.loads(spawn(["--info"], "xseq").strip().splitlines()[-1])
    lines.append(f"numpy {info['numpy']}; BLAS: {info['blas']}")
    lines.append(f"torch {info['torch']}; {info['torch_threads']} intra-op threads; {info['torch_blas']}")
    lines.append(f"xseq's NumPy steps: {info['xseq_steps']}")
    env_set = {v: os.environ[v] for v in OPENBLAS_VARS if v in os.environ}
    if env_set:
        lines.append(f"environment: {env_set} -- removed for the naive and xseq workers")
    else:
        lines.append("environment: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE not set")
    return lines


def cpu_idle(seconds):
    """Fraction of CPU time idle over the next ``seconds`` (Linux /proc/stat), or None."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(n) for n in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    try:
        t1, i1 = sample()
        time.sleep(seconds)
        t2, i2 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (i2 - i1) / max(t2 - t1, 1)


def wait_until_idle(max_wait):
    """Before a measurement: wait (at most ``max_wait`` s) until other processes leave the CPUs idle.

    Returns the seconds waited, or None when the machine stayed busy.
    """
    t0 = time.perf_counter()
    while True:
        idle = cpu_idle(0.25)
        if idle is None or idle >= 0.85:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > max_wait:
            return None
        time.sleep(1.0)


def load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def openblas_corename(np):
    """The OpenBLAS kernel set NumPy's bundled OpenBLAS picked for this CPU ('Zen', 'SkylakeX', ...), or None."""
    import ctypes
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
            f = getattr(lib, sym, None)
            if f is not None:
                f.restype = ctypes.c_char_p
                return f().decode()
    return None


def run_info():
    """Describe the numeric libraries (run in its own process, like a naive/xseq worker)."""
    import numpy as np

    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version', '')}".strip()
    except Exception:
        pass
    corename = openblas_corename(np)
    if corename:
        blas += f" (core {corename})"
    try:
        import threadpoolctl

        pools = threadpoolctl.threadpool_info()
        blas += "; threadpoolctl: " + ", ".join(
            f"{p.get('internal_api')} {p.get('version')} {p.get('architecture', '')} {p.get('num_threads')} threads" for p in pools
        )
    except ImportError:
        blas += " (threadpoolctl not installed: thread count is OpenBLAS's default)"
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    torch_threads, torch_blas = "?", ""
    if torch_version != "not installed":
        import torch

        torch_threads = torch.get_num_threads()
        par = torch.__config__.parallel_info().splitlines()
        found = [line.strip() for line in par if any(k in line for k in ("Math Kernel", "OpenBLAS", "MKL-DNN", "oneDNN"))]
        torch_blas = "; ".join(found) or ("MKL" if torch.backends.mkl.is_available() else "BLAS unknown")
    try:
        from xseq import _host_kernels

        steps = _host_kernels.status()
    except ImportError as exc:
        steps = f"unknown ({exc})"
    print(json.dumps({"numpy": np.__version__, "blas": blas, "torch": torch_version,
                      "torch_threads": torch_threads, "torch_blas": torch_blas, "xseq_steps": steps}))


# ---------------------------------------------------------------- parent: schedule, table, targets

def fmt_ms(v):
    return "—" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def fmt_x(v):
    return "—" if v is None else f"{v:.2f}x"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                    help="small (64x256x64x100), large (123x320x64x100) or n_x x n_a x m x T_x; default both")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds: turns per contender and case (default 7; 1 with --quick)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per turn (default 3; 1 with --quick)")
    ap.add_argument("--gap", type=float, default=0.2, metavar="SECONDS",
                    help="pause before each turn, so that the previous contender's idle BLAS/OpenMP threads stop "
                         "spinning (default 0.2)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: size {size_name(QUICK_SIZE)}, 1 round, 1 iteration")
    ap.add_argument("--no-check", action="store_true", help="skip the naive/xseq/torch agreement check")
    ap.add_argument("--spawn", action="store_true",
                    help="start every measurement as a new interpreter (bench_cpu.py --worker ...) instead of "
                         "forking it from a server that has imported the library; ~2 s more per torch measurement")
    ap.add_argument("--torch-no-mkldnn", action="store_true",
                    help="turn oneDNN off in the torch workers (torch.backends.mkldnn.enabled = False): torch's "
                         "LSTM then runs its own per-step cells instead of oneDNN's fused LSTM kernels")
    ap.add_argument("--json", metavar="PATH", help="also write every measurement (all rounds) to PATH")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each measurement, wait up to SECONDS for the CPUs to be idle (>= 85%% over 0.25 s): "
                         "for a machine shared with other work; 0 (default) never waits")
    ap.add_argument("--worker", nargs=4, metavar=("CONTENDER", "MODEL", "SIZE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--connect", metavar="ADDRESS", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="with --worker: run under cProfile and print the top functions")
    ap.add_argument("--info", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.iters is None:
        args.iters = 1 if args.quick else 3
    if args.worker:
        return run_worker(args)
    if args.info:
        return run_info()
    if args.check:
        return run_check()
    if args.server:
        return run_server(args.server)

    global TORCH_NO_MKLDNN
    TORCH_NO_MKLDNN = args.torch_no_mkldnn
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 7)
    sizes = [QUICK_SIZE] if args.quick else (args.sizes or [SIZES["small"], SIZES["large"]])
    if repeats < 5 and not args.quick:
        print(f"note: {repeats} repeats; the method asks for at least 5")

    print("Machine")
    for line in machine_info():
        print("  " + line)
    load_before = load_average()
    idle = cpu_idle(1.0)
    if idle is not None and idle < 0.85:
        print(f"warning: the CPUs were only {idle:.0%} idle before the run: other processes are busy and the "
              "timings will be noisy (each library uses every core); see --wait-idle")

    models = []
    for model in args.models:
        if model in FUNCTIONAL or xseq_layer_class(model) is not None:
            models.append(model)
        else:
            name = "xseq.GRU" if model == "gru" else "xseq.LSTM"
            print(f"note: skipping {model}: {name} (xseq/layers.py) is not importable yet")

    if not args.no_check:
        res = json.loads(spawn(["--check"]).strip().splitlines()[-1])
        print(f"check: {res['checked']} agree (outputs and gradients; worst relative error {res['worst_relative_error']:.1e})")

    cases = [(model, size, mode) for model in models for size in sizes for mode in args.modes]
    results = {(c, *case): [] for case in cases for c in contenders_for(case[0])}
    ratios = {(case, kind): [] for case in cases for kind in ("xseq/torch", "naive/xseq")}
    how = "new interpreters" if args.spawn else "forked from per-library servers"
    if args.torch_no_mkldnn:
        how += "; torch with oneDNN turned off"
    print(f"{len(cases)} cases x {repeats} rounds; each round of a case starts a fresh worker process per "
          f"contender ({how}), then times {args.iters} iterations of each in interleaved turns "
          f"(two iterations a turn, the second timed), {args.gap:g} s apart", flush=True)
    t_start = time.perf_counter()
    busy, waited = 0, 0.0
    runner = Runner(spawn_each=args.spawn)
    try:
        for r in range(repeats):
            for case in cases:
                model, size, mode = case
                cs = list(contenders_for(model))
                k = r % len(cs)
                order = cs[k:] + cs[:k]
                live = Case(runner, model, size, mode, order)
                turns = {contender: [] for contender in order}
                try:
                    # Interleaved turns (A B C A B C ...): the contenders' timed iterations are
                    # as close in time as they can be, so drift hits all of them alike. A turn
                    # runs two iterations and keeps the second: the first warms the caches the
                    # other contenders just used, so what is timed is a warm iteration, as in a
                    # training loop.
                    for _ in range(args.iters):
                        for contender in order:
                            if args.wait_idle > 0:
                                w = wait_until_idle(args.wait_idle)
                                busy += w is None
                                waited += w or args.wait_idle
                            time.sleep(args.gap)  # let the last contender's spinning threads go to sleep
                            turns[contender].append(live.time(contender, 2)[-1])
                finally:
                    live.close()
                this_round = {contender: statistics.median(ms) for contender, ms in turns.items()}
                for contender, ms in this_round.items():
                    results[(contender, *case)].append(ms)
                if "torch" in this_round:
                    ratios[(case, "xseq/torch")].append(this_round["xseq"] / this_round["torch"])
                if "naive" in this_round:
                    ratios[(case, "naive/xseq")].append(this_round["naive"] / this_round["xseq"])
            print(f"  round {r + 1}/{repeats} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    finally:
        runner.close()
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"contender": c, "model": m_, "size": list(sz), "mode": md, "ms": v} for (c, m_, sz, md), v in results.items()],
            indent=1))

    med = {key: statistics.median(v) for key, v in results.items()}
    ratio = {key: statistics.median(v) for key, v in ratios.items() if v}
    spread = max(((max(v) - min(v)) / statistics.median(v), key) for key, v in results.items())
    print()
    print(f"Times: median over {repeats} rounds of each contender's median of {args.iters} interleaved iterations, milliseconds.")
    print("Ratios: median over the rounds of the ratio within the round (the two contenders timed seconds apart).")
    print()
    print("| model | size (n_x, n_a, m, T_x) | mode | naive ms | xseq ms | torch ms | xseq/torch | naive/xseq |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for case in cases:
        model, size, mode = case
        nv, xs, tc = (med.get((c, *case)) for c in ("naive", "xseq", "torch"))
        print(f"| {model} | {size} | {mode} | {fmt_ms(nv)} | {fmt_ms(xs)} | {fmt_ms(tc)} "
              f"| {fmt_x(ratio.get((case, 'xseq/torch')))} | {fmt_x(ratio.get((case, 'naive/xseq')))} |")

    print()
    print("Targets (forward+backward; median per-round ratio, and the range over the rounds)")
    all_met = True
    for case in cases:
        model, size, mode = case
        if mode != "forward+backward":
            continue
        for kind, text, ok_if in (("xseq/torch", f"xseq <= {TARGET}x torch", lambda v: v <= TARGET),
                                  ("naive/xseq", f"naive >= {TARGET}x xseq", lambda v: v >= TARGET)):
            v = ratio.get((case, kind))
            if v is None:
                continue
            ok = ok_if(v)
            all_met &= ok
            lo, hi = min(ratios[(case, kind)]), max(ratios[(case, kind)])
            print(f"  {model} {size}: {text}: {'met' if ok else 'NOT MET'} ({v:.2f}x; rounds {lo:.2f}x-{hi:.2f}x)")
    print(f"all targets {'met' if all_met else 'NOT met'}")
    if repeats > 1:
        c, m_, sz, md = spread[1]
        print(f"noise: widest spread of one contender's times over the rounds is {spread[0]:.0%} of its median "
              f"({c} {m_} {sz} {md})")
    load_after = load_average()
    if args.wait_idle > 0:
        n_turns = sum(len(v) for v in results.values())
        print(f"waited {waited:.0f} s in all for idle CPUs; {busy} of {n_turns} turns started on a busy machine")
    if load_before is not None:
        print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f} (the run itself adds about 1-2)")
    print(f"timing took {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
