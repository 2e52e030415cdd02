"""Training a :class:`~xseq.lm.stream_model.StreamLM` on one token stream, in windows, the state carried.

The recipe of PyTorch's ``word_language_model`` and of the TensorFlow PTB
tutorial (Zaremba et al. 2014):

* **The stream.** Every line of the corpus, blank ones included, becomes its
  tokens followed by ``<eos>`` (``line.split() + ['<eos>']`` at word level);
  the lines are joined into one stream of ids (:func:`stream_ids`).
* **Validation.** A second file, or else the last ``val_fraction`` of the
  lines (at least one line, at most all but one), in file order. The
  vocabulary is built from the training lines only.
* **Columns.** The stream is cut into ``batch_size`` contiguous columns of
  ``n = N // batch_size`` tokens each; the last ``N % batch_size`` tokens are
  dropped (:func:`batchify`). Column ``i`` holds tokens ``i*n .. (i+1)*n - 1``.
* **Windows.** Window ``k`` covers steps ``[k*bptt, min((k+1)*bptt, n-1))``:
  its inputs are those columns' tokens, its targets the tokens one step
  later; the last window of an epoch may be shorter (:func:`window`). An
  epoch is ``ceil((n-1) / bptt)`` windows, in order.
* **Carried state.** Each window starts from the final state of the one
  before (values only: no gradient crosses a window, truncated
  back-propagation through time); the state is zero at the start of every
  epoch.
* **The loss** of a window is the cross-entropy summed over its steps and
  averaged over the columns (the TensorFlow tutorial's convention, which
  ``--lr 1 --clip 5`` assume); reported losses are nats per token, and
  perplexity is ``exp`` of that.
* **The step.** Gradient clipping (global norm, or by value), then SGD
  (``momentum`` defaults to 0 here) or Adam. Epoch ``e`` (from 1) runs at
  ``lr * lr_decay ** max(0, e - decay_after)``: with ``decay_after = 4``
  epochs 1-4 run at ``lr`` and each later epoch at ``lr_decay`` times the one
  before (Zaremba's ``max_epoch``).
* **Validation** after every epoch runs the same way from a zero state, with
  the training batch (fewer columns when the validation stream is too short
  to give every column two tokens: :func:`validation_batch`) and windows of
  ``bptt`` steps, as the TensorFlow tutorial validates.
  :func:`evaluate_stream` with one column (``xseq evaluate``) scores a whole
  file as one stream.

Resuming
--------
A checkpoint holds, besides the model: the optimiser state, the recipe, the
step, epoch and window counters, the carried state after the last window
(mid-epoch), the dropout stream's state, every window's loss, the history,
and SHA-256 fingerprints of the training and validation lines. The stream
and its windows follow from the corpus and the recipe, so the window index
is the stream position; :meth:`StreamTrainer.resume` continues with exactly
the losses of the uninterrupted run.

Across processes
----------------
As the line trainer (:mod:`xseq.lm.train`, "Across processes"), with the
columns as the examples: each rank trains a contiguous share of the
``batch_size`` columns (:func:`~xseq.lm.train.share`; with fewer columns than
ranks some have none) and carries the state of its own columns; its
gradients are scaled by its share of the columns (every column has the same
number of steps), the loss and the gradients summed over the ranks.
Validation shares the validation columns the same way. A checkpoint holds the
state of every column (gathered from the ranks), so it resumes on any number
of ranks.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._version import __version__
from ..backends.arrays import asarray, to_numpy
from .checkpoint import CheckpointError, load_checkpoint
# The stream plan's data lives in its own module; its public names are this module's too, as they were before.
from .stream_data import (  # noqa: F401
    EVALUATION_WINDOW,
    batchify,
    build_vocabulary,
    evaluate_stream,
    num_windows,
    split_lines,
    stream_corpus,
    stream_ids,
    validation_batch,
    window,
)
from .stream_model import StreamLM
from .saved_state import (
    check_corpus_record,
    check_counted,
    check_same_corpus,
    invalid_state,
    restore_run,
    state_error,
)
from .lines_data import share
from .recipe import RunConfig, _check_real
from .train import Trainer
from .vocab import _check_int as check_int

STREAM_TRAINER_FORMAT_VERSION = 1
LEVELS = ("word", "char")
DEFAULT_BPTT = 20
STREAM_DEFAULT_LR = {"adam": 0.003, "sgd": 1.0}
_STATE_KEYS = ("stream/h", "stream/c")


@dataclasses.dataclass(frozen=True)
class StreamConfig(RunConfig):
    """The recipe of a stream run: :class:`~xseq.lm.recipe.RunConfig`'s fields and these.

    ``momentum`` defaults to 0 (plain SGD, as the Penn Treebank recipes), the
    SGD learning rate to 1.0. There is no ``max_seq_len``: windows have
    ``bptt`` steps (checkpoints of xseq 0.1.0 recorded one, which is ignored).

    Parameters
    ----------
    level : {"word", "char"}
        Whitespace-separated words, or characters.
    bptt : int
        Steps per window.
    embed_size : int or None
        ``D``; None for ``hidden_size`` (filled in on construction).
    tie_weights : bool
        Share the embedding and the output matrix (needs ``embed_size == hidden_size``).
    init_scale : float > 0 or None
        Every parameter uniform in ``[-init_scale, init_scale]``; None for PyTorch's defaults.
    lr_decay : float in (0, 1]
        Factor applied to the learning rate after every epoch past ``decay_after``.
    decay_after : int >= 0
        Epochs run at the full learning rate.
    vocab_size : int >= 3 or None
        Keep the ``vocab_size`` most frequent entries, ``<pad>``, ``<unk>`` and
        ``<eos>`` included; None keeps every token.
    min_count : int >= 1
        Drop tokens seen fewer times in the training lines.
    """

    momentum: float = 0.0
    level: str = "word"
    bptt: int = DEFAULT_BPTT
    embed_size: int | None = None
    tie_weights: bool = False
    init_scale: float | None = None
    lr_decay: float = 1.0
    decay_after: int = 0
    vocab_size: int | None = None
    min_count: int = 1

    def __post_init__(self):
        if self.lr is None and self.optimizer in STREAM_DEFAULT_LR:
            object.__setattr__(self, "lr", STREAM_DEFAULT_LR[self.optimizer])
        super().__post_init__()
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}; got {self.level!r}")
        check_int("bptt", self.bptt, 1)
        check_int("decay_after", self.decay_after, 0)
        check_int("min_count", self.min_count, 1)
        if self.vocab_size is not None:
            check_int("vocab_size", self.vocab_size, 3)
        if self.embed_size is None:
            object.__setattr__(self, "embed_size", self.hidden_size)
        check_int("embed_size", self.embed_size, 1)
        if not isinstance(self.tie_weights, bool):
            raise TypeError(f"tie_weights must be True or False; got {self.tie_weights!r}")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise ValueError(f"tie_weights needs embed_size equal to hidden_size; got embed_size={self.embed_size}, "
                             f"hidden_size={self.hidden_size}")
        _check_real("lr_decay", self.lr_decay)
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1]; got {self.lr_decay}")
        if self.init_scale is not None:
            _check_real("init_scale", self.init_scale)
            if self.init_scale <= 0:
                raise ValueError(f"init_scale must be > 0; got {self.init_scale}")
            self._check_init_scale_fits()

    def _check_init_scale_fits(self):
        """ValueError, naming ``--init-scale``, for a scale whose first forward pass would overflow the dtype."""
        bound = max_init_scale(self.dtype, self.embed_size, self.hidden_size, self.dropout)
        if self.init_scale > bound:
            largest = float(np.finfo(self.dtype).max)
            raise ValueError(
                f"init_scale (--init-scale) must be <= {_round_down(bound):g} for {self.dtype} with embed_size "
                f"{self.embed_size}, hidden_size {self.hidden_size} and dropout {self.dropout}: a first layer's "
                f"pre-activation, up to ((embed_size + hidden_size) / (1 - dropout) + 1) * init_scale**2, would "
                f"overflow {self.dtype} (largest {largest:.4g}); got {self.init_scale!r}")

    def learning_rate(self, epoch):
        """The learning rate of the epoch after ``epoch`` whole epochs: ``lr * lr_decay ** max(0, epoch + 1 - decay_after)``."""
        return self.lr * self.lr_decay ** max(0, epoch + 1 - self.decay_after)


def max_init_scale(dtype, embed_size, hidden_size, dropout=0.0):
    """The largest ``init_scale`` whose first forward pass cannot overflow ``dtype``.

    With every weight in ``[-S, S]``, an input of a gate is at most ``S``
    (an embedding row) or 1 (a state, a ``tanh`` or a gate times one), times
    ``1 / (1 - dropout)`` where inverted dropout scales it; so a first
    layer's pre-activation is at most ``K * S**2`` for ``S >= 1``, with
    ``K = (embed_size + hidden_size) / (1 - dropout) + 1`` (the bias's term),
    and the layers above and the output stay below that. The bound is
    ``sqrt(max / K)``, ``max`` the dtype's largest value: about ``1e18`` in
    float32 and ``1e152`` in float64 at 128 units; a useful scale is below 1.

    Parameters
    ----------
    dtype : {"float32", "float64"}
    embed_size, hidden_size : int
        ``D`` and ``n_a``.
    dropout : float in [0, 1)

    Returns
    -------
    float
    """
    terms = (embed_size + hidden_size) / (1 - dropout) + 1
    return math.sqrt(float(np.finfo(dtype).max) / terms)


def _round_down(value, digits=3):
    """``value`` (> 0) cut, not rounded, to ``digits`` significant digits: a bound that is printed stays one."""
    unit = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return math.floor(value / unit) * unit


# ---------------------------------------------------------------------- the stream and its windows


def reading_recipe(meta, where="checkpoint"):
    """``(level, val_fraction)`` of the stream run saved in a checkpoint's ``meta``: how its corpus is read again
    before the run is resumed (:meth:`StreamTrainer.from_checkpoint` checks the rest). CheckpointError when absent
    or out of range."""
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


# ---------------------------------------------------------------------- the trainer


class StreamTrainer(Trainer):
    """A training run of a :class:`StreamLM` on a token stream; see the module docstring for the recipe.

    Parameters
    ----------
    lines : list of str
        The training corpus, one entry per line, blank lines included
        (``xseq.read_corpus(path, keep_blank=True)``).
    config : StreamConfig
    val_lines : list of str, optional
        The validation corpus; None holds out the last ``val_fraction`` of ``lines``.
    backend : str, default "auto"
    source, val_source : str, optional
        Where the corpora came from, recorded in the checkpoint.
    comm : Communicator, optional
        The processes to train with; None for this process alone (see
        "Across processes" in :mod:`xseq.lm.stream_train`).

    Attributes
    ----------
    model : StreamLM
    train_data, val_data : (m, n) int64 NumPy arrays
        The training and validation columns (:func:`batchify`), all of them on every rank.
    state : the carried state after the last window of the current epoch, or None at an epoch's start;
        across processes, of this rank's columns only.
    dropped : int
        Training tokens beyond the last whole row of the columns, left out.
    step, epoch, batch_in_epoch : int
        Windows trained, whole epochs, and windows of the current epoch.
    chars_seen : int
        Tokens predicted in training so far (named as the line trainer's counter).
    Others as :class:`~xseq.lm.train.Trainer`; ``losses`` are nats per token of every window.
    """

    token_unit = "tokens"
    _step_unit = "windows"
    _tokens_key = "tokens_seen"

    def __init__(self, lines, config=None, *, val_lines=None, backend="auto", source=None, val_source=None,
                 comm=None):
        config = StreamConfig() if config is None else config
        if not isinstance(config, StreamConfig):
            raise TypeError(f"config must be an xseq.lm.stream_train.StreamConfig; got {type(config).__name__}")
        text = stream_corpus(lines, val_lines, config)
        model = StreamLM(text.vocabulary(config.vocab_size, config.min_count), config.hidden_size, cell=config.cell,
                         num_layers=config.num_layers, embed_size=config.embed_size,
                         tie_weights=config.tie_weights, dropout=config.dropout, init_scale=config.init_scale,
                         backend=backend, dtype=config.dtype, seed=config.seed)
        self._setup(text, config, model, source, val_source=val_source, comm=comm)
        self._start_ranks()

    def _setup(self, text, config, model, source, *, val_source=None, comm=None):
        train_ids, val_ids = text.ids(model.vocab)
        try:
            self.train_data = batchify(train_ids, config.batch_size)
        except ValueError as exc:
            raise ValueError(f"the training stream is too short: {exc}; lower batch_size") from None
        self.dropped = len(train_ids) - self.train_data.size
        if len(val_ids) < 2:
            raise ValueError(f"the validation stream has {len(val_ids)} token; it needs at least 2 "
                             "(an input and its target)")
        self.val_data = batchify(val_ids, validation_batch(len(val_ids), config.batch_size))
        self.config = config
        self.model = model
        self._attach(comm)
        self.source = source
        self.corpus = {"source": source, "sha256": text.corpus["sha256"], "sequences": text.corpus["sequences"]}
        self.validation = {"source": val_source, "sha256": text.validation.sha256, "sequences": text.validation.lines}
        self._start(config, model)
        self.state = None

    def _fingerprints(self):
        return {**super()._fingerprints(), "validation corpora": self.validation["sha256"]}

    # ------------------------------------------------------------------ lengths

    @property
    def steps_per_epoch(self):
        """Windows in one pass over the training columns (the last one may be shorter)."""
        return num_windows(self.train_data, self.config.bptt)

    # ------------------------------------------------------------------ training

    def train_step(self):
        """One optimiser step on the next window; returns its loss (nats per token)."""
        inputs, targets = window(self.train_data, self.batch_in_epoch, self.config.bptt)
        self.optimizer.lr = self.config.learning_rate(self.epoch)
        loss = self.learn(inputs, targets)
        if self._count_step(loss, targets.size):
            self.state = None  # every epoch starts from the zero state
        return loss

    def learn(self, inputs, targets):
        """Forward from the carried state, backward, clipping, one optimiser step; returns nats per token.

        The one place where the model is trained (a subclass may train another
        implementation on exactly the same windows). The carried state moves
        on only when the step is taken. ``inputs`` and ``targets`` are the
        whole window, every column; across processes this rank learns from its
        :func:`~xseq.lm.train.share` of the columns.
        """
        start, stop = share(inputs.shape[0], self.comm)
        self.model.dropout_rng.start_step(range(start, stop))
        nll, state, grads = 0.0, None, None
        if stop > start:
            # Overflow shows up as a non-finite loss, which stops the run with DivergedError (Trainer._update).
            with np.errstate(over="ignore", invalid="ignore"):
                nll, state = self.model.loss_and_backward(inputs[start:stop], targets[start:stop], self.state,
                                                          training=True)
            grads = self.model.grads()
        loss = nll / targets.size
        if self.comm.size > 1:
            # The model's gradients average over this rank's columns; the step's over all of them.
            grads, loss = self._reduce(self._zero_grads() if grads is None else grads,
                                       (stop - start) / inputs.shape[0], loss, rows=self._embedding_rows(inputs))
        self._update(grads, loss)
        self.state = state
        return loss

    # Why: see docs/decisions/008-embedding-gradient-rows.md
    def _embedding_rows(self, inputs):
        """The embedding rows whose gradient may be non-zero on some rank: the window's ids (every column's).

        A tied embedding is also the output matrix, whose gradient is dense:
        then the whole matrix is reduced.
        """
        if self.model.tie_weights:
            return None
        return {"embedding": asarray(np.unique(to_numpy(inputs)).astype(np.int64), backend=self.model.backend_name)}

    def validation_loss(self):
        """Nats per token of the model on the validation columns, from a zero state."""
        return evaluate_stream(self.model, self.val_data, self.config.bptt, comm=self.comm)

    def _report(self, record, log):
        if log is not None:
            train = record["train_loss"]
            train = "" if train is None else f"  train {train:.4f} (ppl {_perplexity(train):.2f})"
            log(f"epoch {record['epoch']:g}  step {record['step']}  lr {self.optimizer.lr:g}{train}  "
                f"val {record['val_loss']:.4f} (ppl {_perplexity(record['val_loss']):.2f})  "
                f"({record['seconds']:.1f} s)")

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_contents(self):
        arrays, optimizer_state = self._losses_and_optimizer()
        if self.batch_in_epoch:
            arrays.update(zip(_STATE_KEYS, self._every_columns_state()))
        trainer = {
            "format_version": STREAM_TRAINER_FORMAT_VERSION,
            "kind": "stream",
            "xseq_version": __version__,
            "config": dataclasses.asdict(self.config),
            "corpus": self.corpus,
            "validation": self.validation,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "dropout_rng": self.model.dropout_rng.bit_generator.state,
            "optimizer": optimizer_state,
            "history": self.history,
            "seconds": self.seconds,
            "tokens_seen": self.chars_seen,
        }
        return arrays, {"trainer": trainer}

    def _every_columns_state(self):
        """The carried state of every column, ``(h,)`` or ``(h, c)`` of ``(num_layers, n_a, batch_size)`` host
        arrays: this rank's columns, and across processes the others' (each rank adds its own columns to zeros,
        and the sum over the ranks puts every column in place)."""
        model, comm = self.model, self.comm
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

    @classmethod
    def resume(cls, path, lines, *, val_lines=None, backend="auto", epochs=None, steps=None, source=None,
               val_source=None, comm=None):
        """Continue a run saved by :meth:`save`, on any number of processes.

        Parameters
        ----------
        path : str or os.PathLike
        lines, val_lines : list of str
            The same training corpus and validation corpus (or None, when the
            saved run held out the end of the corpus) as the saved run; their
            fingerprints are checked.
        backend : str
        epochs, steps : int, optional
            A new length for the run, counted from its start (at most one).
        source, val_source : str, optional
            Where the corpora came from, for messages and the checkpoint.
        comm : Communicator, optional
            As for :class:`StreamTrainer`; every rank reads ``path``.

        Raises
        ------
        CheckpointError
            As :meth:`Trainer.resume <xseq.lm.train.Trainer.resume>`: an unreadable
            file, no or another version of training state, any field of the
            wrong type or range or contradicting the model or the other fields
            (counters, optimizer state, carried state, random stream, history,
            losses, recipe), or another training or validation corpus.
        """
        arrays, meta = load_checkpoint(path)
        return cls.from_checkpoint(arrays, meta, lines, val_lines=val_lines, backend=backend, epochs=epochs,
                                   steps=steps, source=source, val_source=val_source,
                                   where=f"checkpoint {str(path)!r}", comm=comm)

    @classmethod
    def from_checkpoint(cls, arrays, meta, lines, *, val_lines=None, backend="auto", epochs=None, steps=None,
                        source=None, val_source=None, where="checkpoint", comm=None):
        """:meth:`resume` from what :func:`xseq.load_checkpoint` returned."""
        model = StreamLM.from_checkpoint(arrays, meta, backend=backend, where=where)
        state = meta.get("trainer")
        if not isinstance(state, dict):
            raise CheckpointError(f"{where} holds a model but no training state; it cannot be resumed")
        if state.get("format_version") != STREAM_TRAINER_FORMAT_VERSION or state.get("kind") != "stream":
            raise CheckpointError(f"{where} has training-state format_version {state.get('format_version')!r}, "
                                  f"kind {state.get('kind')!r}; this version of xseq reads "
                                  f"{STREAM_TRAINER_FORMAT_VERSION}, 'stream'")
        with invalid_state(where):
            config = _recipe(where, state["config"], model, epochs, steps)
            text = stream_corpus(lines, val_lines, config)
            recorded = check_same_corpus(where, state["corpus"], text.corpus["sha256"], text.corpus["sequences"],
                                         source, "lines")
            validation = check_corpus_record(where, state["validation"])
            if validation["sha256"] != text.validation.sha256:
                saved = (f"the validation file {validation['source']}" if validation["source"]
                         else "the end of the training corpus")
                given = (f"the validation file {val_source}" if text.val_fraction is None
                         else "the end of the corpus")
                raise CheckpointError(f"{where} was validated on {saved} ({validation['sequences']} lines), "
                                      f"not on {given} ({text.validation.lines} lines); resume with the same "
                                      "validation corpus")
            check_counted(where, "validation['sequences']", validation["sequences"], text.validation.lines)
            trainer = cls.__new__(cls)
            trainer._setup(text, config, model, source if source is not None else recorded["source"],
                           val_source=val_source if val_source is not None else validation["source"], comm=comm)
            restore_run(trainer, where, arrays, state)
        trainer._check_ranks_agree("after resuming")
        return trainer

    def _restore_position(self, where, arrays, state):
        """Mid-epoch, the state carried out of the last window (the windows follow from the corpus)."""
        self.state = self._carried_state(where, arrays, self.batch_in_epoch > 0)

    def _tokens_after(self, epoch, batch_in_epoch):
        """Predicted tokens of ``epoch`` whole epochs and the first ``batch_in_epoch`` windows of the next."""
        m, n = self.train_data.shape
        return m * (epoch * (n - 1) + batch_in_epoch * self.config.bptt)

    def _lr_after(self, step, epoch, batch_in_epoch):
        """The schedule's rate of the epoch of the last step taken (the recipe's ``lr`` before the first)."""
        if step == 0:
            return self.config.lr
        return self.config.learning_rate(epoch if batch_in_epoch else epoch - 1)

    def _carried_state(self, where, arrays, mid_epoch):
        """The saved state after the last window (mid-epoch only), checked against the model and the batch."""
        model = self.model
        keys = _STATE_KEYS if model.cell == "lstm" else _STATE_KEYS[:1]
        present = [key for key in _STATE_KEYS if key in arrays]
        if not mid_epoch:
            if present:
                raise state_error(where, "the carried state", present, "none at the start of an epoch")
            return None
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
        start, stop = share(self.config.batch_size, self.comm)
        if stop == start:
            return None
        parts = [asarray(np.ascontiguousarray(a[:, :, start:stop]), backend=model.xp, dtype=model.dtype)
                 for a in parts]
        return tuple(parts) if model.cell == "lstm" else parts[0]


_STREAM_RECIPE_FIELDS = tuple(field.name for field in dataclasses.fields(StreamConfig))


def _recipe(where, saved, model, epochs, steps):
    """The saved recipe as a StreamConfig, with every field present and agreeing with the model."""
    if isinstance(saved, dict) and "max_seq_len" in saved:
        # xseq 0.1.0's StreamConfig inherited the line models' max_seq_len, which a stream never used.
        saved = {k: v for k, v in saved.items() if k != "max_seq_len"}
    missing = [field for field in _STREAM_RECIPE_FIELDS if not isinstance(saved, dict) or field not in saved]
    if missing:
        raise state_error(where, "config", saved, f"the recipe with every field of stream format version "
                           f"{STREAM_TRAINER_FORMAT_VERSION}; it lacks {missing}")
    unknown = sorted(set(saved) - set(_STREAM_RECIPE_FIELDS))
    if unknown:
        raise state_error(where, "config", saved, f"only the recipe's fields; it has {unknown}")
    config = dict(saved)
    if epochs is not None or steps is not None:
        config.update(epochs=epochs, steps=steps)
    config = StreamConfig(**config)
    for field, value in (("cell", model.cell), ("hidden_size", model.hidden_size), ("num_layers", model.num_layers),
                         ("dropout", model.dropout), ("dtype", model.dtype_name), ("embed_size", model.embed_size),
                         ("tie_weights", model.tie_weights), ("level", model.vocab.level)):
        if getattr(config, field) != value:
            raise state_error(where, f"config[{field!r}]", getattr(config, field), f"the model's {value!r}")
    return config


def _perplexity(loss):
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf

