"""projection_cross_entropy / projection_nll: values, gradients, chunking, memory, stability, torch parity, errors."""

import tracemalloc

import array_api_compat
import numpy as np
import pytest

import xseq
from xseq.nn import projection_loss
from xseq.nn.projection_loss import (
    StandardOps,
    default_chunk_rows,
    ops_for,
    projection_cross_entropy,
    projection_nll,
)

from .helpers import namespace_or_skip, numeric_gradient, relative_error


def make_window(rng, N=12, n_a=5, V=9):
    """Random float64 h, W, b and integer targets, every id in range."""
    h = rng.standard_normal((N, n_a))
    W = rng.standard_normal((V, n_a))
    b = rng.standard_normal(V)
    targets = rng.integers(0, V, size=N)
    return h, W, b, targets


def dense_reference(h, W, b, targets, scale):
    """NumPy float64 with an explicit one-hot matrix, written independently of the implementation."""
    z = h.astype(np.float64) @ W.astype(np.float64).T + b
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    onehot = np.zeros_like(z)
    onehot[np.arange(len(targets)), targets] = 1
    g = scale * (np.exp(log_p) - onehot)
    return -(log_p * onehot).sum(), g @ W, g.T @ h, g.sum(axis=0)


def on(xp, h, W, b, targets, dtype="float64"):
    return (*(xseq.asarray(a, backend=xp, dtype=dtype) for a in (h, W, b)), xp.asarray(targets))


def assert_results_close(got, expected, rtol):
    nll, *grads = got
    assert nll == pytest.approx(expected[0], rel=rtol)
    for name, g, e in zip(("dh", "dW", "db"), grads, expected[1:]):
        np.testing.assert_allclose(xseq.to_numpy(g), e, rtol=rtol, atol=rtol * np.abs(e).max(), err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_dense_one_hot_reference(xp, dtype):
    h, W, b, targets = make_window(np.random.default_rng(0))
    result = projection_cross_entropy(*on(xp, h, W, b, targets, dtype), scale=0.25)
    assert isinstance(result.nll, float)
    for name, value, shape in (("dh", result.dh, h.shape), ("dW", result.dW, W.shape), ("db", result.db, b.shape)):
        assert array_api_compat.array_namespace(value) is xp, name
        assert value.dtype == getattr(xp, dtype) and tuple(value.shape) == shape, name
    rtol = 1e-5 if dtype == "float32" else 1e-12
    assert_results_close(result, dense_reference(h, W, b, targets, 0.25), rtol)
    assert projection_nll(*on(xp, h, W, b, targets, dtype)) == pytest.approx(result.nll, rel=rtol)


def test_gradients_match_central_finite_differences(xp):
    h, W, b, targets = make_window(np.random.default_rng(1), N=5, n_a=3, V=4)
    scale = 0.5
    result = projection_cross_entropy(*on(xp, h, W, b, targets), scale=scale, chunk_rows=2)

    def loss(arrays):
        return scale * projection_nll(*on(xp, arrays["h"], arrays["W"], arrays["b"], targets), chunk_rows=2)

    arrays = {"h": h, "W": W, "b": b}
    for name, analytic in (("h", result.dh), ("W", result.dW), ("b", result.db)):
        numeric = numeric_gradient(loss, arrays, name)
        assert relative_error(numeric, xseq.to_numpy(analytic)) < 1e-7, name


@pytest.mark.parametrize("chunk_rows", [1, 3, 11, 12, 50])
def test_chunked_equals_unchunked(xp, chunk_rows):
    h, W, b, targets = make_window(np.random.default_rng(2))
    whole = projection_cross_entropy(*on(xp, h, W, b, targets), scale=0.1, chunk_rows=len(targets))
    chunked = projection_cross_entropy(*on(xp, h, W, b, targets), scale=0.1, chunk_rows=chunk_rows)
    assert_results_close(chunked, [whole.nll] + [xseq.to_numpy(g) for g in whole[1:]], 1e-12)
    assert projection_nll(*on(xp, h, W, b, targets), chunk_rows=chunk_rows) == pytest.approx(whole.nll, rel=1e-12)


def test_fast_path_matches_array_api_reference(xp):
    h, W, b, targets = make_window(np.random.default_rng(3), N=10, V=7)
    args = on(xp, h, W, b, xp.asarray(targets, dtype=xp.int64))
    fast = ops_for(xp).run(*args, 0.3, 4, grad=True)
    reference = StandardOps(xp).run(*args, 0.3, 4, grad=True)
    assert_results_close(fast, [reference[0]] + [xseq.to_numpy(g) for g in reference[1:]], 1e-12)


def test_expected_implementation_per_backend(xp):
    expected = {"numpy": "numpy-inplace", "cupy": "numpy-inplace", "torch": "torch-inplace"}
    assert ops_for(xp).name == expected.get(xseq.backends.arrays.backend_name(xp), "array-api")


def test_inputs_are_not_modified(xp):
    h, W, b, targets = make_window(np.random.default_rng(4))
    args = on(xp, h, W, b, targets, "float32")
    before = [xseq.to_numpy(a).copy() for a in args]
    projection_cross_entropy(*args, scale=0.5, chunk_rows=5)
    projection_nll(*args)
    for name, a, copy in zip(("h", "W", "b", "targets"), args, before):
        np.testing.assert_array_equal(xseq.to_numpy(a), copy, err_msg=name)


@pytest.mark.parametrize("id_dtype", ["uint8", "int16", "int32", "int64"])
def test_any_integer_dtype_of_targets(xp, id_dtype):
    # torch reads a uint8 index tensor as a mask; the ids must be taken as ids on every backend.
    h, W, b, targets = make_window(np.random.default_rng(5), N=6, V=20)
    result = projection_cross_entropy(*on(xp, h, W, b, xp.asarray(targets, dtype=getattr(xp, id_dtype))))
    assert_results_close(result, dense_reference(h, W, b, targets, 1.0), 1e-12)


def test_huge_logits_stay_finite(xp):
    rng = np.random.default_rng(6)
    h, W, b, _ = make_window(rng, N=4, n_a=3, V=6)
    h *= 100.0
    W *= 100.0  # logits of order 1e4: exp overflows float32 without the shift
    z = h @ W.T + b
    targets = np.array([z[0].argmax(), z[1].argmin(), 0, 5])
    result = projection_cross_entropy(*on(xp, h, W, b, targets, "float32"), scale=1.0)
    assert np.isfinite(result.nll) and result.nll > 1e3
    for g in result[1:]:
        assert np.all(np.isfinite(xseq.to_numpy(g)))
    assert_results_close(result, dense_reference(h, W, b, targets, 1.0), 1e-4)


def test_default_chunk_keeps_logits_under_the_budget():
    assert default_chunk_rows(10_000, 4) == 64 * 2**20 // 40_000 == 1677
    assert default_chunk_rows(10_000, 8) == 838
    assert default_chunk_rows(10**9, 8) == 1  # one row is the least there can be


def traced_peak(function):
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_chunk_rows_not_by_the_window(monkeypatch):
    N, n_a, V = 256, 8, 4096
    h, W, b, targets = make_window(np.random.default_rng(7), N=N, n_a=n_a, V=V)
    window_logits = N * V * 8
    whole = traced_peak(lambda: projection_cross_entropy(h, W, b, targets, chunk_rows=N))
    chunked = traced_peak(lambda: projection_cross_entropy(h, W, b, targets, chunk_rows=8))
    assert whole > window_logits  # the measurement sees the logits buffer
    assert chunked < window_logits / 4  # 8 x V logits, two (V, n_a) for dW, (N, n_a) for dh
    monkeypatch.setattr(projection_loss, "LOGITS_BUDGET_BYTES", 8 * V * 8)
    by_budget = traced_peak(lambda: projection_cross_entropy(h, W, b, targets))
    assert by_budget < window_logits / 4
    assert traced_peak(lambda: projection_nll(h, W, b, targets)) < window_logits / 4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_parity_with_autograd(torch, dtype):
    T, m, n_a, V = 5, 4, 6, 11
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    linear = torch.nn.Linear(n_a, V, dtype=torch_dtype)
    h = torch.randn(T * m, n_a, dtype=torch_dtype, requires_grad=True)
    targets = torch.randint(0, V, (T * m,))
    loss = torch.nn.functional.cross_entropy(linear(h), targets, reduction="sum")
    (loss / m).backward()
    # Parameters that require grad go in as they are: the function must not record a graph.
    result = projection_cross_entropy(h, linear.weight, linear.bias, targets, scale=1 / m, chunk_rows=7)
    assert not any(g.requires_grad for g in result[1:])
    rtol = 1e-5 if dtype == "float32" else 1e-12
    assert result.nll == pytest.approx(loss.item(), rel=rtol)
    for name, got, expected in (("dh", result.dh, h.grad), ("dW", result.dW, linear.weight.grad),
                                ("db", result.db, linear.bias.grad)):
        assert got.dtype == torch_dtype
        torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol, msg=name)


# ---------------------------------------------------------------- bad input

def numpy_window(N=6, n_a=4, V=9):
    return make_window(np.random.default_rng(8), N=N, n_a=n_a, V=V)


def replaced(**changes):
    h, W, b, targets = numpy_window()
    return {"h": h, "W": W, "b": b, "targets": targets, **changes}


BAD_ARRAYS = [
    (replaced(targets=np.arange(6.0)), TypeError, "targets has dtype float64; expected an integer"),
    (replaced(targets=np.ones(6, dtype=bool)), TypeError, "targets has dtype bool"),
    (replaced(targets=np.array([0, 1, -1, 2, 3, 4])), ValueError,
     "targets holds -1 at row 2; expected 0 <= id < V = 9"),
    (replaced(targets=np.array([0, 1, 2, 3, 9, 4])), ValueError,
     "targets holds 9 at row 4; expected 0 <= id < V = 9"),
    (replaced(targets=np.arange(5)), ValueError, r"targets has shape \(5,\); expected \(N,\) = \(6,\) from h"),
    (replaced(targets=np.zeros((6, 1), dtype=int)), ValueError, "targets has 2 dimensions"),
    (replaced(targets=[0, 1, 2, 3, 4, 5]), TypeError, "targets must be an array"),
    (replaced(targets=None), TypeError, "targets must be an array of integer ids; got None"),
    (replaced(W=np.zeros((9, 3))), ValueError, r"W has shape \(9, 3\); expected \(V, n_a\) = \(9, 4\) from h"),
    (replaced(b=np.zeros((9, 1))), ValueError, r"b has 2 dimensions, shape \(9, 1\); expected 1"),
    (replaced(b=np.zeros(8)), ValueError, r"b has shape \(8,\); expected \(V,\) = \(9,\) from W"),
    (replaced(h=np.zeros((6, 4, 1))), ValueError, "h has 3 dimensions"),
    (replaced(h=np.zeros((6, 4), dtype=int)), TypeError, "h has dtype int64; expected a real floating"),
    (replaced(W=np.zeros((9, 4), dtype=np.float32)), TypeError, "mixed dtypes: W is float32 but h is float64"),
    (replaced(h=np.zeros((0, 4)), targets=np.zeros(0, dtype=int)), ValueError, r"h has shape \(0, 4\): N = 0 rows"),
    (replaced(h=np.zeros((6, 0)), W=np.zeros((9, 0))), ValueError, r"h has shape \(6, 0\): n_a = 0"),
    (replaced(W=np.zeros((0, 4)), b=np.zeros(0), targets=np.zeros(6, dtype=int)), ValueError,
     r"W has shape \(0, 4\): V = 0, an empty vocabulary"),
]


@pytest.mark.parametrize("function", [projection_cross_entropy, projection_nll])
@pytest.mark.parametrize("arrays, error, message", BAD_ARRAYS)
def test_bad_arrays_name_the_argument(function, arrays, error, message):
    with pytest.raises(error, match=message):
        function(**arrays)


@pytest.mark.parametrize("scale, error, message", [
    ("0.5", TypeError, "scale must be a real number"),
    (True, TypeError, "scale must be a real number"),
    (np.array(0.5), TypeError, "scale must be a real number"),
    (float("nan"), ValueError, "scale must be finite; got nan"),
    (float("inf"), ValueError, "scale must be finite; got inf"),
])
def test_bad_scale(scale, error, message):
    with pytest.raises(error, match=message):
        projection_cross_entropy(*numpy_window(), scale=scale)


@pytest.mark.parametrize("chunk_rows", [0, -1, 1.5, True, "8"])
@pytest.mark.parametrize("function", [projection_cross_entropy, projection_nll])
def test_bad_chunk_rows(function, chunk_rows):
    with pytest.raises(ValueError, match=f"chunk_rows must be a positive integer; got {chunk_rows!r}"):
        function(*numpy_window(), chunk_rows=chunk_rows)


@pytest.mark.parametrize("other", ["array_api_strict", "torch"])
def test_arrays_of_two_libraries(other):
    xp = namespace_or_skip(other)
    h, W, b, targets = numpy_window()
    with pytest.raises(TypeError, match=f"W is a {other} array"):
        projection_cross_entropy(h, xseq.asarray(W, backend=xp), b, targets)
    with pytest.raises(TypeError, match=f"targets is a {other} array"):
        projection_cross_entropy(h, W, b, xp.asarray(targets))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk_rows", [None, 5])
def test_numpys_one_pass_a_row_equals_the_reference(monkeypatch, dtype, chunk_rows):
    """NumPy's host build does bias, softmax, loss, gradient and db in one pass a row where the window is one chunk
    (a loss-only pass also chunk by chunk); its results are the reference's, and so are the fallback's."""
    from xseq.ops import host

    if not host.library().on("softmax cross-entropy"):
        pytest.skip(f"no one-pass softmax cross-entropy in this machine's host build: "
                    f"{host.features() or host.library().reason}")
    h, W, b, targets = make_window(np.random.default_rng(8), N=12, n_a=6, V=40)
    args = [a.astype(dtype) for a in (h, W, b)] + [targets.astype(np.int64)]
    calls = []

    def spy(z, b_, t, scale, db):
        calls.append(db is not None)
        return host.softmax_xent_rows(z, b_, t, scale, db)

    monkeypatch.setattr(projection_loss, "softmax_xent_rows", spy)
    rtol = 2e-5 if dtype == "float32" else 1e-12
    expected = dense_reference(h, W, b, targets, 0.25)
    assert_results_close(projection_cross_entropy(*args, scale=0.25, chunk_rows=chunk_rows), expected, rtol)
    assert projection_nll(*args, chunk_rows=chunk_rows) == pytest.approx(expected[0], rel=rtol)
    one_chunk = chunk_rows is None
    assert calls == ([True] if one_chunk else []) + [False] * (1 if one_chunk else 3)
    monkeypatch.setattr(projection_loss, "softmax_xent_rows", lambda *a: None)  # no host build: NumPy's passes
    assert_results_close(projection_cross_entropy(*args, scale=0.25, chunk_rows=chunk_rows), expected, rtol)
