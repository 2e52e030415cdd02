"""Run the fused kernels' CUDA source on the CPU and compare it with the reference math.

There is no GPU in CI, but the operation strings in ``xseq.ops.kernel_source.KERNELS``
are plain C++ once the CUDA qualifiers are defined away. This test compiles
every kernel, for float and double, with the system C++ compiler inside a
host loop ``for (i = 0; i < n; ++i)`` that binds the parameters the way
``cupy.ElementwiseKernel`` does, loads the library with ctypes, and then
drives the real ``FusedCupyOps`` methods with it on NumPy sequence buffers
(``xseq.ops.cuda.kernel`` is swapped for the host build). Every buffer the
step writes is compared with what ``ArrayAPIOps`` (the definitions in
``xseq.ops.pointwise``) writes, on random inputs and on extreme ones
(pre-activations up to |z| = 100, where exp and tanh saturate or underflow).
The last test runs whole sequences through the engine with ``FusedCupyOps``
(masks, reversed direction, every cell): the CuPy path minus CuPy.

Every test runs twice: with this file's strict build of the CUDA source
(CuPy's flat loop, no fast math) and with the build xseq itself uses for
NumPy arrays (``xseq.ops.host``), so the kernels that run on the CPU
meet the same checks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import warnings
from types import SimpleNamespace

import array_api_compat
import numpy as np
import pytest

from xseq.engine import sequence as engine
from xseq.ops import cuda, fused, kernel_source
from xseq.ops import host as host_kernels
from xseq.ops.cuda import FusedCupyOps
from xseq.ops.kernel_source import CTYPES, KERNELS, elementwise_signature
from xseq.ops.reference import ArrayAPIOps

from .helpers import ENGINE_STEPS, engine_sequence

CXX = next(
    (path for path in (shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++") if c) if path),
    None,
)
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or c++) found on PATH")

DTYPES = [np.float32, np.float64]

# NVRTC declares the CUDA qualifiers and float/double overloads of the math
# functions implicitly; on the host the qualifiers mean nothing and the
# overloads come from <cmath>.
HOST_PRELUDE = r"""
#include <cmath>
#include <cstddef>
#define __device__
#define __forceinline__ inline
using std::exp;
using std::fabs;
using std::tanh;
"""


def host_function(name, src, ctype):
    """One kernel as a host function: ElementwiseKernel's bindings and loop, our operation."""
    params, binding_lines = elementwise_signature(name, src)
    return f"""
namespace k_{name}_{ctype} {{
typedef {ctype} T;
{src.preamble}
extern "C" void {name}_{ctype}({", ".join(params)}) {{
    for (ptrdiff_t i = 0; i < _n; ++i) {{
        {binding_lines}
        {src.operation};
    }}
}}
}}
"""


@pytest.fixture(scope="session")
def host_lib(tmp_path_factory):
    """All kernels in both precisions, compiled once per session into one shared library."""
    build = tmp_path_factory.mktemp("xseq_host_kernels")
    source = build / "kernels.cpp"
    library = build / "kernels.so"
    source.write_text(
        HOST_PRELUDE
        + "".join(host_function(name, src, ctype) for name, src in KERNELS.items() for ctype in CTYPES.values())
    )
    # -ffp-contract=off: no fused multiply-adds, so every + and * rounds once,
    # as each NumPy operation of the reference does (x86-64 has no FMA in its
    # baseline anyway, aarch64 has, and GCC would contract there).
    cmd = [CXX, "-O2", "-shared", "-fPIC", "-std=c++17", "-ffp-contract=off", str(source), "-o", str(library)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"host build of the kernels failed:\n{' '.join(cmd)}\n{proc.stderr}\n--- source ---\n{source.read_text()}")
    return ctypes.CDLL(str(library))


class HostKernel:
    """Called like ``cupy.ElementwiseKernel``: inputs then outputs, dtype taken from the arrays."""

    def __init__(self, lib, name, launches):
        self.lib, self.name, self.launches = lib, name, launches
        self.params = KERNELS[name].parameters()

    def __call__(self, *args):
        assert len(args) == len(self.params), f"{self.name}: {len(args)} arguments for {len(self.params)} parameters"
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        dtype = arrays[0].dtype
        shape, c_args, argtypes = None, [], []
        for (pname, typ, raw, is_output), a in zip(self.params, args):
            if typ == "int32":
                assert isinstance(a, int), f"{self.name}: {pname} must be a Python int"
                c_args.append(a)
                argtypes.append(ctypes.c_int)
                continue
            assert isinstance(a, np.ndarray) and a.dtype == dtype, f"{self.name}: {pname} is not a {dtype} array"
            # The host loop indexes every array linearly and writes outputs in
            # place; the step views of the sequence buffers are C-contiguous,
            # and so are this test's inputs (strided ones are left to the GPU
            # test, where CuPy does the indexing).
            assert a.flags.c_contiguous, f"{self.name}: {pname} is not C-contiguous"
            if not raw:
                assert shape in (None, a.shape), f"{self.name}: {pname} has shape {a.shape}, others {shape}"
                shape = a.shape
            c_args.append(a.ctypes.data)
            argtypes.append(ctypes.c_void_p)
        fn = getattr(self.lib, f"{self.name}_{CTYPES[dtype]}")
        fn.argtypes = argtypes + [ctypes.c_ssize_t]
        fn.restype = None
        fn(*c_args, int(np.prod(shape)))
        self.launches.append(self.name)


class Recording:
    """A kernel of xseq's own host build (``xseq.ops.host``), recording its launches."""

    def __init__(self, kernel, name, launches):
        self.kernel, self.name, self.launches = kernel, name, launches

    def __call__(self, *args):
        self.kernel(*args)
        self.launches.append(self.name)


@pytest.fixture(params=["cuda-source", "xseq-build"])
def launches(request, host_lib, monkeypatch):
    """Route FusedCupyOps' launches to a host build; returns the list of kernels launched.

    ``cuda-source``: this test's strict build of the CUDA source as CuPy runs it (flat loop,
    no fast math). ``xseq-build``: the build xseq itself uses for NumPy arrays
    (``xseq.ops.host``: row/column loops, -O3 -march=native -ffast-math), so that
    every check below holds for the kernels that actually run on the CPU too.
    """
    calls = []
    if request.param == "cuda-source":
        monkeypatch.setattr(cuda, "kernel", lambda name: HostKernel(host_lib, name, calls))
    else:
        built = host_kernels.library()
        if built.lib is None:
            pytest.skip(f"xseq's host build is unavailable here: {built.reason}")
        monkeypatch.setattr(
            cuda, "kernel", lambda name: Recording(host_kernels.HostKernel(built.lib, name), name, calls)
        )
    return calls


# ---------------------------------------------------------------- buffers of a real step

XP = array_api_compat.array_namespace(np.empty(0))  # NumPy as the engine sees it
M, N_A, T_STEPS = 5, 7, 3
STEP = 1  # a middle step, so that writes to the wrong t would show
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SAVED = {"rnn": 0, "lstm": 4, "gru": 4}

# Relative tolerance as specified: about 8 ulps in float32, thousands in
# float64. The absolute floor on top of it is what an honest comparison
# needs: the two sides use different exp/tanh implementations (NumPy's
# against the C library's), which may differ by an ulp, and the reference's
# own formulas amplify that where they cancel -- 1 - tanh(c)**2 when tanh(c)
# is near 1 has only a few significant bits left, and dc + dh*o*(1 - tanh(c)**2),
# f*c_prev + i*g or n + z*(h - n) can cancel too -- into an absolute error of
# an ulp or two *of the terms*, which can be much larger than the result.
# The worst seen over 300 random seeds of these inputs is 14 ulps of the
# output's largest magnitude (LSTM backward, extreme regime, float32 and
# float64 alike: dc = 0.01 plus a term of 1e-6 whose last bits differ, times
# c_prev = -12); so atol = ABS_ULPS ulps of that magnitude, about 2e-6 of it
# in float32 and 4e-15 in float64. A wrong gate, offset or formula shows up
# as an O(1) relative error. Subnormal results (sigmoid(-100) in float32)
# sit far below this floor.
RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
ABS_ULPS = 16


def assert_close(got, want, what):
    want_finite = np.nan_to_num(want, nan=0.0)
    scale = float(np.max(np.abs(want_finite), initial=0.0))
    atol = ABS_ULPS * float(np.finfo(want.dtype).eps) * scale
    np.testing.assert_allclose(got, want, rtol=RTOL[want.dtype], atol=atol, equal_nan=True, err_msg=what)


def make_inputs(kind, dtype, regime, rng):
    """Step inputs; 'extreme' drives pre-activations over the whole of [-100, 100]."""
    G = GATES[kind]

    def uniform(lo, hi, shape):
        return rng.uniform(lo, hi, size=shape)

    if regime == "random":
        xw, hw = uniform(-3, 3, (M, G * N_A)), uniform(-3, 3, (M, G * N_A))
        b_hn, state = uniform(-1, 1, (N_A,)), uniform(-3, 3, (M, N_A))
    else:
        xw, hw = uniform(-90, 90, (M, G * N_A)), uniform(-10, 10, (M, G * N_A))
        # Pin the ends and the sigmoid's branch point exactly.
        xw.flat[:4], hw.flat[:4] = [100, -100, 0, -0.0], 0
        b_hn, state = uniform(-50, 50, (N_A,)), uniform(-20, 20, (M, N_A))
    dh, dy, dc = uniform(-1, 1, (M, N_A)), uniform(-1, 1, (M, N_A)), uniform(-1, 1, (M, N_A))
    arrays = dict(xw=xw, hw=hw, b_hn=b_hn, dh=dh, dy=dy, dc=dc)
    cast = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in arrays.items()}
    cast["state"] = np.ascontiguousarray(state, dtype=dtype)
    return cast


def make_buffers(kind, dtype, state):
    """Sequence buffers as the engine lays them out, NaN everywhere the step should not touch."""
    nan = np.nan
    S = np.full((T_STEPS + 1, M, N_A), nan, dtype=dtype)
    S[STEP] = state
    C = np.full((T_STEPS + 1, M, N_A), nan, dtype=dtype) if kind == "lstm" else None
    if C is not None:
        C[STEP] = state[::-1]  # a cell state unlike h
    saved = np.full((T_STEPS, M, SAVED[kind] * N_A), nan, dtype=dtype) if SAVED[kind] else None
    return dict(S=S, C=C, saved=saved)


def forward(ops, kind, bufs, inp):
    S, C, saved, t = bufs["S"], bufs["C"], bufs["saved"], STEP
    if kind == "rnn":
        ops.rnn_forward(inp["xw"], inp["hw"], saved, S, t)
    elif kind == "lstm":
        ops.lstm_forward(inp["xw"], inp["hw"], C[t], saved, C, S, t)
    else:
        ops.gru_forward(inp["xw"], inp["hw"], inp["b_hn"], S[t], saved, S, t)


def backward(ops, kind, bufs, inp):
    """Returns (written buffers, returned array)."""
    S, C, saved, t = bufs["S"], bufs["C"], bufs["saved"], STEP
    G = GATES[kind]
    dZ = np.full((T_STEPS, M, G * N_A), np.nan, dtype=S.dtype)
    if kind == "rnn":
        ops.rnn_backward(S, t, inp["dh"], inp["dy"], dZ)
        return {"dZ": dZ}, None
    if kind == "lstm":
        dc_prev = ops.lstm_backward(saved, C, t, inp["dh"], inp["dy"], inp["dc"], dZ)
        return {"dZ": dZ}, dc_prev
    dHW = np.full_like(dZ, np.nan)
    dh_direct = ops.gru_backward(saved, S, t, inp["dh"], inp["dy"], dZ, dHW)
    return {"dXW": dZ, "dHW": dHW}, dh_direct


def copy_buffers(bufs):
    return {k: (None if v is None else v.copy()) for k, v in bufs.items()}


KINDS = ["rnn", "lstm", "gru"]
REGIMES = ["random", "extreme"]


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_reference(kind, dtype, regime, launches):
    inp = make_inputs(kind, dtype, regime, np.random.default_rng(0))
    ref_bufs = make_buffers(kind, dtype, inp["state"])
    fused_bufs = copy_buffers(ref_bufs)
    forward(ArrayAPIOps(XP), kind, ref_bufs, inp)
    forward(FusedCupyOps(XP, direct=False), kind, fused_bufs, inp)

    assert launches == [f"xseq_{kind}_forward"], "one kernel launch per forward step"
    for key, want in ref_bufs.items():
        if want is not None:
            assert np.isfinite(want[STEP + (key != "saved")]).all(), "reference produced non-finite values"
            assert_close(fused_bufs[key], want, f"{kind} forward: buffer {key}")


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_reference(kind, dtype, regime, launches):
    inp = make_inputs(kind, dtype, regime, np.random.default_rng(1))
    bufs = make_buffers(kind, dtype, inp["state"])
    # Backward reads what forward saved; the reference forward provides it for both sides.
    forward(ArrayAPIOps(XP), kind, bufs, inp)
    want_bufs, want_ret = backward(ArrayAPIOps(XP), kind, copy_buffers(bufs), inp)
    got_bufs, got_ret = backward(FusedCupyOps(XP, direct=False), kind, copy_buffers(bufs), inp)

    assert launches == [f"xseq_{kind}_backward"], "one kernel launch per backward step"
    for key, want in want_bufs.items():
        assert np.isfinite(want[STEP]).all(), "reference produced non-finite values"
        assert_close(got_bufs[key], want, f"{kind} backward: buffer {key}")
    if want_ret is None:
        assert got_ret is None
    else:
        assert got_ret.shape == want_ret.shape and got_ret.dtype == want_ret.dtype
        assert_close(got_ret, want_ret, f"{kind} backward: returned array")


def test_sigmoid_is_stable_and_exact_at_the_ends(host_lib, launches):
    """sigmoid at +-100 (and beyond float32's exp range) is 1 and a tiny non-negative number, never NaN/inf."""
    for dtype in DTYPES:
        z = np.array([[-1e4, -100.0, -88.0, 0.0, 88.0, 100.0, 1e4]], dtype=dtype)
        n_a = z.shape[1]
        # An LSTM step with only the i gate's pre-activation set: saved[:, :n_a] is sigmoid(z).
        xw = np.zeros((1, 4 * n_a), dtype=dtype)
        xw[:, :n_a] = z
        S = np.zeros((2, 1, n_a), dtype=dtype)
        C = np.zeros_like(S)
        saved = np.zeros((1, 1, 4 * n_a), dtype=dtype)
        FusedCupyOps(XP, direct=False).lstm_forward(xw, np.zeros_like(xw), C[0], saved, C, S, 0)
        sig = saved[0, 0, :n_a]
        assert np.isfinite(sig).all() and (sig >= 0).all() and (sig <= 1).all()
        assert sig[-1] == 1 and sig[-2] == 1 and sig[3] == 0.5 and sig[0] == 0


# ---------------------------------------------------------------- whole sequences through the engine

@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_whole_sequences_through_the_fused_ops(monkeypatch, launches, kind, with_mask, reverse):
    """The engine driving FusedCupyOps (host kernels, NumPy buffers) equals the engine on the reference.

    This is the CuPy path minus CuPy: the same engine calls, the buffer and
    product methods FusedCupyOps inherits, and one kernel launch per step and
    direction -- so the engine's use of the fused ops is checked without a GPU.
    """
    from xseq.engine import sequence as engine

    rng = np.random.default_rng(7)
    T, m, n_x, n_a, G = 5, 3, 4, 6, GATES[kind]
    draw = lambda *shape: rng.standard_normal(shape) * 0.5  # noqa: E731
    args = dict(X=draw(T, m, n_x), W_ih=draw(G * n_a, n_x), W_hh=draw(G * n_a, n_a), b_ih=draw(G * n_a),
                b_hh=draw(G * n_a), h0=draw(m, n_a), c0=draw(m, n_a) if kind == "lstm" else None)
    mask = (np.arange(T)[:, None] < np.array([5, 2, 4])[None, :])[:, :, None] if with_mask else None
    grads_in = dict(dY=draw(T, m, n_a), dh_T=draw(m, n_a), dc_T=draw(m, n_a) if kind == "lstm" else None)

    def run(ops_class):
        monkeypatch.setattr(engine, "ops_for", lambda xp, dtype=None: ops_class(xp))
        Y, h_T, c_T, trace = engine.sequence_forward(kind, **args, mask=mask, reverse=reverse)
        grads = engine.sequence_backward(trace, **grads_in)
        out = dict(Y=Y, h_T=h_T, c_T=c_T, **grads)
        return {k: np.array(v) for k, v in out.items() if v is not None}

    want = run(ArrayAPIOps)
    assert launches == []
    got = run(lambda xp: FusedCupyOps(xp, direct=False))
    assert launches == [f"xseq_{kind}_forward"] * T + [f"xseq_{kind}_backward"] * T
    assert got.keys() == want.keys()
    for key in want:
        assert_close(got[key], want[key], f"{kind} sequence: {key}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_sequence_to_sequence_model_through_the_fused_ops(monkeypatch, launches, cell):
    """xseq.Seq2Seq's CuPy route minus CuPy: its encoder (the engine) and its decoder's steps (the fused LSTM step
    it drives one step at a time, training and decoding) through FusedCupyOps on host kernels give the loss, every
    gradient and the beam search of the reference ops."""
    import xseq
    from xseq.seq2seq import decode
    from xseq.seq2seq import model as seq2seq_model
    from xseq.seq2seq.dates import date_pairs

    pairs = date_pairs(6, seed=2)
    vocabs = [xseq.Vocabulary.from_text([pair[side] for pair in pairs]) for side in (0, 1)]
    encode = lambda side: [vocabs[side].encode(pair[side]) for pair in pairs]  # noqa: E731
    lengths = [np.array([len(ids) for ids in encode(side)]) for side in (0, 1)]
    padded = [np.zeros((len(pairs), int(n.max())), dtype=np.int64) for n in lengths]
    for side in (0, 1):
        for i, ids in enumerate(encode(side)):
            padded[side][i, :len(ids)] = ids

    def run(ops_class):
        for module in (engine, seq2seq_model, decode):
            monkeypatch.setattr(module, "ops_for", lambda xp, dtype=None: ops_class(xp))
        model = xseq.Seq2Seq(*vocabs, cell=cell, hidden_size=5, decoder_size=6, embed_size=3, attention_size=4,
                             dtype="float64", seed=1)
        loss = model.loss_and_backward(padded[0], lengths[0], padded[1], lengths[1])
        grads = {k: np.array(v) for k, v in model.grads().items()}
        outputs, scores, _ = model.beam_search(padded[0], lengths[0], beam=2, max_len=12)
        return loss, grads, outputs, scores

    want = run(ArrayAPIOps)
    assert launches == []
    got = run(lambda xp: FusedCupyOps(xp, direct=False))
    assert "xseq_lstm_forward" in launches and "xseq_lstm_backward" in launches  # the decoder's steps
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    assert got[1].keys() == want[1].keys()
    for key in want[1]:
        if key == "attention.b2":  # zero but for rounding: a softmax ignores a shift of every energy
            assert abs(float(got[1][key][0])) < 1e-15 and abs(float(want[1][key][0])) < 1e-15
            continue
        assert_close(got[1][key], want[1][key], f"seq2seq gradient {key}")
    assert got[2] == want[2]
    np.testing.assert_allclose(got[3], want[3], rtol=1e-10)


# ---------------------------------------------------------------- the direct loop (DirectSteps)
#
# On CuPy, unmasked sequences run through ``DirectSteps``: per step one gemm and one launch of
# ``raw_kernel_module``'s kernels, by address. Here the same loops drive a host "device": the very
# module CupyDevice compiles with cupy.RawModule, compiled for the CPU with blockIdx/threadIdx as
# globals that the launcher below steps through a small grid (so that the grid-stride loop wraps),
# and a plain column-major gemm with BLAS's argument conventions, reached through the same
# ``colmajor_gemm`` translation CupyDevice gives cuBLAS.

RAW_PRELUDE = HOST_PRELUDE + r"""
#define __global__
struct xseq_dim3 { unsigned int x, y, z; };
xseq_dim3 threadIdx, blockIdx, blockDim, gridDim;
extern "C" void xseq_set_thread(unsigned int grid, unsigned int block, unsigned int b, unsigned int t) {
    gridDim.x = grid; blockDim.x = block; blockIdx.x = b; threadIdx.x = t;
}
// BLAS's gemm('N', 'N', ...): column-major C = alpha*A@B + beta*C; with beta 0, C is not read.
extern "C" void xseq_ref_gemm(int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb,
                              T beta, T* C, int ldc) {
    for (int j = 0; j < N; ++j)
        for (int i = 0; i < M; ++i) {
            T sum = 0;
            for (int l = 0; l < K; ++l) sum += A[i + l * lda] * B[l + j * ldb];
            C[i + j * ldc] = beta == T(0) ? alpha * sum : alpha * sum + beta * C[i + j * ldc];
        }
}
"""


@pytest.fixture(scope="session")
def raw_libs(tmp_path_factory):
    """``raw_kernel_module`` for float and double, each compiled for the host into a library of its own."""
    build = tmp_path_factory.mktemp("xseq_direct")
    libs = {}
    for dtype, ctype in CTYPES.items():
        module = kernel_source.raw_kernel_module(ctype)
        head, body = module.split("\n", 1)  # "typedef <ctype> T;" first: the prelude's gemm uses T
        source, library = build / f"direct_{ctype}.cpp", build / f"direct_{ctype}.so"
        source.write_text(head + "\n" + RAW_PRELUDE + body)
        cmd = [CXX, "-O2", "-shared", "-fPIC", "-std=c++17", "-ffp-contract=off", str(source), "-o", str(library)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"host build of the direct module failed:\n{' '.join(cmd)}\n{proc.stderr}")
        lib = libs[dtype] = ctypes.CDLL(str(library))
        P, I = ctypes.c_void_p, ctypes.c_int
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        lib.xseq_set_thread.argtypes = [ctypes.c_uint] * 4
        lib.xseq_ref_gemm.argtypes = [I, I, I, scalar, P, I, P, I, scalar, P, I]
        for name, src in KERNELS.items():
            getattr(lib, name).argtypes = [I if typ == "int32" else P for _, typ, _, _ in src.parameters()] + [
                ctypes.c_ssize_t]
    return libs


def run_grid(lib, name, grid, block, args, n):
    """Kernel ``name`` of a host-built direct module over ``grid`` blocks of ``block`` threads, one thread at a time."""
    fn = getattr(lib, name)
    for b in range(grid):
        for t in range(block):
            lib.xseq_set_thread(grid, block, b, t)
            fn(*args, n)


class HostDevice:
    """``CupyDevice``'s interface on the host: the raw module's kernels and a reference gemm, by address."""

    THREADS, MAX_BLOCKS = 4, 2  # a small grid: each thread's loop runs over several elements
    ALPHA = 1.0

    def __init__(self, libs, dtype, calls):
        self.dtype, self.lib, self.calls = np.dtype(dtype), libs[np.dtype(dtype)], calls

    @contextlib.contextmanager
    def session(self):
        self.calls.append("session")
        yield self

    def address(self, a):
        return a.ctypes.data

    def launch(self, name, n, args):
        params = KERNELS[name].parameters()
        assert len(args) == len(params), f"{name}: {len(args)} arguments for {len(params)} parameters"
        assert all(type(a) is int for a in args), f"{name}: arguments must be Python ints"
        run_grid(self.lib, name, max(1, min(-(-n // self.THREADS), self.MAX_BLOCKS)), self.THREADS, args, n)
        self.calls.append(name)

    def gemm(self, m, n, k, a, lda, b, ldb, beta, c, ldc):
        assert beta in (0, 1)
        M, N, K, A, LDA, B, LDB, C, LDC = fused.colmajor_gemm(m, n, k, a, lda, b, ldb, c, ldc)
        self.lib.xseq_ref_gemm(M, N, K, self.ALPHA, A, LDA, B, LDB, float(beta), C, LDC)
        self.calls.append("gemm" if beta == 0 else "gemm+")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_colmajor_gemm_computes_row_major_products(raw_libs, dtype):
    """Row-major C = A @ B (+ C) through the column-major gemm, with row strides wider than the rows."""
    rng = np.random.default_rng(3)
    m, n, k = 5, 7, 3
    A_wide, B_wide = rng.standard_normal((m, k + 2)).astype(dtype), rng.standard_normal((k, n + 1)).astype(dtype)
    A, B = A_wide[:, :k], B_wide[:, :n]
    device = HostDevice(raw_libs, dtype, [])
    item = np.dtype(dtype).itemsize
    for beta in (0, 1):
        C_wide = np.full((m, n + 3), np.nan if beta == 0 else 0.5, dtype=dtype)
        C = C_wide[:, :n]
        want = A.astype(np.float64) @ B + (0.5 if beta else 0.0)
        device.gemm(m, n, k, device.address(A), A_wide.strides[0] // item, device.address(B),
                    B_wide.strides[0] // item, beta, device.address(C), C_wide.strides[0] // item)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(C, want, rtol=tol, atol=tol * np.abs(want).max())
        assert np.isnan(C_wide[:, n:]).all() == (beta == 0), "the gemm wrote outside C's rows"


def run_sequence(kind, ops, reverse, with_dY, with_final, dtype=np.float64, mask=None):
    out = engine_sequence(kind, ops, reverse=reverse, with_dY=with_dY, with_final=with_final, dtype=dtype, mask=mask)
    return out, ENGINE_STEPS


@pytest.mark.parametrize("with_dY, with_final", [(True, False), (False, True), (True, True)],
                         ids=["dY", "dh_T", "dY-dh_T"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward-time", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_direct_loop_matches_reference(raw_libs, kind, dtype, reverse, with_dY, with_final):
    """The engine on DirectSteps (two calls a step, by address) equals the engine on the reference."""
    calls = []
    got, T = run_sequence(kind, FusedCupyOps(XP, direct=HostDevice(raw_libs, dtype, calls)), reverse, with_dY,
                          with_final, dtype)
    want, _ = run_sequence(kind, ArrayAPIOps(XP), reverse, with_dY, with_final, dtype)
    step_gemm = "gemm+" if kind == "gru" else "gemm"  # the GRU's gemm adds to the direct part of dh
    assert calls == (["session"] + ["gemm", f"xseq_{kind}_forward"] * T
                     + ["session"] + [f"xseq_{kind}_backward", step_gemm] * T)
    assert got.keys() == want.keys()
    for key in want:
        assert_close(got[key], want[key], f"{kind} direct loop: {key}")


@pytest.mark.parametrize("kind", KINDS)
def test_masked_sequences_keep_the_step_methods(raw_libs, launches, kind):
    """With a mask the engine runs its own loop (the step methods); the direct device is never called."""
    calls = []
    T = 6
    mask = (np.arange(T)[:, None] < np.array([6, 2, 4])[None, :])[:, :, None]
    ops = FusedCupyOps(XP, direct=HostDevice(raw_libs, np.float64, calls))
    got, _ = run_sequence(kind, ops, False, True, True, mask=mask)
    want, _ = run_sequence(kind, ArrayAPIOps(XP), False, True, True, mask=mask)
    assert calls == [] and launches == [f"xseq_{kind}_forward"] * T + [f"xseq_{kind}_backward"] * T
    for key in want:
        assert_close(got[key], want[key], f"{kind} masked: {key}")


# Devices wrong the ways a change in CuPy's low-level bindings could make CupyDevice wrong: a
# scalar read from the wrong place, beta ignored, launches lost (as to the wrong stream).

class WrongScale(HostDevice):
    ALPHA = 0.5


class BetaIgnored(HostDevice):
    def gemm(self, m, n, k, a, lda, b, ldb, beta, c, ldc):
        super().gemm(m, n, k, a, lda, b, ldb, 0, c, ldc)


class LostLaunches(HostDevice):
    def launch(self, name, n, args):
        self.count = getattr(self, "count", 0) + 1
        if self.count % 2:
            super().launch(name, n, args)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_self_check_accepts_the_right_device_and_rejects_wrong_ones(raw_libs, launches, dtype):
    engine.check_direct(HostDevice(raw_libs, dtype, []), xp=XP)
    for wrong in (WrongScale, BetaIgnored, LostLaunches):
        with pytest.raises(RuntimeError, match="differs from the step methods"):
            engine.check_direct(wrong(raw_libs, dtype, []), xp=XP)


def test_a_device_that_fails_its_check_is_not_used(monkeypatch):
    """cupy_direct_device: a failed build or check is remembered with its reason, warned about once, and gives None."""
    monkeypatch.setattr(cuda, "_DIRECT", {})
    monkeypatch.setattr(cuda, "_device_id", lambda: 0)
    monkeypatch.delenv("XSEQ_DIRECT", raising=False)

    builds = []

    class Broken:
        def __init__(self, dtype):
            builds.append(dtype)
            raise ImportError("no cuBLAS binding here")

    monkeypatch.setattr(cuda, "CupyDevice", Broken)
    with pytest.warns(RuntimeWarning, match="no cuBLAS binding here") as first:
        assert cuda.cupy_direct_device(np.float32, engine.check_direct) is None
    assert len(first) == 1
    with warnings.catch_warnings(record=True) as second:
        warnings.simplefilter("always")  # so that a repeated warning would be recorded, not filtered as a duplicate
        assert cuda.cupy_direct_device(np.float32, engine.check_direct) is None
    assert [str(w.message) for w in second] == [], "the failure is remembered: no second warning"
    assert builds == [np.float32], "the failure is remembered: no second build"
    assert "float32 on device 0: step methods (ImportError: no cuBLAS binding here)" in cuda.direct_status()
    assert FusedCupyOps(XP).direct_steps(np.float32, check=engine.check_direct) is None

    class Good:
        def __init__(self, dtype):
            self.dtype = np.dtype(dtype)

    monkeypatch.setattr(cuda, "CupyDevice", Good)
    checked = []
    passes = checked.append  # a check that passes (and records what it was given)
    assert isinstance(cuda.cupy_direct_device(np.float64, passes), Good)
    assert [type(d) for d in checked] == [Good], "the new device is checked, once"
    assert isinstance(FusedCupyOps(XP).direct_steps(np.float64, check=passes), fused.DirectSteps)
    assert isinstance(FusedCupyOps(XP).direct_steps(np.float64, SimpleNamespace(id=0), check=passes),
                      fused.DirectSteps)
    assert len(checked) == 1, "a checked device is remembered"
    assert FusedCupyOps(XP).direct_steps(np.float64, SimpleNamespace(id=1), check=passes) is None  # not current
    assert FusedCupyOps(XP).direct_steps(np.float64) is None, "without a check, no direct loop"
    assert "float64 on device 0: direct launches" in cuda.direct_status()
    assert cuda.cupy_direct_device(np.int32, passes) is None  # no kernels for integers
    monkeypatch.setenv("XSEQ_DIRECT", "0")
    assert cuda.cupy_direct_device(np.float64, passes) is None
    assert cuda.direct_status() == "step methods (XSEQ_DIRECT=0)"


class FakeCuda:
    """Just enough of ``cupy`` and CuPy's cuBLAS binding for ``CupyDevice``, executing on the host.

    ``RawModule`` must be given ``raw_kernel_module``'s source and returns the
    host build of it; a kernel call checks every argument's NumPy type
    against the parameter's C type (an address: uint64; int: int32; the
    element count: int64) and runs the grid it is given. ``sgemm``/``dgemm``
    check the handle, the stream, the pointer mode and the transposes, read
    alpha and beta from the host addresses they are given, and run the
    reference gemm.
    """

    HANDLE, STREAM = 77, 99
    CUBLAS_OP_N, CUBLAS_POINTER_MODE_HOST, CUBLAS_POINTER_MODE_DEVICE = 0, 0, 1

    def __init__(self, raw_libs):
        self.raw_libs, self.log = raw_libs, []
        self.stream, self.mode = None, self.CUBLAS_POINTER_MODE_DEVICE  # as another library might leave it
        fake = self

        class RawModule:
            def __init__(self, code, options=()):
                fake.log.append(("RawModule", options))
                ctype = code.split("\n", 1)[0].split()[1]  # "typedef <ctype> T;"
                self.dtype = {"float": np.dtype(np.float32), "double": np.dtype(np.float64)}[ctype]
                assert code == kernel_source.raw_kernel_module(ctype)

            def get_function(self, name):
                return fake.kernel(self.dtype, name)

        self.cupy = SimpleNamespace(
            RawModule=RawModule,
            cuda=SimpleNamespace(device=SimpleNamespace(get_cublas_handle=lambda: self.HANDLE),
                                 get_current_stream=lambda: SimpleNamespace(ptr=self.STREAM)),
        )
        self.cublas = SimpleNamespace(
            CUBLAS_OP_N=self.CUBLAS_OP_N, CUBLAS_POINTER_MODE_HOST=self.CUBLAS_POINTER_MODE_HOST,
            setStream=self.set_stream, getPointerMode=lambda h: self.mode, setPointerMode=self.set_mode,
            sgemm=lambda *a: self.gemm(np.float32, *a), dgemm=lambda *a: self.gemm(np.float64, *a),
        )

    def install(self, monkeypatch):
        libs = SimpleNamespace(cublas=self.cublas)
        for name, module in (("cupy", self.cupy), ("cupy_backends", SimpleNamespace(cuda=SimpleNamespace(libs=libs))),
                             ("cupy_backends.cuda", SimpleNamespace(libs=libs)), ("cupy_backends.cuda.libs", libs),
                             ("cupy_backends.cuda.libs.cublas", self.cublas)):
            monkeypatch.setitem(sys.modules, name, module)

    def set_stream(self, handle, stream):
        assert handle == self.HANDLE
        self.stream = stream

    def set_mode(self, handle, mode):
        assert handle == self.HANDLE
        self.mode = mode

    def kernel(self, dtype, name):
        lib, params = self.raw_libs[dtype], KERNELS[name].parameters()

        def call(grid, block, args):
            assert len(args) == len(params) + 1, name
            for (pname, typ, _, _), a in zip(params, args):
                assert type(a) is (np.int32 if typ == "int32" else np.uint64), f"{name}: {pname} passed as {type(a)}"
            assert type(args[-1]) is np.int64, f"{name}: the element count passed as {type(args[-1])}"
            n = int(args[-1])
            assert block == (kernel_source.THREADS,) and grid == (-(-n // kernel_source.THREADS),), (grid, block)
            run_grid(lib, name, grid[0], block[0], [int(a) for a in args[:-1]], n)
            self.log.append(name)

        return call

    def gemm(self, dtype, handle, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc):
        assert (handle, self.stream, self.mode) == (self.HANDLE, self.STREAM, self.CUBLAS_POINTER_MODE_HOST)
        assert transa == transb == self.CUBLAS_OP_N
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        alpha, beta = scalar.from_address(alpha).value, scalar.from_address(beta).value  # host memory
        self.raw_libs[np.dtype(dtype)].xseq_ref_gemm(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
        self.log.append(("gemm", alpha, beta))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_cupy_device_drives_cupy_and_cublas_as_documented(raw_libs, launches, monkeypatch, dtype):
    """CupyDevice itself, on host arrays: its module, launches, gemm calls and cuBLAS state, through its self-check."""
    fake = FakeCuda(raw_libs)
    fake.install(monkeypatch)

    class HostArrays(cuda.CupyDevice):
        def address(self, a):  # NumPy arrays here; CuPy's have their address at .data.ptr
            return a.ctypes.data

    device = HostArrays(dtype)
    assert fake.log == [("RawModule", ("-ftz=true",))]
    engine.check_direct(device, xp=XP)
    gemms = [entry for entry in fake.log if entry[0] == "gemm"]
    assert {g[1] for g in gemms} == {1.0} and {g[2] for g in gemms} == {0.0, 1.0}  # GRU backward adds (beta 1)
    assert len([entry for entry in fake.log if isinstance(entry, str)]) == 2 * 3 * 3  # 3 cells, T = 3, both ways
    assert fake.mode == fake.CUBLAS_POINTER_MODE_DEVICE, "the handle's pointer mode was not restored"
