"""Decoding a :class:`~xseq.seq2seq.model.Seq2Seq`: greedy, beam search (batched), and texts in and out.

Both decoders run the model's decoder one step at a time from ``s<0> = c<0> = 0`` with ``<eos>`` as the first
previous token, each step fed the token chosen before. A step is the attention step, the two small products of
the decoder's input (the target token's part is a row of a table made once per batch: the target embedding times
its columns of ``decoder.weight_ih``, plus both biases), the engine's LSTM kernel and the projection. The
scores are ``log softmax`` of the logits, computed in float64 on the host (:func:`log_softmax`), where the
choices are made.

Lengths: ``max_len`` is the most decoder steps an output may take, ``<eos>`` included; an output that has not
emitted ``<eos>`` after ``max_len`` tokens ends there, unterminated (its score then has no ``<eos>`` term). By
default (None) it is ``2 L + 10`` for a source of ``L`` tokens, per example, so an example's output does not
depend on the batch it is decoded in.

Greedy decoding takes the likeliest token at every step (the lowest id among equal scores).

Beam search keeps, per example, the ``beam`` likeliest unfinished hypotheses (by their summed log-probability),
all examples together as ``beam * m`` rows of one batch. At each step every live hypothesis is extended by every
token; the ``beam`` best extensions (ties: the larger last-token log-probability, then the lower hypothesis slot
and token id) are kept; one ending in ``<eos>`` is finished and leaves the beam. One rule more: the greedy
hypothesis -- the one extended, step after step, by the likeliest token -- is never pruned (if it is not among
the best, it replaces the last of them). So:

* ``beam=1`` is greedy decoding exactly (the same choices from the same numbers: the same outputs, scores and
  attention);
* with a wider beam the result scores at least as high as greedy's path under the criterion the search
  maximises (below), since that path is always one of its finished hypotheses. The scores compared are the
  beam's own (its batch of ``beam * m`` rows may round differently from greedy's ``m`` rows by an ulp).

The result is the finished hypothesis that maximises ``log p / n ** length_normalization``, ``n`` its number of
tokens (``<eos>`` included); ``length_normalization=0`` (the default) is the plain log-likelihood. With it, an
example stops as soon as its best finished score is at least every live one (a longer hypothesis can only lose
probability); with normalisation, when no hypothesis is live or at ``max_len``.
"""

from __future__ import annotations

import numbers

import numpy as np

from ..backends.arrays import to_numpy
from ..engine.sequence import c_order
from ..lm.vocab import EOS_ID, UNK_ID
from ..ops.select import ops_for
from .inputs import source_batch

TRANSLATE_BATCH = 128
"""Texts decoded together by :func:`translate`."""


def log_softmax(logits):
    """Row-wise ``log softmax`` of host logits ``(N, V)``, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _limits(max_len, lengths):
    """Each example's most decoder steps: ``max_len``, or ``2 L + 10`` for its source length ``L``."""
    if max_len is None:
        return 2 * lengths + 10
    if isinstance(max_len, bool) or not isinstance(max_len, numbers.Integral) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer (decoder steps, <eos> included) or None; got "
                         f"{max_len!r}")
    return np.full(lengths.shape, int(max_len), dtype=np.int64)


class _Steps:
    """One batch's decoder, step by step, for ``rows`` rows: each example's row repeated ``repeat`` times."""

    def __init__(self, model, source, lengths, repeat):
        xp, p = model.xp, model.parameters()
        self.model, self.xp = model, xp
        a, _ = model._encoder_outputs(source, lengths, False)  # (n_enc, m, T_x)
        if repeat > 1:
            rows = np.repeat(np.arange(source.shape[0]), repeat)
            a, lengths = xp.take(a, xp.asarray(rows), axis=1), lengths[rows]
        self.keys = model.attention.precompute(a, lengths)
        self.rows = int(a.shape[1])
        n_enc, n_s = a.shape[0], model.decoder_size
        W_ih = p["decoder.weight_ih"]
        bias = p["decoder.bias_ih"] + p["decoder.bias_hh"]
        self.W_icT = c_order(xp, xp.permute_dims(W_ih[:, :n_enc], (1, 0)))
        self.W_hhT = c_order(xp, xp.permute_dims(p["decoder.weight_hh"], (1, 0)))
        self.WyT, self.by = c_order(xp, xp.permute_dims(p["Wy"], (1, 0))), p["by"]
        # The previous token's part of the input projection, with both biases: one row per target id.
        self.table = (p["target_embedding"] @ xp.permute_dims(W_ih[:, n_enc:], (1, 0)) + bias
                      if model.feed_previous else None)
        self.bias = bias
        self.ops = ops_for(xp, model.dtype)
        self.s = xp.zeros((self.rows, n_s), dtype=model.dtype)
        self.c = xp.zeros((self.rows, n_s), dtype=model.dtype)

    def step(self, previous):
        """Advance every row with its host previous-token ids ``(rows,)``; host float64 log-probabilities
        ``(rows, V_y - 1)`` (column ``v - 1`` for id ``v``) and attention weights ``(rows, T_x)``."""
        xp, ops, dtype = self.xp, self.ops, self.model.dtype
        context, alphas, _ = self.model.attention.step(self.keys, xp.permute_dims(self.s, (1, 0)))
        xw = xp.permute_dims(context, (1, 0)) @ self.W_icT
        xw = xw + (xp.take(self.table, xp.asarray(previous), axis=0) if self.table is not None else self.bias)
        hw = self.s @ self.W_hhT
        n_s = self.s.shape[1]
        saved = ops.empty((1, self.rows, 4 * n_s), dtype, None)
        C = ops.empty((2, self.rows, n_s), dtype, None)
        S = ops.empty((2, self.rows, n_s), dtype, None)
        ops.lstm_forward(xw, hw, self.c, saved, C, S, 0)
        self.s, self.c = S[1, ...], C[1, ...]
        logp = log_softmax(to_numpy(self.s @ self.WyT + self.by))
        if np.isnan(logp).any():
            raise ValueError("the model's scores are not numbers (NaN): its weights hold NaN or overflowed")
        return logp, np.asarray(to_numpy(alphas))

    def reorder(self, rows):
        """Keep the states of host ``rows`` (a hypothesis moves to another slot of its example)."""
        index = self.xp.asarray(rows)
        self.s = self.xp.take(self.s, index, axis=0)
        self.c = self.xp.take(self.c, index, axis=0)


def greedy(model, source, source_lengths, max_len=None):
    """Greedy decoding of a batch: the likeliest token at every step.

    Parameters
    ----------
    model : Seq2Seq
    source : (m, T_x) integer array, padded with 0
    source_lengths : (m,) ints, ``1 <= L <= T_x``
    max_len : int >= 1 or None
        The most decoder steps, ``<eos>`` included (module docstring); None: ``2 L + 10`` per example.

    Returns
    -------
    outputs : list of m lists of int
        The ids before ``<eos>`` (decode them with the target vocabulary).
    attention : list of m host arrays ``(T_out, L)``
        Row ``t`` holds the attention weights over the example's ``L`` source tokens when output token ``t`` was
        chosen; ``T_out`` counts the ``<eos>`` step where there is one.
    """
    outputs, _, attention = _greedy(model, source, source_lengths, max_len)
    return outputs, attention


def _greedy(model, source, source_lengths, max_len):
    """:func:`greedy`, with each output's summed log-probability (float64, ``<eos>`` included where emitted)."""
    source, lengths = source_batch(source, source_lengths, len(model.source_vocab))
    limits = _limits(max_len, lengths)
    m = source.shape[0]
    steps = _Steps(model, source, lengths, 1)
    outputs, attention = [[] for _ in range(m)], [[] for _ in range(m)]
    scores = np.zeros(m)
    done = np.zeros(m, dtype=bool)
    previous = np.full(m, EOS_ID, dtype=np.int64)
    while not done.all():
        logp, alphas = steps.step(previous)
        chosen = np.argmax(logp, axis=1)
        for i in np.flatnonzero(~done):
            attention[i].append(alphas[i, :lengths[i]])
            scores[i] += logp[i, chosen[i]]
            token = int(chosen[i]) + 1
            if token == EOS_ID:
                done[i] = True
            else:
                outputs[i].append(token)
                done[i] = len(attention[i]) == limits[i]
        previous = chosen + 1
    return outputs, scores, [np.stack(a) for a in attention]


def _best(total, logp, k):
    """The ``k`` best of the flat candidates (total score, then last log-probability, then index), best first."""
    live = np.isfinite(total)
    k = min(k, int(live.sum()))
    if k == 0:
        return []
    first = np.argpartition(-np.where(live, total, -np.inf), k - 1)[:k]
    candidates = np.flatnonzero(live & (total >= total[first].min()))  # ties at the boundary included
    order = np.lexsort((candidates, -logp[candidates], -total[candidates]))
    return candidates[order[:k]].tolist()


def beam_search(model, source, source_lengths, beam=4, max_len=None, length_normalization=0.0):
    """Beam search over a batch, all examples' hypotheses as ``beam * m`` rows of one decoder batch.

    The search and its guarantees (``beam=1`` is :func:`greedy`; a wider beam never scores below greedy's path
    under the criterion it maximises) are in the module docstring.

    Parameters
    ----------
    model : Seq2Seq
    source : (m, T_x) integer array, padded with 0
    source_lengths : (m,) ints, ``1 <= L <= T_x``
    beam : int >= 1, default 4
    max_len : int >= 1 or None
        The most decoder steps, ``<eos>`` included; None: ``2 L + 10`` per example.
    length_normalization : float >= 0, default 0
        Rank finished hypotheses by ``log p / n ** length_normalization`` (``n`` tokens, ``<eos>`` included).

    Returns
    -------
    outputs : list of m lists of int
        The best hypothesis' ids before ``<eos>``.
    log_likelihoods : (m,) float64 NumPy array
        Their summed log-probabilities (``<eos>`` included where emitted; not normalised), as the search scored
        them: :meth:`~xseq.seq2seq.model.Seq2Seq.log_likelihood` of the outputs, up to rounding, for terminated
        outputs.
    attention : list of m host arrays ``(T_out, L)``
        As :func:`greedy` returns them.
    """
    if isinstance(beam, bool) or not isinstance(beam, numbers.Integral) or beam < 1:
        raise ValueError(f"beam must be a positive integer; got {beam!r}")
    alpha = length_normalization
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha < float("inf"):
        raise ValueError(f"length_normalization must be a finite number >= 0; got {alpha!r}")
    source, lengths = source_batch(source, source_lengths, len(model.source_vocab))
    limits = _limits(max_len, lengths)
    m, k = source.shape[0], int(beam)
    V1 = len(model.target_vocab) - 1
    steps = _Steps(model, source, lengths, k)
    scores = np.full((m, k), -np.inf)
    scores[:, 0] = 0.0  # one hypothesis to start with: the empty output
    tokens = [[[] for _ in range(k)] for _ in range(m)]
    attention = [[[] for _ in range(k)] for _ in range(m)]
    greedy_slot = np.zeros(m, dtype=np.int64)  # the slot of the greedy hypothesis; -1 once it has finished
    finished = [[] for _ in range(m)]  # (score, tokens, attention rows, n)
    active = np.ones(m, dtype=bool)
    previous = np.full(m * k, EOS_ID, dtype=np.int64)
    step = 0
    while active.any():
        logp, alphas = steps.step(previous)
        logp = logp.reshape(m, k, V1)
        parents = np.arange(m * k).reshape(m, k)
        previous = previous.reshape(m, k).copy()
        step += 1
        for i in np.flatnonzero(active):
            total = (scores[i][:, None] + logp[i]).reshape(-1)
            flat_logp = logp[i].reshape(-1)
            chosen = _best(total, flat_logp, k)
            g = greedy_slot[i]
            greedy_pick = g * V1 + int(np.argmax(logp[i, g])) if g >= 0 else None
            if greedy_pick is not None and greedy_pick not in chosen:
                chosen[-1:] = [greedy_pick]
            last = step == limits[i]
            new_scores = np.full(k, -np.inf)
            new_tokens, new_attention = [[] for _ in range(k)], [[] for _ in range(k)]
            slot, greedy_slot[i] = 0, -1
            for pick in chosen:
                parent, token = divmod(pick, V1)
                token += 1
                rows = attention[i][parent] + [alphas[i * k + parent, :lengths[i]]]
                if token == EOS_ID:
                    finished[i].append((total[pick], tokens[i][parent], rows, len(rows)))
                elif last:
                    finished[i].append((total[pick], tokens[i][parent] + [token], rows, len(rows)))
                else:
                    new_scores[slot] = total[pick]
                    new_tokens[slot], new_attention[slot] = tokens[i][parent] + [token], rows
                    parents[i, slot], previous[i, slot] = i * k + parent, token
                    if pick == greedy_pick:
                        greedy_slot[i] = slot
                    slot += 1
            scores[i], tokens[i], attention[i] = new_scores, new_tokens, new_attention
            if slot == 0 or (alpha == 0 and finished[i] and max(f[0] for f in finished[i]) >= new_scores.max()):
                active[i] = False
        previous = previous.reshape(-1)
        if active.any():
            steps.reorder(parents.reshape(-1))
    outputs, best_scores, best_attention = [], np.zeros(m), []
    for i in range(m):
        criteria = [score / n ** alpha for score, _, _, n in finished[i]]
        score, ids, rows, _ = finished[i][int(np.argmax(criteria))]  # the first of equal ones
        outputs.append(list(ids))
        best_scores[i] = score
        best_attention.append(np.stack(rows))
    return outputs, best_scores, best_attention


def _encoded(model, texts):
    """The source ids of ``texts`` (checked: a list of str, each with a token), in padded batches of
    :data:`TRANSLATE_BATCH`: ``(source, source_lengths)`` pairs."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str; got {type(texts).__name__}" +
                        (" (put one text in a list)" if isinstance(texts, str) else ""))
    encoded = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str; got {type(text).__name__}")
        ids = model.source_vocab.encode(text)
        if not ids:
            raise ValueError(f"texts[{i}] = {text!r} has no tokens; every text needs at least one")
        encoded.append(ids)
    batches = []
    for start in range(0, len(encoded), TRANSLATE_BATCH):
        chunk = encoded[start:start + TRANSLATE_BATCH]
        lengths = np.array([len(ids) for ids in chunk], dtype=np.int64)
        source = np.zeros((len(chunk), int(lengths.max())), dtype=np.int64)
        for row, ids in enumerate(chunk):
            source[row, :len(ids)] = ids
        batches.append((source, lengths))
    return batches


def translate(model, texts, beam=1, max_len=None):
    """Translate texts: tokenize with the source vocabulary (unknown tokens as ``<unk>``), decode, detokenize.

    Parameters
    ----------
    model : Seq2Seq
    texts : list of str
        Each with at least one token.
    beam : int >= 1, default 1
        1: :func:`greedy`; more: :func:`beam_search` (without length normalisation).
    max_len : int >= 1 or None
        As for :func:`greedy`.

    Returns
    -------
    translations : list of str
        Decoded with the target vocabulary (:meth:`xseq.Vocabulary.decode`).
    attention : list of host arrays ``(T_out, L)``
        Per text, over its ``L`` source tokens (:func:`greedy`).
    """
    if isinstance(beam, bool) or not isinstance(beam, numbers.Integral) or beam < 1:
        raise ValueError(f"beam must be a positive integer; got {beam!r}")
    translations, attention = [], []
    for source, lengths in _encoded(model, texts):
        if beam == 1:
            outputs, weights = greedy(model, source, lengths, max_len)
        else:
            outputs, _, weights = beam_search(model, source, lengths, beam=beam, max_len=max_len)
        translations.extend(model.target_vocab.decode(ids) for ids in outputs)
        attention.extend(weights)
    return translations, attention


def sample(model, texts, *, temperature=1.0, top_k=None, max_len=None, seed=0):
    """Draw a translation of each text from the model's distribution, one token at a time.

    Each step draws the next token from ``softmax(log p / temperature)`` over the ``top_k`` likeliest tokens
    (all with None), never ``<unk>`` (nor ``<pad>``, which the model does not score), until ``<eos>`` or
    ``max_len`` steps. A temperature near 0 is greedy decoding (among the tokens other than ``<unk>``).

    Parameters
    ----------
    model : Seq2Seq
    texts : list of str
        Each with at least one token (unknown ones read as ``<unk>``).
    temperature : float > 0, default 1
    top_k : int >= 1 or None
    max_len : int >= 1 or None
        As for :func:`greedy`.
    seed : int
        Seeds the NumPy generator of the draws: the same seed gives the same samples.

    Returns
    -------
    list of str
        One sample per text, decoded with the target vocabulary.
    """
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer; got {type(seed).__name__} {seed!r}")
    rng = np.random.default_rng(seed)
    samples = []
    for source, lengths in _encoded(model, texts):
        limits = _limits(max_len, lengths)
        m = source.shape[0]
        steps = _Steps(model, source, lengths, 1)
        outputs = [[] for _ in range(m)]
        taken = np.zeros(m, dtype=np.int64)
        done = np.zeros(m, dtype=bool)
        previous = np.full(m, EOS_ID, dtype=np.int64)
        while not done.all():
            logp, _ = steps.step(previous)
            z = logp / float(temperature)
            z[:, UNK_ID - 1] = -np.inf  # column v - 1 scores id v
            if top_k is not None and top_k < z.shape[1]:
                kth = np.partition(z, -top_k, axis=1)[:, [-top_k]]
                z = np.where(z >= kth, z, -np.inf)
            p = np.exp(z - z.max(axis=1, keepdims=True))
            cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
            draws = rng.random(m)
            chosen = np.minimum((cumulative < draws[:, None]).sum(axis=1), z.shape[1] - 1)
            for i in np.flatnonzero(~done):
                token = int(chosen[i]) + 1
                taken[i] += 1
                if token == EOS_ID:
                    done[i] = True
                else:
                    outputs[i].append(token)
                    done[i] = taken[i] == limits[i]
            previous = chosen + 1
        samples.extend(model.target_vocab.decode(ids) for ids in outputs)
    return samples
