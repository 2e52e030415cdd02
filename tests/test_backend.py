"""Choosing a backend by name, moving arrays in and out, and ``import xseq`` without CuPy or torch."""

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import array_api_compat
import numpy as np
import pytest

import xseq
from xseq.backends.arrays import backend_name

from .helpers import namespace_or_skip

ROOT = Path(__file__).resolve().parents[1]


def _cupy_state():
    """``("missing" | "no-device" | "ok", cupy or None)`` for the real CuPy of this machine."""
    try:
        import cupy
    except ImportError:
        return "missing", None
    try:
        return ("ok" if cupy.is_available() else "no-device"), cupy
    except Exception:
        return "no-device", cupy


# ---------------------------------------------------------------- backend(name)

@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch", "cupy"])
def test_backend_returns_the_namespace_of_its_arrays(name):
    xp = namespace_or_skip(name)
    a = xp.asarray([1.0, 2.0])
    assert array_api_compat.array_namespace(a) is xp
    assert backend_name(xp) == name
    assert xseq.backend(name) is xp  # the same namespace every time
    assert xseq.backend(xp) is xp  # a namespace passes through unchanged


def test_numpy_backend_is_the_compat_numpy_namespace():
    xp = xseq.backend("numpy")
    assert xp is array_api_compat.array_namespace(np.zeros(1))
    assert isinstance(xp.asarray([1.0]), np.ndarray)


def test_default_backend_is_numpy():
    assert xseq.backend() is xseq.backend("numpy")


def test_auto_is_cupy_only_when_cupy_is_available():
    state, _ = _cupy_state()
    expected = xseq.backend("cupy") if state == "ok" else xseq.backend("numpy")
    assert xseq.backend("auto") is expected


def test_cupy_on_this_machine_raises_or_runs():
    state, _ = _cupy_state()
    if state == "ok":
        xp = xseq.backend("cupy")
        assert backend_name(xp) == "cupy"
        return
    with pytest.raises(xseq.BackendUnavailableError) as info:
        xseq.backend("cupy")
    message = str(info.value)
    assert "cupy" in message
    if state == "missing":
        assert "not installed" in message
    else:
        assert "CUDA" in message


def test_cupy_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(xseq.BackendUnavailableError, match=r'backend "cupy" cannot run: CuPy is not installed'):
        xseq.backend("cupy")
    assert xseq.backend("auto") is xseq.backend("numpy")


def test_cupy_without_cuda_device(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(xseq.BackendUnavailableError, match=r"CuPy is installed but no usable CUDA device"):
        xseq.backend("cupy")
    assert xseq.backend("auto") is xseq.backend("numpy")


def test_cupy_with_broken_cuda(monkeypatch):
    def broken():
        raise RuntimeError("cudaErrorInsufficientDriver")

    fake = types.ModuleType("cupy")
    fake.is_available = broken
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(xseq.BackendUnavailableError, match=r"CUDA failed to initialise: cudaErrorInsufficientDriver"):
        xseq.backend("cupy")
    assert xseq.backend("auto") is xseq.backend("numpy")


def test_backend_unavailable_error_is_a_runtime_error():
    assert issubclass(xseq.BackendUnavailableError, RuntimeError)


def test_torch_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(xseq.BackendUnavailableError, match=r'backend "torch" cannot run: PyTorch is not installed'):
        xseq.backend("torch")


def test_array_api_strict_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "array_api_strict", None)
    with pytest.raises(xseq.BackendUnavailableError, match=r'backend "array_api_strict" cannot run: .*not installed'):
        xseq.backend("array_api_strict")


@pytest.mark.parametrize("name", ["jax", "Numpy", "", "gpu"])
def test_unknown_backend_name(name):
    with pytest.raises(ValueError, match=r"backend must be one of .*'numpy'.*'cupy'.*'torch'.*'array_api_strict'.*'auto'"):
        xseq.backend(name)


def test_backend_of_a_non_namespace():
    with pytest.raises(TypeError, match=r"backend must be one of"):
        xseq.backend(3)


# ---------------------------------------------------------------- asarray / to_numpy

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_asarray_to_numpy_round_trip(xp, dtype):
    name = backend_name(xp)
    values = [[1.5, -2.0, 0.25], [3.0, 4.0, -0.5]]
    a = xseq.asarray(values, backend=name, dtype=dtype)
    assert array_api_compat.array_namespace(a) is xp
    assert a.dtype == getattr(xp, dtype)
    assert tuple(a.shape) == (2, 3)
    back = xseq.to_numpy(a)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, np.asarray(values, dtype=dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_asarray_keeps_the_dtype_when_none_is_given(xp, dtype):
    host = np.arange(6, dtype=dtype).reshape(2, 3)
    a = xseq.asarray(host, backend=backend_name(xp))
    assert a.dtype == getattr(xp, dtype)
    np.testing.assert_array_equal(xseq.to_numpy(a), host)


def test_asarray_accepts_a_dtype_of_the_backend(xp):
    a = xseq.asarray([1, 2, 3], backend=backend_name(xp), dtype=xp.float64)
    assert a.dtype == xp.float64


def test_asarray_rejects_other_dtype_names():
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\); got 'float16'"):
        xseq.asarray([1.0], dtype="float16")


@pytest.mark.parametrize("other", ["numpy", "array_api_strict", "torch", "cupy"])
def test_asarray_moves_arrays_between_libraries(xp, other):
    # Each target library is its own case, so a library that is not installed skips with its
    # reason instead of failing the moves between the libraries that are.
    target = namespace_or_skip(other)
    host = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    a = xseq.asarray(host, backend=backend_name(xp))
    b = xseq.asarray(a, backend=other)
    assert array_api_compat.array_namespace(b) is target
    assert b.dtype == target.float32
    c = xseq.asarray(b, backend=backend_name(xp), dtype="float64")
    assert array_api_compat.array_namespace(c) is xp
    assert c.dtype == xp.float64
    np.testing.assert_array_equal(xseq.to_numpy(c), host.astype(np.float64))


def test_to_numpy_of_numpy_is_the_same_array():
    a = np.ones((2, 2))
    assert xseq.to_numpy(a) is a


def test_to_numpy_of_a_torch_tensor_that_requires_grad(torch):
    t = torch.ones((2, 3), dtype=torch.float64, requires_grad=True)
    out = xseq.to_numpy(t)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (2, 3)


# ---------------------------------------------------------------- two libraries in one call

def _rnn_problem(dtype="float32"):
    params = xseq.init_rnn_parameters(3, 5, 2, dtype=dtype)
    rng = np.random.default_rng(1)
    xt = rng.standard_normal((3, 4)).astype(dtype)
    a_prev = rng.standard_normal((5, 4)).astype(dtype)
    return xt, a_prev, params


def test_numpy_and_torch_in_one_call(torch):
    xt, a_prev, params = _rnn_problem()
    with pytest.raises(TypeError, match=r"two libraries.*xt is a numpy array but a_prev is a torch array"):
        xseq.rnn_cell_forward(xt, torch.asarray(a_prev), params)


def test_torch_parameters_with_numpy_input(torch):
    xt, a_prev, params = _rnn_problem()
    torch_params = {k: torch.asarray(v) for k, v in params.items()}
    with pytest.raises(TypeError) as info:
        xseq.rnn_cell_forward(xt, a_prev, torch_params)
    assert "numpy" in str(info.value) and "torch" in str(info.value)


def test_numpy_and_array_api_strict_in_one_call():
    xt, a_prev, params = _rnn_problem()
    with pytest.raises(TypeError, match=r"xt is a array_api_strict array but a_prev is a numpy array"):
        xseq.rnn_cell_forward(xseq.asarray(xt, backend="array_api_strict"), a_prev, params)


def test_mixed_libraries_in_backward(torch):
    xt, a_prev, params = _rnn_problem()
    _, _, cache = xseq.rnn_cell_forward(xt, a_prev, params)
    with pytest.raises(TypeError) as info:
        xseq.rnn_cell_backward(torch.ones((5, 4)), cache)
    assert "numpy" in str(info.value) and "torch" in str(info.value)


def test_mixed_libraries_in_lstm_sequence(torch):
    params = xseq.init_lstm_parameters(3, 5, 2)
    x = torch.zeros((3, 4, 2))
    a0 = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(TypeError, match=r"x is a torch array but a0 is a numpy array"):
        xseq.lstm_forward(x, a0, params)


# ---------------------------------------------------------------- import xseq without CuPy or torch

def _run_python(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_without_cupy_or_torch():
    out = _run_python("""
        import sys
        sys.modules["cupy"] = None   # `import cupy` / `import torch` now raise ImportError
        sys.modules["torch"] = None
        import numpy as np
        import xseq
        assert sys.modules["cupy"] is None and sys.modules["torch"] is None
        leaked = [k for k in sys.modules if k.startswith(("cupy.", "cupyx", "torch."))]
        assert not leaked, leaked

        xp = xseq.backend("auto")
        assert xp is xseq.backend("numpy")
        for name, words in (("cupy", "CuPy is not installed"), ("torch", "PyTorch is not installed")):
            try:
                xseq.backend(name)
            except xseq.BackendUnavailableError as exc:
                assert words in str(exc), str(exc)
            else:
                raise AssertionError(name + " should be unavailable")

        params = xseq.init_lstm_parameters(3, 5, 2, backend="auto")
        a, y, c, caches = xseq.lstm_forward(np.zeros((3, 4, 2), np.float32), np.zeros((5, 4), np.float32), params)
        assert a.shape == (5, 4, 2) and a.dtype == np.float32
        print("ok")
    """)
    assert out.strip() == "ok"


def test_import_does_not_import_cupy_or_torch():
    out = _run_python("""
        import sys
        import numpy as np
        import xseq
        params = xseq.init_rnn_parameters(3, 5, 2)
        a, y, caches = xseq.rnn_forward(np.zeros((3, 4, 2), np.float32), np.zeros((5, 4), np.float32), params)
        xseq.rnn_backward(np.ones_like(a), caches)
        print("cupy" in sys.modules, "torch" in sys.modules)
    """)
    assert out.split() == ["False", "False"]
