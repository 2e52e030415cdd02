"""The word model's dropout scale and the word trainer's norm clipping, asserted directly (issue 20, item 6).

Mutation testing found that removing the 1/(1-p) scale of :class:`~xseq.lm.stream_model.StreamLM`'s
dropout masks failed no test, and that removing the word trainer's clipping was caught only by a
benchmark harness test: these tests compute both by hand.
"""

import math

import numpy as np
import pytest

from xseq.lm.stream_model import StreamLM
from xseq.lm.stream_train import StreamConfig, StreamTrainer, window
from xseq.lm.vocab import Vocabulary

VOCAB = Vocabulary(["<pad>", "<unk>", "<eos>", "a", "b", "c", "d"], level="word", tokenizer="whitespace")
LINES = ["the cat sat on the mat", "a dog ate the cat", "", "the mat sat", "big red dog ran fast"] * 6


# ---------------------------------------------------------------------- dropout


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p", [0.25, 0.6])
def test_a_dropout_mask_keeps_values_of_exactly_one_over_one_minus_p_and_has_mean_one(p, dtype):
    model = StreamLM(VOCAB, 4, dropout=p, dtype=dtype, seed=2)
    mask = model._mask((50, 40, 50))
    assert mask.dtype == np.dtype(dtype) and mask.shape == (50, 40, 50)
    kept = mask != 0
    np.testing.assert_array_equal(mask[kept], np.full(kept.sum(), 1 / (1 - p), dtype=dtype))
    # Each entry is 1/(1-p) with probability 1-p, else 0: its expectation is 1, its variance p/(1-p).
    assert abs(kept.mean() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / mask.size)
    assert abs(mask.mean(dtype=np.float64) - 1) < 5 * math.sqrt(p / (1 - p) / mask.size)


def _rnn_layer(params, layer, x, input_mask):
    """A tanh RNN layer by hand on ``x * input_mask``, both (T, m, n) time-major; returns (T, m, n_a)."""
    W_ih, W_hh = params[f"weight_ih_l{layer}"], params[f"weight_hh_l{layer}"]
    b = params[f"bias_ih_l{layer}"] + params[f"bias_hh_l{layer}"]
    x = x * input_mask
    a = np.zeros((x.shape[1], W_hh.shape[0]))
    outputs = []
    for x_t in x:
        a = np.tanh(x_t @ W_ih.T + a @ W_hh.T + b)
        outputs.append(a)
    return np.stack(outputs)


def test_a_training_window_with_dropout_equals_the_manual_computation_from_the_same_masks():
    """Embedding, between the layers and before the projection, each mask ``(u >= p) / (1 - p)`` of the
    dropout stream's draws in that order; the loss and the projection's gradients follow from them."""
    p, m, T, D, n_a = 0.4, 3, 5, 3, 4
    model = StreamLM(VOCAB, n_a, cell="rnn", num_layers=2, embed_size=D, dropout=p, init_scale=0.5,
                     dtype="float64", seed=7)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, len(VOCAB), (m, T)), rng.integers(1, len(VOCAB), (m, T))
    draws = np.random.Generator(np.random.PCG64())
    draws.bit_generator.state = model.dropout_rng.bit_generator.state
    masks = [(draws.random(shape) >= p) / (1 - p) for shape in ((T, m, D), (T, m, n_a), (T, m, n_a))]

    nll, _ = model.loss_and_backward(x, y)

    params = {k: np.array(v) for k, v in model.parameters().items()}
    e = params["embedding"][x.T]  # (T, m, D)
    A = _rnn_layer(params, 1, _rnn_layer(params, 0, e, masks[0]), masks[1]) * masks[2]
    A = A.reshape(T * m, n_a)
    logits = A @ params["Wy"].T + params["by"]
    rows = y.T.reshape(-1) - 1  # the projection's row v - 1 scores id v
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert nll == pytest.approx(-log_probs[np.arange(T * m), rows].sum(), rel=1e-12)
    d_logits = np.exp(log_probs)
    d_logits[np.arange(T * m), rows] -= 1
    grads = model.grads()
    np.testing.assert_allclose(grads["Wy"], d_logits.T @ A / m, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["by"], d_logits.sum(axis=0) / m, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------- clipping


def _trainer(clip):
    config = StreamConfig(hidden_size=6, batch_size=3, bptt=4, epochs=1, optimizer="sgd", lr=0.5, clip=clip,
                          clip_mode="norm", dropout=0.0, dtype="float64", seed=5)
    return StreamTrainer(LINES, config, backend="numpy")


def _raw_gradients():
    """The first window's gradients of an unclipped twin (same seed, so the same weights), and their norm."""
    twin = _trainer(None)
    inputs, targets = window(twin.train_data, 0, twin.config.bptt)
    twin.model.loss_and_backward(inputs, targets)
    grads = {k: np.array(g) for k, g in twin.model.grads().items()}
    return grads, math.sqrt(sum(float((g * g).sum()) for g in grads.values()))


def _first_update(trainer):
    """``(before - after) / lr`` of every parameter over one training step: the gradient SGD applied."""
    before = {k: np.array(v) for k, v in trainer.model.parameters().items()}
    trainer.train_step()
    return {k: (before[k] - np.array(v)) / trainer.config.lr for k, v in trainer.model.parameters().items()}


def test_a_word_step_with_clip_scales_the_gradient_to_a_global_norm_of_clip():
    raw, raw_norm = _raw_gradients()
    clip = raw_norm / 4
    update = _first_update(_trainer(clip))
    assert set(update) == set(raw)
    norm = math.sqrt(sum(float((g * g).sum()) for g in update.values()))
    assert norm == pytest.approx(clip, rel=1e-9)
    for name, g in raw.items():
        np.testing.assert_allclose(update[name], g * (clip / raw_norm), rtol=1e-8, atol=1e-12, err_msg=name)


def test_a_word_step_with_clip_above_the_norm_applies_the_raw_gradient():
    raw, raw_norm = _raw_gradients()
    update = _first_update(_trainer(raw_norm * 4))
    for name, g in raw.items():
        np.testing.assert_allclose(update[name], g, rtol=1e-8, atol=1e-12, err_msg=name)
