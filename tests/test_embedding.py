"""xseq.nn.embedding.Embedding: the one-hot product as a lookup, its gradient by index, every backend."""

import numpy as np
import pytest
from array_api_compat import array_namespace

import xseq
from xseq.nn.embedding import Embedding, add_rows, add_rows_standard

from .helpers import numeric_gradient, relative_error

V, DIM = 7, 3
# (m, T_x) = (3, 4) with repeats inside a sequence, across sequences, and the ids 0 and V - 1
IDS = np.array([[2, 5, 2, 0],
                [6, 2, 2, 1],
                [5, 5, 3, 2]])
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def name_of(xp):
    return xseq.backends.arrays.backend_name(xp)


def make(xp, dtype="float64", **kwargs):
    return Embedding(V, DIM, backend=name_of(xp), dtype=dtype, **kwargs)


def one_hot(xp, ids, dtype):
    """The course's (V, m, T_x) one-hot, or (V, T_x) for 1-D ids."""
    X, _ = xseq.one_hot(ids if ids.ndim == 2 else ids[None, :], V, backend=xp, dtype=dtype)
    return X if ids.ndim == 2 else X[:, 0, :]


def assert_array(xp, a, shape, dtype):
    assert array_namespace(a) is xp
    assert tuple(a.shape) == tuple(shape)
    assert a.dtype == dtype


# ---------------------------------------------------------------- the one-hot product

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ids", [IDS, IDS[1]], ids=["m-by-T", "one-sequence"])
def test_forward_is_the_one_hot_product(xp, dtype, ids):
    emb = make(xp, dtype)
    E = xp.permute_dims(emb.parameters["weight"], (1, 0))  # the course's (dim, V)
    expected = xp.tensordot(E, one_hot(xp, ids, dtype), axes=1)
    e = emb.forward(xseq.asarray(ids, backend=xp))
    assert_array(xp, e, (DIM, *ids.shape), getattr(xp, dtype))
    np.testing.assert_array_equal(xseq.to_numpy(e), xseq.to_numpy(expected))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ids", [IDS, IDS[1]], ids=["m-by-T", "one-sequence"])
def test_backward_is_the_one_hot_gradient(xp, dtype, ids):
    emb = make(xp, dtype)
    emb.forward(xseq.asarray(ids, backend=xp))
    d_out = xseq.asarray(np.random.default_rng(1).standard_normal((DIM, *ids.shape)), backend=xp, dtype=dtype)
    assert emb.backward(d_out) is None
    X = xp.reshape(one_hot(xp, ids, dtype), (V, -1))
    expected = X @ xp.permute_dims(xp.reshape(d_out, (DIM, -1)), (1, 0))  # dE.T: (V, dim)
    assert_array(xp, emb.grads["weight"], (V, DIM), getattr(xp, dtype))
    np.testing.assert_allclose(xseq.to_numpy(emb.grads["weight"]), xseq.to_numpy(expected),
                               rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_route_of_add_rows_matches_the_standard_one(xp, dtype):
    """The backend's route (reduceat, scatter_add, index_add_) against the array-API one, on many repeats."""
    rng = np.random.default_rng(2)
    ids = xseq.asarray(rng.integers(0, 50, size=400), backend=xp)  # every id about 8 times, some absent
    rows = xseq.asarray(rng.standard_normal((400, 5)), backend=xp, dtype=dtype)
    start = rng.standard_normal((60, 5))
    # copies: add_rows updates its first argument in place, and NumPy's asarray would not copy
    fast = add_rows(xseq.asarray(start.copy(), backend=xp, dtype=dtype), ids, rows)
    standard = add_rows_standard(xseq.asarray(start.copy(), backend=xp, dtype=dtype), ids, rows)
    expected = start.copy()
    np.add.at(expected, xseq.to_numpy(ids), xseq.to_numpy(rows).astype(np.float64))
    for got in (fast, standard):
        assert_array(xp, got, (60, 5), getattr(xp, dtype))
        np.testing.assert_allclose(xseq.to_numpy(got), expected, rtol=TOLERANCE[dtype], atol=10 * TOLERANCE[dtype])


def test_repeated_ids_accumulate(xp):
    emb = make(xp)
    ids = np.full((2, 5), 4)
    emb.forward(xseq.asarray(ids, backend=xp))
    d_out = np.random.default_rng(3).standard_normal((DIM, 2, 5))
    emb.backward(xseq.asarray(d_out, backend=xp))
    grad = xseq.to_numpy(emb.grads["weight"])
    np.testing.assert_allclose(grad[4], d_out.sum(axis=(1, 2)), rtol=1e-12)
    assert not np.delete(grad, 4, axis=0).any()


def test_grads_accumulate_until_zero_grad(xp):
    emb = make(xp)
    ids = xseq.asarray(IDS, backend=xp)
    d_out = xseq.asarray(np.random.default_rng(4).standard_normal((DIM, *IDS.shape)), backend=xp)
    emb.forward(ids)
    emb.backward(d_out)
    once = xseq.to_numpy(emb.grads["weight"]).copy()
    assert once.any()
    emb.forward(ids)
    emb.backward(d_out)
    np.testing.assert_allclose(xseq.to_numpy(emb.grads["weight"]), 2 * once, rtol=1e-12)
    emb.zero_grad()
    assert not xseq.to_numpy(emb.grads["weight"]).any()


def test_finite_differences(xp):
    """Central differences of loss = sum(e * R) with respect to every weight entry, float64."""
    emb = make(xp)
    ids = xseq.asarray(IDS, backend=xp)
    R = np.random.default_rng(5).standard_normal((DIM, *IDS.shape))

    def loss(arrays):
        emb.load_state_dict({"weight": arrays["weight"]})
        return float(np.sum(xseq.to_numpy(emb.forward(ids)) * R))

    numeric = numeric_gradient(loss, emb.state_dict(), "weight")
    emb.forward(ids)
    emb.backward(xseq.asarray(R, backend=xp))
    assert relative_error(numeric, xseq.to_numpy(emb.grads["weight"])) < 1e-7


def test_feeds_an_lstm_in_the_course_layout(xp):
    """Embedding outputs are an LSTM's x, and the LSTM's dx is the Embedding's d_out."""
    emb = make(xp)
    lstm = xseq.LSTM(DIM, 4, backend=name_of(xp), dtype="float64")
    outputs, _ = lstm.forward(emb.forward(xseq.asarray(IDS, backend=xp)))
    emb.backward(lstm.backward(xp.ones_like(outputs)))
    assert_array(xp, emb.grads["weight"], (V, DIM), xp.float64)
    unused = sorted(set(range(V)) - set(IDS.ravel()))
    assert not xseq.to_numpy(emb.grads["weight"])[unused].any()
    assert xseq.to_numpy(emb.grads["weight"])[IDS.ravel()].all()


# ---------------------------------------------------------------- initialisation and saving

def test_seed_gives_the_same_weight_on_every_backend(xp):
    numpy_weight = Embedding(V, DIM, seed=3, dtype="float64").state_dict()["weight"]
    np.testing.assert_array_equal(make(xp, seed=3).state_dict()["weight"], numpy_weight)
    assert not np.array_equal(make(xp, seed=4).state_dict()["weight"], numpy_weight)


def test_init_scale_draws_uniform_weights():
    weight = Embedding(1000, 20, init_scale=0.05).state_dict()["weight"]
    assert np.abs(weight).max() <= 0.05
    assert np.abs(weight).max() > 0.049  # uniform over the whole interval, not a narrower normal
    assert np.abs(Embedding(1000, 20).state_dict()["weight"]).max() > 1  # the default: standard normal


def test_state_dict_round_trip(xp):
    emb = make(xp, seed=1)
    state = emb.state_dict()
    assert set(state) == {"weight"} and isinstance(state["weight"], np.ndarray)
    state["weight"][0, 0] += 1  # a copy: the layer does not change
    assert emb.state_dict()["weight"][0, 0] != state["weight"][0, 0]
    other = make(xp, seed=2)
    other.load_state_dict(emb.state_dict())
    ids = xseq.asarray(IDS, backend=xp)
    np.testing.assert_array_equal(xseq.to_numpy(other.forward(ids)), xseq.to_numpy(emb.forward(ids)))


def test_load_state_dict_errors():
    emb = Embedding(V, DIM)
    with pytest.raises(KeyError, match="'bias'"):
        emb.load_state_dict({"weight": np.zeros((V, DIM)), "bias": np.zeros(DIM)})
    with pytest.raises(KeyError, match="this Embedding has \\['weight'\\]"):
        emb.load_state_dict({})
    with pytest.raises(ValueError, match=r"shape \(3, 7\); expected \(vocab_size, dim\) = \(7, 3\)"):
        emb.load_state_dict({"weight": np.zeros((DIM, V))})


def test_torch_parity(xp, torch):
    """Output and weight gradient equal torch.nn.Embedding's autograd, through from_torch and to_torch."""
    torch.manual_seed(0)
    module = torch.nn.Embedding(V, DIM, dtype=torch.float64)
    emb = Embedding.from_torch(module, backend=name_of(xp))
    assert emb.dtype == xp.float64
    R = np.random.default_rng(6).standard_normal((DIM, *IDS.shape))
    out = module(torch.from_numpy(IDS))  # (m, T_x, dim)
    (out * torch.from_numpy(R.transpose(1, 2, 0))).sum().backward()

    e = emb.forward(xseq.asarray(IDS, backend=xp))
    emb.backward(xseq.asarray(R, backend=xp))
    np.testing.assert_array_equal(xseq.to_numpy(e), out.detach().numpy().transpose(2, 0, 1))
    np.testing.assert_allclose(xseq.to_numpy(emb.grads["weight"]), module.weight.grad.numpy(), rtol=1e-12)

    back = emb.to_torch()
    assert isinstance(back, torch.nn.Embedding) and back.weight.dtype == torch.float64
    np.testing.assert_array_equal(back.weight.detach().numpy(), module.weight.detach().numpy())


def test_from_torch_dtype_and_refusals(torch):
    module = torch.nn.Embedding(V, DIM)
    assert Embedding.from_torch(module).dtype_name == "float32"
    assert Embedding.from_torch(module, dtype="float64").dtype_name == "float64"
    assert Embedding.from_torch(torch.nn.Embedding(V, DIM, sparse=True)).vocab_size == V
    for option in ({"padding_idx": 0}, {"max_norm": 1.0}, {"scale_grad_by_freq": True}):
        with pytest.raises(ValueError, match=f"{next(iter(option))}=.* is not supported"):
            Embedding.from_torch(torch.nn.Embedding(V, DIM, **option))
    with pytest.raises(TypeError, match="needs a torch.nn.Embedding; got Linear"):
        Embedding.from_torch(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad, message", [
    (np.array([[1, 7]]), r"ids\[0\]\[1\] = 7 is out of range; expected 0 <= id < vocab_size = 7"),
    (np.array([3, -1, 2]), r"ids\[1\] = -1 is out of range"),
    (np.array([[2, 2**64 - 1]], dtype=np.uint64), r"ids\[0\]\[1\] = 18446744073709551615 is out of range"),
    (np.zeros((2, 2, 2), dtype=np.int64), r"ids has 3 dimensions, shape \(2, 2, 2\); expected \(m, T_x\) or \(T_x,\)"),
    (np.zeros((0, 3), dtype=np.int64), r"ids has shape \(0, 3\)"),
])
def test_bad_ids_values(xp, bad, message):
    with pytest.raises(ValueError, match=message):
        make(xp).forward(xseq.asarray(bad, backend=xp))


@pytest.mark.parametrize("bad, message", [
    (np.array([[1.0, 2.0]]), "ids has dtype float64; expected an integer dtype"),
    (np.array([[True, False]]), "ids has dtype bool; expected an integer dtype"),
])
def test_bad_ids_dtype(xp, bad, message):
    with pytest.raises(TypeError, match=message):
        make(xp).forward(xseq.asarray(bad, backend=xp))


def test_ids_that_are_not_an_array_or_from_another_backend(torch):
    emb = Embedding(V, DIM)
    with pytest.raises(TypeError, match="ids must be an integer array .* got list"):
        emb.forward([[1, 2]])
    with pytest.raises(TypeError, match="ids is a NumPy masked array"):
        emb.forward(np.ma.masked_array([[1, 2]], mask=[[0, 1]]))
    with pytest.raises(TypeError, match="ids is a torch array but this Embedding holds numpy parameters"):
        emb.forward(torch.tensor([[1, 2]]))


def test_numpy_ids_are_accepted_on_every_backend(xp):
    emb = make(xp)
    e = emb.forward(IDS.astype(np.int32))
    np.testing.assert_array_equal(xseq.to_numpy(e),
                                  xseq.to_numpy(emb.forward(xseq.asarray(IDS, backend=xp))))


def test_bad_d_out(xp):
    emb = make(xp)
    with pytest.raises(RuntimeError, match="backward was called before forward"):
        emb.backward(xp.zeros((DIM, 3, 4), dtype=xp.float64))
    emb.forward(xseq.asarray(IDS, backend=xp))
    with pytest.raises(ValueError, match=r"d_out has shape \(3, 3, 5\); expected \(dim, m, T_x\) = \(3, 3, 4\)"):
        emb.backward(xp.zeros((DIM, 3, 5), dtype=xp.float64))
    with pytest.raises(ValueError, match=r"d_out has 2 dimensions.*expected 3: \(dim, m, T_x\)"):
        emb.backward(xp.zeros((DIM, 12), dtype=xp.float64))
    with pytest.raises(TypeError, match="d_out has dtype float32 but this Embedding holds float64"):
        emb.backward(xp.zeros((DIM, 3, 4), dtype=xp.float32))
    with pytest.raises(TypeError, match="d_out has dtype int64; expected a real floating dtype"):
        emb.backward(xp.zeros((DIM, 3, 4), dtype=xp.int64))
    assert not xseq.to_numpy(emb.grads["weight"]).any()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"vocab_size": 0}, ValueError, "vocab_size must be a positive integer; got 0"),
    ({"dim": 2.5}, ValueError, "dim must be a positive integer; got 2.5"),
    ({"init_scale": 0}, ValueError, "init_scale must be a positive number or None; got 0"),
    ({"init_scale": True}, ValueError, "init_scale must be a positive number or None; got True"),
    ({"dtype": "float16"}, ValueError, "dtype must be one of"),
])
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Embedding(**{"vocab_size": V, "dim": DIM, **kwargs})
