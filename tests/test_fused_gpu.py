"""The fused CuPy kernels against the array-API path, on a GPU.

Runs whole sequences through ``xseq.engine.sequence.sequence_forward`` and
``sequence_backward`` on the same CuPy arrays: as dispatched by default
(``FusedCupyOps``; unmasked sequences take the direct loop, ``DirectSteps``
on ``CupyDevice``), with ``XSEQ_DIRECT=0`` (the engine's loop over the fused
step methods) and with ``XSEQ_FUSED=0`` (``ArrayAPIOps``, the reference),
and compares every output and gradient. Skipped, with the reason, where
there is no GPU (``tests/test_kernels_compile.py`` and
``tests/test_kernels_exec.py`` check the kernels' source without one); on a
machine with a GPU where CUDA does not start, every test fails
(``tests/gpu.py`` decides which).
"""

from __future__ import annotations

import numpy as np
import pytest

from .gpu import cuda_verdict, driver_gpu_count

VERDICT, DETAIL = cuda_verdict(driver_gpu_count())
if VERDICT == "skip":
    pytest.skip(DETAIL, allow_module_level=True)

import array_api_compat  # noqa: E402
import cupy  # noqa: E402  (importable: CuPy counted the devices)

from xseq.engine import sequence as engine  # noqa: E402
from xseq.ops import cuda, fused  # noqa: E402
from xseq.ops.cuda import FusedCupyOps  # noqa: E402
from xseq.ops.reference import ArrayAPIOps  # noqa: E402
from xseq.ops.select import ops_for  # noqa: E402


@pytest.fixture(autouse=True)
def cuda_started():
    """A GPU is present here: if CUDA does not start on it, every test fails with the reason."""
    if VERDICT == "fail":
        pytest.fail(DETAIL, pytrace=False)


T_STEPS, M, N_X, N_A = 7, 5, 4, 6
LENGTHS = [7, 5, 1, 6, 3]  # per example, for the masked cases (one example runs the full length)

# The two paths differ only in rounding: one fused expression per element
# against separate array operations (and FMA contraction inside the
# kernels). float64: 1e-10 is the bar set for the gradients; on an H100 the
# largest difference seen over these cases (3 seeds) was 6e-15 of a
# result's scale. float32: the same rounding at float32's epsilon, grown by
# 7 steps of recurrence and by the weight-gradient sums over T*m rows; the
# largest seen was 4e-6 (GRU dX), so rtol 2e-5 with an absolute floor of
# 2e-6 of the result's largest magnitude (for elements that cancel to ~0).
TOL = {
    np.float64: dict(rtol=1e-10, atol_rel=1e-12),
    np.float32: dict(rtol=2e-5, atol_rel=2e-6),
}


def make_case(kind, dtype, masked, weight_scale, seed=0):
    """Host arrays for one sequence problem; weights big enough (scale 2) to saturate the gates."""
    rng = np.random.default_rng(seed)
    G = engine.GATES[kind]

    def normal(*shape, scale=1.0):
        return rng.standard_normal(shape) * scale

    case = dict(
        X=normal(T_STEPS, M, N_X),
        W_ih=normal(G * N_A, N_X, scale=weight_scale / np.sqrt(N_X)),
        W_hh=normal(G * N_A, N_A, scale=weight_scale / np.sqrt(N_A)),
        b_ih=normal(G * N_A, scale=0.5),
        b_hh=normal(G * N_A, scale=0.5),
        h0=normal(M, N_A, scale=0.5),
        c0=normal(M, N_A) if kind == "lstm" else None,
        dY=normal(T_STEPS, M, N_A),
        dh_T=normal(M, N_A),
        dc_T=normal(M, N_A) if kind == "lstm" else None,
    )
    case = {k: (None if v is None else v.astype(dtype)) for k, v in case.items()}
    case["mask"] = (np.arange(T_STEPS)[:, None] < np.array(LENGTHS)[None, :])[:, :, None] if masked else None
    return case


def run(kind, case, fused, monkeypatch, fortran_grads=False, direct=True):
    """One forward and backward pass on the GPU; returns every result as a host array."""
    monkeypatch.setenv("XSEQ_FUSED", "1" if fused else "0")
    monkeypatch.setenv("XSEQ_DIRECT", "1" if direct else "0")
    g = {k: (None if v is None else cupy.asarray(v)) for k, v in case.items()}
    if fortran_grads:
        # Non-contiguous final-state gradients reach the kernels' elementwise
        # (non-raw) parameters, which must honour strides.
        g["dh_T"] = cupy.asfortranarray(g["dh_T"])
        if g["dc_T"] is not None:
            g["dc_T"] = cupy.asfortranarray(g["dc_T"])
        assert not g["dh_T"].flags.c_contiguous
    xp = array_api_compat.array_namespace(g["X"])
    assert isinstance(ops_for(xp), FusedCupyOps if fused else ArrayAPIOps)

    Y, h_T, c_T, trace = engine.sequence_forward(
        kind, g["X"], g["W_ih"], g["W_hh"], g["b_ih"], g["b_hh"], g["h0"], g["c0"],
        mask=g["mask"], reverse=case["reverse"],
    )
    grads = engine.sequence_backward(trace, dY=g["dY"], dh_T=g["dh_T"], dc_T=g["dc_T"])
    out = dict(Y=Y, h_T=h_T, c_T=c_T, S=trace.S, C=trace.C, saved=trace.saved, **grads)
    return {k: (None if v is None else cupy.asnumpy(v)) for k, v in out.items()}


def assert_same(fused, ref, dtype, what):
    tol = TOL[dtype]
    assert fused.keys() == ref.keys()
    for key, want in ref.items():
        got = fused[key]
        if want is None:
            assert got is None, f"{what}: {key}"
            continue
        assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {key}"
        atol = tol["atol_rel"] * float(np.max(np.abs(want), initial=0.0))
        np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=atol, err_msg=f"{what}: {key}")


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "step-methods"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward-time", "reverse"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_fused_matches_array_api(kind, dtype, masked, reverse, direct, monkeypatch):
    for weight_scale in (0.5, 2.0):
        case = make_case(kind, dtype, masked, weight_scale)
        case["reverse"] = reverse
        ref = run(kind, case, fused=False, monkeypatch=monkeypatch)
        fused = run(kind, case, fused=True, monkeypatch=monkeypatch, direct=direct)
        what = f"{kind} {np.dtype(dtype).name} masked={masked} reverse={reverse} direct={direct} scale={weight_scale}"
        assert_same(fused, ref, dtype, what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_direct_loop_is_in_use(dtype, monkeypatch):
    """On a GPU the direct loop must pass its self-check: a fallback would keep every other test green, only slower."""
    monkeypatch.delenv("XSEQ_DIRECT", raising=False)
    device = cuda.cupy_direct_device(dtype, engine.check_direct)
    assert device is not None, cuda.direct_status()
    xp = array_api_compat.array_namespace(cupy.empty(0))
    assert isinstance(FusedCupyOps(xp).direct_steps(dtype, check=engine.check_direct), fused.DirectSteps)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_fused_handles_strided_state_gradients(kind, masked, monkeypatch):
    case = make_case(kind, np.float64, masked=masked, weight_scale=1.0)
    case["reverse"] = False
    ref = run(kind, case, fused=False, monkeypatch=monkeypatch)
    fused = run(kind, case, fused=True, monkeypatch=monkeypatch, fortran_grads=True)
    assert_same(fused, ref, np.float64, f"{kind} masked={masked} with Fortran-ordered dh_T/dc_T")


def test_fused_sigmoid_saturates_cleanly(monkeypatch):
    """Pre-activations of thousands (exp of them overflows any float) give gates of exactly 0 and 1, no NaN."""
    case = make_case("lstm", np.float32, masked=False, weight_scale=1.0)
    case["reverse"] = False
    # Each step's input is +-1e4 in every feature and each W_ih row has one
    # sign, so no pre-activation can cancel to a moderate value.
    rng = np.random.default_rng(1)
    case["X"] = (rng.choice([-1e4, 1e4], size=(T_STEPS, M, 1)) * np.ones(N_X)).astype(np.float32)
    case["W_ih"] = (np.abs(case["W_ih"]) * rng.choice([-1, 1], size=(case["W_ih"].shape[0], 1))).astype(np.float32)
    z = case["X"].astype(np.float64) @ case["W_ih"].T.astype(np.float64)
    # The recurrent part adds at most sum|W_hh| (|h| <= 1) and the biases a few units.
    assert np.abs(z).min() > 200 + np.abs(case["W_hh"]).sum(axis=1).max(), "premise: every gate saturated"
    fused = run("lstm", case, fused=True, monkeypatch=monkeypatch)
    gates = fused["saved"]
    assert np.isfinite(gates).all()
    sig = np.concatenate([gates[..., :2 * N_A], gates[..., 3 * N_A:]], axis=-1)  # i, f, o
    assert set(np.unique(sig).tolist()) <= {0.0, 1.0}
    assert set(np.unique(gates[..., 2 * N_A:3 * N_A]).tolist()) <= {-1.0, 1.0}  # g = tanh
    for key in ("Y", "h_T", "c_T", "dX", "dW_ih", "dW_hh", "db_ih", "dh0", "dc0"):
        assert np.isfinite(fused[key]).all(), key
