"""The training recipe of the language model, shared by ``xseq train`` and the benchmarks.

:class:`Trainer` holds a :class:`~xseq.CharLM`, its optimiser, the data and
every counter and random stream of a run, so that a run saved by
:meth:`Trainer.save` and continued by :meth:`Trainer.resume` gives exactly
the losses the uninterrupted run gives.

The recipe
----------
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
* A step is :meth:`CharLM.loss_and_backward` (mean cross-entropy per
  character), gradient clipping (by global norm, or by value like the
  course's ``clip``) and one optimiser step (Adam or SGD with momentum).
* After each epoch, and at the end of a run that stops mid-epoch, the mean
  cross-entropy per character of the validation split is recorded.

Resuming
--------
A checkpoint holds, besides the model: the optimiser state (moments and step
count), the recipe, the step and epoch counters, the state of the shuffling
stream at the start of the current epoch (the epoch's order is drawn again
from it), the dropout stream's state, every step's training loss and the
per-epoch history, and a SHA-256 fingerprint of the corpus, which must match
on resume.

Across processes
----------------
Given a communicator (``comm``, :mod:`xseq.distributed`) of several ranks,
the trainer is data-parallel and computes the run a single process computes,
up to the rounding of sums taken in another order:

* every rank reads the corpus and draws the same split and the same order;
  rank 0's initial parameters are broadcast, and the corpus, the recipe and
  the parameters are compared across ranks (by digest) at the start, after a
  resume and at every checkpoint;
* each rank takes a contiguous share of every global batch of ``batch_size``
  sequences (:func:`share`; the last, short batch of an epoch may leave a rank
  none); its mean gradient is scaled by its share of the batch's tokens, and
  the scaled gradients, the loss and the stop flag are summed over the ranks
  with one all-reduce per bucket (:func:`xseq.distributed.allreduce_arrays`);
  every rank then clips and applies the same update, so optimiser state is
  never sent;
* dropout masks follow the examples (:class:`xseq.distributed.ExampleDropout`,
  in a single process too): they depend on the seed, the step and an
  example's place in the global batch, not on the number of ranks, so a
  checkpoint written by N ranks resumes on M ranks exactly;
* validation sums are reduced the same way; rank 0 alone reports and writes
  checkpoints (:meth:`Trainer.save` is collective: every rank calls it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import reprlib
import signal
import time

import numpy as np

from .._version import __version__
from ..backends.arrays import to_numpy
from ..distributed import (
    ExampleDropout,
    SingleProcess,
    allreduce_arrays,
    check_same_on_all_ranks,
    digest,
    note_step,
)
from ..nn.embedding import add_rows
from ..nn.optim import SGD, Adam, clip_by_global_norm, clip_by_value
from .checkpoint import CheckpointError, load_checkpoint
from .model import CELLS, CharLM
from .vocab import Vocabulary
from .vocab import _check_int as check_int

TRAINER_FORMAT_VERSION = 1
OPTIMIZERS = ("adam", "sgd")
CLIP_MODES = ("norm", "value")
DEFAULT_EPOCHS = 15
DEFAULT_MAX_SEQ_LEN = 256
EVALUATION_BATCH = 256  # sequences per forward pass of evaluate
DEFAULT_LR = {"adam": 0.003, "sgd": 0.5}
_OPTIM_PREFIX = "optim/"
_LOSSES_KEY = "train/losses"
# Packed with the gradients of a step (a name no parameter has): this rank's share of the loss, and 1 when it
# asks to stop.
_STEP_SCALARS = "step/loss,stop"


class DivergedError(ArithmeticError):
    """The loss stopped being a finite number (the learning rate is too large, or clipping is off)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The recipe of a run; every field has the default of ``xseq train``.

    Parameters
    ----------
    cell : {"lstm", "gru", "rnn"}
    hidden_size : int
        ``n_a``.
    num_layers : int
    dropout : float in [0, 1)
        Between stacked layers.
    batch_size : int
        ``m``, sequences per step.
    optimizer : {"adam", "sgd"}
    lr : float or None
        Learning rate; None for the optimiser's default (Adam 0.003, SGD 0.5),
        filled in on construction.
    momentum : float in [0, 1)
        SGD only.
    clip : float or None
        Gradient clipping threshold; None (or 0) for no clipping.
    clip_mode : {"norm", "value"}
        Scale all gradients to a global L2 norm of at most ``clip``, or clip
        every entry to ``[-clip, clip]`` (the course's ``clip``).
    epochs, steps : int or None
        Length of the run: at most one may be given; when neither is,
        ``epochs`` is set to ``DEFAULT_EPOCHS`` on construction.
    val_fraction : float in (0, 1)
        Share of the sequences held out for validation.
    max_seq_len : int
        Longest sequence in tokens: longer lines are split into pieces of this
        length (see :func:`split_sequences`).
    seed : int
        Seeds the weights, the split, the shuffling and dropout.
    dtype : {"float32", "float64"}
    """

    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    clip: float | None = 5.0
    clip_mode: str = "norm"
    epochs: int | None = None
    steps: int | None = None
    val_fraction: float = 0.1
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        for name, allowed in (("cell", tuple(CELLS)), ("optimizer", OPTIMIZERS), ("clip_mode", CLIP_MODES),
                              ("dtype", ("float32", "float64"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        for name in ("hidden_size", "num_layers", "batch_size", "max_seq_len"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        for name in ("epochs", "steps"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        if self.epochs is not None and self.steps is not None:
            raise ValueError(f"give epochs or steps, not both; got epochs={self.epochs}, steps={self.steps}")
        for name, low, high in (("dropout", 0, 1), ("momentum", 0, 1)):
            _check_real(name, getattr(self, name))
            if not low <= getattr(self, name) < high:
                raise ValueError(f"{name} must be in [{low}, {high}); got {getattr(self, name)}")
        _check_real("val_fraction", self.val_fraction)
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1); got {self.val_fraction}")
        for name in ("lr", "clip"):
            value = getattr(self, name)
            if value is not None:
                _check_real(name, value)
                if value < 0 or (name == "lr" and value == 0):
                    raise ValueError(f"{name} must be {'> 0' if name == 'lr' else '>= 0'}; got {value}")
        # Defaults are made explicit, so that a checkpoint records the run as it was.
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS)


def _check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")


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


class Trainer:
    """A training run of a :class:`~xseq.CharLM` on a corpus: build one, :meth:`run` it, :meth:`save` it.

    Parameters
    ----------
    lines : list of str
        The corpus, one sequence per entry (e.g. :func:`xseq.read_corpus`).
    config : TrainConfig
    backend : str, default "auto"
        Where the model lives (see :func:`xseq.backend`).
    source : str, optional
        Where the corpus came from (a path, or "built-in"), recorded in the checkpoint.
    comm : Communicator, optional
        The processes to train with (:func:`xseq.distributed.from_environment`);
        None for this process alone. Every rank builds its Trainer with the same
        arguments; see "Across processes" in :mod:`xseq.lm.train`.

    Attributes
    ----------
    model : CharLM
    train_ids, val_ids : list of lists of int
        The encoded training and validation sequences, long lines already
        split into pieces of at most ``config.max_seq_len`` tokens.
    optimizer : Adam or SGD
    config : TrainConfig
    step, epoch : int
        Optimiser steps and whole epochs done.
    losses : list of float
        The training loss of every step.
    seconds : float
        Time spent in training steps so far (validation and saving excluded).
    chars_seen : int
        Predicted tokens (characters and ``<eos>``) trained on so far.
    history : list of dict
        One record per validation: ``epoch`` (fractional when the run
        stopped mid-epoch), ``step``, ``train_loss`` (mean of the steps since
        the previous record), ``val_loss``, ``seconds`` (training time so far).
    stop_requested : bool
        Set it (from a signal handler, another thread, a callback) to end
        :meth:`run` after the current step. Across processes, a request on any
        rank ends the run on every rank after the same step.
    comm : Communicator
    """

    token_unit = "chars"  # what the progress bar counts per second
    _step_unit = "steps"  # what a checkpoint's checks call a step
    _tokens_key = "chars_seen"  # the training state's name for chars_seen

    def __init__(self, lines, config=None, *, backend="auto", source=None, comm=None):
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be an xseq.TrainConfig; got {type(config).__name__}")
        lines = list(lines)
        model = CharLM(Vocabulary.from_text(lines), config.hidden_size, cell=config.cell,
                       num_layers=config.num_layers, dropout=config.dropout, backend=backend,
                       dtype=config.dtype, seed=config.seed)
        self._setup(lines, config, model, source, comm)
        self._start_ranks()

    def _setup(self, lines, config, model, source, comm=None):
        """Everything but the model: data, optimiser, streams and counters at the start of a run."""
        sequences = split_sequences([model.vocab.encode(s) for s in lines], config.max_seq_len)
        self.train_ids, self.val_ids = split_corpus(sequences, config.val_fraction, config.seed)
        self.config = config
        self.model = model
        self._attach(comm)
        self.source = source
        self.corpus = {"source": source, "sha256": corpus_fingerprint(lines), "sequences": len(lines)}
        self._start(config, model)
        self.shuffle_rng = np.random.default_rng([config.seed, 2])
        self._order = None
        self._epoch_start_rng_state = None

    def _start(self, config, model):
        """The recipe's optimiser on ``model``'s parameters, and every counter of the run at zero."""
        if config.optimizer == "adam":
            self.optimizer = Adam(model.parameters(), lr=config.lr)
        else:
            self.optimizer = SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.losses, self.history = [], []
        self.seconds = 0.0
        self.chars_seen = 0
        self.stop_requested = False

    # ------------------------------------------------------------------ ranks

    def _attach(self, comm):
        """Take the communicator, and dropout masks that follow the examples (so any split gives the same run)."""
        self.comm = SingleProcess() if comm is None else comm
        self._stop_agreed = False
        layer = self.model.layer
        if not isinstance(layer.dropout_rng, ExampleDropout):
            layer.dropout_rng = ExampleDropout(layer.dropout_rng)

    def _fingerprints(self):
        """What every rank must hold alike, by name: the data and the recipe."""
        return {"training corpora": self.corpus["sha256"],
                "recipes": repr(sorted(dataclasses.asdict(self.config).items()))}

    def _check_ranks_agree(self, when, parameters=True):
        """DistributedError on every rank unless all ranks hold the same data and recipe (and step and
        parameters)."""
        if self.comm.size == 1:
            return
        for what, value in self._fingerprints().items():
            check_same_on_all_ranks(self.comm, f"the {what} {when}", value)
        if parameters:
            check_same_on_all_ranks(self.comm, f"the parameters {when}",
                                    f"step {self.step}, {digest(self.model.parameters())}")

    def _start_ranks(self):
        """A new run: the ranks' data compared, rank 0's initial parameters on every rank, then compared too."""
        if self.comm.size == 1:
            return
        self._check_ranks_agree("at the start", parameters=False)
        params = self.model.parameters()
        for name in params:  # the same dict object: the optimiser stays attached
            params[name] = self.comm.broadcast(params[name], root=0)
        self._check_ranks_agree("at the start")

    def _reduce(self, grads, weight, loss_part, rows=None):
        """Sum over the ranks ``weight * grads`` and ``loss_part`` (and the stop requests).

        ``weight`` is this rank's share of the step's tokens (``grads`` being
        the gradients of the mean over this rank's tokens); ``loss_part`` its
        part of the step's loss (the parts add up to it). Returns the summed
        gradients and loss; every rank learns whether any rank asked to stop.

        ``rows`` (name -> sorted distinct row ids, the same on every rank)
        names gradients that are zero on every rank outside those rows (an
        embedding's, whose rows are the step's token ids): only those rows
        travel, and the sum is scattered back into zeros -- the same sums as
        the whole matrix's, for a fraction of the bytes.
        """
        xp, dtype = self.model.xp, self.model.dtype
        rows = {} if rows is None else rows
        scalars = xp.asarray([loss_part, float(self.stop_requested)], dtype=dtype)
        sent = {k: (xp.take(g, rows[k], axis=0) if k in rows else g) * weight for k, g in grads.items()}
        note_step(self.comm, self.step + 1)  # for the message of a collective that times out (--comm-timeout)
        summed = allreduce_arrays(self.comm, {**sent, _STEP_SCALARS: scalars})
        for k, ids in rows.items():
            summed[k] = add_rows(xp.zeros_like(grads[k]), ids, summed[k])
        loss, stop = (float(v) for v in to_numpy(summed.pop(_STEP_SCALARS)))
        self._stop_agreed = stop > 0
        return summed, loss

    def _stopping(self):
        """Whether :meth:`run` stops now: this rank's request alone, or (across ranks) the one all agreed on."""
        return self.stop_requested if self.comm.size == 1 else self._stop_agreed

    def _zero_grads(self):
        """The gradients of a rank with no example in this step."""
        return {k: self.model.xp.zeros_like(p) for k, p in self.model.parameters().items()}

    # ------------------------------------------------------------------ lengths

    @property
    def steps_per_epoch(self):
        """Batches in one pass over the training split (the last one may be smaller)."""
        return math.ceil(len(self.train_ids) / self.config.batch_size)

    @property
    def total_steps(self):
        """The step count at which :meth:`run` ends: ``steps``, or ``epochs`` whole epochs."""
        if self.config.steps is not None:
            return self.config.steps
        return self.config.epochs * self.steps_per_epoch

    # ------------------------------------------------------------------ training

    def train_step(self):
        """One optimiser step on the next batch; returns its loss (mean nats per character)."""
        if self._order is None:
            self._epoch_start_rng_state = self.shuffle_rng.bit_generator.state
            self._order = self.shuffle_rng.permutation(len(self.train_ids))
        B = self.config.batch_size
        chosen = self._order[self.batch_in_epoch * B:(self.batch_in_epoch + 1) * B]
        sequences = [self.train_ids[i] for i in chosen]
        loss = self.learn(sequences)
        if self._count_step(loss, sum(len(s) + 1 for s in sequences)):
            self._order = None
        return loss

    def _count_step(self, loss, tokens):
        """Count a step taken, its loss and the ``tokens`` it predicted; whether it ended an epoch."""
        self.step += 1
        self.batch_in_epoch += 1
        self.chars_seen += tokens
        self.losses.append(loss)
        if self.batch_in_epoch < self.steps_per_epoch:
            return False
        self.epoch += 1
        self.batch_in_epoch = 0
        return True

    def learn(self, sequences):
        """Forward, backward, clipping and one optimiser step on a batch; returns the batch's loss.

        The one place where the model is trained: a subclass may override it
        (and :meth:`validation_loss`) to train another implementation with
        exactly the same data, order and bookkeeping, as the PyTorch
        benchmark does.

        Parameters
        ----------
        sequences : list of lists of int
            The global batch's encoded sequences (without ``<eos>``); across
            processes this rank learns from its :func:`share` of them.
        """
        start, stop = share(len(sequences), self.comm)
        mine = sequences[start:stop]
        self.model.layer.dropout_rng.start_step(range(start, stop))
        loss, grads = 0.0, None
        if mine:
            # Overflow shows up as a non-finite loss, which stops the run with DivergedError below; NumPy's
            # warnings on the way there would only bury that message.
            with np.errstate(over="ignore", invalid="ignore"):
                loss = self.model.loss_and_backward(*self.model.batch(mine), training=True)
            grads = self.model.grads()
        if self.comm.size > 1:
            weight = sum(len(s) + 1 for s in mine) / sum(len(s) + 1 for s in sequences)
            grads, loss = self._reduce(self._zero_grads() if grads is None else grads, weight, loss * weight)
        self._update(grads, loss)
        return loss

    def _update(self, grads, loss):
        """The step's update from its (summed) gradients: DivergedError on a non-finite loss, before the weights
        change (so they, and any checkpoint written since, stay finite); then clipping and the optimiser."""
        if not math.isfinite(loss):
            raise DivergedError(f"training diverged at step {self.step + 1}: the training loss is {loss}")
        clip = self.config.clip
        if clip:
            if self.config.clip_mode == "norm":
                grads, _ = clip_by_global_norm(grads, clip)
            else:
                grads = clip_by_value(grads, clip)
        self.optimizer.step(grads)

    def validation_loss(self):
        """Mean cross-entropy per character of the model on the validation split (shared among the ranks)."""
        return evaluate(self.model, self.val_ids, max_seq_len=self.config.max_seq_len, comm=self.comm)

    def validate(self):
        """Record the validation loss in :attr:`history` and return the record."""
        last_step = self.history[-1]["step"] if self.history else 0
        recent = self.losses[last_step:]
        val_loss = self.validation_loss()
        if not math.isfinite(val_loss):
            raise DivergedError(f"training diverged by step {self.step}: the validation loss is {val_loss}")
        record = {
            "epoch": round(self.epoch + self.batch_in_epoch / self.steps_per_epoch, 4),
            "step": self.step,
            "train_loss": float(np.mean(recent)) if recent else None,
            "val_loss": val_loss,
            "seconds": round(self.seconds, 3),
        }
        self.history.append(record)
        return record

    def run(self, *, out=None, progress=False, log=None, handle_sigint=False):
        """Train until :attr:`total_steps` (or until :attr:`stop_requested`).

        Validates after every epoch and at the end; saves to ``out`` after
        every epoch, at the end, and when stopped early. Across processes every
        rank calls it; only rank 0 shows progress, logs and writes ``out``.

        Parameters
        ----------
        out : str or os.PathLike, optional
            Checkpoint path.
        progress : bool
            Show a tqdm progress bar with the loss and characters per second on
            stderr, when stderr is a terminal.
        log : callable, optional
            Called with one line of text per validation.
        handle_sigint : bool
            While running, the first Ctrl-C (SIGINT) sets :attr:`stop_requested`
            (so the run stops after the current step and saves); a second one
            interrupts at once. Only from the main thread.

        Returns
        -------
        bool
            True when the run completed, False when it was stopped early.
        """
        total = self.total_steps
        if self.comm.rank != 0:
            progress, log = False, None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=min(self.step, total), unit="step", dynamic_ncols=True, disable=None)
            if log is not None:
                log = _around_bar(bar, log)
        guard = _sigint_sets_stop(self) if handle_sigint else contextlib.nullcontext()
        saved_at = None
        chars_at_start, seconds_at_start = self.chars_seen, self.seconds
        try:
            with guard:
                while self.step < total and not self._stopping():
                    started = time.perf_counter()
                    loss = self.train_step()
                    self.seconds += time.perf_counter() - started
                    if bar is not None:
                        rate = (self.chars_seen - chars_at_start) / max(self.seconds - seconds_at_start, 1e-9)
                        bar.set_postfix({"loss": f"{loss:.3f}", f"{self.token_unit}/s": f"{rate:,.0f}"},
                                        refresh=False)
                        bar.update(1)
                    if self.batch_in_epoch == 0:
                        self._report(self.validate(), log)
                        if out is not None:
                            self.save(out)
                            saved_at = self.step
        finally:
            if bar is not None:
                bar.close()
        completed = self.step >= total
        if completed and (not self.history or self.history[-1]["step"] != self.step):
            self._report(self.validate(), log)
        if out is not None and saved_at != self.step:
            self.save(out)
        return completed

    def _report(self, record, log):
        if log is not None:
            train = "" if record["train_loss"] is None else f"  train {record['train_loss']:.4f}"
            log(f"epoch {record['epoch']:g}  step {record['step']}{train}  val {record['val_loss']:.4f}"
                f"  ({record['seconds']:.1f} s)")

    # ------------------------------------------------------------------ checkpoints

    def save(self, path):
        """Write the model and everything needed to resume to one ``.npz`` file, atomically.

        Across processes every rank calls it: the ranks are compared (the
        same parameters, data and recipe), rank 0 writes the file, and the
        others wait until it is written.
        """
        self._check_ranks_agree("at a checkpoint")
        arrays, meta = self._checkpoint_contents()
        if self.comm.rank == 0:
            self.model.save(path, arrays=arrays, meta=meta)
        self.comm.barrier()

    def _losses_and_optimizer(self):
        """``(arrays, optimizer metadata)`` every trainer saves: the losses, the optimiser's arrays, and its
        other state (its step count, hyperparameters)."""
        arrays = {_LOSSES_KEY: np.asarray(self.losses, dtype=np.float64)}
        optimizer_state = {}
        for key, value in self.optimizer.state_dict().items():
            if hasattr(value, "shape"):
                arrays[_OPTIM_PREFIX + key] = value
            else:
                optimizer_state[key] = value
        return arrays, optimizer_state

    def _checkpoint_contents(self):
        """The trainer's arrays and metadata for :meth:`save` (every rank computes them)."""
        arrays, optimizer_state = self._losses_and_optimizer()
        in_epoch = self._order is not None
        trainer = {
            "format_version": TRAINER_FORMAT_VERSION,
            "xseq_version": __version__,
            "config": dataclasses.asdict(self.config),
            "corpus": self.corpus,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            # mid-epoch: the state the epoch's order was drawn from, so resume draws it again
            "shuffle_rng": self._epoch_start_rng_state if in_epoch else self.shuffle_rng.bit_generator.state,
            "dropout_rng": self.model.layer.dropout_rng.bit_generator.state,
            "optimizer": optimizer_state,
            "history": self.history,
            "seconds": self.seconds,
            "chars_seen": self.chars_seen,
        }
        return arrays, {"trainer": trainer}

    @classmethod
    def resume(cls, path, lines, *, backend="auto", epochs=None, steps=None, source=None, comm=None):
        """Continue a run saved by :meth:`save`, on any number of processes.

        Parameters
        ----------
        path : str or os.PathLike
            The checkpoint.
        lines : list of str
            The same corpus as the saved run (its fingerprint is checked).
        backend : str
        epochs, steps : int, optional
            A new length for the run, counted from its start (at most one);
            None keeps the saved one.
        source : str, optional
            Where ``lines`` came from, for the error message and the checkpoint.
        comm : Communicator, optional
            As for :class:`Trainer`: every rank reads ``path`` (a file system
            all ranks see), and the ranks are compared after resuming.

        Raises
        ------
        CheckpointError
            Unreadable or corrupt file, no training state in it, another format
            version, a training state with a field of the wrong type or range
            or one that contradicts the model or the other fields (counters,
            the optimizer's step count, settings and moments, random streams,
            history, losses and recipe are all checked before use, see
            :meth:`_restore`), or a corpus that differs from the saved run's.
        """
        where = f"checkpoint {str(path)!r}"
        arrays, meta = load_checkpoint(path)
        model = CharLM.from_checkpoint(arrays, meta, backend=backend, where=where)
        state = meta.get("trainer")
        if not isinstance(state, dict):
            raise CheckpointError(f"{where} holds a model but no training state; it cannot be resumed")
        if state.get("format_version") != TRAINER_FORMAT_VERSION:
            raise CheckpointError(f"{where} has training-state format_version {state.get('format_version')!r}; "
                                  f"this version of xseq reads {TRAINER_FORMAT_VERSION}")
        lines = list(lines)
        with invalid_state(where):
            config = state["config"]
            missing = [field for field in _RECIPE_FIELDS if not isinstance(config, dict) or field not in config]
            if missing:
                raise _state_error(where, "config", config, f"the recipe with every field of format version "
                                   f"{TRAINER_FORMAT_VERSION}; it lacks {missing}")
            config = dict(config)
            if epochs is not None or steps is not None:
                config.update(epochs=epochs, steps=steps)
            config = TrainConfig(**config)
            for field, value in (("cell", model.cell), ("hidden_size", model.hidden_size),
                                 ("num_layers", model.num_layers), ("dropout", model.layer.dropout),
                                 ("dtype", model.dtype_name)):
                if getattr(config, field) != value:
                    raise _state_error(where, f"config[{field!r}]", getattr(config, field),
                                       f"the model's {value!r}")
            recorded = check_same_corpus(where, state["corpus"], corpus_fingerprint(lines), len(lines), source,
                                         "sequences")
            trainer = cls.__new__(cls)
            trainer._setup(lines, config, model, source if source is not None else recorded["source"], comm)
            trainer._restore(where, arrays, state)
        trainer._check_ranks_agree("after resuming")
        return trainer

    def _restore(self, where, arrays, state):
        """Put a saved run's counters, optimiser, random streams, losses and history in place, each checked.

        Every field is checked for its type and range and against the others
        and the corpus (the trainer is already set up on it): ``step`` is
        ``epoch`` whole epochs plus ``batch_in_epoch`` steps, the optimiser
        took exactly ``step`` steps with the run's hyperparameters, the
        tokens seen are those of the ``step`` batches, there is one finite
        loss per step and every validation record agrees with its step.
        CheckpointError names the field, its value and what was expected.
        """
        per_epoch = self.steps_per_epoch
        step = _state_int(where, "step", state["step"], 0)
        epoch = _state_int(where, "epoch", state["epoch"], 0)
        batch_in_epoch = _state_int(where, "batch_in_epoch", state["batch_in_epoch"], 0, per_epoch)
        if step != epoch * per_epoch + batch_in_epoch:
            raise CheckpointError(f"{where} has an invalid training state: step {step} is not epoch {epoch} "
                                  f"x {per_epoch} {self._step_unit} per epoch + batch_in_epoch {batch_in_epoch}")
        self.step, self.epoch, self.batch_in_epoch = step, epoch, batch_in_epoch
        self._restore_position(where, arrays, state)
        self._restore_optimizer(where, arrays, state["optimizer"])
        rng = self.model.layer.dropout_rng
        rng.bit_generator.state = _check_rng_state(where, "dropout_rng", state["dropout_rng"], rng)
        self.losses = _check_losses(where, arrays[_LOSSES_KEY], step, self._step_unit)
        self.history = _check_history(where, state["history"], step, per_epoch, self._step_unit)
        self.seconds = _state_real(where, "seconds", state["seconds"], 0)
        tokens = _state_int(where, self._tokens_key, state[self._tokens_key], 0)
        expected = self._tokens_after(epoch, batch_in_epoch)
        if tokens != expected:
            raise _state_error(where, self._tokens_key, tokens, f"{expected}, the tokens predicted in epoch {epoch} "
                               f"x {per_epoch} {self._step_unit} per epoch + batch_in_epoch {batch_in_epoch}")
        self.chars_seen = tokens

    def _restore_position(self, where, arrays, state):
        """Where the saved run stood in its epoch: the shuffling stream, and mid-epoch the epoch's order."""
        self.shuffle_rng.bit_generator.state = _check_rng_state(where, "shuffle_rng", state["shuffle_rng"],
                                                                self.shuffle_rng)
        if self.batch_in_epoch:
            self._epoch_start_rng_state = self.shuffle_rng.bit_generator.state
            self._order = self.shuffle_rng.permutation(len(self.train_ids))

    def _tokens_after(self, epoch, batch_in_epoch):
        """Predicted tokens of ``epoch`` whole epochs and the current epoch's first ``batch_in_epoch`` batches."""
        per_epoch = sum(len(s) + 1 for s in self.train_ids)
        done = self._order[:batch_in_epoch * self.config.batch_size] if batch_in_epoch else ()
        return epoch * per_epoch + sum(len(self.train_ids[i]) + 1 for i in done)

    def _lr_after(self, step, epoch, batch_in_epoch):
        """The learning rate the optimiser holds after ``step`` steps: the recipe's, for the whole run."""
        return self.config.lr

    def _restore_optimizer(self, where, arrays, saved):
        """The optimiser's saved state, checked against the run before it is loaded.

        Its step count must be the run's (one optimiser step per training
        step) and its hyperparameters those the run built it with (the
        learning rate: :meth:`_lr_after`); the optimiser itself refuses moments
        that are not finite, or second moments below 0.
        """
        if not isinstance(saved, dict):
            raise _state_error(where, "optimizer", saved, "an object with the optimizer's kind, step and settings")
        built = {key: value for key, value in self.optimizer.state_dict().items() if not hasattr(value, "shape")}
        expected = {**built, "step": self.step, "lr": self._lr_after(self.step, self.epoch, self.batch_in_epoch)}
        why = {"step": "the run's step count (one optimizer step per training step)",
               "lr": "the learning rate of the run's recipe at its step", "optimizer": "the recipe's optimizer"}
        for key, value in expected.items():
            if key in saved and (isinstance(saved[key], bool) or saved[key] != value):
                raise _state_error(where, f"optimizer[{key!r}]", saved[key],
                                   f"{value!r}, {why.get(key, 'the setting the run was built with')}")
        optimizer_arrays = {k[len(_OPTIM_PREFIX):]: v for k, v in arrays.items() if k.startswith(_OPTIM_PREFIX)}
        try:
            self.optimizer.load_state_dict({**saved, **optimizer_arrays})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} has an invalid training state: optimizer {exc}") from None


# ---------------------------------------------------------------------- checks of a saved training state

_HISTORY_FIELDS = ("epoch", "step", "train_loss", "val_loss", "seconds")
# The recipe fields every checkpoint of TRAINER_FORMAT_VERSION 1 records: a missing one would silently
# take its default (another seed, split or learning rate). A field added since then takes its default.
_RECIPE_FIELDS = ("cell", "hidden_size", "num_layers", "dropout", "batch_size", "optimizer", "lr", "momentum",
                  "clip", "clip_mode", "epochs", "steps", "val_fraction", "seed", "dtype")


def _state_error(where, field, value, expected):
    return CheckpointError(f"{where} has an invalid training state: {field} is {reprlib.repr(value)}; "
                           f"expected {expected}")


def _state_int(where, field, value, low, high=None):
    """``value``, an int (not a bool) with ``low <= value`` and, when given, ``value < high``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value >= high):
        bound = f"{low} <= {field}" + ("" if high is None else f" < {high}")
        raise _state_error(where, field, value, f"an int with {bound}")
    return value


def _is_real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _state_real(where, field, value, low):
    """``value`` as a float: a finite number (not a bool) ``>= low``."""
    if not _is_real(value) or not math.isfinite(value) or value < low:
        raise _state_error(where, field, value, f"a finite number >= {low}")
    return float(value)


def _check_corpus_record(where, record):
    """The saved run's corpus record: ``sha256`` (str), ``source`` (str or None), ``sequences`` (int)."""
    if not isinstance(record, dict):
        raise _state_error(where, "corpus", record, "an object with 'source', 'sha256' and 'sequences'")
    if not isinstance(record["sha256"], str):
        raise _state_error(where, "corpus['sha256']", record["sha256"], "a hex string")
    if record["source"] is not None and not isinstance(record["source"], str):
        raise _state_error(where, "corpus['source']", record["source"], "a string or null")
    _state_int(where, "corpus['sequences']", record["sequences"], 0)
    return record


@contextlib.contextmanager
def invalid_state(where):
    """Inside: a missing entry (KeyError) or a value of the wrong type or range (TypeError, ValueError) of a
    saved training state is a CheckpointError naming ``where``."""
    try:
        yield
    except KeyError as exc:
        raise CheckpointError(f"{where} has an invalid training state: no entry {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has an invalid training state: {type(exc).__name__}: {exc}") from None


def check_same_corpus(where, record, sha256, lines, source, unit):
    """The saved run's corpus ``record``, which must be that of the corpus given to resume it (fingerprint
    ``sha256``, ``lines`` lines or sequences, ``unit`` naming them); CheckpointError otherwise."""
    recorded = _check_corpus_record(where, record)
    if recorded["sha256"] != sha256:
        raise CheckpointError(
            f"{where} was trained on another corpus ({recorded['source'] or 'unknown source'}, "
            f"{recorded['sequences']} {unit}) than {source or 'the given one'} ({lines} {unit}); resume with the "
            "same corpus")
    _check_counted(where, "corpus['sequences']", recorded["sequences"], lines)
    return recorded


def _check_counted(where, field, recorded, lines):
    """A corpus record's count of lines, which must be ``lines``, that of the corpus its fingerprint matched."""
    if recorded != lines:
        raise _state_error(where, field, recorded, f"{lines}, the lines of the corpus whose SHA-256 it records")


def _check_losses(where, losses, step, unit):
    """The saved losses as floats: one finite number >= 0 (a mean cross-entropy) per step."""
    if losses.ndim != 1 or losses.dtype.kind != "f" or len(losses) != step:
        raise _state_error(where, f"array {_LOSSES_KEY!r}", f"{losses.dtype} {losses.shape}",
                           f"the float losses of the {step} {unit}, shape ({step},)")
    bad = np.flatnonzero(~(np.isfinite(losses) & (losses >= 0)))
    if bad.size:
        raise _state_error(where, f"array {_LOSSES_KEY!r}[{bad[0]}]", float(losses[bad[0]]),
                           f"a finite loss >= 0 (nats per token); {bad.size} of the {step} are not")
    return [float(x) for x in losses]


def _check_rng_state(where, field, value, generator):
    """``value`` if it has the layout of ``generator.bit_generator.state`` (PCG64: nested dicts of str and int).

    Its strings must be the generator's (the bit generator's name) and its
    integers ints in ``[0, 2**128)``, the range of PCG64's state words.
    """
    def check(saved, current, at):
        if isinstance(current, dict):
            if not isinstance(saved, dict) or set(saved) != set(current):
                raise _state_error(where, at, saved, f"an object with the keys {sorted(current)}")
            for key in current:
                check(saved[key], current[key], f"{at}[{key!r}]")
        elif isinstance(current, str):
            if saved != current:
                raise _state_error(where, at, saved, repr(current))
        elif isinstance(saved, bool) or not isinstance(saved, int) or not 0 <= saved < 2**128:
            raise _state_error(where, at, saved, "an int with 0 <= value < 2**128")

    check(value, generator.bit_generator.state, field)
    return value


def _check_history(where, history, step, per_epoch, unit="steps"):
    """The saved validation records, as :meth:`Trainer.validate` writes them after ``step`` steps at most.

    Each has every field; steps are in order and at most ``step``; each
    ``epoch`` is its step's, in epochs of ``per_epoch`` steps (``unit``); losses are
    finite numbers >= 0 (``train_loss`` may be None); ``seconds`` never
    decrease.
    """
    if not isinstance(history, list):
        raise _state_error(where, "history", history, "a list of validation records")
    previous = seconds = 0
    for i, record in enumerate(history):
        at = f"history[{i}]"
        if not isinstance(record, dict) or set(record) != set(_HISTORY_FIELDS):
            raise _state_error(where, at, record, f"a record with the keys {list(_HISTORY_FIELDS)}")
        previous = _state_int(where, f"{at}['step']", record["step"], previous, step + 1)
        epoch = round(previous // per_epoch + previous % per_epoch / per_epoch, 4)
        if _state_real(where, f"{at}['epoch']", record["epoch"], 0) != epoch:
            raise _state_error(where, f"{at}['epoch']", record["epoch"],
                               f"{epoch:g}, the epoch of its step {previous} with {per_epoch} {unit} per epoch")
        seconds = _state_real(where, f"{at}['seconds']", record["seconds"], seconds)
        for key in ("train_loss", "val_loss"):
            if key == "train_loss" and record[key] is None:
                continue
            if not _is_real(record[key]):
                raise _state_error(where, f"{at}[{key!r}]", record[key], "a number")
            _state_real(where, f"{at}[{key!r}]", record[key], 0)
    return list(history)


def _around_bar(bar, log):
    """``log``, clearing the progress bar while it writes and redrawing it after."""
    def write(line):
        with bar.external_write_mode():
            log(line)

    return write


@contextlib.contextmanager
def _sigint_sets_stop(trainer):
    """While active, a first SIGINT asks ``trainer`` to stop; a second raises KeyboardInterrupt."""
    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
