"""How a line model's run cuts its corpus and scores it: the validation split, pieces of at most ``max_seq_len``,
the fingerprint a checkpoint records, the share of rows each rank takes, and evaluation in batches.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..distributed import SingleProcess
from .recipe import DEFAULT_MAX_SEQ_LEN, EVALUATION_BATCH
from .vocab import _check_int as check_int


def corpus_fingerprint(lines):
    """SHA-256 (hex) of the sequences joined by newlines: identifies a corpus in a checkpoint."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def split_corpus(lines, val_fraction, seed):
    """Hold out a validation split.

    Parameters
    ----------
    lines : list of str, or list of lists of int
        At least two sequences (lines, or encoded sequences).
    val_fraction : float in (0, 1)
    seed : int

    Returns
    -------
    train, validation : lists of the items of ``lines``
        ``round(val_fraction * N)`` validation sequences, at least 1 and at
        most ``N - 1``, chosen by ``numpy.random.default_rng([seed, 1])``; both
        lists keep the corpus order.
    """
    N = len(lines)
    if N < 2:
        raise ValueError(f"the corpus has {N} sequence; training needs at least 2 (one is held out for validation)")
    n_val = min(max(1, round(val_fraction * N)), N - 1)
    held_out = np.zeros(N, dtype=bool)
    held_out[np.random.default_rng([seed, 1]).permutation(N)[:n_val]] = True
    return [s for s, h in zip(lines, held_out) if not h], [s for s, h in zip(lines, held_out) if h]


def split_sequences(sequences, max_len):
    """Cut every sequence longer than ``max_len`` into consecutive pieces of ``max_len``.

    Parameters
    ----------
    sequences : list of lists of int
        Encoded sequences (without ``<eos>``).
    max_len : int >= 1

    Returns
    -------
    list of lists of int
        The sequences in order, each long one replaced by its pieces (the last
        may be shorter); ``[c1 .. c600]`` with ``max_len=256`` becomes
        ``[c1 .. c256], [c257 .. c512], [c513 .. c600]``. Every piece is then
        modelled as a sequence of its own (zero first input, ``<eos>`` target
        at its end).
    """
    check_int("max_len", max_len, 1)
    pieces = []
    for seq in sequences:
        if len(seq) <= max_len:
            pieces.append(seq)
        else:
            pieces.extend(seq[start:start + max_len] for start in range(0, len(seq), max_len))
    return pieces


def share(n, comm):
    """The ``[start, stop)`` of this rank's contiguous share of ``n`` items, in rank order.

    The first ``n % size`` ranks take one item more; a rank takes none when
    ``n < size`` (then the last ranks have none).

    Examples
    --------
    >>> from xseq.distributed import SingleProcess
    >>> share(5, SingleProcess())
    (0, 5)
    """
    base, extra = divmod(n, comm.size)
    start = comm.rank * base + min(comm.rank, extra)
    return start, start + base + (comm.rank < extra)


def evaluate(model, sequences, batch_size=EVALUATION_BATCH, max_seq_len=DEFAULT_MAX_SEQ_LEN, comm=None):
    """Mean cross-entropy per predicted token (``<eos>`` included) of ``model`` on ``sequences``.

    Parameters
    ----------
    model : CharLM
    sequences : list of lists of int
        Encoded sequences (without ``<eos>``).
    batch_size : int
        Sequences per forward pass; they are grouped by length to limit padding.
    max_seq_len : int
        Sequences longer than this are split first (:func:`split_sequences`),
        as training splits them, so a forward pass holds at most
        ``batch_size`` sequences of ``max_seq_len + 1`` steps.
    comm : Communicator, optional
        Every rank of ``comm`` passes the same ``sequences`` and scores every
        ``size``-th of them, by length; the sums are reduced over the ranks.

    Returns
    -------
    float
        Nats per token; ``exp`` of it is the perplexity (the same on every rank).
    """
    if not sequences:
        raise ValueError("sequences is empty; nothing to evaluate")
    comm = SingleProcess() if comm is None else comm
    sequences = split_sequences(sequences, max_seq_len)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))[comm.rank::comm.size]
    total = count = 0
    for start in range(0, len(order), batch_size):
        batch_total, batch_count = model.loss(*model.batch([sequences[i] for i in order[start:start + batch_size]]))
        total += batch_total
        count += batch_count
    if comm.size > 1:
        total, count = comm.allreduce_sum(np.array([total, count], dtype=np.float64))
    return float(total / count)
