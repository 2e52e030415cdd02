"""How a stream model's run reads its data: the stream of ids, its columns and windows, the validation split, and
scoring a stream with the state carried (see :mod:`xseq.lm.stream_train` for the recipe they serve).
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.arrays import asarray, to_numpy
from ..distributed import SingleProcess
from .checkpoint import CheckpointError
from .lines_data import share
from .recipe import LEVELS, StreamConfig
from .saved_state import check_corpus_record, check_counted, check_same_corpus, saved_recipe, state_error
from .stream_model import StreamLM
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


_STATE_KEYS = ("stream/h", "stream/c")


class StreamData:
    """The *stream* plan's data: one token stream in contiguous columns, windows of ``bptt`` steps, the state
    carried from one window to the next (see :mod:`xseq.lm.stream_train` for the recipe).

    It implements what :class:`~xseq.lm.trainer.Trainer` asks of a plan, as
    :class:`~xseq.lm.lines_data.LineData` documents.

    Parameters
    ----------
    text : StreamCorpus
        The training and validation text (:func:`stream_corpus`).
    config : StreamConfig
    source, val_source : str, optional
        Where the corpora came from, recorded in the checkpoint.

    Attributes
    ----------
    train_data, val_data : (m, n) int64 NumPy arrays
        The training and validation columns (:func:`batchify`), all of them on every rank (after :meth:`attach`).
    state : the carried state after the last window of the current epoch, or None at an epoch's start;
        across processes, of this rank's columns only.
    dropped : int
        Training tokens beyond the last whole row of the columns, left out.
    validation : dict
        The validation corpus's record: ``source``, ``sha256``, ``sequences`` (lines).
    """

    KIND = "stream"
    MODEL = StreamLM
    token_unit = "tokens"
    step_unit = "windows"
    tokens_key = "tokens_seen"

    def __init__(self, text, config, *, source=None, val_source=None):
        if not isinstance(config, StreamConfig):
            raise TypeError(f"config must be an xseq.StreamConfig; got {type(config).__name__}")
        self.text, self.config, self.source = text, config, source
        self.corpus = {"source": source, "sha256": text.corpus["sha256"], "sequences": text.corpus["sequences"]}
        self.validation = {"source": val_source, "sha256": text.validation.sha256, "sequences": text.validation.lines}
        self.state = self._next_state = None

    def new_model(self, backend):
        """A new embedding model of the recipe over the training text's vocabulary."""
        c = self.config
        return StreamLM(self.text.vocabulary(c.vocab_size, c.min_count), c.hidden_size, cell=c.cell,
                        num_layers=c.num_layers, embed_size=c.embed_size, tie_weights=c.tie_weights,
                        dropout=c.dropout, init_scale=c.init_scale, backend=backend, dtype=c.dtype, seed=c.seed)

    def attach(self, model):
        """The streams as ``model``'s ids, cut into the training and validation columns."""
        train_ids, val_ids = self.text.ids(model.vocab)
        try:
            self.train_data = batchify(train_ids, self.config.batch_size)
        except ValueError as exc:
            raise ValueError(f"the training stream is too short: {exc}; lower batch_size") from None
        self.dropped = len(train_ids) - self.train_data.size
        if len(val_ids) < 2:
            raise ValueError(f"the validation stream has {len(val_ids)} token; it needs at least 2 "
                             "(an input and its target)")
        self.val_data = batchify(val_ids, validation_batch(len(val_ids), self.config.batch_size))

    def fingerprints(self):
        """What every rank must hold alike, by name."""
        return {"training corpora": self.corpus["sha256"], "validation corpora": self.validation["sha256"]}

    # ------------------------------------------------------------------ steps

    @property
    def steps_per_epoch(self):
        """Windows in one pass over the training columns (the last one may be shorter)."""
        return num_windows(self.train_data, self.config.bptt)

    def batch(self, k):
        """``(inputs, targets)`` of the epoch's ``k``-th window, every column."""
        return window(self.train_data, k, self.config.bptt)

    def tokens(self, batch):
        """Tokens a window predicts."""
        return batch[1].size

    def share(self, batch, comm):
        """``(start, stop, weight)``: this rank's columns and its share of them (every column has as many steps)."""
        inputs = batch[0]
        start, stop = share(inputs.shape[0], comm)
        return start, stop, (stop - start) / inputs.shape[0]

    def loss_and_backward(self, model, batch, start, stop, weight):
        """``(loss, its share of the step's loss)`` of columns ``start:stop`` from the carried state: the summed
        cross-entropy over the window's tokens, every column's (the gradients are of the sum averaged over this
        rank's columns); the state after the window waits for :meth:`step_taken`."""
        inputs, targets = batch
        nll, self._next_state = model.loss_and_backward(inputs[start:stop], targets[start:stop], self.state,
                                                        training=True)
        loss = nll / targets.size
        return loss, loss

    # Why: see docs/decisions/008-embedding-gradient-rows.md
    def sparse_rows(self, batch, model):
        """The embedding rows whose gradient may be non-zero on some rank: the window's ids (every column's).

        A tied embedding is also the output matrix, whose gradient is dense:
        then the whole matrix is reduced.
        """
        if model.tie_weights:
            return None
        return {"embedding": asarray(np.unique(to_numpy(batch[0])).astype(np.int64), backend=model.backend_name)}

    def step_taken(self):
        """The carried state moves on only once the step is taken."""
        self.state, self._next_state = self._next_state, None

    def epoch_done(self):
        """Every epoch starts from the zero state."""
        self.state = None

    def validation_loss(self, model, comm):
        """Nats per token of the model on the validation columns, from a zero state."""
        return evaluate_stream(model, self.val_data, self.config.bptt, comm=comm)

    def format_record(self, record, lr):
        """One line of the log for a validation record, with perplexities and the learning rate."""
        train = record["train_loss"]
        train = "" if train is None else f"  train {train:.4f} (ppl {_perplexity(train):.2f})"
        return (f"epoch {record['epoch']:g}  step {record['step']}  lr {lr:g}{train}  "
                f"val {record['val_loss']:.4f} (ppl {_perplexity(record['val_loss']):.2f})  "
                f"({record['seconds']:.1f} s)")

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_extras(self, model, comm, batch_in_epoch):
        """The validation corpus's record, and mid-epoch the carried state of every column."""
        arrays = {}
        if batch_in_epoch:
            arrays.update(zip(_STATE_KEYS, self._every_columns_state(model, comm)))
        return arrays, {"validation": self.validation}

    def _every_columns_state(self, model, comm):
        """The carried state of every column, ``(h,)`` or ``(h, c)`` of ``(num_layers, n_a, batch_size)`` host
        arrays: this rank's columns, and across processes the others' (each rank adds its own columns to zeros,
        and the sum over the ranks puts every column in place)."""
        parts = () if self.state is None else self.state if isinstance(self.state, tuple) else (self.state,)
        if comm.size == 1:
            return tuple(np.asarray(to_numpy(part)) for part in parts)
        start, stop = share(self.config.batch_size, comm)
        shape = (model.num_layers, model.hidden_size, self.config.batch_size)
        gathered = []
        for i in range(2 if model.cell == "lstm" else 1):
            full = np.zeros(shape, dtype=model.dtype_name)
            if parts:
                full[:, :, start:stop] = to_numpy(parts[i])
            gathered.append(comm.allreduce_sum(full))
        return tuple(gathered)

    def restore_position(self, where, arrays, state, batch_in_epoch, model, comm):
        """Mid-epoch, the state carried out of the last window (the windows follow from the corpus), checked
        against the model and the batch."""
        keys = _STATE_KEYS if model.cell == "lstm" else _STATE_KEYS[:1]
        present = [key for key in _STATE_KEYS if key in arrays]
        self.state = None
        if not batch_in_epoch:
            if present:
                raise state_error(where, "the carried state", present, "none at the start of an epoch")
            return
        if present != list(keys):
            raise state_error(where, "the carried state", present, f"the arrays {list(keys)} in the middle of an epoch")
        shape = (model.num_layers, model.hidden_size, self.config.batch_size)
        parts = []
        for key in keys:
            a = arrays[key]
            if a.dtype != np.dtype(model.dtype_name) or a.shape != shape:
                raise state_error(where, f"array {key!r}", f"{a.dtype} {a.shape}",
                                   f"{model.dtype_name} of shape (num_layers, n_a, batch) = {shape}")
            if not np.isfinite(a).all():
                raise CheckpointError(f"{where} has an invalid training state: array {key!r} holds NaN or "
                                      "infinite values")
            parts.append(a)
        # This rank carries its own columns' state only.
        start, stop = share(self.config.batch_size, comm)
        if stop == start:
            return
        parts = [asarray(np.ascontiguousarray(a[:, :, start:stop]), backend=model.xp, dtype=model.dtype)
                 for a in parts]
        self.state = tuple(parts) if model.cell == "lstm" else parts[0]

    def tokens_after(self, epoch, batch_in_epoch):
        """Predicted tokens of ``epoch`` whole epochs and the first ``batch_in_epoch`` windows of the next."""
        m, n = self.train_data.shape
        return m * (epoch * (n - 1) + batch_in_epoch * self.config.bptt)

    @classmethod
    def resumed(cls, where, state, model, *, epochs=None, steps=None, text, source=None, val_source=None):
        """The data of a saved stream run: its recipe (every field present, agreeing with ``model``) with a new
        length if given, on ``text`` (a StreamCorpus, or ``(lines, val_lines)``), which must hold the saved run's
        training and validation corpora."""
        config = _recipe(where, state["config"], model, epochs, steps)
        text = stream_corpus(*text, config) if isinstance(text, tuple) else stream_corpus(text, None, config)
        recorded = check_same_corpus(where, state["corpus"], text.corpus["sha256"], text.corpus["sequences"],
                                     source, "lines")
        validation = check_corpus_record(where, state["validation"])
        if validation["sha256"] != text.validation.sha256:
            saved = (f"the validation file {validation['source']}" if validation["source"]
                     else "the end of the training corpus")
            given = f"the validation file {val_source}" if text.val_fraction is None else "the end of the corpus"
            raise CheckpointError(f"{where} was validated on {saved} ({validation['sequences']} lines), "
                                  f"not on {given} ({text.validation.lines} lines); resume with the same "
                                  "validation corpus")
        check_counted(where, "validation['sequences']", validation["sequences"], text.validation.lines)
        return cls(text, config, source=source if source is not None else recorded["source"],
                   val_source=val_source if val_source is not None else validation["source"])


def _recipe(where, saved, model, epochs, steps):
    """The saved recipe as a StreamConfig, with every field present and agreeing with the model."""
    if isinstance(saved, dict) and "max_seq_len" in saved:
        # xseq 0.1.0's StreamConfig inherited the line models' max_seq_len, which a stream never used.
        saved = {k: v for k, v in saved.items() if k != "max_seq_len"}
    agreed = {"cell": model.cell, "hidden_size": model.hidden_size, "num_layers": model.num_layers,
              "dropout": model.dropout, "dtype": model.dtype_name, "embed_size": model.embed_size,
              "tie_weights": model.tie_weights, "level": model.vocab.level}
    return saved_recipe(where, saved, StreamConfig, agreed, epochs, steps)


def reading_recipe(meta, where="checkpoint"):
    """``(level, val_fraction)`` of the stream run saved in a checkpoint's ``meta``: how its corpus is read again
    before the run is resumed (:meth:`StreamData.resumed` checks the rest). CheckpointError when absent or out of
    range."""
    state = meta.get("trainer")
    recipe = state.get("config") if isinstance(state, dict) else None
    if not isinstance(recipe, dict):
        raise CheckpointError(f"{where} holds a model but no training state; it cannot be resumed")
    level, val_fraction = recipe.get("level"), recipe.get("val_fraction")
    if level not in LEVELS:
        raise state_error(where, "config['level']", level, f"one of {LEVELS}")
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
            or not 0 < val_fraction < 1):
        raise state_error(where, "config['val_fraction']", val_fraction, "a number in (0, 1)")
    return level, val_fraction


def _perplexity(loss):
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
