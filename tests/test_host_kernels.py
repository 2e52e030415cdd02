"""xseq's host build of the fused kernels (``xseq/ops/host.py`` and the modules it names): how it is built, cached and
turned off, and the parts of it that are not the CUDA kernels (copies, softmax, argument checks).

The kernels' results are checked against the reference in ``test_kernels_exec.py`` (step by step,
extreme inputs, whole sequences) and ``test_numpy_ops.py`` (whole sequences with masks), both of
which run this build.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

import xseq
from xseq.ops import host as host_kernels
from xseq.ops import native_build, native_library
from xseq.ops.numpy_inplace import NumpyOps
from xseq.ops.select import ops_for

NP = xseq.backend("numpy")
BUILT = host_kernels.library()
needs_build = pytest.mark.skipif(BUILT.lib is None, reason=f"no host build on this machine: {BUILT.reason}")


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """``library()`` starting over against a private cache directory (restored afterwards)."""
    monkeypatch.setenv("XSEQ_CACHE_DIR", str(tmp_path / "cache"))
    host_kernels.library.cache_clear()
    yield tmp_path / "cache"
    host_kernels.library.cache_clear()


def _small_lstm(dtype=np.float32):
    params = xseq.init_lstm_parameters(3, 5, 2, dtype=np.dtype(dtype).name, seed=1)
    x = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(dtype)
    return x, np.zeros((5, 4), dtype=dtype), params


# ---------------------------------------------------------------- build, cache, switches

@needs_build
def test_built_once_into_the_cache_then_loaded_without_compiling(fresh_library, monkeypatch):
    first = host_kernels.library()
    assert first.lib is not None, first.reason
    assert first.path.parent == fresh_library
    assert stat.S_IMODE(os.stat(fresh_library).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(first.path).st_mode) == 0o600
    # the temporary build directory is gone; only the finished library is left
    assert sorted(p.name for p in fresh_library.iterdir()) == [first.path.name]
    written = os.stat(first.path)

    host_kernels.library.cache_clear()

    def no_build(*args):
        raise AssertionError("compiled again although the cache holds the library")

    monkeypatch.setattr(native_library, "build", no_build)
    again = host_kernels.library()
    assert again.lib is not None and again.path == first.path
    reused = os.stat(again.path)
    assert (reused.st_ino, reused.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not written again
    # nothing to report about the cache; a piece this build lacks (packed products without AVX-512) is named
    off = "; ".join(f"{f.name} off: {f.reason}" for f in again.features.values() if not f.on)
    assert host_kernels.status() == f"host kernels (fused C++ steps) from {first.path}" + (f" ({off})" if off else "")


@needs_build
def test_unusable_cache_directory_builds_for_this_process_only(fresh_library, monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XSEQ_CACHE_DIR", str(blocker / "cache"))
    built = host_kernels.library()
    assert built.lib is not None, built.reason
    assert not built.path.exists()  # built in a temporary directory, removed once loaded
    x, a0, params = _small_lstm()
    a, y, c, _ = xseq.lstm_forward(x, a0, params)
    assert np.isfinite(a).all()


def test_switched_off_by_environment(fresh_library, monkeypatch):
    monkeypatch.setenv("XSEQ_HOST_KERNELS", "0")
    assert host_kernels.library().lib is None
    assert type(ops_for(NP, np.dtype(np.float32))) is NumpyOps
    assert host_kernels.status() == "NumPy in-place steps; host kernels unavailable: turned off by XSEQ_HOST_KERNELS"
    assert not fresh_library.exists()  # nothing was built


def test_no_compiler_falls_back_to_numpy(fresh_library, monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    built = host_kernels.library()
    assert built.lib is None and "no C++ compiler" in built.reason
    assert type(ops_for(NP, np.dtype(np.float64))) is NumpyOps
    x, a0, params = _small_lstm(np.float64)
    a, y, c, caches = xseq.lstm_forward(x, a0, params)
    grads = xseq.lstm_backward(np.ones_like(a), caches)
    monkeypatch.setenv("XSEQ_FUSED", "0")
    a_ref, _, _, caches_ref = xseq.lstm_forward(x, a0, params)
    np.testing.assert_allclose(a, a_ref, rtol=1e-12)
    np.testing.assert_allclose(grads["dWf"], xseq.lstm_backward(np.ones_like(a), caches_ref)["dWf"], rtol=1e-11)


def test_failed_build_says_why(fresh_library, monkeypatch, tmp_path):
    broken = tmp_path / "broken-cxx"
    broken.write_text("#!/bin/sh\necho 'broken-cxx: cannot compile anything' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    built = host_kernels.library()
    assert built.lib is None
    assert "failed" in built.reason and "broken-cxx: cannot compile anything" in built.reason
    assert type(ops_for(NP, np.dtype(np.float32))) is NumpyOps
    assert list(fresh_library.iterdir()) == []  # no half-built file left in the cache


def test_unloadable_cached_file_is_reported_not_raised(fresh_library, monkeypatch):
    """A file in the cache that is not a library this process can load (say, another machine's)."""
    compiler = host_kernels.find_compiler()
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    planted = host_kernels.cached_path(compiler, host_kernels.host_source())
    assert planted.parent == fresh_library
    fresh_library.mkdir(mode=0o700)
    planted.write_bytes(b"not an ELF file, though it mentions _ZGV")
    monkeypatch.setattr(native_library, "build", lambda *args: pytest.fail("built although the cache has the file"))
    built = host_kernels.library()
    assert built.lib is None and "could not be loaded" in built.reason and planted.name in built.reason
    assert type(ops_for(NP, np.dtype(np.float32))) is NumpyOps


def test_a_compiler_that_cannot_start_is_a_failure_not_an_error(tmp_path):
    ok, message = native_build.run_tool([str(tmp_path / "no-such-compiler"), "--version"], None)
    assert not ok and "no-such-compiler" in message


# ---------------------------------------------------------------- what loading it must not change

@needs_build
def test_loading_does_not_flush_subnormals_to_zero():
    """GCC's crtfastmath (linked with -ffast-math) would set FTZ/DAZ for the whole process."""
    x, a0, params = _small_lstm()
    xseq.lstm_forward(x, a0, params)  # the library is loaded and has run
    for dtype in (np.float32, np.float64):
        tiny = np.nextafter(dtype(0), dtype(1))
        assert tiny * dtype(1.5) > 0, f"{np.dtype(dtype)} subnormals are flushed to zero"
        assert np.array([tiny], dtype=dtype).sum() == tiny


@needs_build
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_infinity_propagate_through_a_step(dtype):
    n_a = 4
    xw = np.zeros((2, 4 * n_a), dtype=dtype)
    xw[0, 0] = np.nan  # unit 0's input gate
    xw[1, n_a + 1] = np.inf  # unit 1's forget gate: exactly 1
    xw[1, 2 * n_a + 2] = -np.inf  # unit 2's candidate: exactly -1
    hw = np.zeros_like(xw)
    S = np.zeros((2, 2, n_a), dtype=dtype)
    C = np.ones((2, 2, n_a), dtype=dtype)
    saved = np.zeros((1, 2, 4 * n_a), dtype=dtype)
    host_kernels.HostFusedOps(NP, BUILT.lib).lstm_forward(xw, hw, C[0], saved, C, S, 0)
    assert np.isnan(S[1, 0, 0]) and np.isnan(C[1, 0, 0])
    assert np.isfinite(S[1, 0, 1:]).all() and np.isfinite(S[1, 1]).all()
    assert saved[0, 1, n_a + 1] == 1 and saved[0, 1, 2 * n_a + 2] == -1


# ---------------------------------------------------------------- the helpers and the argument checks

@needs_build
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copy_into_reads_the_course_layout(dtype):
    ops = host_kernels.HostFusedOps(NP, BUILT.lib)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 5, 19)).astype(dtype)  # (n, m, T): not multiples of the 16-wide tiles
    time_major = x.transpose(2, 1, 0)
    cases = {
        "plain": (np.empty((19, 5, 37), dtype=dtype), time_major),
        "into a wider buffer": (np.empty((19, 5, 38), dtype=dtype)[:, :, :37], time_major),
        "flipped in time": (np.empty((19, 5, 37), dtype=dtype), time_major[::-1]),
        "contiguous source": (np.empty((19, 5, 37), dtype=dtype), np.ascontiguousarray(time_major)),
    }
    for what, (out, src) in cases.items():
        out[...] = np.nan
        assert ops.copy_into(out, src) is out
        np.testing.assert_array_equal(out, src, err_msg=what)


@needs_build
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_rows_matches_the_reference(dtype):
    from xseq.course.activations import softmax_along

    ops = host_kernels.HostFusedOps(NP, BUILT.lib)
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((50, 7)) * 3).astype(dtype)
    z[0] = [1000, -1000, 0, 999, -5, 1000, 3]  # would overflow without the max subtracted
    z[1] = -1000
    want = softmax_along(NP, z.copy(), axis=-1)
    got = ops.softmax_rows(z)
    assert got is z and np.isfinite(got).all()
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=rtol, atol=np.finfo(dtype).tiny)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=10 * rtol)


@needs_build
def test_kernel_arguments_are_checked():
    kernel = host_kernels.HostKernel(BUILT.lib, "xseq_rnn_forward")
    rng = np.random.default_rng(5)
    xw = rng.standard_normal((6, 4)).T  # (4, 6), not C-contiguous: an input may be copied
    hw = rng.standard_normal((4, 6))
    h = np.empty((4, 6))
    kernel(xw, hw, h)
    np.testing.assert_allclose(h, np.tanh(xw + hw), rtol=1e-14)

    # two strided inputs: each copy must live until the call (a freed first copy would have its
    # memory handed to the second one, and the kernel would read hw twice)
    hw_strided = np.asfortranarray(hw)
    h3 = np.empty((4, 6))
    kernel(xw, hw_strided, h3)
    np.testing.assert_allclose(h3, np.tanh(xw + hw), rtol=1e-14)

    read_only = np.ascontiguousarray(xw)
    read_only.flags.writeable = False  # no writable buffer to take the address from
    h2 = np.empty((4, 6))
    kernel(read_only, hw, h2)
    np.testing.assert_array_equal(h2, h)

    h_strided = np.empty((6, 4)).T
    with pytest.raises(ValueError, match="xseq_rnn_forward: output h is not C-contiguous"):
        kernel(xw, hw, h_strided)
    with pytest.raises(TypeError, match="xseq_rnn_forward: hw is float32, the other arrays float64"):
        kernel(np.ascontiguousarray(xw), hw.astype(np.float32), h)
