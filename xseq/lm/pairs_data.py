"""The *pairs* plan's data (:class:`PairData`): source and target sequences, for a sequence-to-sequence model.

One example is a pair ``(source, target)``: a line ``source<TAB>target`` of a
file (:func:`read_pairs`), or a date written for people and its ISO form from
the built-in generator (:func:`builtin_pairs`, the course's "Neural Machine
Translation with Attention" data). The recipe is
:class:`~xseq.lm.recipe.Seq2SeqConfig`:

* the source and target vocabularies are every character (or word, ``level``) of the training pairs' sources and
  targets;
* a validation split of ``val_fraction`` of the pairs is held out, chosen by
  ``numpy.random.default_rng([seed, 1])``; for the built-in dates the held-out pairs are dates that no training
  pair names, in any format;
* every epoch visits the training pairs once in a shuffled order (:class:`~xseq.lm.lines_data.ShuffledBatches`,
  as the line plan), ``batch_size`` pairs a step, padded; the loss is the mean cross-entropy per target token
  (``<eos>`` included) with the previous target token fed to the decoder (teacher forcing);
* after each epoch the validation pairs' cross-entropy is recorded; :func:`exact_match` decodes them (greedy, or a
  beam) and counts the outputs equal to their targets.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..distributed import SingleProcess
from ..seq2seq.dates import date_split, pairs_for_dates
from ..seq2seq.model import Seq2Seq
from .corpus import CorpusError, read_corpus
from .lines_data import ShuffledBatches, share, split_corpus
from .recipe import EVALUATION_BATCH, Seq2SeqConfig
from .saved_state import check_same_corpus, saved_recipe
from .vocab import Vocabulary

BUILTIN_DATES = "built-in dates"


def read_pairs(path):
    """The ``(source, target)`` pairs of a file, one a line: ``source<TAB>target``.

    Blank lines are skipped. A line without exactly one TAB, or with an empty
    source or target, is a :class:`~xseq.lm.corpus.CorpusError` naming the
    path and the line's number; so are the corpus errors of
    :func:`~xseq.lm.corpus.read_corpus` (not a regular file, invalid UTF-8).
    """
    lines = read_corpus(path, keep_blank=True)
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise CorpusError(f"pairs file {str(path)!r}, line {number}: expected source<TAB>target, one TAB; "
                              f"the line has {len(fields) - 1}")
        if not fields[0].strip() or not fields[1].strip():
            raise CorpusError(f"pairs file {str(path)!r}, line {number}: the "
                              f"{'source' if not fields[0].strip() else 'target'} is empty")
        pairs.append((fields[0], fields[1]))
    if len(pairs) < 2:
        raise CorpusError(f"pairs file {str(path)!r} holds {len(pairs)} pair; training needs at least 2 (one is "
                          "held out for validation)")
    return pairs


def builtin_pairs(n, val_fraction, seed):
    """``(training pairs, held-out pairs)`` of the built-in date generator: ``n`` distinct dates, the held-out ones
    (``round(val_fraction * n)``, at least one) named by no training pair."""
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    train, held_out = date_split(n - n_val, n_val, seed=seed)
    return pairs_for_dates(train, seed=seed), pairs_for_dates(held_out, seed=seed + 1)


def pairs_fingerprint(pairs):
    """SHA-256 (hex) of the pairs as the lines of a file: identifies a corpus in a checkpoint."""
    return hashlib.sha256("\n".join(f"{s}\t{t}" for s, t in pairs).encode("utf-8")).hexdigest()


def _tokenizer(level):
    return "whitespace" if level == "word" else None


class PairData(ShuffledBatches):
    """The pairs plan's data, what :class:`~xseq.lm.trainer.Trainer` asks of a plan (see
    :class:`~xseq.lm.lines_data.LineData`).

    Parameters
    ----------
    pairs : list of (str, str)
        The corpus (:func:`read_pairs`); or None for the built-in dates (``config.pairs`` of them).
    config : Seq2SeqConfig
    source : str, optional
        Where the pairs came from, recorded in the checkpoint.

    Attributes
    ----------
    train_pairs, val_pairs : list of (str, str)
        The text of the training and validation pairs.
    train_ids, val_ids : list of (list of int, list of int)
        The same as ids of the model's vocabularies (after :meth:`attach`).
    """

    KIND = "seq2seq"
    MODEL = Seq2Seq
    token_unit, step_unit, tokens_key = "tokens", "steps", "tokens_seen"  # the progress bar's, messages', checkpoint's

    def __init__(self, pairs, config=None, *, source=None):
        self.config = config = self._recipe(config, Seq2SeqConfig, "xseq.lm.recipe.Seq2SeqConfig")
        if pairs is None:
            self.train_pairs, self.val_pairs = builtin_pairs(config.pairs, config.val_fraction, config.seed)
            pairs, source = self.train_pairs + self.val_pairs, BUILTIN_DATES if source is None else source
        else:
            pairs = [tuple(p) for p in pairs]
            self.train_pairs, self.val_pairs = split_corpus(pairs, config.val_fraction, config.seed)
        self.source = source
        self.corpus = {"source": source, "sha256": pairs_fingerprint(pairs), "sequences": len(pairs)}
        self._start_shuffling()

    def new_model(self, backend):
        """A new model of the recipe over the training pairs' vocabularies."""
        c = self.config
        tokenizer = _tokenizer(c.level)
        sources = Vocabulary.from_text([s for s, _ in self.train_pairs], level=c.level, tokenizer=tokenizer)
        targets = Vocabulary.from_text([t for _, t in self.train_pairs], level=c.level, tokenizer=tokenizer)
        return Seq2Seq(sources, targets, cell=c.cell, hidden_size=c.hidden_size, num_layers=c.num_layers,
                       decoder_size=c.decoder_size, embed_size=c.embed_size, attention_size=c.attention_size,
                       feed_previous=c.feed_previous, dropout=c.dropout, backend=backend, dtype=c.dtype,
                       seed=c.seed)

    def attach(self, model):
        """Encode the pairs with ``model``'s vocabularies (unknown tokens as ``<unk>``)."""
        def encode(pairs):
            return [(model.source_vocab.encode(s), model.target_vocab.encode(t)) for s, t in pairs]

        self.train_ids, self.val_ids = encode(self.train_pairs), encode(self.val_pairs)

    def fingerprints(self):
        """What every rank must hold alike, by name."""
        return {"training corpora": self.corpus["sha256"]}

    def tokens_of(self, pair):
        """The target's tokens and its ``<eos>``."""
        return len(pair[1]) + 1

    def loss_and_backward(self, model, batch, start, stop, weight):
        """``(loss, its share of the step's loss)`` of pairs ``start:stop``: the mean cross-entropy per target
        token (the gradients, in the model, are of it), and that times ``weight``."""
        loss = model.loss_and_backward(*pair_batch(batch[start:stop]), training=True)
        return loss, loss * weight

    def validation_loss(self, model, comm):
        """Mean cross-entropy per target token of the validation pairs (shared among the ranks)."""
        return evaluate_pairs(model, self.val_ids, comm=comm)

    @classmethod
    def resumed(cls, where, state, model, *, epochs=None, steps=None, pairs, source=None):
        """The data of a saved pairs run: its recipe (every field present, agreeing with ``model``) with a new
        length if given, on ``pairs`` (None: the built-in dates), which must be the saved run's corpus."""
        built = model.config()
        agreed = {field: built[field] for field in ("cell", "hidden_size", "num_layers", "decoder_size", "embed_size",
                                                    "attention_size", "feed_previous", "dropout")}
        config = saved_recipe(where, state["config"], Seq2SeqConfig, {**agreed, "dtype": model.dtype_name}, epochs,
                              steps)
        data = cls(pairs, config, source=source)
        recorded = check_same_corpus(where, state["corpus"], data.corpus["sha256"], data.corpus["sequences"],
                                     source if pairs is not None else BUILTIN_DATES, "pairs")
        data.source = data.corpus["source"] = source if source is not None else recorded["source"]
        return data


def pair_batch(pairs):
    """``(source, source_lengths, target, target_lengths)`` of a batch of id pairs: ``(m, T)`` int64 NumPy arrays
    padded with id 0, and ``(m,)`` lengths (targets without their ``<eos>``, which the model adds)."""
    if len(pairs) == 0:
        raise ValueError("pairs must be a non-empty list of (source ids, target ids)")
    arrays = []
    for side in (0, 1):
        rows = [pair[side] for pair in pairs]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        padded = np.zeros((len(rows), max(1, int(lengths.max()))), dtype=np.int64)
        for i, r in enumerate(rows):
            padded[i, :len(r)] = r
        arrays += [padded, lengths]
    return tuple(arrays)


def evaluate_pairs(model, pairs, batch_size=EVALUATION_BATCH, comm=None):
    """Mean cross-entropy per target token (``<eos>`` included) of ``model`` on id ``pairs``; across processes every
    rank scores every ``size``-th batch and the sums are reduced."""
    if not pairs:
        raise ValueError("pairs is empty; nothing to evaluate")
    comm = SingleProcess() if comm is None else comm
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))[comm.rank::comm.size]
    total = count = 0
    for start in range(0, len(order), batch_size):
        batch_total, batch_count = model.nll(*pair_batch([pairs[i] for i in order[start:start + batch_size]]))
        total += batch_total
        count += batch_count
    if comm.size > 1:
        total, count = comm.allreduce_sum(np.array([total, count], dtype=np.float64))
    return float(total / count)


def exact_match(model, pairs, *, beam=1, batch_size=EVALUATION_BATCH, comm=None):
    """The share (0 to 1) of ``pairs`` (text) whose decoded output equals its target exactly: greedy decoding for
    ``beam`` 1, beam search otherwise; across processes every rank decodes a share of the pairs."""
    comm = SingleProcess() if comm is None else comm
    start, stop = share(len(pairs), comm)
    right = 0
    for first in range(start, stop, batch_size):
        chunk = pairs[first:min(first + batch_size, stop)]
        outputs, _ = model.translate([s for s, _ in chunk], beam=beam)
        right += sum(output == target for output, (_, target) in zip(outputs, chunk))
    if comm.size > 1:
        right = int(comm.allreduce_sum(np.array([right], dtype=np.float64))[0])
    return right / len(pairs)
