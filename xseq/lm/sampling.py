"""Drawing tokens from a language model: the checks of ``sample``'s arguments and the drawing loop.

Every model samples the same way (:meth:`xseq.lm.language_model.LanguageModel.sample`): all samples of a call
are one batch, each starts from the zero state, reads its prefix and then draws one token a step from the
model's softened, optionally truncated distribution until ``<eos>`` or ``max_len`` tokens.
"""

from __future__ import annotations

import numpy as np

from ..nn.optim import _check_positive as check_positive
from .vocab import EOS, EOS_ID, PAD, PAD_ID, SPECIALS, UNK
from .vocab import _check_int as check_int


def sample_ids(model, prefix_ids, n, max_len, *, first_input, offset, never, top_k, temperature, seed):
    """Draw ``n`` samples together and decode them: every one starts from the zero state with the input
    ``first_input``, reads ``prefix_ids``, then draws (:func:`choose_next`) until ``<eos>`` or ``max_len``.

    ``model._step(ids, state)`` gives host scores whose row ``j`` scores id ``j + offset`` (a copy the loop
    may write into); the ids of ``never`` are never drawn, nor ``<eos>`` as a sample's first token.
    """
    rng = np.random.default_rng(seed)
    samples = np.zeros((n, max_len), dtype=np.int64)
    samples[:, :len(prefix_ids)] = prefix_ids
    done = np.zeros(n, dtype=bool)
    state, previous = None, np.full(n, first_input, dtype=np.int64)
    for t in range(max_len):
        scores, state = model._step(previous, state)
        if t < len(prefix_ids):
            previous = samples[:, t]
            continue
        scores[[i - offset for i in never]] = -np.inf
        if t == 0:
            scores[EOS_ID - offset] = -np.inf
        drawn = choose_next(scores, top_k=top_k, temperature=temperature, rng=rng) + offset
        samples[:, t] = np.where(done, PAD_ID, drawn)
        done |= drawn == EOS_ID
        if done.all():
            break
        previous = samples[:, t]
    return [model.vocab.decode(row.tolist()) for row in samples]


class SamplingError(ValueError):
    """A model that cannot be sampled: no token to draw, or scores that are not numbers."""


def check_sampling(n, max_len, temperature, top_k, prefix):
    """The arguments of a model's ``sample`` (TypeError or ValueError naming a bad one); the temperature as a
    float."""
    check_int("n", n, 1)
    check_int("max_len", max_len, 1)
    temperature = check_positive("temperature", temperature)
    if top_k is not None:
        check_int("top_k", top_k, 1)
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str; got {type(prefix).__name__}")
    return temperature


def check_prefix(vocab, prefix, max_len):
    """The ids of a sample's ``prefix``, once sampling can honour it; ValueError naming what cannot be.

    ``<eos>`` ends a sample, and :meth:`~xseq.lm.vocab.Vocabulary.decode` stops there, so a
    prefix holding it would print as its text before the ``<eos>`` alone: it
    is refused. Only a word vocabulary of the whitespace tokenizer reads the
    word ``<eos>`` as that token; at character level ``"<eos>"`` is five
    characters and the regex tokenizer gives ``<``, ``eos``, ``>``, ordinary
    text. A vocabulary of the specials alone raises :class:`SamplingError`:
    ``<pad>`` and ``<unk>`` are never drawn and a sample never starts with
    ``<eos>``, so there is no token to draw.
    """
    if len(vocab) == len(SPECIALS):
        raise SamplingError(
            f"the model's vocabulary has no token to draw: it holds only {' '.join(SPECIALS)} (V = {len(vocab)}); "
            f"{PAD} and {UNK} are never drawn and a sample never starts with {EOS}, so a model needs another "
            "token to be sampled (train it with a larger --vocab-size)")
    prefix_ids = vocab.encode(prefix)
    if EOS_ID in prefix_ids:
        raise ValueError(
            f"prefix {prefix!r} holds {EOS} (its token {prefix_ids.index(EOS_ID) + 1} of {len(prefix_ids)}): "
            f"{EOS} ends a sample, so a prefix cannot hold it; give the text of one line")
    if len(prefix_ids) > max_len:
        raise ValueError(f"prefix has {len(prefix_ids)} tokens, more than max_len = {max_len}")
    return prefix_ids


def choose_next(scores, *, top_k, temperature, rng):
    """One id per column of ``scores`` (V, m): the ``top_k`` best (None: all), softened by ``temperature``, drawn.

    ``scores`` is modified; entries of -inf are never drawn. A column with no
    finite entry, or with a NaN or +inf (a model whose weights overflow),
    raises :class:`SamplingError`: it gives no distribution to draw from.
    """
    _check_scores(scores)
    V = scores.shape[0]
    if top_k is not None and top_k < V:
        cut = np.partition(scores, V - top_k, axis=0)[V - top_k]
        scores[scores < cut] = -np.inf
    # Shift before dividing: the likeliest token scores 0 at any
    # temperature, so a tiny one sends every other score to -inf
    # (greedy decoding) instead of overflowing to inf - inf = NaN.
    with np.errstate(over="ignore", under="ignore"):
        scores = (scores - scores.max(axis=0, keepdims=True)) / temperature
    return _draw(scores, rng)


def _check_scores(scores):
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise SamplingError("the model's scores hold NaN or +inf (weights so large that the output overflows): "
                            "they give no distribution to draw from")
    if np.isneginf(scores).all(axis=0).any():
        raise SamplingError("no token is left to draw: every token that may be drawn scores -inf")


def _draw(scores, rng):
    """One id per column of ``scores`` (V, m), drawn from softmax over each column (-inf = never)."""
    p = np.exp(scores - scores.max(axis=0, keepdims=True))
    cumulative = np.cumsum(p, axis=0)
    u = rng.random(scores.shape[1]) * cumulative[-1]
    # The first id whose cumulative mass exceeds u: always one of positive probability.
    return (cumulative <= u).sum(axis=0)
