"""The *line* plan's data (:class:`LineData`): one line a sequence, cut into pieces of at most ``max_seq_len``,
a random validation split, shuffled padded batches, the fingerprint a checkpoint records, the share of rows each
rank takes, and evaluation in batches.

The recipe (:class:`~xseq.lm.recipe.TrainConfig`)
-------------------------------------------------
* One line of the corpus is one sequence; the vocabulary is every character of the corpus.
  A line longer than ``max_seq_len`` tokens (default 256) is split into
  consecutive pieces of ``max_seq_len`` tokens (the last one shorter), each
  learned as a sequence of its own: it starts from the zero state and ends with
  ``<eos>``. So memory is bounded by ``batch_size`` and ``max_seq_len``, not
  by the longest line; the price is that no context crosses a cut.
* A validation split of ``val_fraction`` of the sequences (at least one) is
  held out, chosen by ``numpy.random.default_rng([seed, 1])``; the pieces of a
  split line count as sequences here too.
* Each epoch visits the training sequences once, in an order drawn by a
  second stream, ``numpy.random.default_rng([seed, 2])``, in batches of
  ``batch_size`` padded to the batch's longest sequence (the last batch of an
  epoch may be smaller).
* A step is the mean cross-entropy per character of the batch, its gradients,
  clipping (by global norm, or by value like the course's ``clip``) and one
  optimiser step (Adam or SGD with momentum) -- the trainer's
  (:class:`~xseq.lm.trainer.Trainer`).
* After each epoch, and at the end of a run that stops mid-epoch, the mean
  cross-entropy per character of the validation split is recorded.

Across processes each rank takes a contiguous share of every batch's
sequences (:func:`share`); its gradients are weighted by its share of the
batch's tokens. A checkpoint adds the shuffling stream's state to the
trainer's (mid-epoch, the state the epoch's order was drawn from).
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..distributed import SingleProcess
from .batches import line_batch
from .model import CharLM
from .recipe import DEFAULT_MAX_SEQ_LEN, EVALUATION_BATCH, TrainConfig
from .saved_state import check_rng_state, check_same_corpus, state_error
from .vocab import Vocabulary
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
    model : LanguageModel
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
        inputs, targets, mask = line_batch([sequences[i] for i in order[start:start + batch_size]], model.vocab_size)
        batch_total, _ = model.nll(inputs, targets, mask=mask)
        total += batch_total
        count += int(mask.sum())
    if comm.size > 1:
        total, count = comm.allreduce_sum(np.array([total, count], dtype=np.float64))
    return float(total / count)



# Why: the recipe fields every line checkpoint of xseq 0.1.0 records: a missing one would silently take its default
# (another seed, split or learning rate). A field added since then takes its default.
_RECIPE_FIELDS = ("cell", "hidden_size", "num_layers", "dropout", "batch_size", "optimizer", "lr", "momentum",
                  "clip", "clip_mode", "epochs", "steps", "val_fraction", "seed", "dtype")


class ShuffledBatches:
    """Batches of a list of examples (``self.train_ids``) in an order drawn anew every epoch: what the line plan
    and the pair plan share.

    A subclass sets ``config`` (with ``seed`` and ``batch_size``) and
    ``train_ids`` and says how many tokens an example predicts
    (:meth:`tokens_of`). A checkpoint keeps the shuffling stream's state: at
    an epoch's start, the stream itself; mid-epoch, its state when the
    epoch's order was drawn, so a resume draws the same order again.
    """

    @staticmethod
    def _recipe(config, config_class, name):
        """``config``, or the default recipe for None; TypeError naming the expected class otherwise."""
        config = config_class() if config is None else config
        if not isinstance(config, config_class):
            raise TypeError(f"config must be an {name}; got {type(config).__name__}")
        return config

    def _start_shuffling(self):
        self.shuffle_rng = np.random.default_rng([self.config.seed, 2])
        self._order = self._epoch_start_rng_state = None

    def tokens_of(self, example):
        """Tokens an example predicts."""
        raise NotImplementedError

    @property
    def steps_per_epoch(self):
        """Batches in one pass over the training examples (the last one may be smaller)."""
        return -(-len(self.train_ids) // self.config.batch_size)

    def batch(self, k):
        """The examples of the epoch's ``k``-th batch; the epoch's order is drawn at its first batch."""
        if self._order is None:
            self._epoch_start_rng_state = self.shuffle_rng.bit_generator.state
            self._order = self.shuffle_rng.permutation(len(self.train_ids))
        B = self.config.batch_size
        return [self.train_ids[i] for i in self._order[k * B:(k + 1) * B]]

    def tokens(self, batch):
        """Tokens a batch predicts."""
        return sum(self.tokens_of(example) for example in batch)

    def share(self, batch, comm):
        """``(start, stop, weight)``: this rank's examples of the batch and its share of the batch's tokens."""
        start, stop = share(len(batch), comm)
        weight = self.tokens(batch[start:stop]) / self.tokens(batch) if comm.size > 1 else 1.0
        return start, stop, weight

    def sparse_rows(self, batch, model):
        """No gradient is sent as rows."""
        return None

    def step_taken(self):
        """Nothing is carried from one batch to the next."""

    def epoch_done(self):
        """The next epoch draws a new order."""
        self._order = None

    def checkpoint_extras(self, model, comm, batch_in_epoch):
        """The shuffling stream: mid-epoch, its state when the epoch's order was drawn, so a resume draws it
        again."""
        in_epoch = self._order is not None
        state = self._epoch_start_rng_state if in_epoch else self.shuffle_rng.bit_generator.state
        return {}, {"shuffle_rng": state}

    def restore_position(self, where, arrays, state, batch_in_epoch, model, comm):
        """Where the saved run stood in its epoch: the shuffling stream, and mid-epoch the epoch's order."""
        self.shuffle_rng.bit_generator.state = check_rng_state(where, "shuffle_rng", state["shuffle_rng"],
                                                                self.shuffle_rng)
        if batch_in_epoch:
            self._epoch_start_rng_state = self.shuffle_rng.bit_generator.state
            self._order = self.shuffle_rng.permutation(len(self.train_ids))

    def format_record(self, record, lr):
        """One line of the log for a validation record."""
        train = "" if record["train_loss"] is None else f"  train {record['train_loss']:.4f}"
        return (f"epoch {record['epoch']:g}  step {record['step']}{train}  val {record['val_loss']:.4f}"
                f"  ({record['seconds']:.1f} s)")

    def tokens_after(self, epoch, batch_in_epoch):
        """Predicted tokens of ``epoch`` whole epochs and the current epoch's first ``batch_in_epoch`` batches."""
        per_epoch = self.tokens(self.train_ids)
        done = self._order[:batch_in_epoch * self.config.batch_size] if batch_in_epoch else ()
        return epoch * per_epoch + sum(self.tokens_of(self.train_ids[i]) for i in done)


class LineData(ShuffledBatches):
    """The *line* plan's data: one line a sequence, padded batches in a shuffled order, a random validation split.

    This is what :class:`~xseq.lm.trainer.Trainer` asks of a plan (a third
    plan implements the same members):

    * ``KIND`` (the checkpoint's ``trainer["kind"]``), ``MODEL`` (the model
      class, whose ``from_checkpoint`` a resume calls), ``token_unit``,
      ``step_unit``, ``tokens_key`` (names for the progress bar, messages and
      the checkpoint's token counter);
    * ``config``, ``source``, ``corpus`` (the record a checkpoint keeps) and
      :meth:`fingerprints` (what every rank must hold alike);
    * :meth:`new_model` and :meth:`attach` (the data as the model's ids);
    * per step: ``steps_per_epoch``, ``batch``, ``tokens``, ``share``,
      :meth:`loss_and_backward`, ``sparse_rows``, ``step_taken``,
      ``epoch_done`` (the shuffled batches' here: :class:`ShuffledBatches`);
    * :meth:`validation_loss` and :meth:`format_record`;
    * checkpoints: ``checkpoint_extras``, ``restore_position``,
      ``tokens_after``, and the class method :meth:`resumed`.

    Parameters
    ----------
    lines : list of str
        The corpus, one sequence per entry (e.g. :func:`xseq.read_corpus`).
    config : TrainConfig
    source : str, optional
        Where the corpus came from (a path, or "built-in"), recorded in the checkpoint.

    Attributes
    ----------
    train_ids, val_ids : list of lists of int
        The encoded training and validation sequences (after :meth:`attach`),
        long lines already split into pieces of at most ``config.max_seq_len`` tokens.
    shuffle_rng : numpy.random.Generator
        Draws every epoch's order.
    """

    KIND = "line"
    MODEL = CharLM
    token_unit = "chars"
    step_unit = "steps"
    tokens_key = "chars_seen"

    def __init__(self, lines, config=None, *, source=None):
        self.config = self._recipe(config, TrainConfig, "xseq.TrainConfig")
        self.lines, self.source = list(lines), source
        self.corpus = {"source": source, "sha256": corpus_fingerprint(self.lines), "sequences": len(self.lines)}
        self._start_shuffling()

    def new_model(self, backend):
        """A new model of the recipe: the course's one-hot model over every character of the corpus."""
        c = self.config
        return CharLM(Vocabulary.from_text(self.lines), c.hidden_size, cell=c.cell, num_layers=c.num_layers,
                      dropout=c.dropout, backend=backend, dtype=c.dtype, seed=c.seed)

    def attach(self, model):
        """Encode the corpus with ``model``'s vocabulary, cut long lines, hold out the validation split."""
        sequences = split_sequences([model.vocab.encode(s) for s in self.lines], self.config.max_seq_len)
        self.train_ids, self.val_ids = split_corpus(sequences, self.config.val_fraction, self.config.seed)

    def fingerprints(self):
        """What every rank must hold alike, by name."""
        return {"training corpora": self.corpus["sha256"]}

    def tokens_of(self, sequence):
        """Every character and an ``<eos>``."""
        return len(sequence) + 1

    def loss_and_backward(self, model, batch, start, stop, weight):
        """``(loss, its share of the step's loss)`` of sequences ``start:stop``: the mean cross-entropy per token
        (the gradients, in the model, are of it), and that times ``weight``."""
        inputs, targets, mask = line_batch(batch[start:stop], model.vocab_size)
        loss, _ = model.loss_and_backward(inputs, targets, mask=mask, average="tokens", training=True)
        return loss, loss * weight

    def validation_loss(self, model, comm):
        """Mean cross-entropy per token on the validation split, cut as training cuts it."""
        return evaluate(model, self.val_ids, max_seq_len=self.config.max_seq_len, comm=comm)


    @classmethod
    def resumed(cls, where, state, model, *, epochs=None, steps=None, lines, source=None):
        """The data of a saved line run: its recipe (every field present, agreeing with ``model``) with a new
        length if given, on ``lines``, which must be the saved run's corpus."""
        config = state["config"]
        missing = [field for field in _RECIPE_FIELDS if not isinstance(config, dict) or field not in config]
        if missing:
            raise state_error(where, "config", config, f"the recipe with every field of format version 1; "
                               f"it lacks {missing}")
        config = dict(config)
        if epochs is not None or steps is not None:
            config.update(epochs=epochs, steps=steps)
        config = TrainConfig(**config)
        for field, value in (("cell", model.cell), ("hidden_size", model.hidden_size),
                             ("num_layers", model.num_layers), ("dropout", model.dropout),
                             ("dtype", model.dtype_name)):
            if getattr(config, field) != value:
                raise state_error(where, f"config[{field!r}]", getattr(config, field), f"the model's {value!r}")
        lines = list(lines)
        recorded = check_same_corpus(where, state["corpus"], corpus_fingerprint(lines), len(lines), source,
                                     "sequences")
        return cls(lines, config, source=source if source is not None else recorded["source"])
