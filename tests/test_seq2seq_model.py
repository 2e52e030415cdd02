"""xseq.seq2seq.model.Seq2Seq: the encoder-decoder with attention, its explicit backward pass, decoding, checkpoints.

Every backend against NumPy; finite differences of every parameter (masking, dropout and stacked layers included);
the same model written in torch (packed bidirectional encoder, LSTMCell loop, the attention formula,
cross_entropy) from the same weights on the same batch; greedy decoding against beam search; padding; checkpoints
and hostile metadata; bad input; a short training run on dates.
"""

import argparse
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

import xseq
from xseq.distributed import ExampleDropout
from xseq.lm.checkpoint import CheckpointError, save_checkpoint
from xseq.lm.vocab import EOS_ID, Vocabulary
from xseq.seq2seq import decode
from xseq.seq2seq.dates import date_pairs
from xseq.seq2seq.model import Seq2Seq
from xseq.seq2seq.schema import parameter_shapes

SOURCE = Vocabulary(["<pad>", "<unk>", "<eos>", *"abcdefg"])  # V_x = 10
TARGET = Vocabulary(["<pad>", "<unk>", "<eos>", *"xyzw"])  # V_y = 7
SMALL = dict(hidden_size=3, decoder_size=4, embed_size=3, attention_size=3)
# Source lengths all different (one full, one of 1), target lengths with an empty target and a full one.
SOURCE_LENGTHS = np.array([5, 1, 3, 4])
TARGET_LENGTHS = np.array([2, 0, 4, 1])


def batch(seed=0, source_lengths=SOURCE_LENGTHS, target_lengths=TARGET_LENGTHS, T_x=None, T_y=None):
    """Random ids padded with 0: (source, source_lengths, target, target_lengths), host int64."""
    rng = np.random.default_rng(seed)
    source_lengths = np.asarray(source_lengths)
    m = len(source_lengths)
    target_lengths = np.resize(target_lengths, m)  # the default's lengths repeated for another m
    T_x = int(source_lengths.max()) if T_x is None else T_x
    T_y = int(target_lengths.max()) if T_y is None else T_y
    source = rng.integers(1, len(SOURCE), size=(m, T_x))
    target = rng.integers(3, len(TARGET), size=(m, T_y))
    target[rng.random((m, T_y)) < 0.2] = 1  # <unk> is a token like any other
    source[np.arange(T_x)[None, :] >= source_lengths[:, None]] = 0
    target[np.arange(T_y)[None, :] >= target_lengths[:, None]] = 0
    return source, source_lengths, target, target_lengths


def model_of(backend="numpy", dtype="float64", seed=0, **config):
    return Seq2Seq(SOURCE, TARGET, **{**SMALL, **config}, backend=backend, dtype=dtype, seed=seed)


def host(arrays):
    return {k: np.asarray(xseq.to_numpy(v)) for k, v in arrays.items()}


def rel(got, want):
    """``max |got - want| / max |want|``; a gradient that is 0 up to rounding (``attention.b2``'s: the softmax
    ignores a shift of every score) is compared with 1e-6 instead."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-6)
    return float(np.max(np.abs(got - want), initial=0.0)) / scale


# ---------------------------------------------------------------------- structure


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("feed_previous", [True, False])
def test_parameters_are_one_dict_named_and_shaped_as_the_schema_says(cell, feed_previous):
    model = model_of(cell=cell, num_layers=2, feed_previous=feed_previous)
    params = model.parameters()
    assert model.parameters() is params
    shapes = parameter_shapes(model.config(), len(SOURCE), len(TARGET))
    assert list(shapes) == list(params)  # the same names in the same order
    assert shapes == {k: tuple(v.shape) for k, v in params.items()}
    assert ("target_embedding" in params) == feed_previous
    n_enc = 2 * SMALL["hidden_size"]
    assert params["decoder.weight_ih"].shape == (4 * 4, n_enc + (3 if feed_previous else 0))
    assert params["Wy"].shape == (len(TARGET) - 1, 4)  # <pad> is never scored
    assert model.num_parameters() == sum(math.prod(s) for s in shapes.values())
    assert json.loads(json.dumps(model.config())) == model.config()
    model.loss_and_backward(*batch())
    assert list(model.grads()) == list(params)
    assert all(tuple(model.grads()[k].shape) == tuple(v.shape) for k, v in params.items())


def test_the_seed_fixes_the_weights_and_each_piece_has_its_own_stream():
    a, b, c = model_of(seed=3).state_dict(), model_of(seed=3).state_dict(), model_of(seed=4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a if k != "attention.b2")
    assert not np.array_equal(a["source_embedding"][:7], a["target_embedding"])


# ---------------------------------------------------------------------- backends


def test_every_backend_computes_numpys_loss_gradients_and_decodings(xp):
    name = xseq.backends.arrays.backend_name(xp)
    data = batch(seed=1)
    results = {}
    for backend in ("numpy", name):
        model = model_of(backend, cell="gru", num_layers=2, dropout=0.3)
        loss = model.loss_and_backward(*data)
        outputs, attention = model.greedy(*data[:2], max_len=6)
        beam_outputs, scores, _ = model.beam_search(*data[:2], beam=3, max_len=6)
        results[backend] = (loss, host(model.grads()), outputs, attention, beam_outputs, scores,
                            model.nll(*data), model.log_likelihood(data[0], data[1], outputs))
    want, got = results["numpy"], results[name]
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for key in want[1]:
        assert rel(got[1][key], want[1][key]) < 1e-10, key
    assert got[2] == want[2] and got[4] == want[4]
    for a, b in zip(got[3], want[3]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got[5], want[5], rtol=1e-10)
    assert got[6][0] == pytest.approx(want[6][0], rel=1e-12) and got[6][1] == want[6][1]
    np.testing.assert_allclose(got[7], want[7], rtol=1e-10)


def test_float32_follows_float64():
    data = batch(seed=2)
    losses = [model_of(dtype=dtype).loss_and_backward(*data) for dtype in ("float32", "float64")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# ---------------------------------------------------------------------- finite differences


def loss_at(model, data, params, dropout_seed):
    for k, v in params.items():
        model.parameters()[k] = xseq.asarray(v, backend=model.xp, dtype=model.dtype)
    model.dropout_rng = np.random.default_rng(dropout_seed)  # the same masks at every evaluation
    return model.loss_and_backward(*data)


@pytest.mark.parametrize("cell, num_layers, feed_previous, dropout", [
    ("lstm", 1, True, 0.0),
    ("lstm", 2, True, 0.4),
    ("gru", 2, False, 0.0),
    ("rnn", 1, True, 0.3),
])
def test_finite_differences_of_every_parameter(cell, num_layers, feed_previous, dropout):
    """Every parameter along a random direction (all its entries at once), and a few entries one by one."""
    model = model_of(cell=cell, num_layers=num_layers, feed_previous=feed_previous, dropout=dropout, seed=5)
    data = batch(seed=3)
    base = host(model.parameters())
    loss_at(model, data, base, 7)
    analytic = host(model.grads())
    rng = np.random.default_rng(11)
    eps = 1e-6
    for name, value in base.items():
        direction = rng.standard_normal(value.shape)
        plus = loss_at(model, data, {**base, name: value + eps * direction}, 7)
        minus = loss_at(model, data, {**base, name: value - eps * direction}, 7)
        numeric = (plus - minus) / (2 * eps)
        expected = float(np.sum(analytic[name] * direction))
        assert abs(numeric - expected) <= 1e-8 + 1e-6 * abs(expected), (name, numeric, expected)
        for index in list(np.ndindex(value.shape))[:: max(1, value.size // 3)][:3]:
            shifted = [value.copy(), value.copy()]
            shifted[0][index] += eps
            shifted[1][index] -= eps
            numeric = (loss_at(model, data, {**base, name: shifted[0]}, 7)
                       - loss_at(model, data, {**base, name: shifted[1]}, 7)) / (2 * eps)
            assert abs(numeric - analytic[name][index]) <= 1e-8 + 1e-6 * abs(numeric), (name, index)


def test_rows_of_embeddings_that_no_token_uses_get_no_gradient():
    model = model_of()
    source, source_lengths, target, target_lengths = batch(seed=4)
    model.loss_and_backward(source, source_lengths, target, target_lengths)
    g = host(model.grads())
    used = set(source[source > 0].tolist())
    for v in range(len(SOURCE)):
        assert (np.abs(g["source_embedding"][v]).sum() > 0) == (v in used), v
    previous = set(target[target > 0].tolist()) | {EOS_ID}
    for v in range(len(TARGET)):
        assert (np.abs(g["target_embedding"][v]).sum() > 0) == (v in previous), v


# ---------------------------------------------------------------------- torch autograd


def torch_loss_and_grads(model, data):
    """The same architecture in torch, from the model's weights: loss and every gradient, keyed like xseq's."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    dt = torch.float64
    weights = {k: torch.tensor(v, dtype=dt) for k, v in model.state_dict().items()}
    source, source_lengths, target, target_lengths = (torch.tensor(np.asarray(a)) for a in data)
    m, T_x = source.shape
    n_a, n_s, D = model.hidden_size, model.decoder_size, model.embed_size
    encoder = getattr(torch.nn, model.encoder.torch_name)(D, n_a, num_layers=model.num_layers, bidirectional=True,
                                                          batch_first=True, dtype=dt)
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
    cell = torch.nn.LSTMCell(weights["decoder.weight_ih"].shape[1], n_s, dtype=dt)
    cell.load_state_dict({k[len("decoder."):]: v for k, v in weights.items() if k.startswith("decoder.")})
    leaves = {k: v.clone().requires_grad_(True) for k, v in weights.items()
              if not k.startswith(("encoder.", "decoder."))}
    x = leaves["source_embedding"][source]  # (m, T_x, D)
    packed = pack_padded_sequence(x, source_lengths, batch_first=True, enforce_sorted=False)
    a, _ = pad_packed_sequence(encoder(packed)[0], batch_first=True, total_length=T_x)  # (m, T_x, 2 n_a)
    keys = a @ leaves["attention.W1_a"].T + leaves["attention.b1"]
    valid = torch.arange(T_x)[None, :] < source_lengths[:, None]
    T = int(target_lengths.max()) + 1
    previous = torch.zeros((m, T), dtype=torch.long)
    previous[:, 0] = EOS_ID
    previous[:, 1:] = target[:, :T - 1]
    s = torch.zeros((m, n_s), dtype=dt)
    c = torch.zeros((m, n_s), dtype=dt)
    logits = []
    for t in range(T):
        h = torch.tanh(keys + (s @ leaves["attention.W1_s"].T)[:, None, :])
        energies = (h @ leaves["attention.W2"].T)[..., 0] + leaves["attention.b2"]
        alphas = torch.softmax(energies.masked_fill(~valid, -torch.inf), dim=1)
        context = (alphas[:, :, None] * a).sum(dim=1)
        inputs = (torch.cat([context, leaves["target_embedding"][previous[:, t]]], dim=1) if model.feed_previous
                  else context)
        s, c = cell(inputs, (s, c))
        logits.append(s @ leaves["Wy"].T + leaves["by"])
    labels = torch.zeros((m, T), dtype=torch.long)
    labels[:, :target.shape[1]] = target[:, :T]
    labels[torch.arange(m), target_lengths] = EOS_ID
    predicted = torch.arange(T)[None, :] <= target_lengths[:, None]
    loss = torch.nn.functional.cross_entropy(torch.stack(logits, dim=1)[predicted], labels[predicted] - 1)
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in leaves.items()}
    grads.update({"encoder." + k: p.grad.numpy() for k, p in encoder.named_parameters()})
    grads.update({"decoder." + k: p.grad.numpy() for k, p in cell.named_parameters()})
    return loss.item(), grads


@pytest.mark.parametrize("cell, num_layers, feed_previous", [
    ("lstm", 1, True), ("lstm", 2, False), ("gru", 1, True), ("rnn", 2, True)])
def test_torch_autograd_on_the_same_weights_and_batch(torch, cell, num_layers, feed_previous):
    model = Seq2Seq(SOURCE, TARGET, cell=cell, num_layers=num_layers, feed_previous=feed_previous,
                    dtype="float64", seed=9)  # the default sizes
    data = batch(seed=6, source_lengths=[7, 2, 5, 1, 6], target_lengths=[3, 5, 0, 1, 4])
    loss = model.loss_and_backward(*data)
    want_loss, want = torch_loss_and_grads(model, data)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    got = host(model.grads())
    assert set(got) == set(want)
    for key in want:
        assert rel(got[key], want[key]) < 1e-9, key


def test_the_benchmarks_check_compares_every_gradient_and_stops_on_a_wrong_one(torch, monkeypatch, capsys):
    """benchmarks/bench_seq2seq.py times nothing unless its torch model agrees with xseq's on a first step."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_seq2seq

    args = argparse.Namespace(pairs=64, batch=16, cell="gru")
    bench_seq2seq.check_first_step(args)
    out = capsys.readouterr().out
    assert out.count("20 gradients (and b2's, 0)") == 2 and "float64" in out and "float32" in out
    original = Seq2Seq.loss_and_backward

    def wrong(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        self._grads["decoder.weight_hh"] = self._grads["decoder.weight_hh"] * 1.001
        return loss

    monkeypatch.setattr(Seq2Seq, "loss_and_backward", wrong)
    with pytest.raises(SystemExit):
        bench_seq2seq.check_first_step(args)
    assert "MISMATCH first step, float64: ddecoder.weight_hh differs" in capsys.readouterr().out


# ---------------------------------------------------------------------- decoding


@pytest.mark.parametrize("seed", range(6))
def test_beam_of_one_is_greedy_decoding_exactly(seed):
    model = model_of(seed=seed, cell=("lstm", "gru")[seed % 2], feed_previous=seed != 3, dtype="float32")
    source, source_lengths, _, _ = batch(seed=seed, source_lengths=[5, 1, 3, 4, 2])
    outputs, attention = model.greedy(source, source_lengths, max_len=8)
    _, greedy_scores, _ = decode._greedy(model, source, source_lengths, 8)
    beam_outputs, scores, beam_attention = model.beam_search(source, source_lengths, beam=1, max_len=8)
    assert beam_outputs == outputs
    np.testing.assert_array_equal(scores, greedy_scores)
    for a, b in zip(attention, beam_attention):
        np.testing.assert_array_equal(a, b)


REVERSED = {c: "xyzwxyz"[i] for i, c in enumerate("abcdefg")}


@functools.lru_cache(maxsize=None)
def trained_model(steps, seed):
    """A model trained for a few steps to write a source's last four letters reversed, mapped (a -> x, ...):
    peaked but imperfect distributions, outputs that end, and beams that sometimes beat greedy decoding."""
    model = model_of(seed=seed, hidden_size=8, decoder_size=12, embed_size=6, attention_size=5)
    optimizer = xseq.Adam(model.parameters(), lr=0.02)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        sources = ["".join(rng.choice(list("abcdefg"), size=n)) for n in rng.integers(1, 6, size=16)]
        targets = ["".join(REVERSED[c] for c in text[::-1][:4]) for text in sources]
        source, _ = xseq.pad_ids([SOURCE.encode(text) for text in sources])
        target, _ = xseq.pad_ids([TARGET.encode(text) for text in targets])
        model.loss_and_backward(source, [len(t) for t in sources], target, [len(t) for t in targets])
        optimizer.step(model.grads())
    return model


# (training steps, model seed, batch seed): (20, 0, 0), (30, 5, 3) and (45, 3, 1) hold examples where plain beam search
# (the greedy path pruned like any other) ends below greedy decoding; the others are random.
@pytest.mark.parametrize("steps, seed, batch_seed", [(20, 0, 0), (30, 5, 3), (45, 3, 1)] +
                         [(s, seed, seed) for s in (10, 30, 60) for seed in range(3)])
@pytest.mark.parametrize("beam", [2, 3, 5])
def test_a_wider_beam_never_scores_below_greedy(steps, seed, batch_seed, beam):
    model = trained_model(steps, seed)
    source, source_lengths, _, _ = batch(seed=100 * batch_seed + seed, source_lengths=[5, 1, 3, 4, 2, 5, 5, 4])
    _, greedy_scores, greedy_attention = decode._greedy(model, source, source_lengths, 12)
    outputs, scores, attention = model.beam_search(source, source_lengths, beam=beam, max_len=12)
    assert np.all(scores >= greedy_scores - 1e-12)
    # the scores are the model's log-likelihoods of the outputs (all terminated here)
    assert all(len(a) == len(o) + 1 for a, o in zip(attention, outputs))
    np.testing.assert_allclose(scores, model.log_likelihood(source, source_lengths, outputs), rtol=1e-10)
    # with length normalisation, under its criterion: log p / n, n the decoder steps (one a token, <eos> included)
    _, normalised_scores, normalised_attention = model.beam_search(source, source_lengths, beam=beam, max_len=12,
                                                                   length_normalization=1.0)
    steps_of = lambda maps: np.array([len(a) for a in maps])  # noqa: E731
    assert np.all(normalised_scores / steps_of(normalised_attention)
                  >= greedy_scores / steps_of(greedy_attention) - 1e-12)


def test_a_wider_beam_finds_likelier_outputs_than_greedy_on_some_inputs():
    found = 0
    for seed in range(3):
        model = trained_model(30, seed)
        source, source_lengths, _, _ = batch(seed=seed, source_lengths=[5, 1, 3, 4, 2, 5])
        _, greedy_scores, _ = decode._greedy(model, source, source_lengths, 12)
        _, scores, _ = model.beam_search(source, source_lengths, beam=2, max_len=12)
        found += int(np.sum(scores > greedy_scores + 1e-9))
    assert found > 0  # the wider beam does find better outputs than greedy's on some inputs


def test_attention_maps_have_a_row_per_output_token_over_the_source_tokens():
    model = trained_model(60, 1)
    source, source_lengths, _, _ = batch(seed=1, source_lengths=[5, 1, 3])
    for outputs, attention in (model.greedy(source, source_lengths),
                               model.beam_search(source, source_lengths, beam=3)[::2]):
        for ids, weights, L in zip(outputs, attention, source_lengths):
            assert weights.shape == (len(ids) + 1, L)  # <eos> emitted: its step is the last row
            np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-12)


def test_max_len_ends_unterminated_outputs():
    model = model_of(seed=1)  # random weights: outputs rarely end early
    source, source_lengths, _, _ = batch(seed=1, source_lengths=[5, 1, 3])
    outputs, attention = model.greedy(source, source_lengths, max_len=3)
    for ids, weights in zip(outputs, attention):
        assert len(weights) <= 3 and len(ids) in (len(weights), len(weights) - 1)
    outputs, _ = model.greedy(source, source_lengths)  # the default: 2 L + 10 steps
    assert all(len(ids) <= 2 * L + 10 for ids, L in zip(outputs, source_lengths))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_len must be a positive integer"):
            model.greedy(source, source_lengths, max_len=bad)
    with pytest.raises(ValueError, match="beam must be a positive integer; got 0"):
        model.beam_search(source, source_lengths, beam=0)
    with pytest.raises(ValueError, match="length_normalization must be a finite number >= 0; got -1"):
        model.beam_search(source, source_lengths, length_normalization=-1)


# ---------------------------------------------------------------------- padding


def test_an_example_alone_equals_the_same_example_in_a_padded_batch():
    model = trained_model(30, 2)
    source, source_lengths, target, target_lengths = batch(seed=8, T_x=7, T_y=6)
    m = len(source_lengths)
    whole = model.loss_and_backward(source, source_lengths, target, target_lengths)
    whole_grads = host(model.grads())
    counts = target_lengths + 1
    summed = {k: np.zeros_like(v) for k, v in whole_grads.items()}
    batch_outputs, batch_attention = model.greedy(source, source_lengths)
    beam_outputs, beam_scores, _ = model.beam_search(source, source_lengths, beam=3)
    losses = []
    for i in range(m):
        Lx, Ly = source_lengths[i], target_lengths[i]
        alone = (source[i:i + 1, :Lx], [Lx], target[i:i + 1, :Ly], [Ly])
        losses.append(model.loss_and_backward(*alone))
        for k, v in host(model.grads()).items():
            summed[k] += v * counts[i]
        outputs, attention = model.greedy(alone[0], alone[1])
        assert outputs[0] == batch_outputs[i]
        np.testing.assert_allclose(attention[0], batch_attention[i], rtol=1e-10)
        outputs, scores, _ = model.beam_search(alone[0], alone[1], beam=3)
        assert outputs[0] == beam_outputs[i]
        assert scores[0] == pytest.approx(beam_scores[i], rel=1e-10)
    assert whole == pytest.approx(np.dot(losses, counts) / counts.sum(), rel=1e-12)
    for k, v in summed.items():
        assert rel(whole_grads[k], v / counts.sum()) < 1e-10, k


def test_nll_and_log_likelihood_agree_with_the_loss():
    model = model_of(seed=3)
    data = batch(seed=9)
    total, count = model.nll(*data)
    assert count == int(np.sum(TARGET_LENGTHS + 1))
    assert total / count == pytest.approx(model.loss_and_backward(*data, training=False), rel=1e-12)
    source, source_lengths, target, target_lengths = data
    outputs = [target[i, :target_lengths[i]].tolist() for i in range(len(target))]
    assert -model.log_likelihood(source, source_lengths, outputs).sum() == pytest.approx(total, rel=1e-12)


# ---------------------------------------------------------------------- dropout


def test_dropout_follows_its_generator_and_a_trainer_may_wrap_it():
    data = batch(seed=10)
    model = model_of(dropout=0.5, num_layers=2)
    model.dropout_rng = np.random.default_rng(1)
    first = model.loss_and_backward(*data)
    model.dropout_rng = np.random.default_rng(1)
    assert model.loss_and_backward(*data) == first
    assert model.loss_and_backward(*data, training=False) != first  # dropout acts in training only
    model.dropout_rng = ExampleDropout(model.dropout_rng)
    assert isinstance(model.encoder.dropout_rng, ExampleDropout)  # one stream for every mask
    model.dropout_rng.start_step([0, 1, 2, 3])
    wrapped = model.loss_and_backward(*data)
    assert math.isfinite(wrapped) and wrapped != first


# ---------------------------------------------------------------------- text in, text out


def test_translate_reads_and_writes_text_through_the_vocabularies():
    model = trained_model(60, 0)
    texts = ["abc", "g", "a?b"]  # "?" is not in the vocabulary: <unk>
    translations, attention = model.translate(texts)
    ids = [SOURCE.encode(t) for t in texts]
    assert ids[2][1] == SOURCE.unk_id
    for text, got, weights in zip(texts, translations, attention):
        outputs, want_weights = model.greedy(np.array([SOURCE.encode(text)]), [len(text)])
        assert got == TARGET.decode(outputs[0])
        np.testing.assert_allclose(weights, want_weights[0], rtol=1e-10)
    beam, _ = model.translate(texts, beam=3)
    assert len(beam) == 3 and all(isinstance(t, str) for t in beam)
    with pytest.raises(TypeError, match="texts must be a list of str; got str"):
        model.translate("abc")
    with pytest.raises(ValueError, match=r"texts\[1\] = '' has no tokens"):
        model.translate(["abc", ""])
    assert model.translate([]) == ([], [])


def test_samples_follow_the_seed_and_narrow_to_greedy_decoding():
    model = trained_model(30, 1)
    texts = ["abcde", "g", "fab", "cc", "edcba", "a"] * 3
    greedy, _ = model.translate(texts)
    assert all("<unk>" not in t for t in greedy)  # (then the samples below must equal greedy's outputs)
    first = model.sample(texts, seed=3)
    assert model.sample(texts, seed=3) == first
    assert model.sample(texts, seed=4) != first
    assert first != greedy  # drawn from the distribution, not its mode
    assert model.sample(texts, top_k=1, seed=5) == greedy
    assert model.sample(texts, temperature=1e-6, seed=6) == greedy
    assert all(len(t) <= 2 for t in model.sample(texts, max_len=2, seed=7))
    for kwargs, message in (({"temperature": 0}, "temperature must be a finite number > 0; got 0"),
                            ({"top_k": 0}, "top_k must be a positive integer or None; got 0"),
                            ({"max_len": 0}, "max_len must be a positive integer")):
        with pytest.raises(ValueError, match=message):
            model.sample(texts, **kwargs)


# ---------------------------------------------------------------------- checkpoints


def test_a_checkpoint_round_trips_the_model(tmp_path):
    model = model_of(cell="gru", num_layers=2, feed_previous=False, dropout=0.25, seed=4)
    path = tmp_path / "s2s.npz"
    model.save(path, meta={"note": "kept"})
    loaded = Seq2Seq.load(path)
    assert loaded.config() == model.config() and loaded.dtype_name == "float64"
    assert loaded.source_vocab == SOURCE and loaded.target_vocab == TARGET
    assert all(np.array_equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    source, source_lengths, _, _ = batch(seed=2)
    assert loaded.greedy(source, source_lengths)[0] == model.greedy(source, source_lengths)[0]
    with pytest.raises(ValueError, match=r"meta keys \['model'\] are the model's own"):
        model.save(tmp_path / "other.npz", meta={"model": 1})


def write_changed(tmp_path, change):
    arrays, meta = model_of().checkpoint_contents()
    change(arrays, meta)
    path = tmp_path / "changed.npz"
    save_checkpoint(path, arrays=arrays, meta=meta)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda a, m: m["model"].update(hidden_size=2_000_000_000),
     r"'encoder.weight_ih_l0' has shape \(12, 3\); expected \(8000000000, 3\)"),
    (lambda a, m: m["model"].update(num_layers=10**9), "num_layers = 1000000000 needs at least 8000000000"),
    (lambda a, m: m["model"].update(decoder_size=0), "decoder_size must be a positive integer; got 0"),
    (lambda a, m: m["model"].update(cell="transformer"), "cell must be one of"),
    (lambda a, m: m["model"].update(feed_previous="yes"), "feed_previous must be True or False"),
    (lambda a, m: m["model"].update(extra=1), r"unknown entries \['extra'\]"),
    (lambda a, m: m["model"].pop("dropout"), r"lacks \['dropout'\]"),
    (lambda a, m: m.update(format="xseq.LanguageModel"), "holds no xseq sequence-to-sequence model"),
    (lambda a, m: m.update(format_version=2), "format_version 2"),
    (lambda a, m: m.pop("target_vocab"), "no metadata entry 'target_vocab'"),
    (lambda a, m: m.update(source_vocab={"tokens": []}), "vocabulary data has format None"),
    (lambda a, m: m.update(dtype="float16"), "dtype must be 'float32' or 'float64'"),
    (lambda a, m: a.pop("param/Wy"), r"missing \['Wy'\]"),
    (lambda a, m: a.update({"param/Wy": a["param/Wy"].astype(np.float32)}), "'Wy' has dtype float32"),
    (lambda a, m: a["param/by"].__setitem__(0, np.nan), "'by' holds 1 NaN or infinite values"),
])
def test_hostile_or_broken_metadata_is_refused_before_building(tmp_path, change, message):
    path = write_changed(tmp_path, change)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as info:
        Seq2Seq.load(path)
    assert "changed.npz" in str(info.value)
    assert time.perf_counter() - started < 5  # nothing of the claimed size was allocated


def test_load_state_dict_keeps_the_dict_and_refuses_what_does_not_fit():
    model = model_of()
    params = model.parameters()
    state = model_of(seed=1).state_dict()
    model.load_state_dict(state)
    assert model.parameters() is params and np.array_equal(xseq.to_numpy(params["Wy"]), state["Wy"])
    with pytest.raises(TypeError, match="'Wy' has dtype int64"):
        model.load_state_dict({**state, "Wy": state["Wy"].astype(np.int64)})
    with pytest.raises(ValueError, match="'by' has shape"):
        model.load_state_dict({**state, "by": state["by"][:-1]})
    with pytest.raises(ValueError, match=r"missing \['Wy'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "Wy"})


# ---------------------------------------------------------------------- bad input


def replaced(**changes):
    """A change of a batch: each named argument replaced by a value, or by a function of the batch's arguments."""
    def change(data):
        data = dict(zip(("source", "source_lengths", "target", "target_lengths"), data))
        data.update({k: v(data) if callable(v) else v for k, v in changes.items()})
        return tuple(data.values())
    return change


def set_first(name, value):
    """Every id equal to ``name``'s first one (not padding) replaced by ``value``."""
    return replaced(**{name: lambda d: np.where(d[name] == d[name][0, 0], value, d[name])})


@pytest.mark.parametrize("change, error, message", [
    (replaced(source_lengths=[5, 0, 3, 4]), ValueError, r"source_lengths\[1\] = 0 is out of range; expected 1"),
    (replaced(source_lengths=[6, 1, 3, 4]), ValueError, r"source_lengths\[0\] = 6 is out of range"),
    (replaced(source_lengths=[5, 1, 3]), ValueError, r"source_lengths has shape \(3,\); expected \(m,\) = \(4,\)"),
    (replaced(source_lengths=[5, 1.0, 3, 4]), TypeError, r"source_lengths\[1\] is float"),
    (replaced(source_lengths=[5, True, 3, 4]), TypeError, r"source_lengths\[1\] is bool"),
    (replaced(target_lengths=[2, -1, 4, 1]), ValueError, r"target_lengths\[1\] = -1 is out of range; expected 0"),
    (replaced(target_lengths=[2, 0, 5, 1]), ValueError, r"target_lengths\[2\] = 5 is out of range"),
    (replaced(source=lambda d: d["source"].astype(float)), TypeError, "source has dtype float64; expected integer ids"),
    (replaced(source=lambda d: d["source"].tolist()), TypeError, "source must be a 2-D integer array"),
    (replaced(source=lambda d: d["source"][0]), ValueError, "source has shape"),
    (set_first("source", 10), ValueError, "= 10 is out of range; expected 0 < id < V = 10"),
    (set_first("target", 7), ValueError, r"target\[0\]\[0\] = 7 is out of range"),
    (set_first("target", EOS_ID), ValueError, r"target\[0\]\[0\] is 2 \(<eos>\)"),
    (replaced(target_lengths=[1, 0, 4, 1]), ValueError, r"target\[0\]\[1\] = \d lies past target_lengths\[0\] = 1"),
    (replaced(source_lengths=[5, 2, 3, 4]), ValueError, r"source\[1\]\[1\] is 0 \(<pad>\) inside source_lengths"),
    (replaced(target=lambda d: d["target"][:3]), ValueError, "target has 3 rows"),
])
def test_bad_input_is_refused_with_the_argument_named(change, error, message):
    model = model_of()
    data = change(batch(seed=0))
    with pytest.raises(error, match=message):
        model.loss_and_backward(*data)
    with pytest.raises(error, match=message):
        model.nll(*data)


def test_bad_outputs_and_vocabularies_are_refused():
    model = model_of()
    source, source_lengths, _, _ = batch()
    with pytest.raises(ValueError, match=r"outputs\[1\]\[0\] = 2; expected an id"):
        model.log_likelihood(source, source_lengths, [[3], [2], [], [4]])
    with pytest.raises(ValueError, match="outputs holds 2 sequences; expected m = 4"):
        model.log_likelihood(source, source_lengths, [[3], [4]])
    with pytest.raises(TypeError, match="target_vocab must be an xseq.Vocabulary; got list"):
        Seq2Seq(SOURCE, ["a"])
    with pytest.raises(ValueError, match="hidden_size must be a positive integer; got 0"):
        Seq2Seq(SOURCE, TARGET, hidden_size=0)
    with pytest.raises(ValueError, match="dropout must be a probability"):
        Seq2Seq(SOURCE, TARGET, dropout=1.0)


# ---------------------------------------------------------------------- training


def test_a_short_training_run_on_dates_learns():
    pairs = date_pairs(512, seed=0)
    source_vocab = Vocabulary.from_text([s for s, _ in pairs])
    target_vocab = Vocabulary.from_text([t for _, t in pairs])
    model = Seq2Seq(source_vocab, target_vocab, seed=0)
    optimizer = xseq.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(150):
        chunk = [pairs[i] for i in rng.choice(len(pairs), size=16, replace=False)]
        sources = [source_vocab.encode(s) for s, _ in chunk]
        targets = [target_vocab.encode(t) for _, t in chunk]
        source, _ = xseq.pad_ids(sources)
        target, _ = xseq.pad_ids(targets)
        losses.append(model.loss_and_backward(source, [len(s) for s in sources], target,
                                              [len(t) for t in targets]))
        optimizer.step(xseq.clip_by_global_norm(model.grads(), 5.0)[0])
    assert np.mean(losses[:5]) > 2.0  # about log(V_y - 1) at the start
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:5])
