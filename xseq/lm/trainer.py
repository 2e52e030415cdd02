"""The one trainer of xseq's language models: the loop, the step, the ranks and the checkpoints, for every plan.

:class:`Trainer` runs a :class:`~xseq.lm.language_model.LanguageModel` on a
plan's *data*: :class:`~xseq.lm.lines_data.LineData` (one line a sequence,
padded batches, a random validation split) or
:class:`~xseq.lm.stream_data.StreamData` (one token stream in contiguous
columns, windows of ``bptt`` steps, the state carried). The trainer owns
what every plan shares, written once:

* the loop (:meth:`Trainer.run`): steps until the run's length, validation
  after every epoch and at the end, checkpoints, a progress bar, Ctrl-C;
* the step (:meth:`Trainer.learn`): this rank's share of the batch, the
  dropout masks that follow the examples, the model's forward and backward
  pass, the all-reduce across ranks, the divergence check, clipping and the
  optimiser, at the learning rate of the recipe's schedule;
* data parallelism: rank 0's parameters broadcast, data, recipe and
  parameters compared across ranks at the start, after a resume and at
  every checkpoint;
* checkpoints: the model, the optimiser, the counters, the random streams,
  the losses and history, checked field by field on resume
  (:func:`~xseq.lm.saved_state.restore_run`), plus the plan's own extras.

A plan's data supplies the rest (the interface, which a third plan
implements to plug in; see :class:`~xseq.lm.lines_data.LineData` for a
documented example): ``KIND``, ``MODEL``, the units ``token_unit``,
``step_unit`` and ``tokens_key``, ``config``, ``corpus``, ``new_model``,
``attach``, ``fingerprints``, ``steps_per_epoch``, ``batch``, ``tokens``,
``share``, ``loss_and_backward``, ``step_taken``, ``epoch_done``,
``sparse_rows``, ``validation_loss``, ``format_record``, ``checkpoint_extras``,
``restore_position``, ``tokens_after`` and the class method ``resumed``.

Across processes the trainer computes the run a single process computes, up
to the rounding of sums taken in another order: each rank takes a contiguous
share of every global batch (:func:`~xseq.lm.lines_data.share`), its gradients
are scaled by its share, summed over the ranks with one all-reduce per
bucket (:func:`xseq.distributed.allreduce_arrays`), and every rank applies
the same update, so optimiser state is never sent; rank 0 alone reports and
writes checkpoints (:meth:`Trainer.save` is collective).
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
from .checkpoint import CheckpointError
from .recipe import DivergedError
from .saved_state import LOSSES_KEY, OPTIM_PREFIX, invalid_state, restore_run

TRAINER_FORMAT_VERSION = 1
# Packed with the gradients of a step (a name no parameter has): this rank's share of the loss, and 1 when it
# asks to stop.
_STEP_SCALARS = "step/loss,stop"


class Trainer:
    """A training run of a language model on a plan's data: build one, :meth:`run` it, :meth:`save` it.

    Parameters
    ----------
    data : LineData, StreamData or another plan's data
        The corpus as the plan reads it, with the recipe (``data.config``).
    backend : str, default "auto"
        Where the model lives (see :func:`xseq.backend`).
    comm : Communicator, optional
        The processes to train with (:func:`xseq.distributed.from_environment`);
        None for this process alone. Every rank builds its Trainer with the same
        arguments.

    Attributes
    ----------
    data : the plan's data
        Its attributes read as the trainer's too (``trainer.source``,
        ``trainer.corpus``, ``trainer.train_ids``, ``trainer.state``, ...).
    model : LanguageModel
    optimizer : Adam or SGD
    config : the recipe (TrainConfig, StreamConfig, ...)
    step, epoch, batch_in_epoch : int
        Optimiser steps, whole epochs, and steps of the current epoch done.
    losses : list of float
        The training loss of every step (nats per token).
    seconds : float
        Time spent in training steps so far (validation and saving excluded).
    chars_seen : int
        Predicted tokens trained on so far (the checkpoint names it by the plan's ``tokens_key``).
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

    def __init__(self, data, *, backend="auto", comm=None):
        model = data.new_model(backend)
        data.attach(model)
        self._setup(data, model, comm)
        self._start_ranks()

    def _setup(self, data, model, comm):
        """Everything of a run at its start: the data, the model, the ranks, the optimiser and the counters."""
        self.data, self.config, self.model = data, data.config, model
        self._attach(comm)
        config = self.config
        if config.optimizer == "adam":
            self.optimizer = Adam(model.parameters(), lr=config.lr)
        else:
            self.optimizer = SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.losses, self.history = [], []
        self.seconds = 0.0
        self.chars_seen = 0
        self.stop_requested = False

    def __getattr__(self, name):
        # The plan's data (train_ids, train_data, state, ...) reads as the trainer's; only for names the trainer
        # lacks, and never before the data is in place.
        if name != "data" and "data" in self.__dict__:
            try:
                return getattr(self.__dict__["data"], name)
            except AttributeError:
                pass
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ ranks

    def _attach(self, comm):
        """Take the communicator, and dropout masks that follow the examples (so any split gives the same run)."""
        self.comm = SingleProcess() if comm is None else comm
        self._stop_agreed = False
        if not isinstance(self.model.dropout_rng, ExampleDropout):
            self.model.dropout_rng = ExampleDropout(self.model.dropout_rng)

    def _fingerprints(self):
        """What every rank must hold alike, by name: the data and the recipe."""
        return {**self.data.fingerprints(), "recipes": repr(sorted(dataclasses.asdict(self.config).items()))}

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

        ``weight`` is this rank's share of the step (``grads`` being the
        gradients of this rank's part alone); ``loss_part`` its part of the
        step's loss (the parts add up to it). Returns the summed gradients
        and loss; every rank learns whether any rank asked to stop.

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
        """Steps (batches, windows) in one pass over the training data (the last one may be smaller)."""
        return self.data.steps_per_epoch

    @property
    def total_steps(self):
        """The step count at which :meth:`run` ends: ``steps``, or ``epochs`` whole epochs."""
        if self.config.steps is not None:
            return self.config.steps
        return self.config.epochs * self.steps_per_epoch

    # ------------------------------------------------------------------ training

    def train_step(self):
        """One optimiser step on the plan's next batch, at the schedule's learning rate; returns its loss."""
        batch = self.data.batch(self.batch_in_epoch)
        self.optimizer.lr = self.config.learning_rate(self.epoch)
        loss = self.learn(batch)
        self.step += 1
        self.batch_in_epoch += 1
        self.chars_seen += self.data.tokens(batch)
        self.losses.append(loss)
        if self.batch_in_epoch == self.steps_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
            self.data.epoch_done()
        return loss

    def learn(self, batch):
        """Forward, backward, clipping and one optimiser step on the plan's ``batch``; returns its loss.

        The one place where the model is trained: a subclass may override it
        (and :meth:`validation_loss`) to train another implementation with
        exactly the same data, order and bookkeeping, as the PyTorch
        benchmarks do. Across processes this rank learns from its share of
        the batch (``data.share``).
        """
        start, stop, weight = self.data.share(batch, self.comm)
        self.model.dropout_rng.start_step(range(start, stop))
        loss = loss_part = 0.0
        grads = None
        if stop > start:
            # Overflow shows up as a non-finite loss, which stops the run with DivergedError below; NumPy's
            # warnings on the way there would only bury that message.
            with np.errstate(over="ignore", invalid="ignore"):
                loss, loss_part = self.data.loss_and_backward(self.model, batch, start, stop, weight)
            grads = self.model.grads()
        if self.comm.size > 1:
            grads, loss = self._reduce(self._zero_grads() if grads is None else grads, weight, loss_part,
                                       rows=self.data.sparse_rows(batch, self.model))
        self._update(grads, loss)
        self.data.step_taken()
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
        """Nats per token of the model on the plan's validation data (shared among the ranks)."""
        return self.data.validation_loss(self.model, self.comm)

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
            Show a tqdm progress bar with the loss and tokens per second on
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
                        unit = f"{self.data.token_unit}/s"
                        bar.set_postfix({"loss": f"{loss:.3f}", unit: f"{rate:,.0f}"}, refresh=False)
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
            log(self.data.format_record(record, self.optimizer.lr))

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

    def _checkpoint_contents(self):
        """The trainer's arrays and metadata for :meth:`save` (every rank computes them): the state every plan
        saves, and the plan's extras."""
        arrays = {LOSSES_KEY: np.asarray(self.losses, dtype=np.float64)}
        optimizer_state = {}
        for key, value in self.optimizer.state_dict().items():
            if hasattr(value, "shape"):
                arrays[OPTIM_PREFIX + key] = value
            else:
                optimizer_state[key] = value
        extra_arrays, extra_meta = self.data.checkpoint_extras(self.model, self.comm, self.batch_in_epoch)
        arrays.update(extra_arrays)
        trainer = {
            "format_version": TRAINER_FORMAT_VERSION,
            "kind": self.data.KIND,
            "xseq_version": __version__,
            "config": dataclasses.asdict(self.config),
            "corpus": self.data.corpus,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "dropout_rng": self.model.dropout_rng.bit_generator.state,
            "optimizer": optimizer_state,
            "history": self.history,
            "seconds": self.seconds,
            self.data.tokens_key: self.chars_seen,
            **extra_meta,
        }
        return arrays, {"trainer": trainer}

    @classmethod
    def restore(cls, arrays, meta, data_class, *, backend="auto", epochs=None, steps=None, where="checkpoint",
                comm=None, **corpus):
        """Continue a run from what :func:`xseq.load_checkpoint` returned, on any number of processes.

        Parameters
        ----------
        arrays, meta : dict
            The checkpoint's contents.
        data_class : the plan's data class (LineData, StreamData, ...)
            Must be the plan the run was saved with (the state's ``kind``).
        backend : str
        epochs, steps : int, optional
            A new length for the run, counted from its start (at most one);
            None keeps the saved one.
        where : str
            The checkpoint, for messages.
        comm : Communicator, optional
            As for :class:`Trainer`; the ranks are compared after resuming.
        **corpus
            The plan's corpus arguments for ``data_class.resumed`` (the same
            corpus as the saved run's: its fingerprint is checked).

        Raises
        ------
        CheckpointError
            No training state in the file, another format version or plan,
            a training state with a field of the wrong type or range or one
            that contradicts the model or the other fields (counters, the
            optimizer's step count, settings and moments, random streams,
            history, losses, recipe, the plan's extras), or a corpus that
            differs from the saved run's.
        """
        model = data_class.MODEL.from_checkpoint(arrays, meta, backend=backend, where=where)
        state = meta.get("trainer")
        if not isinstance(state, dict):
            raise CheckpointError(f"{where} holds a model but no training state; it cannot be resumed")
        version, kind = state.get("format_version"), saved_kind(state)
        if version != TRAINER_FORMAT_VERSION or kind != data_class.KIND:
            raise CheckpointError(f"{where} has training-state format_version {version!r}, kind {kind!r}; this "
                                  f"version of xseq reads {TRAINER_FORMAT_VERSION}, {data_class.KIND!r}")
        with invalid_state(where):
            data = data_class.resumed(where, state, model, epochs=epochs, steps=steps, **corpus)
            data.attach(model)
            trainer = cls.__new__(cls)
            trainer._setup(data, model, comm)
            restore_run(trainer, where, arrays, state)
        trainer._check_ranks_agree("after resuming")
        return trainer

    # What restore_run asks of a trainer, answered by the plan.

    def _restore_position(self, where, arrays, state):
        self.data.restore_position(where, arrays, state, self.batch_in_epoch, self.model, self.comm)

    def _tokens_after(self, epoch, batch_in_epoch):
        return self.data.tokens_after(epoch, batch_in_epoch)

    def _lr_after(self, step, epoch, batch_in_epoch):
        """The learning rate the optimiser holds after ``step`` steps: the schedule's rate of the epoch of the last
        step taken (the recipe's ``lr`` before the first)."""
        if step == 0:
            return self.config.lr
        return self.config.learning_rate(epoch if batch_in_epoch else epoch - 1)


def saved_kind(state):
    """The plan a saved training state belongs to: its ``kind``, ``"line"`` for xseq 0.1.0's line runs, which
    recorded none."""
    return state.get("kind", "line")


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
