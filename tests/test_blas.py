"""The optional oneDNN matrix products (``xseq/ops/blas.py``) against NumPy's and the array-API reference.

Two libraries stand in turn behind the same calls: the real ``libdnnl.so.3``
where ``onednn-cpu-gomp`` is installed, and everywhere a stand-in with the
same C signature written in NumPy, which reads its operands through the
pointers, transposes and leading dimensions it is given, so that the way xseq
hands arrays to the library (layouts, views, the hook in ``ops_for``) is
tested on every machine. ``MIN_FLOPS`` is set to 0 where every product,
the per-step ones included, must go through the library.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import xseq
from xseq.ops import blas
from xseq.ops.select import ops_for

REAL = blas.library()
needs_onednn = pytest.mark.skipif(REAL.gemm is None, reason=f"oneDNN not available: {REAL.reason}")


def _view(address, rows, cols, ld):
    """The row-major (rows, cols) matrix with leading dimension ``ld`` at ``address``, as a NumPy view."""
    size = (rows - 1) * ld + cols if rows and cols else 0
    buf = np.ctypeslib.as_array((ctypes.c_float * max(size, 1)).from_address(address))
    return np.lib.stride_tricks.as_strided(buf, (rows, cols), (ld * 4, 4))


class FakeOneDNN:
    """``dnnl_sgemm``'s contract in NumPy: C = alpha op(A) op(B) + beta C, row-major; counts its calls."""

    def __init__(self, error=0.0):
        self.calls, self.threads, self.error = 0, [], error

    def gemm(self, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        A = _view(a, m, k, lda) if transa == b"N" else _view(a, k, m, lda).T
        B = _view(b, k, n, ldb) if transb == b"N" else _view(b, n, k, ldb).T
        C = _view(c, m, n, ldc)
        C[...] = alpha * (A @ B) + (beta * C if beta else 0) + self.error  # beta = 0: C is not read (BLAS)
        self.calls += 1
        return 0

    def library(self):
        return blas._Library(self.gemm, self.threads.append, "fake oneDNN")


@pytest.fixture
def fake(monkeypatch):
    """The NumPy stand-in as the loaded library, every product through it."""
    stand_in = FakeOneDNN()
    monkeypatch.setattr(blas, "library", stand_in.library)
    monkeypatch.setattr(blas, "MIN_FLOPS", 0)
    monkeypatch.setenv("XSEQ_ONEDNN", "1")
    return stand_in


@pytest.fixture
def real(monkeypatch):
    """The installed oneDNN, every product through it; its calls are counted."""
    calls = []
    original = blas._call

    def counted(lib, a, b, out):
        done = original(lib, a, b, out)
        calls.append(done)
        return done

    monkeypatch.setattr(blas, "_call", counted)
    monkeypatch.setattr(blas, "MIN_FLOPS", 0)
    monkeypatch.setenv("XSEQ_ONEDNN", "1")
    return calls


# ---------------------------------------------------------------- products: layouts, views, refusals


def _operands():
    """Every layout the engine passes: row-major, transposed views, row blocks of a larger buffer."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal((40, 30)).astype(np.float32)
    a = rng.standard_normal((12, 9)).astype(np.float32)
    b = rng.standard_normal((9, 7)).astype(np.float32)
    return [
        (a, b),
        (np.ascontiguousarray(a.T).T, b),  # column-major left operand (dZ.T in the engine)
        (a, np.ascontiguousarray(b.T).T),  # column-major right operand (W_ih.T)
        (big[3:15, :9], big[20:29, 2:9]),  # row blocks with leading dimension 30
    ]


@pytest.mark.parametrize("library", ["fake", pytest.param("real", marks=needs_onednn)])
def test_products_of_every_layout_match_numpy(library, request):
    request.getfixturevalue(library)
    for a, b in _operands():
        backing = np.full((a.shape[0], b.shape[1] + 5), np.nan, dtype=np.float32)
        out = backing[:, 2:2 + b.shape[1]]  # a row-major block with a leading dimension larger than its width
        assert blas.matmul(a, b, out) is out
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
        assert np.isnan(backing[:, :2]).all() and np.isnan(backing[:, 2 + b.shape[1]:]).all()


def test_products_it_cannot_take_are_left_to_numpy(fake):
    a = np.ones((6, 4), dtype=np.float32)
    b = np.ones((4, 5), dtype=np.float32)
    out = np.empty((6, 5), dtype=np.float32)
    strided = np.ones((12, 8), dtype=np.float32)[::2, ::2]  # no unit stride along either axis
    assert blas.matmul(strided, b, out) is None
    assert blas.matmul(a, b, np.empty((6, 10), dtype=np.float32)[:, ::2]) is None
    assert blas.matmul(a.astype(np.float64), b, out) is None
    assert blas.matmul(a, np.ones((3, 5), dtype=np.float32), out) is None  # shapes that do not chain
    square = np.ones((4, 4), dtype=np.float32)
    assert blas.matmul(square, np.ones((4, 4), dtype=np.float32), square) is None  # out is an operand
    assert blas.matmul(np.ones((2, 6, 4), dtype=np.float32), b, np.empty((2, 6, 5), dtype=np.float32)) is None
    assert fake.calls == 0


def test_small_products_stay_with_openblas(fake, monkeypatch):
    monkeypatch.setattr(blas, "MIN_FLOPS", 2 * 6 * 5 * 4 + 1)
    a, b = np.ones((6, 4), dtype=np.float32), np.ones((4, 5), dtype=np.float32)
    assert blas.matmul(a, b, np.empty((6, 5), dtype=np.float32)) is None
    monkeypatch.setattr(blas, "MIN_FLOPS", 2 * 6 * 5 * 4)
    assert blas.matmul(a, b, np.empty((6, 5), dtype=np.float32)) is not None
    assert fake.calls == 1


# ---------------------------------------------------------------- whole sequences against the reference


def _layer_run(layer, x, lengths, dy):
    layer.zero_grad()
    out, final = layer.forward(x, lengths=lengths)
    dx = layer.backward(dy)
    states = final if isinstance(final, tuple) else (final,)
    return [out, *states, dx, *(layer.grads[k] for k in sorted(layer.grads))]


def _course_lstm_run(x, a0, params, da):
    a, y, c, caches = xseq.lstm_forward(x, a0, params)
    grads = xseq.lstm_backward(da, caches)
    return [a, y, c, *(grads[k] for k in sorted(grads))]


def _cases():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4, 11)).astype(np.float32)  # T_x = 11: past NumPy's 8-step projection chunk
    for cls in (xseq.RNN, xseq.LSTM, xseq.GRU):
        layer = cls(5, 6, num_layers=2, bidirectional=True, seed=1)
        dy = rng.standard_normal((12, 4, 11)).astype(np.float32)
        for lengths in (None, [11, 4, 7, 1]):  # the unmasked loop and the masked one
            yield f"{cls.__name__} lengths={lengths}", lambda layer=layer, dy=dy, lengths=lengths: _layer_run(
                layer, x, lengths, dy)
    params = xseq.init_lstm_parameters(5, 6, 3, seed=2)
    a0 = rng.standard_normal((6, 4)).astype(np.float32)
    da = rng.standard_normal((6, 4, 11)).astype(np.float32)
    yield "lstm_forward/lstm_backward", lambda: _course_lstm_run(x, a0, params, da)


def _against_reference(monkeypatch, run):
    got = [np.array(v) for v in run()]
    monkeypatch.setenv("XSEQ_FUSED", "0")
    want = [np.array(v) for v in run()]
    monkeypatch.delenv("XSEQ_FUSED")
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize("library", ["fake", pytest.param("real", marks=needs_onednn)])
def test_sequences_through_the_library_match_the_reference(library, request, monkeypatch):
    counter = request.getfixturevalue(library)
    for name, run in _cases():
        before = counter.calls if library == "fake" else len(counter)
        _against_reference(monkeypatch, run)
        used = (counter.calls if library == "fake" else sum(counter)) - before
        assert used > 0, f"{name}: no product went through {library} oneDNN"


def test_ops_for_hands_the_products_to_the_library_only_for_float32(fake):
    assert ops_for(np, np.float32).gemm is blas.matmul
    assert ops_for(np, np.float64).gemm is None


# ---------------------------------------------------------------- switches, status, threads, a bad library


@pytest.mark.parametrize("setting", [None, "0", "off", ""])
def test_it_is_off_unless_xseq_onednn_is_1(fake, monkeypatch, setting):
    if setting is None:
        monkeypatch.delenv("XSEQ_ONEDNN")
    else:
        monkeypatch.setenv("XSEQ_ONEDNN", setting)
    assert ops_for(np, np.float32).gemm is None
    assert blas.status().startswith("OpenBLAS (NumPy's matmul) for every product; oneDNN is off unless XSEQ_ONEDNN=1")


def test_status_names_the_library_or_why_it_is_not_used(fake, monkeypatch):
    assert blas.status().startswith("fake oneDNN: dnnl_sgemm for every float32 product of the engine")
    missing = blas._Library(reason="onednn-cpu-gomp is not installed (pip install onednn-cpu-gomp)")
    monkeypatch.setattr(blas, "library", lambda: missing)
    assert ops_for(np, np.float32).gemm is None
    assert blas.status() == ("OpenBLAS (NumPy's matmul) for every product; oneDNN not used: onednn-cpu-gomp "
                             "is not installed (pip install onednn-cpu-gomp)")


def test_a_library_that_computes_wrong_products_is_not_used(monkeypatch, tmp_path):
    wrong = FakeOneDNN(error=1e-2)
    assert "differs from NumPy's" in blas._self_check(wrong.library())
    assert blas._self_check(FakeOneDNN().library()) is None

    not_a_library = tmp_path / "libdnnl.so.3"
    not_a_library.write_bytes(b"not an ELF file")
    monkeypatch.setattr(blas, "_find", lambda: (str(not_a_library), "onednn-cpu-gomp 0 (test)"))
    blas.library.cache_clear()
    try:
        lib = blas.library()
        assert lib.gemm is None and "could not be loaded" in lib.reason
    finally:
        blas.library.cache_clear()


@pytest.mark.parametrize(("omp", "openblas", "threads"), [
    (None, None, None),  # GNU OpenMP's default: one thread per core
    ("3", None, None),  # GNU OpenMP reads OMP_NUM_THREADS itself
    (None, "1", 1),  # a user who limited NumPy's BLAS limits this one alike
    ("2", "1", None),  # OMP_NUM_THREADS names OpenMP's count and wins
    (None, "x", None),
])
def test_threads_follow_the_users_settings(fake, monkeypatch, omp, openblas, threads):
    for var, value in (("OMP_NUM_THREADS", omp), ("OPENBLAS_NUM_THREADS", openblas)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    monkeypatch.setattr(blas, "_threads_set", type(blas._threads_set)())
    assert blas.thread_count() == threads
    a = np.ones((4, 4), dtype=np.float32)
    blas.matmul(a, a.copy(), np.empty((4, 4), dtype=np.float32))
    assert fake.threads == ([] if threads is None else [threads])
