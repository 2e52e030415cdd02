"""NumPy's step implementations (in place, and the host-compiled kernels) equal the array-API reference."""

import numpy as np
import pytest

import xseq
from xseq.engine import sequence as engine
from xseq.ops import host as host_kernels
from xseq.ops.numpy_inplace import NumpyOps
from xseq.ops.reference import ArrayAPIOps
from xseq.ops.select import ops_for

NP = xseq.backend("numpy")


BUILT = host_kernels.library()
OPS = {
    "numpy-inplace": NumpyOps,
    "host-kernels": lambda xp: host_kernels.HostFusedOps(xp, BUILT.lib),
    "reference": ArrayAPIOps,
}


def _run(monkeypatch, ops_name, kind, dtype, mask, reverse, weight_scale, seed=0):
    monkeypatch.setattr(engine, "ops_for", lambda xp, dtype=None: OPS[ops_name](xp))
    rng = np.random.default_rng(seed)
    T, m, n_x, n_a = 6, 3, 4, 5
    G = engine.GATES[kind]
    draw = lambda *shape: (rng.standard_normal(shape) * weight_scale).astype(dtype)  # noqa: E731
    X, W_ih, W_hh = draw(T, m, n_x), draw(G * n_a, n_x), draw(G * n_a, n_a)
    b_ih, b_hh, h0, c0 = draw(G * n_a), draw(G * n_a), draw(m, n_a), draw(m, n_a)
    Y, h_T, c_T, trace = engine.sequence_forward(kind, X, W_ih, W_hh, b_ih, b_hh, h0,
                                                  c0 if kind == "lstm" else None, mask=mask, reverse=reverse)
    grads = engine.sequence_backward(trace, draw(T, m, n_a), draw(m, n_a), draw(m, n_a) if kind == "lstm" else None)
    results = {"Y": Y, "h_T": h_T, "S": trace.S}
    if kind == "lstm":
        results.update(c_T=c_T, C=trace.C, saved=trace.saved)
    results.update({k: v for k, v in grads.items() if v is not None})
    return {k: np.array(v) for k, v in results.items()}


@pytest.mark.parametrize("ops_name", [
    "numpy-inplace",
    pytest.param("host-kernels", marks=pytest.mark.skipif(BUILT.lib is None, reason=f"no host build: {BUILT.reason}")),
])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
# Weight scale 8 saturates the gates. It runs in float64 only: in float32 the two sigmoid formulas
# round 1 - a differently next to saturation, which is rounding noise, not a difference in the math.
@pytest.mark.parametrize("dtype,weight_scale,tolerance", [
    (np.float64, 0.5, 1e-12), (np.float64, 8.0, 1e-12), (np.float32, 0.5, 2e-6)])
def test_fast_numpy_steps_equal_reference(monkeypatch, ops_name, kind, with_mask, reverse, dtype, weight_scale,
                                          tolerance):
    lengths = np.array([6, 2, 4])
    mask = (np.arange(6)[:, None] < lengths[None, :])[:, :, None] if with_mask else None
    fast = _run(monkeypatch, ops_name, kind, dtype, mask, reverse, weight_scale)
    reference = _run(monkeypatch, "reference", kind, dtype, mask, reverse, weight_scale)
    assert fast.keys() == reference.keys()
    for key in reference:
        assert fast[key].dtype == dtype
        scale = max(1.0, np.abs(reference[key]).max())
        np.testing.assert_allclose(fast[key], reference[key], rtol=0, atol=tolerance * scale, err_msg=key)


def test_dispatch(monkeypatch):
    """float32/float64 NumPy arrays get the host kernels where they built, other dtypes NumPy's in-place
    steps, and XSEQ_FUSED=0 the reference."""
    monkeypatch.setenv("XSEQ_FUSED", "1")
    for dtype in (np.float32, np.float64):
        expected = host_kernels.HostFusedOps if BUILT.on("step kernels") else NumpyOps
        assert type(ops_for(NP, np.dtype(dtype))) is expected
    assert type(ops_for(NP, np.dtype(np.float16))) is NumpyOps
    assert type(ops_for(NP)) is NumpyOps  # no dtype given: nothing to build for
    monkeypatch.setenv("XSEQ_FUSED", "0")
    assert type(ops_for(NP, np.dtype(np.float32))) is ArrayAPIOps
    assert host_kernels.status().startswith("array-API reference steps")


def test_other_backends_use_the_reference():
    assert type(ops_for(xseq.backend("array_api_strict"))) is ArrayAPIOps
