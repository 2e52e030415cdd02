"""xseq.lm.model.CharLM: whole-model gradients, backends, PyTorch parity, sampling, saving."""

import os

import numpy as np
import pytest

import xseq
from xseq.lm.checkpoint import CheckpointError, save_checkpoint
from xseq.lm.model import CharLM

from .helpers import numeric_gradient, relative_error

WORDS = ["anna", "bob", "carla", "dan", "ebba", "cole"]


def tiny_vocab():
    return xseq.Vocabulary.from_text(WORDS)


def encoded(vocab, words=("anna", "bob", "ca")):
    return [vocab.encode(w) for w in words]  # unequal lengths: padding inside the batch


def host(a):
    return np.asarray(xseq.to_numpy(a))


@pytest.mark.parametrize("cell, num_layers", [("lstm", 1), ("gru", 1), ("rnn", 1), ("lstm", 2)])
def test_gradient_of_the_whole_model_matches_finite_differences(cell, num_layers):
    vocab = tiny_vocab()
    model = CharLM(vocab, 3, cell=cell, num_layers=num_layers, dtype="float64", seed=3)
    rng = np.random.default_rng(0)  # larger weights than the default init, so every path matters
    model.load_state_dict({k: rng.standard_normal(v.shape) * 0.7 for k, v in model.state_dict().items()})
    batch = encoded(vocab)
    model.sequences_loss_and_backward(batch)
    analytic = {k: host(v) for k, v in model.grads().items()}
    assert set(analytic) == set(model.parameters())

    def loss(arrays):
        model.load_state_dict(arrays)
        total, count = model.loss(batch)
        return total / count

    params = model.state_dict()
    for name in params:
        numeric = numeric_gradient(loss, params, name)
        assert relative_error(numeric, analytic[name]) < 1e-6, name


def test_every_backend_gives_numpy_s_loss_gradients_and_samples(xp):
    vocab = tiny_vocab()
    results = []
    for backend in ("numpy", xp):
        model = CharLM(vocab, 4, num_layers=2, backend=backend, dtype="float64", seed=1)
        loss = model.sequences_loss_and_backward(encoded(vocab))
        grads = {k: host(v) for k, v in model.grads().items()}
        results.append((loss, grads, model.sample(4, prefix="c", seed=2)))
    (loss0, grads0, samples0), (loss1, grads1, samples1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-12)
    for k in grads0:
        np.testing.assert_allclose(grads1[k], grads0[k], rtol=1e-9, atol=1e-12)
    assert samples1 == samples0


def test_logits_match_pytorch(torch):
    vocab = tiny_vocab()
    model = CharLM(vocab, 5, cell="gru", num_layers=2, dtype="float64", seed=4)
    X, _, _ = model.batch(encoded(vocab))
    logits, _ = model.forward(X)
    rnn = model.layer.to_torch()
    weights = model.state_dict()
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(X, (2, 1, 0))))  # (T_x, m, V)
    expected = rnn(x)[0] @ torch.from_numpy(weights["Wy"]).T + torch.from_numpy(weights["by"][:, 0])
    np.testing.assert_allclose(np.transpose(logits, (2, 1, 0)), expected.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_batch_follows_the_course_layout():
    vocab = tiny_vocab()
    model = CharLM(vocab, 2)
    ids = encoded(vocab, ("bob", "a"))
    X, targets, mask = model.batch(ids)
    V = len(vocab)
    assert X.shape == (V, 2, 4) and targets.shape == mask.shape == (2, 4)
    assert not X[:, :, 0].any()  # the first input is the zero vector
    np.testing.assert_array_equal(X[:, 0, 1:].argmax(axis=0), ids[0])  # then c1..cn
    assert not X[:, 1, 2:].any()  # padding: zero columns
    np.testing.assert_array_equal(targets[0], ids[0] + [vocab.eos_id])  # targets c1..cn, <eos>
    np.testing.assert_array_equal(targets[1, :2], ids[1] + [vocab.eos_id])
    np.testing.assert_array_equal(mask, [[True] * 4, [True, True, False, False]])


def test_batch_of_many_lengths_matches_a_row_by_row_construction():
    """Empty, short and long sequences, as lists and arrays of any integer dtype: every row as the docstring says."""
    vocab = tiny_vocab()
    model = CharLM(vocab, 2)
    rng = np.random.default_rng(3)
    ids = [rng.integers(1, len(vocab), size=n).tolist() for n in (5, 0, 1, 7, 3)]
    ids[2] = np.array(ids[2], dtype=np.int16)
    X, targets, mask = model.batch(ids)
    T_x = 8
    assert X.shape == (len(vocab), 5, T_x)
    for i, seq in enumerate(ids):
        seq = [int(v) for v in seq]
        n = len(seq)
        want_inputs = np.zeros((len(vocab), T_x))
        want_inputs[seq, np.arange(1, n + 1)] = 1
        np.testing.assert_array_equal(X[:, i, :], want_inputs, err_msg=f"row {i}")
        np.testing.assert_array_equal(targets[i], seq + [vocab.eos_id] + [0] * (T_x - n - 1), err_msg=f"row {i}")
        np.testing.assert_array_equal(mask[i], [True] * (n + 1) + [False] * (T_x - n - 1), err_msg=f"row {i}")


def test_batch_errors_name_the_sequence():
    model = CharLM(tiny_vocab(), 2)
    V = len(tiny_vocab())
    with pytest.raises(ValueError, match=rf"sequences\[2\] holds an id outside 0 <= id < V = {V}"):
        model.batch([[1, 2], [], [3, V], [-1]])
    with pytest.raises(ValueError, match=r"sequences\[1\] holds an id outside"):
        model.batch([[1, 2], [-1]])
    with pytest.raises(ValueError, match=r"sequences\[0\] has shape \(2, 2\); expected a 1-D sequence of ids"):
        model.batch([[[1, 2], [3, 4]]])
    with pytest.raises(ValueError, match=r"sequences\[1\] has shape \(\); expected a 1-D sequence of ids"):
        model.batch([[1], 3])


def test_parameters_is_one_dict_an_optimizer_updates():
    vocab = tiny_vocab()
    model = CharLM(vocab, 4)
    params = model.parameters()
    assert params is model.parameters()
    assert {"Wy", "by", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"} == set(params)
    assert params["Wy"].shape == (len(vocab), 4) and params["by"].shape == (len(vocab), 1)
    assert model.num_parameters() == sum(p.size for p in params.values())
    batch = encoded(vocab)
    optimizer = xseq.Adam(params, lr=0.05)
    first = model.sequences_loss_and_backward(batch)
    for _ in range(5):
        optimizer.step(model.grads())
        last = model.sequences_loss_and_backward(batch)
    assert last < first


def test_constructor_errors_name_the_argument():
    with pytest.raises(TypeError, match="vocab must be an xseq.Vocabulary"):
        CharLM(["a", "b"], 4)
    with pytest.raises(ValueError, match="cell must be one of"):
        CharLM(tiny_vocab(), 4, cell="transformer")
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        CharLM(tiny_vocab(), 0)
    with pytest.raises(ValueError, match="outside 0 <= id < V"):
        CharLM(tiny_vocab(), 2).batch([[99]])


# ---------------------------------------------------------------------- sampling


def biased_model(**bias):
    """A model whose output bias favours the given tokens (name -> bias) overwhelmingly."""
    vocab = tiny_vocab()
    model = CharLM(vocab, 4, dtype="float64")
    by = np.zeros((len(vocab), 1))
    for token, value in bias.items():
        by[vocab.tokens.index(token)] = value
    model.parameters()["by"] = xseq.asarray(by, dtype="float64")
    return model


def test_sampling_never_emits_padding_or_unknown_and_is_never_empty():
    model = biased_model(**{"<pad>": 50.0, "<unk>": 50.0, "<eos>": 40.0})
    samples = model.sample(20, seed=0)
    assert len(samples) == 20
    for text in samples:
        assert text and "<unk>" not in text and set(text) <= set("".join(WORDS))
    # <eos> dominates once a token is out, so every sample is one character long
    assert all(len(text) == 1 for text in samples)


def test_sampling_is_seeded_and_respects_prefix_max_len_and_top_k():
    model = biased_model(**{"<eos>": -50.0})  # never ends by itself: max_len decides
    a = model.sample(6, seed=1, max_len=7)
    assert a == model.sample(6, seed=1, max_len=7)
    assert a != model.sample(6, seed=2, max_len=7)
    assert all(len(text) == 7 for text in a)
    with_prefix = model.sample(5, prefix="bo", max_len=4, seed=0)
    assert all(text.startswith("bo") and len(text) == 4 for text in with_prefix)
    greedy = model.sample(5, top_k=1, max_len=6, seed=0)
    assert len(set(greedy)) == 1  # top-1 is deterministic whatever the draws
    assert len(set(model.sample(30, temperature=100.0, max_len=6, seed=0))) > 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"n": 0}, ValueError, "n must be >= 1"),
    ({"temperature": 0}, ValueError, "temperature must be > 0"),
    ({"temperature": float("nan")}, ValueError, "temperature must be a finite number"),
    ({"top_k": 0}, ValueError, "top_k must be >= 1"),
    ({"max_len": 0}, ValueError, "max_len must be >= 1"),
    ({"prefix": "zz"}, ValueError, r"not in the model's vocabulary: \['z'\]"),
    ({"prefix": "anna", "max_len": 3}, ValueError, "more than max_len = 3"),
    ({"prefix": 5}, TypeError, "prefix must be a str"),
])
def test_sampling_errors_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        CharLM(tiny_vocab(), 3).sample(**kwargs)


# ---------------------------------------------------------------------- saving


def test_save_and_load_give_the_same_model(tmp_path):
    vocab = tiny_vocab()
    model = CharLM(vocab, 6, cell="gru", num_layers=2, dropout=0.25, seed=5)
    path = tmp_path / "lm.npz"
    model.save(path)
    loaded = CharLM.load(path)
    assert loaded.vocab == vocab and loaded.config() == model.config() and loaded.dtype_name == "float32"
    X, _, _ = model.batch(encoded(vocab))
    np.testing.assert_array_equal(loaded.forward(X)[0], model.forward(X)[0])
    assert loaded.sample(3, seed=1) == model.sample(3, seed=1)


def test_saving_is_atomic_at_the_model_level(tmp_path, monkeypatch):
    vocab = tiny_vocab()
    path = tmp_path / "lm.npz"
    old = CharLM(vocab, 4, seed=1)
    old.save(path)

    def failing_savez(f, **entries):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        CharLM(vocab, 4, seed=2).save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["lm.npz"]  # no temporary file left behind
    reloaded = CharLM.load(path)
    for k, v in old.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[k], v)


def test_loading_bad_files_raises_checkpoint_error(tmp_path):
    vocab = tiny_vocab()
    good = tmp_path / "good.npz"
    CharLM(vocab, 3).save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.npz"):
        CharLM.load(truncated)

    other = tmp_path / "other.npz"
    save_checkpoint(other, arrays={"w": np.zeros(2)}, meta={"what": "not a model"})
    with pytest.raises(CheckpointError, match="holds no xseq language model"):
        CharLM.load(other)

    arrays, meta = CharLM(vocab, 3).checkpoint_contents()
    future = tmp_path / "future.npz"
    save_checkpoint(future, arrays=arrays, meta={**meta, "format_version": 99})
    with pytest.raises(CheckpointError, match="model format_version 99"):
        CharLM.load(future)

    del arrays["param/Wy"]
    broken = tmp_path / "broken.npz"
    save_checkpoint(broken, arrays=arrays, meta=meta)
    with pytest.raises(CheckpointError, match=r"invalid model: state dict does not fit.*missing \[.Wy.\]"):
        CharLM.load(broken)
