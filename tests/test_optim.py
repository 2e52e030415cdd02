"""SGD, Adam and gradient clipping against hand-computed values, on every backend."""

import math

import array_api_compat
import numpy as np
import pytest

import xseq
from xseq.lm.checkpoint import load_checkpoint, save_checkpoint
from xseq.nn.optim import SGD, Adam, clip_by_global_norm, clip_by_value


def arr(xp, values, dtype="float64"):
    return xseq.asarray(np.asarray(values, dtype=np.float64), backend=xp, dtype=dtype)


def host(a):
    return xseq.to_numpy(a)


# Two parameter entries get opposite gradients, so the second must move exactly opposite to the first.
G1, G2 = [[0.5], [-0.5]], [[-1.0], [1.0]]


def test_sgd_plain_step(xp):
    params = {"W": arr(xp, [[1.0], [-2.0]])}
    SGD(params, lr=0.1).step({"W": arr(xp, G1)})
    np.testing.assert_allclose(host(params["W"]), [[0.95], [-1.95]], rtol=0, atol=1e-15)


def test_sgd_momentum_two_steps(xp):
    # v1 = 0.5               p1 = 1 - 0.1*0.5 = 0.95
    # v2 = 0.9*0.5 - 1 = -0.55  p2 = 0.95 + 0.1*0.55 = 1.005
    params = {"W": arr(xp, [[1.0], [-2.0]])}
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step({"W": arr(xp, G1)})
    np.testing.assert_allclose(host(params["W"]), [[0.95], [-1.95]], atol=1e-15)
    opt.step({"W": arr(xp, G2)})
    np.testing.assert_allclose(host(params["W"]), [[1.005], [-2.005]], atol=1e-15)
    np.testing.assert_allclose(host(opt.state["velocity"]["W"]), [[-0.55], [0.55]], atol=1e-15)
    assert opt.step_count == 2


def test_adam_two_steps_with_bias_correction(xp):
    # lr 0.1, b1 0.9, b2 0.999, eps 1e-8, p0 = 1, g1 = 0.5, g2 = -1:
    # t=1: m = 0.05, v = 0.00025; m_hat = 0.5, v_hat = 0.25
    #      p1 = 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.900000002
    # t=2: m = 0.045 - 0.1 = -0.055, v = 0.00024975 + 0.001 = 0.00124975
    #      m_hat = -0.055 / 0.19 = -0.28947368421052..., v_hat = 0.00124975 / 0.001999 = 0.62518759379689...
    #      p2 = p1 + 0.1 * 0.28947368421052 / (0.79068805... + 1e-8) = 0.93661035424056...
    params = {"W": arr(xp, [[1.0], [-2.0]])}
    opt = Adam(params, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    opt.step({"W": arr(xp, G1)})
    np.testing.assert_allclose(host(params["W"]), [[0.900000002], [-1.900000002]], rtol=1e-14)
    opt.step({"W": arr(xp, G2)})
    np.testing.assert_allclose(host(params["W"]), [[0.9366103542405654], [-1.9366103542405654]], rtol=1e-14)
    np.testing.assert_allclose(host(opt.state["m"]["W"]), [[-0.055], [0.055]], rtol=1e-14)
    np.testing.assert_allclose(host(opt.state["v"]["W"]), [[0.00124975], [0.00124975]], rtol=1e-14)


def test_step_replaces_entries_of_the_same_dict(xp):
    old = arr(xp, [[1.0]], "float32")
    params = {"W": old}
    returned = SGD(params, lr=0.5).step({"W": arr(xp, [[1.0]], "float32")})
    assert returned is params
    assert params["W"] is not old
    assert host(old)[0, 0] == 1.0  # never written in place
    assert params["W"].dtype == xp.float32
    assert array_api_compat.array_namespace(params["W"]) is xp


def test_course_gradient_names_and_extra_keys(xp):
    params = {"Wax": arr(xp, [[1.0]]), "ba": arr(xp, [[0.0]])}
    grads = {"dWax": arr(xp, [[1.0]]), "dba": arr(xp, [[2.0]]), "dx": arr(xp, [[9.0]]), "da0": 3}
    SGD(params, lr=0.1).step(grads)
    np.testing.assert_allclose(host(params["Wax"]), [[0.9]])
    np.testing.assert_allclose(host(params["ba"]), [[-0.2]])


def test_gradient_dict_errors():
    params = {"W": np.ones((2, 2)), "b": np.zeros((2, 1))}
    opt = SGD(params, lr=0.1)
    with pytest.raises(KeyError, match="no gradient for parameter 'b'"):
        opt.step({"W": np.ones((2, 2))})
    with pytest.raises(KeyError, match="both 'W' and 'dW'"):
        opt.step({"W": np.ones((2, 2)), "dW": np.ones((2, 2)), "b": np.ones((2, 1))})
    with pytest.raises(ValueError, match=r"grads\['db'\] has shape \(2,\); expected \(2, 1\) from params\['b'\]"):
        opt.step({"dW": np.ones((2, 2)), "db": np.ones(2)})
    with pytest.raises(TypeError, match=r"grads\['db'\] has dtype float32 but params\['b'\] is float64"):
        opt.step({"dW": np.ones((2, 2)), "db": np.ones((2, 1), dtype=np.float32)})
    strict = xseq.backend("array_api_strict")
    with pytest.raises(TypeError, match="numpy array but grads\\['dW'\\] is a array_api_strict array"):
        opt.step({"dW": strict.ones((2, 2)), "db": np.ones((2, 1))})
    with pytest.raises(TypeError, match="grads must be a dict"):
        opt.step([np.ones((2, 2))])
    assert opt.step_count == 0


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: SGD(p, lr=0), ValueError, "lr must be > 0; got 0"),
        (lambda p: SGD(p, lr=-1.0), ValueError, "lr must be > 0"),
        (lambda p: SGD(p, lr=float("nan")), ValueError, "lr must be a finite number"),
        (lambda p: SGD(p, lr=True), ValueError, "lr must be a finite number"),
        (lambda p: SGD(p, lr=0.1, momentum=1.0), ValueError, r"momentum must be in \[0, 1\); got 1.0"),
        (lambda p: SGD(p, lr=0.1, momentum=-0.1), ValueError, "momentum must be >= 0"),
        (lambda p: Adam(p, lr=0), ValueError, "lr must be > 0"),
        (lambda p: Adam(p, betas=(0.9,)), ValueError, "betas must be a pair"),
        (lambda p: Adam(p, betas=(0.9, 1.0)), ValueError, r"beta2 must be in \[0, 1\)"),
        (lambda p: Adam(p, eps=0), ValueError, "eps must be > 0"),
        (lambda p: SGD({}, lr=0.1), ValueError, "params is empty"),
        (lambda p: SGD([1.0], lr=0.1), TypeError, "params must be a dict"),
        (lambda p: SGD({"W": np.ones(2, dtype=np.int64)}, lr=0.1), TypeError, r"params\['W'\] has dtype int64"),
        (lambda p: SGD({"W": [1.0]}, lr=0.1), TypeError, "must be an array"),
    ],
)
def test_hyperparameter_and_params_validation(make, error, message):
    with pytest.raises(error, match=message):
        make({"W": np.ones(2)})


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1, momentum=0.9), lambda p: Adam(p, lr=0.01)])
def test_state_dict_round_trip_resumes_exactly(xp, tmp_path, make):
    rng = np.random.default_rng(0)
    grads = [{"W": arr(xp, rng.standard_normal((3, 2))), "b": arr(xp, rng.standard_normal((3, 1)))} for _ in range(4)]
    params_a = {"W": arr(xp, np.ones((3, 2))), "b": arr(xp, np.zeros((3, 1)))}
    a = make(params_a)
    a.step(grads[0])
    a.step(grads[1])

    # Through a checkpoint file, as training would do it.
    state = {k: (host(v) if hasattr(v, "shape") else v) for k, v in a.state_dict().items()}
    save_checkpoint(tmp_path / "opt.npz", arrays=state, meta={})
    loaded, _ = load_checkpoint(tmp_path / "opt.npz")

    params_b = {k: arr(xp, host(v)) for k, v in params_a.items()}
    b = make(params_b)
    b.load_state_dict(loaded)
    assert b.step_count == 2
    for g in grads[2:]:
        a.step(g)
        b.step(g)
    for k in params_a:
        np.testing.assert_array_equal(host(params_a[k]), host(params_b[k]))


def test_state_dict_contents():
    opt = Adam({"W": np.ones(2)}, lr=0.01)
    state = opt.state_dict()
    assert set(state) == {"optimizer", "step", "lr", "beta1", "beta2", "eps", "m/W", "v/W"}
    assert state["optimizer"] == "Adam" and state["step"] == 0 and state["lr"] == 0.01
    assert set(SGD({"W": np.ones(2)}, lr=0.1).state_dict()) == {"optimizer", "step", "lr", "momentum"}


def test_load_state_dict_errors():
    adam_state = Adam({"W": np.ones(2)}).state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['v/W'\]"):
        Adam({"W": np.ones(2)}).load_state_dict({k: v for k, v in adam_state.items() if k != "v/W"})
    with pytest.raises(ValueError, match="unexpected keys"):
        SGD({"W": np.ones(2)}, lr=0.1).load_state_dict(adam_state)
    with pytest.raises(ValueError, match=r"state\['m/W'\] has shape \(3,\); expected \(2,\)"):
        Adam({"W": np.ones(2)}).load_state_dict({**adam_state, "m/W": np.zeros(3)})
    with pytest.raises(TypeError, match=r"state\['m/W'\] has dtype float32; its parameter is float64"):
        Adam({"W": np.ones(2)}).load_state_dict({**adam_state, "m/W": np.zeros(2, dtype=np.float32)})
    with pytest.raises(ValueError, match="step.*must be an int >= 0"):
        Adam({"W": np.ones(2)}).load_state_dict({**adam_state, "step": -1})
    adam = Adam({"W": np.ones(2)}, lr=0.5)
    with pytest.raises(ValueError, match="beta2 must be in"):
        adam.load_state_dict({**adam_state, "lr": 0.1, "beta2": 1.0})
    assert adam.lr == 0.5  # nothing changed by a refused state
    with pytest.raises(ValueError, match=r"state\['lr'\] must be a scalar; got an array of shape \(2,\)"):
        adam.load_state_dict({**adam_state, "lr": np.ones(2)})
    sgd_state = SGD({"W": np.ones(2)}, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="state has momentum = 0.5 but this SGD was created with momentum = 0"):
        SGD({"W": np.ones(2)}, lr=0.1).load_state_dict({**sgd_state, "momentum": 0.5})
    with pytest.raises(ValueError, match="state is for optimizer 'SGD'"):
        fake = {**adam_state, "optimizer": np.asarray("SGD")}
        Adam({"W": np.ones(2)}).load_state_dict(fake)


# ---------------------------------------------------------------------- clipping


def test_clip_by_value(xp):
    grads = {"dWax": arr(xp, [[-7.0, 0.5], [3.0, -0.1]]), "dby": arr(xp, [[10.0]], "float64")}
    clipped = clip_by_value(grads, 5)
    assert set(clipped) == set(grads) and clipped is not grads
    np.testing.assert_array_equal(host(clipped["dWax"]), [[-5.0, 0.5], [3.0, -0.1]])
    np.testing.assert_array_equal(host(clipped["dby"]), [[5.0]])
    np.testing.assert_array_equal(host(grads["dWax"]), [[-7.0, 0.5], [3.0, -0.1]])  # input untouched
    assert array_api_compat.array_namespace(clipped["dby"]) is xp


def test_clip_by_global_norm(xp):
    grads = {"a": arr(xp, [3.0, 4.0]), "b": arr(xp, [[12.0]])}  # joint norm sqrt(9 + 16 + 144) = 13
    clipped, total = clip_by_global_norm(grads, 6.5)
    assert isinstance(total, float) and total == pytest.approx(13.0)
    np.testing.assert_allclose(host(clipped["a"]), [1.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(host(clipped["b"]), [[6.0]], rtol=1e-15)
    np.testing.assert_array_equal(host(grads["a"]), [3.0, 4.0])

    unchanged, total = clip_by_global_norm(grads, 13.0)
    assert total == pytest.approx(13.0)
    assert unchanged["a"] is grads["a"] and unchanged is not grads


def test_clip_by_global_norm_non_finite_is_reported_not_scaled():
    grads = {"a": np.asarray([np.inf, 1.0])}
    clipped, total = clip_by_global_norm(grads, 1.0)
    assert math.isinf(total)
    assert clipped["a"] is grads["a"]


@pytest.mark.parametrize("clip", [clip_by_value, clip_by_global_norm])
def test_clip_errors(clip):
    with pytest.raises(ValueError, match="must be > 0; got 0"):
        clip({"a": np.ones(2)}, 0)
    with pytest.raises(ValueError, match="must be a finite number"):
        clip({"a": np.ones(2)}, float("inf"))
    with pytest.raises(ValueError, match="grads is empty"):
        clip({}, 1.0)
    with pytest.raises(TypeError, match="grads must be a dict"):
        clip([np.ones(2)], 1.0)
    with pytest.raises(TypeError, match=r"grads\['a'\] has dtype int64"):
        clip({"a": np.ones(2, dtype=np.int64)}, 1.0)


def test_global_norm_of_millions_of_float32_entries_is_accurate():
    """The norm is summed in blocks: as accurate as a pairwise sum, not a long float32 dot product (~1e-5 off at this
    size), whatever the sizes' remainders."""
    from xseq.nn.optim import clip_by_global_norm

    rng = np.random.default_rng(0)
    grads = {"embedding": (rng.standard_normal((10_001, 200)) * 0.01).astype(np.float32),
             "b": rng.standard_normal(1_000).astype(np.float32), "odd": rng.standard_normal((3, 7)).astype(np.float32)}
    exact = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values())))
    _, norm = clip_by_global_norm(grads, 1.0)
    assert abs(norm / exact - 1) < 2e-7


# ---------------------------------------------------------------------- NumPy's one-pass Adam step


def _adam_runs(dtype, fused, steps=4, transpose=False):
    rng = np.random.default_rng(7)
    shapes = {"W_hh": (64, 16), "b": (64,), "Wy": (5, 16)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    if transpose:
        params["W_hh"] = params["W_hh"].T  # not C-contiguous: NumPy's formulas serve it
    opt = Adam(params, lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    if not fused:
        opt._fused = None
    kept = {}
    for step in range(steps):
        grads = {k: rng.standard_normal(p.shape).astype(dtype) * (step + 1) for k, p in params.items()}
        kept = {k: (p, opt.state["m"][k], opt.state["v"][k], p.copy(), opt.state["m"][k].copy(),
                    opt.state["v"][k].copy()) for k, p in params.items()}
        opt.step(grads)
    for k, (p, m, v, p0, m0, v0) in kept.items():  # the last step wrote into none of the old arrays
        for a, before in ((p, p0), (m, m0), (v, v0)):
            np.testing.assert_array_equal(a, before, err_msg=f"{k} written in place")
    return params, opt.state


@pytest.mark.parametrize("transpose", [False, True], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_numpys_one_pass_adam_step_is_the_formulas_step(dtype, transpose):
    from xseq.ops import host

    if not host.library().on("fused Adam"):
        pytest.skip(f"no fused Adam step in this machine's host build: {host.features() or host.library().reason}")
    rng = np.random.default_rng(0)
    probe = [rng.standard_normal(6).astype(dtype) for _ in range(4)]
    assert host.adam_step(*probe, 0.01, 0.9, 0.999, 1e-8, 1) is not None  # the one-pass step serves NumPy
    got, got_state = _adam_runs(dtype, fused=True, transpose=transpose)
    want, want_state = _adam_runs(dtype, fused=False, transpose=transpose)
    # fused multiply-adds round differently: a few ulps of each array's largest entry
    tol = 1e-6 if dtype == np.float32 else 1e-14

    def close(a, b, what):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * float(np.abs(b).max()), err_msg=what)

    for k in want:
        assert got[k].dtype == dtype
        close(got[k], want[k], k)
        for buffer in ("m", "v"):
            close(got_state[buffer][k], want_state[buffer][k], f"{buffer}/{k}")


def test_numpys_adam_step_refuses_arrays_it_cannot_serve():
    from xseq.ops import host

    f32, f64 = np.ones(4, np.float32), np.ones(4, np.float64)
    assert host.adam_step(f32, f64, f32, f32, 0.1, 0.9, 0.999, 1e-8, 1) is None  # mixed dtypes
    assert host.adam_step(f32, np.ones(5, np.float32), f32, f32, 0.1, 0.9, 0.999, 1e-8, 1) is None  # shapes
    assert host.adam_step(*(np.ones(4, np.float16),) * 4, 0.1, 0.9, 0.999, 1e-8, 1) is None  # no float16 kernel
