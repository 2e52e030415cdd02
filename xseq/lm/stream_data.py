"""How a stream model's run reads its data: the stream of ids, its columns and windows, the validation split, and
scoring a stream with the state carried (see :mod:`xseq.lm.stream_train` for the recipe they serve).
"""

from __future__ import annotations

import numpy as np

from ..distributed import SingleProcess
from .lines_data import share
from .stream_text import StreamCorpus, held_out_lines
from .vocab import Vocabulary
from .vocab import _check_int as check_int

EVALUATION_WINDOW = 512  # steps per forward pass when a whole file is scored as one stream


def build_vocabulary(lines, config):
    """The vocabulary of the training lines under ``config`` (level, ``vocab_size``, ``min_count``)."""
    tokenizer = "whitespace" if config.level == "word" else None
    return Vocabulary.from_text(lines, level=config.level, max_size=config.vocab_size,
                                min_count=config.min_count, tokenizer=tokenizer)


def stream_ids(vocab, lines):
    """Every line's ids followed by ``<eos>``, one stream: a ``(N,)`` int64 NumPy array.

    Unknown tokens are ``<unk>``; blank lines give a lone ``<eos>``.
    """
    ids = []
    for line in lines:
        ids.extend(vocab.encode(line, add_eos=True))
    return np.asarray(ids, dtype=np.int64)


def batchify(ids, batch_size):
    """Cut a stream into ``batch_size`` contiguous columns, as PyTorch's ``word_language_model`` does.

    Parameters
    ----------
    ids : (N,) integer array
    batch_size : int
        ``m``.

    Returns
    -------
    (m, n) array, ``n = N // m``
        Row ``i`` is ``ids[i*n:(i+1)*n]``; the last ``N - m*n`` ids are dropped.

    Raises
    ------
    ValueError
        ``n < 2``: a column needs an input and a target.
    """
    check_int("batch_size", batch_size, 1)
    ids = np.asarray(ids)
    n = len(ids) // batch_size
    if n < 2:
        raise ValueError(f"a stream of {len(ids)} tokens is too short for {batch_size} columns: each needs at least "
                         f"2 tokens (an input and its target), so at least {2 * batch_size} tokens")
    return ids[:n * batch_size].reshape(batch_size, n)


def validation_batch(tokens, batch_size):
    """Columns of a validation stream of ``tokens`` tokens: ``batch_size``, or fewer for a short stream."""
    return max(1, min(batch_size, tokens // 2))


def num_windows(data, bptt):
    """Windows of ``bptt`` steps in the columns ``data`` (m, n): ``ceil((n - 1) / bptt)``."""
    return -(-(data.shape[1] - 1) // bptt)


def window(data, k, bptt):
    """Window ``k`` of the columns ``data`` (m, n): ``(inputs, targets)``, each ``(m, T)`` with ``T <= bptt``.

    Inputs are steps ``[k*bptt, min((k+1)*bptt, n-1))``, targets the same
    steps shifted by one; the last window of ``data`` may be shorter.
    """
    start = k * bptt
    stop = min(start + bptt, data.shape[1] - 1)
    if not 0 <= start < stop:
        raise IndexError(f"window {k} is out of range: the columns have {num_windows(data, bptt)} windows of {bptt}")
    return data[:, start:stop], data[:, start + 1:stop + 1]


def evaluate_stream(model, data, bptt=EVALUATION_WINDOW, comm=None):
    """Mean cross-entropy per predicted token of ``model`` on the columns ``data``, the state carried.

    Parameters
    ----------
    model : StreamLM
    data : (m, n) integer array
        From :func:`batchify` (one column, ``ids[None, :]``, scores a whole stream).
    bptt : int
        Steps per forward pass. With the state carried, the result does not
        depend on it (up to rounding); it bounds the memory of a pass.
    comm : Communicator, optional
        Every rank of ``comm`` passes the same ``data`` and scores its
        :func:`~xseq.lm.train.share` of the columns; the sums are reduced.

    Returns
    -------
    float
        Nats per token over the ``m * (n - 1)`` targets (every token but the
        first of each column, ``<eos>`` included); ``exp`` of it is the perplexity.
    """
    check_int("bptt", bptt, 1)
    comm = SingleProcess() if comm is None else comm
    start, stop = share(data.shape[0], comm)
    mine = data[start:stop]
    state, total = None, 0.0
    for k in range(num_windows(data, bptt) if len(mine) else 0):
        inputs, targets = window(mine, k, bptt)
        nll, state = model.nll(inputs, targets, state)
        total += nll
    if comm.size > 1:
        total = float(comm.allreduce_sum(np.array([total]))[0])
    return total / (data.shape[0] * (data.shape[1] - 1))


def stream_corpus(lines, val_lines, config):
    """The :class:`~xseq.lm.stream_text.StreamCorpus` of a run: ``lines`` itself when it is one (read from files,
    with ``val_lines`` None), else read from the lists of lines; its level and split must be the recipe's."""
    if not isinstance(lines, StreamCorpus):
        return StreamCorpus.from_lines(lines, val_lines, level=config.level, val_fraction=config.val_fraction)
    if val_lines is not None:
        raise ValueError("val_lines must be None when lines is a StreamCorpus (it holds the validation text)")
    if lines.level != config.level or lines.val_fraction not in (None, config.val_fraction):
        raise ValueError(f"the corpus was read at level {lines.level!r} with val_fraction {lines.val_fraction}; "
                         f"the recipe has level {config.level!r} and val_fraction {config.val_fraction}")
    return lines


def split_lines(lines, val_lines, val_fraction):
    """``(training lines, validation lines)``: ``val_lines`` when given, else the last ``val_fraction`` of ``lines``."""
    if val_lines is not None:
        return list(lines), list(val_lines)
    n_val = held_out_lines(len(lines), val_fraction)
    return list(lines[:len(lines) - n_val]), list(lines[len(lines) - n_val:])
