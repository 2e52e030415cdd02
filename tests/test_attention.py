"""xseq.Attention: the course's additive attention with source lengths, on every backend.

The weights and the context against their definitions, exact zeros on padding, finite differences of every
input and parameter through several decoder steps that share one precomputed projection, and torch autograd
on the same formula written out in torch.
"""

import numpy as np
import pytest
from array_api_compat import array_namespace

import xseq
from xseq.nn.attention import Attention

from .helpers import numeric_gradient, relative_error

N_ENC, N_S, N_E, M, T_X, T_Y = 5, 3, 4, 3, 6, 3
LENGTHS = [6, 2, 4]  # a full example, a short one, one in between; not sorted
PARAMETERS = ("W1_a", "W1_s", "b1", "W2", "b2")
ACTIVATIONS = ("linear", "relu")


def name_of(xp):
    return xseq.backends.arrays.backend_name(xp)


def make(xp, dtype="float64", energy_activation="linear", seed=0):
    return Attention(N_ENC, N_S, energy_size=N_E, energy_activation=energy_activation, backend=name_of(xp),
                     dtype=dtype, seed=seed)


def problem(seed=0):
    """Host float64 arrays: a (n_enc, m, T_x), T_Y states (n_s, m), and per step dcontext and dalphas."""
    rng = np.random.default_rng(seed)
    return {
        "a": rng.standard_normal((N_ENC, M, T_X)),
        "s": [rng.standard_normal((N_S, M)) for _ in range(T_Y)],
        "dcontext": [rng.standard_normal((N_ENC, M)) for _ in range(T_Y)],
        "dalphas": [rng.standard_normal((M, T_X)) for _ in range(T_Y)],
    }


def on(xp, array, dtype="float64"):
    return xseq.asarray(array, backend=xp, dtype=dtype)


def assert_array(xp, a, shape, dtype):
    assert array_namespace(a) is xp
    assert tuple(a.shape) == tuple(shape)
    assert a.dtype == dtype


def run_steps(att, xp, a, states, lengths):
    """precompute, then one step per state; returns (keys, [(context, alphas, cache)])."""
    keys = att.precompute(on(xp, a, att.dtype_name), lengths)
    return keys, [att.step(keys, on(xp, s, att.dtype_name)) for s in states]


def valid_mask(lengths):
    return np.arange(T_X)[None, :] < np.asarray(lengths)[:, None]


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("energy_activation", ACTIVATIONS)
def test_shapes_dtypes_and_namespace(xp, dtype, energy_activation):
    att = make(xp, dtype, energy_activation)
    p = problem()
    dt = getattr(xp, dtype)
    context, alphas = att.forward(on(xp, p["a"], dtype), on(xp, p["s"][0], dtype), lengths=LENGTHS)
    assert_array(xp, context, (N_ENC, M), dt)
    assert_array(xp, alphas, (M, T_X), dt)
    da, ds_prev = att.backward(on(xp, p["dcontext"][0], dtype), dalphas=on(xp, p["dalphas"][0], dtype))
    assert_array(xp, da, (N_ENC, M, T_X), dt)
    assert_array(xp, ds_prev, (N_S, M), dt)
    shapes = {"W1_a": (N_E, N_ENC), "W1_s": (N_E, N_S), "b1": (N_E,), "W2": (1, N_E), "b2": (1,)}
    assert set(att.parameters) == set(att.grads) == set(shapes)
    for key, shape in shapes.items():
        assert_array(xp, att.parameters[key], shape, dt)
        assert_array(xp, att.grads[key], shape, dt)


@pytest.mark.parametrize("energy_activation", ACTIVATIONS)
def test_weights_are_a_softmax_of_the_course_scores_and_exactly_zero_on_padding(xp, energy_activation):
    """alphas against the formula computed in NumPy from the parameters; the context is their weighted sum."""
    att = make(xp, energy_activation=energy_activation)
    p = problem(1)
    _, steps = run_steps(att, xp, p["a"], p["s"], LENGTHS)
    W = att.state_dict()
    W1 = np.concatenate([W["W1_a"], W["W1_s"]], axis=1)  # the course's densor1 on [a<t'>; s_prev]
    valid = valid_mask(LENGTHS)
    for s, (context, alphas, _) in zip(p["s"], steps):
        alphas, context = xseq.to_numpy(alphas), xseq.to_numpy(context)
        concat = np.concatenate([p["a"], np.repeat(s[:, :, None], T_X, axis=2)], axis=0)
        scores = np.einsum("e,emt->mt", W["W2"][0], np.tanh(np.einsum("ek,kmt->emt", W1, concat)
                                                             + W["b1"][:, None, None])) + W["b2"]
        if energy_activation == "relu":
            scores = np.maximum(scores, 0)
        expected = np.where(valid, np.exp(scores), 0)
        expected /= expected.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(alphas, expected, rtol=1e-12, atol=1e-15)
        assert (alphas[~valid] == 0).all()
        assert (alphas[valid] > 0).all()
        np.testing.assert_allclose(alphas.sum(axis=1), 1, rtol=1e-14)
        np.testing.assert_allclose(context, np.einsum("mt,nmt->nm", alphas, p["a"]), rtol=1e-12, atol=1e-14)


def test_padded_columns_change_nothing_and_get_zero_gradient(xp):
    """Other (finite) values at padded steps: the same weights, context and gradients, and da exactly 0 there."""
    p = problem(2)
    valid = valid_mask(LENGTHS)
    noisy = np.where(valid[None], p["a"], 100 * np.random.default_rng(3).standard_normal(p["a"].shape))
    results = []
    for a in (p["a"], noisy):
        att = make(xp)
        keys, steps = run_steps(att, xp, a, p["s"], LENGTHS)
        ds = [att.step_backward(on(xp, dc), cache, dalphas=on(xp, dal))
              for dc, dal, (_, _, cache) in zip(p["dcontext"], p["dalphas"], steps)]
        da = xseq.to_numpy(att.keys_backward(keys))
        assert (da[:, ~valid] == 0).all()
        assert np.abs(da[:, valid]).min() > 0
        results.append([xseq.to_numpy(x) for x in [*(c for c, _, _ in steps), *(al for _, al, _ in steps), *ds,
                                                  *att.grads.values()]] + [da[:, valid]])
    for clean, padded in zip(*results):
        np.testing.assert_allclose(padded, clean, rtol=1e-12, atol=1e-14)


def test_a_padded_batch_equals_each_example_alone(xp):
    """The mask acts before the softmax: each example's weights are those of its own unpadded sequence."""
    att = make(xp)
    p = problem(4)
    _, steps = run_steps(att, xp, p["a"], p["s"][:1], LENGTHS)
    context, alphas, _ = steps[0]
    for i, L in enumerate(LENGTHS):
        alone_context, alone_alphas = att.forward(on(xp, p["a"][:, i:i + 1, :L]), on(xp, p["s"][0][:, i:i + 1]))
        np.testing.assert_allclose(xseq.to_numpy(alphas)[i, :L], xseq.to_numpy(alone_alphas)[0], rtol=1e-12)
        np.testing.assert_allclose(xseq.to_numpy(context)[:, i], xseq.to_numpy(alone_context)[:, 0], rtol=1e-12)


@pytest.mark.parametrize("energy_activation", ACTIVATIONS)
def test_float32_follows_float64(xp, energy_activation):
    """The same weights in float32: every output and gradient close to float64's."""
    p = problem(8)
    results = []
    for dtype in ("float32", "float64"):
        att = make(xp, dtype, energy_activation)
        context, alphas = att.forward(on(xp, p["a"], dtype), on(xp, p["s"][0], dtype), lengths=LENGTHS)
        da, ds = att.backward(on(xp, p["dcontext"][0], dtype), dalphas=on(xp, p["dalphas"][0], dtype))
        results.append([xseq.to_numpy(x) for x in (context, alphas, da, ds, *(att.grads[k] for k in PARAMETERS))])
    for single, double in zip(*results):
        np.testing.assert_allclose(single, double, rtol=1e-4, atol=1e-5)


def test_lengths_none_uses_every_step(xp):
    att = make(xp)
    p = problem(5)
    a, s = on(xp, p["a"]), on(xp, p["s"][0])
    _, alphas_none = att.forward(a, s)
    _, alphas_full = att.forward(a, s, lengths=[T_X] * M)
    assert (xseq.to_numpy(alphas_none) > 0).all()
    np.testing.assert_array_equal(xseq.to_numpy(alphas_none), xseq.to_numpy(alphas_full))


def test_a_seed_gives_the_same_weights_on_every_backend(xp):
    here = make(xp, seed=7).state_dict()
    reference = Attention(N_ENC, N_S, energy_size=N_E, dtype="float64", seed=7).state_dict()
    other = Attention(N_ENC, N_S, energy_size=N_E, dtype="float64", seed=8).state_dict()
    for key in PARAMETERS:
        np.testing.assert_array_equal(here[key], reference[key])
        assert not np.array_equal(here[key], other[key])
    bound = 1 / np.sqrt(N_ENC + N_S)
    assert np.abs(here["W1_a"]).max() < bound and np.abs(here["W1_s"]).max() < bound


# ---------------------------------------------------------------- gradients


def analytic_gradients(att, xp, arrays, lengths, with_dalphas):
    """Every gradient by the explicit backward: T_Y steps on one set of keys, backpropagated in reverse."""
    p = problem()
    att.load_state_dict({k: arrays[k] for k in PARAMETERS})
    att.zero_grad()
    keys, steps = run_steps(att, xp, arrays["a"], [arrays[f"s{t}"] for t in range(T_Y)], lengths)
    grads = {}
    for t in reversed(range(T_Y)):
        dalphas = on(xp, p["dalphas"][t]) if with_dalphas else None
        grads[f"s{t}"] = att.step_backward(on(xp, p["dcontext"][t]), steps[t][2], dalphas=dalphas)
    grads["a"] = att.keys_backward(keys)
    grads.update(att.grads)
    return {k: xseq.to_numpy(v) for k, v in grads.items()}


def step_loss(att, xp, lengths, with_dalphas):
    """loss(arrays) = sum over the steps of <dcontext_t, context_t> (+ <dalphas_t, alphas_t>)."""
    p = problem()

    def loss(arrays):
        att.load_state_dict({k: arrays[k] for k in PARAMETERS})
        _, steps = run_steps(att, xp, arrays["a"], [arrays[f"s{t}"] for t in range(T_Y)], lengths)
        total = 0.0
        for t, (context, alphas, _) in enumerate(steps):
            total += float(np.sum(xseq.to_numpy(context) * p["dcontext"][t]))
            if with_dalphas:
                total += float(np.sum(xseq.to_numpy(alphas) * p["dalphas"][t]))
        return total

    return loss


def starting_arrays(energy_activation):
    """Host float64 inputs and parameters; the score bias lifted for relu so that most scores are positive."""
    p = problem()
    arrays = {"a": p["a"], **{f"s{t}": s for t, s in enumerate(p["s"])}}
    arrays.update(Attention(N_ENC, N_S, energy_size=N_E, dtype="float64", seed=3).state_dict())
    arrays["W2"] = arrays["W2"] * 3  # scores spread enough that the weights are far from uniform
    if energy_activation == "relu":
        arrays["b2"] = arrays["b2"] + 0.5
    return arrays


@pytest.mark.parametrize("with_dalphas", [False, True], ids=["context-loss", "context-and-alphas-loss"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "padded"])
@pytest.mark.parametrize("energy_activation", ACTIVATIONS)
def test_finite_differences_through_shared_keys(xp, energy_activation, lengths, with_dalphas):
    """Central differences (float64) of every input and parameter, over T_Y decoder steps on one precompute."""
    att = make(xp, energy_activation=energy_activation)
    arrays = starting_arrays(energy_activation)
    analytic = analytic_gradients(att, xp, arrays, lengths, with_dalphas)
    loss = step_loss(att, xp, lengths, with_dalphas)
    for name in arrays:
        numeric = numeric_gradient(loss, arrays, name)
        if name == "b2" and energy_activation == "linear":  # the softmax ignores a shift of every score
            assert abs(numeric[0]) < 1e-8 and abs(analytic["b2"][0]) < 1e-12
            continue
        assert np.abs(numeric).max() > 1e-6, f"{name}: the loss must depend on it for the check to mean much"
        assert relative_error(numeric, analytic[name]) < 1e-7, name


def test_forward_backward_is_one_step(xp):
    """forward/backward (one decoder step) give the gradients of precompute + step + step_backward + keys_backward."""
    p = problem(6)
    one, steps = make(xp), make(xp)
    one.forward(on(xp, p["a"]), on(xp, p["s"][0]), lengths=LENGTHS)
    da, ds = one.backward(on(xp, p["dcontext"][0]), dalphas=on(xp, p["dalphas"][0]))
    keys, [(_, _, cache)] = run_steps(steps, xp, p["a"], p["s"][:1], LENGTHS)
    ds_step = steps.step_backward(on(xp, p["dcontext"][0]), cache, dalphas=on(xp, p["dalphas"][0]))
    da_step = steps.keys_backward(keys)
    for got, expected in [(da, da_step), (ds, ds_step), *zip(one.grads.values(), steps.grads.values())]:
        np.testing.assert_array_equal(xseq.to_numpy(got), xseq.to_numpy(expected))


def test_grads_accumulate_until_zero_grad(xp):
    att = make(xp)
    p = problem(7)
    for _ in range(2):
        att.forward(on(xp, p["a"]), on(xp, p["s"][0]), lengths=LENGTHS)
        att.backward(on(xp, p["dcontext"][0]))
        if _ == 0:
            once = {k: xseq.to_numpy(v).copy() for k, v in att.grads.items()}
    for key in PARAMETERS:
        if key != "b2":
            assert np.abs(once[key]).max() > 0
        np.testing.assert_allclose(xseq.to_numpy(att.grads[key]), 2 * once[key], rtol=1e-12, atol=1e-15)
    att.zero_grad()
    assert not any(xseq.to_numpy(v).any() for v in att.grads.values())


def test_keys_without_backpropagated_steps_give_zero_da(xp):
    att = make(xp)
    keys = att.precompute(on(xp, problem()["a"]), LENGTHS)
    da = att.keys_backward(keys)
    assert_array(xp, da, (N_ENC, M, T_X), xp.float64)
    assert not xseq.to_numpy(da).any()
    assert not any(xseq.to_numpy(v).any() for v in att.grads.values())


@pytest.mark.parametrize("energy_activation", ACTIVATIONS)
def test_torch_autograd_on_the_same_weights(xp, torch, energy_activation):
    """The course's network written in torch (concatenation, two dense layers, masked softmax, weighted sum)."""
    att = make(xp, energy_activation=energy_activation)
    arrays = starting_arrays(energy_activation)
    analytic = analytic_gradients(att, xp, arrays, LENGTHS, with_dalphas=True)

    p = problem()
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in arrays.items()}
    a = leaves["a"]
    W1 = torch.cat([leaves["W1_a"], leaves["W1_s"]], dim=1)
    valid = torch.from_numpy(valid_mask(LENGTHS))
    loss = 0
    for t in range(T_Y):
        s = leaves[f"s{t}"]
        concat = torch.cat([a, s[:, :, None].expand(N_S, M, T_X)], dim=0)  # the course's [a<t'>; s_prev]
        h = torch.tanh(torch.einsum("ek,kmt->emt", W1, concat) + leaves["b1"][:, None, None])
        scores = torch.einsum("e,emt->mt", leaves["W2"][0], h) + leaves["b2"]
        if energy_activation == "relu":
            scores = torch.relu(scores)
        alphas = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
        context = torch.einsum("mt,nmt->nm", alphas, a)
        loss = loss + (context * torch.from_numpy(p["dcontext"][t])).sum() \
            + (alphas * torch.from_numpy(p["dalphas"][t])).sum()
    loss.backward()
    for name, leaf in leaves.items():
        np.testing.assert_allclose(analytic[name], leaf.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------- state dict


def test_state_dict_round_trip_and_errors(xp):
    att, other = make(xp, seed=1), make(xp, seed=2)
    other.load_state_dict(att.state_dict())
    for key in PARAMETERS:
        np.testing.assert_array_equal(xseq.to_numpy(other.parameters[key]), xseq.to_numpy(att.parameters[key]))
    state = att.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['b2'\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "b2"})
    with pytest.raises(KeyError, match=r"unexpected keys \['W3'\]"):
        other.load_state_dict({**state, "W3": state["W2"]})
    with pytest.raises(ValueError, match=r"'W1_s' has shape \(4, 4\); expected \(4, 3\)"):
        other.load_state_dict({**state, "W1_s": np.zeros((N_E, N_S + 1))})


# ---------------------------------------------------------------- bad input


def bad_calls(xp):
    """(description, call, exception, message pattern) for one float64 attention on ``xp``."""
    p = problem()
    att = make(xp)
    a, s, dc = on(xp, p["a"]), on(xp, p["s"][0]), on(xp, p["dcontext"][0])
    keys = att.precompute(a, LENGTHS)
    _, _, cache = att.step(keys, s)
    foreign = make(xp).precompute(a)
    np_backend = "numpy" if name_of(xp) != "numpy" else "array_api_strict"
    other_library = xseq.asarray(p["a"], backend=np_backend)
    return [
        ("a 2-D", lambda: att.precompute(a[:, :, 0]), ValueError, r"a has 2 dimensions.*\(n_enc, m, T_x\)"),
        ("a wrong n_enc", lambda: att.precompute(a[:4, ...]), ValueError,
         r"a has shape \(4, 3, 6\); expected \(n_enc, m, T_x\) = \(5, 3, 6\) from encoder_size=5"),
        ("a no steps", lambda: att.precompute(a[:, :, :0]), ValueError, r"a has shape \(5, 3, 0\).*one source step"),
        ("a float32", lambda: att.precompute(on(xp, p["a"], "float32")), TypeError,
         "a has dtype float32 but this Attention holds float64"),
        ("a integer", lambda: att.precompute(xseq.asarray(np.ones((N_ENC, M, T_X), dtype=np.int64), backend=xp)),
         TypeError, "a has dtype int64; expected a real floating dtype"),
        ("a other library", lambda: att.precompute(other_library), TypeError,
         rf"a is a {np_backend} array but this Attention holds {name_of(xp)}"),
        ("a list", lambda: att.precompute(p["a"].tolist()), TypeError, "a must be an array"),
        ("length 0", lambda: att.precompute(a, [3, 0, 2]), ValueError, r"lengths must satisfy 1 <= L <= T_x = 6"),
        ("length > T_x", lambda: att.precompute(a, [7, 1, 2]), ValueError, r"lengths must satisfy 1 <= L <= T_x"),
        ("negative length", lambda: att.precompute(a, [-1, 1, 2]), ValueError, r"1 <= L <= T_x = 6; got \[-1, 1, 2\]"),
        ("lengths too few", lambda: att.precompute(a, [1, 2]), ValueError, r"lengths has shape \(2,\); expected"),
        ("lengths floats", lambda: att.precompute(a, [1.0, 2.0, 3.0]), TypeError,
         r"lengths must be integers; lengths\[0\] is float"),
        ("lengths float array", lambda: att.precompute(a, np.array([1.0, 2.0, 3.0])), TypeError,
         "lengths must be integers; got dtype float64"),
        ("lengths bools", lambda: att.precompute(a, [True, True, True]), TypeError, "lengths must be integers"),
        ("lengths scalar", lambda: att.precompute(a, 3), TypeError, "lengths must be a sequence of int"),
        ("s_prev wrong n_s", lambda: att.step(keys, s[:2, ...]), ValueError,
         r"s_prev has shape \(2, 3\); expected \(n_s, m\) = \(3, 3\) from state_size=3"),
        ("s_prev wrong m", lambda: att.step(keys, s[:, :2]), ValueError, r"s_prev has shape \(3, 2\)"),
        ("s_prev 3-D", lambda: att.step(keys, a), ValueError, r"s_prev has 3 dimensions.*\(n_s, m\)"),
        ("s_prev float32", lambda: att.step(keys, on(xp, p["s"][0], "float32")), TypeError,
         "s_prev has dtype float32"),
        ("keys not keys", lambda: att.step(a, s), TypeError, "Attention.step needs the cache returned by "
                                                             "Attention.precompute"),
        ("keys of another attention", lambda: att.step(foreign, s), ValueError, "another Attention's precompute"),
        ("cache not a step", lambda: att.step_backward(dc, keys), TypeError,
         "needs the cache returned by Attention.step; got a cache from Attention.precompute"),
        ("dcontext wrong shape", lambda: att.step_backward(dc[:, :2], cache), ValueError,
         r"dcontext has shape \(5, 2\); expected \(n_enc, m\) = \(5, 3\)"),
        ("dcontext float32", lambda: att.step_backward(on(xp, p["dcontext"][0], "float32"), cache), TypeError,
         "dcontext has dtype float32"),
        ("dalphas transposed", lambda: att.step_backward(dc, cache, dalphas=on(xp, p["dalphas"][0].T)), ValueError,
         r"dalphas has shape \(6, 3\); expected \(m, T_x\) = \(3, 6\)"),
        ("backward before forward", lambda: make(xp).backward(dc), RuntimeError, "before forward"),
    ]


CASES = [case[0] for case in bad_calls(xseq.backend("numpy"))]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_naming_the_argument(xp, case):
    _, call, exception, pattern = next(c for c in bad_calls(xp) if c[0] == case)
    with pytest.raises(exception, match=pattern):
        call()


def test_keys_are_back_propagated_once(xp):
    p = problem()
    att = make(xp)
    keys = att.precompute(on(xp, p["a"]), LENGTHS)
    _, _, cache = att.step(keys, on(xp, p["s"][0]))
    att.step_backward(on(xp, p["dcontext"][0]), cache)
    att.keys_backward(keys)
    with pytest.raises(RuntimeError, match="keys_backward was already called"):
        att.keys_backward(keys)
    with pytest.raises(RuntimeError, match="Attention.step_backward cannot use them again"):
        att.step_backward(on(xp, p["dcontext"][0]), cache)


@pytest.mark.parametrize("kwargs, exception, pattern", [
    ({"encoder_size": 0}, ValueError, "encoder_size must be a positive integer; got 0"),
    ({"state_size": 2.5}, ValueError, "state_size must be a positive integer; got 2.5"),
    ({"energy_size": -1}, ValueError, "energy_size must be a positive integer; got -1"),
    ({"energy_activation": "sigmoid"}, ValueError, "energy_activation must be one of .*'sigmoid'"),
    ({"dtype": "int32"}, ValueError, "dtype must be one of"),
    ({"backend": "tensorflow"}, ValueError, "backend must be one of"),
])
def test_bad_construction_is_refused(kwargs, exception, pattern):
    arguments = {"encoder_size": N_ENC, "state_size": N_S, **kwargs}
    with pytest.raises(exception, match=pattern):
        Attention(arguments.pop("encoder_size"), arguments.pop("state_size"), **arguments)
