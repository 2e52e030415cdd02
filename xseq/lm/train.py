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
import math
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
# The line plan's data and the recipe live in their own modules; their public names are this module's too, as
# they were before the split (``from xseq.lm.train import TrainConfig, split_corpus``).
from .lines_data import corpus_fingerprint, evaluate, share, split_corpus, split_sequences  # noqa: F401
from .model import CharLM
from .recipe import DivergedError, TrainConfig  # noqa: F401
from .saved_state import (
    LOSSES_KEY,
    OPTIM_PREFIX,
    check_rng_state,
    check_same_corpus,
    invalid_state,
    restore_run,
    state_error,
)
from .vocab import Vocabulary

TRAINER_FORMAT_VERSION = 1
# Packed with the gradients of a step (a name no parameter has): this rank's share of the loss, and 1 when it
# asks to stop.
_STEP_SCALARS = "step/loss,stop"


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
        arrays = {LOSSES_KEY: np.asarray(self.losses, dtype=np.float64)}
        optimizer_state = {}
        for key, value in self.optimizer.state_dict().items():
            if hasattr(value, "shape"):
                arrays[OPTIM_PREFIX + key] = value
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
            :func:`~xseq.lm.saved_state.restore_run`), or a corpus that differs from the saved run's.
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
                raise state_error(where, "config", config, f"the recipe with every field of format version "
                                   f"{TRAINER_FORMAT_VERSION}; it lacks {missing}")
            config = dict(config)
            if epochs is not None or steps is not None:
                config.update(epochs=epochs, steps=steps)
            config = TrainConfig(**config)
            for field, value in (("cell", model.cell), ("hidden_size", model.hidden_size),
                                 ("num_layers", model.num_layers), ("dropout", model.layer.dropout),
                                 ("dtype", model.dtype_name)):
                if getattr(config, field) != value:
                    raise state_error(where, f"config[{field!r}]", getattr(config, field),
                                       f"the model's {value!r}")
            recorded = check_same_corpus(where, state["corpus"], corpus_fingerprint(lines), len(lines), source,
                                         "sequences")
            trainer = cls.__new__(cls)
            trainer._setup(lines, config, model, source if source is not None else recorded["source"], comm)
            restore_run(trainer, where, arrays, state)
        trainer._check_ranks_agree("after resuming")
        return trainer


    def _restore_position(self, where, arrays, state):
        """Where the saved run stood in its epoch: the shuffling stream, and mid-epoch the epoch's order."""
        self.shuffle_rng.bit_generator.state = check_rng_state(where, "shuffle_rng", state["shuffle_rng"],
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


# The recipe fields every checkpoint of TRAINER_FORMAT_VERSION 1 records: a missing one would silently
# take its default (another seed, split or learning rate). A field added since then takes its default.
_RECIPE_FIELDS = ("cell", "hidden_size", "num_layers", "dropout", "batch_size", "optimizer", "lr", "momentum",
                  "clip", "clip_mode", "epochs", "steps", "val_fraction", "seed", "dtype")


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
