"""The training recipe of the language model, shared by ``xseq train`` and the benchmarks.

:class:`Trainer` holds a :class:`~xseq.CharLM`, its optimiser, the data and
every counter and random stream of a run, so that a run saved by
:meth:`Trainer.save` and continued by :meth:`Trainer.resume` gives exactly
the losses the uninterrupted run gives.

The recipe
----------
* One line of the corpus is one sequence; the vocabulary is every character of the corpus.
* A validation split of ``val_fraction`` of the sequences (at least one) is
  held out, chosen by ``numpy.random.default_rng([seed, 1])``.
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import signal
import time

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint
from .model import CELLS, CharLM
from .optim import SGD, Adam, clip_by_global_norm, clip_by_value
from .vocab import Vocabulary
from .vocab import _check_int as check_int

TRAINER_FORMAT_VERSION = 1
OPTIMIZERS = ("adam", "sgd")
CLIP_MODES = ("norm", "value")
DEFAULT_EPOCHS = 15
DEFAULT_LR = {"adam": 0.003, "sgd": 0.5}
_OPTIM_PREFIX = "optim/"
_LOSSES_KEY = "train/losses"


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
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        for name, allowed in (("cell", tuple(CELLS)), ("optimizer", OPTIMIZERS), ("clip_mode", CLIP_MODES),
                              ("dtype", ("float32", "float64"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        for name in ("hidden_size", "num_layers", "batch_size"):
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
    lines : list of str
        At least two sequences.
    val_fraction : float in (0, 1)
    seed : int

    Returns
    -------
    train, validation : list of str
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


def evaluate(model, sequences, batch_size=256):
    """Mean cross-entropy per predicted token (``<eos>`` included) of ``model`` on ``sequences``.

    Parameters
    ----------
    model : CharLM
    sequences : list of lists of int
        Encoded sequences (without ``<eos>``).
    batch_size : int
        Sequences per forward pass; they are grouped by length to limit padding.

    Returns
    -------
    float
        Nats per token; ``exp`` of it is the perplexity.
    """
    if not sequences:
        raise ValueError("sequences is empty; nothing to evaluate")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    total = count = 0
    for start in range(0, len(order), batch_size):
        batch_total, batch_count = model.loss(*model.batch([sequences[i] for i in order[start:start + batch_size]]))
        total += batch_total
        count += batch_count
    return total / count


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

    Attributes
    ----------
    model : CharLM
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
        :meth:`run` after the current step.
    """

    def __init__(self, lines, config=None, *, backend="auto", source=None):
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be an xseq.train.TrainConfig; got {type(config).__name__}")
        lines = list(lines)
        model = CharLM(Vocabulary.from_text(lines), config.hidden_size, cell=config.cell,
                       num_layers=config.num_layers, dropout=config.dropout, backend=backend,
                       dtype=config.dtype, seed=config.seed)
        self._setup(lines, config, model, source)

    def _setup(self, lines, config, model, source):
        """Everything but the model: data, optimiser, streams and counters at the start of a run."""
        train_lines, val_lines = split_corpus(lines, config.val_fraction, config.seed)
        self.train_ids = [model.vocab.encode(s) for s in train_lines]
        self.val_ids = [model.vocab.encode(s) for s in val_lines]
        self.config = config
        self.model = model
        self.source = source
        self.corpus = {"source": source, "sha256": corpus_fingerprint(lines), "sequences": len(lines)}
        params = model.parameters()
        if config.optimizer == "adam":
            self.optimizer = Adam(params, lr=config.lr)
        else:
            self.optimizer = SGD(params, lr=config.lr, momentum=config.momentum)
        self.shuffle_rng = np.random.default_rng([config.seed, 2])
        self.step = self.epoch = self.batch_in_epoch = 0
        self.losses, self.history = [], []
        self.seconds = 0.0
        self.chars_seen = 0
        self.stop_requested = False
        self._order = None
        self._epoch_start_rng_state = None

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
        self.step += 1
        self.batch_in_epoch += 1
        self.chars_seen += sum(len(s) + 1 for s in sequences)
        self.losses.append(loss)
        if self.batch_in_epoch == self.steps_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
            self._order = None
        return loss

    def learn(self, sequences):
        """Forward, backward, clipping and one optimiser step on a batch; returns the batch's loss.

        The one place where the model is trained: a subclass may override it
        (and :meth:`validation_loss`) to train another implementation with
        exactly the same data, order and bookkeeping, as the PyTorch
        benchmark does.

        Parameters
        ----------
        sequences : list of lists of int
            The batch's encoded sequences (without ``<eos>``).
        """
        loss = self.model.loss_and_backward(*self.model.batch(sequences), training=True)
        grads = self.model.grads()
        clip = self.config.clip
        if clip:
            if self.config.clip_mode == "norm":
                grads, _ = clip_by_global_norm(grads, clip)
            else:
                grads = clip_by_value(grads, clip)
        self.optimizer.step(grads)
        return loss

    def validation_loss(self):
        """Mean cross-entropy per character of the model on the validation split."""
        return evaluate(self.model, self.val_ids)

    def validate(self):
        """Record the validation loss in :attr:`history` and return the record."""
        last_step = self.history[-1]["step"] if self.history else 0
        recent = self.losses[last_step:]
        record = {
            "epoch": round(self.epoch + self.batch_in_epoch / self.steps_per_epoch, 4),
            "step": self.step,
            "train_loss": float(np.mean(recent)) if recent else None,
            "val_loss": self.validation_loss(),
            "seconds": round(self.seconds, 3),
        }
        self.history.append(record)
        return record

    def run(self, *, out=None, progress=False, log=None, handle_sigint=False):
        """Train until :attr:`total_steps` (or until :attr:`stop_requested`).

        Validates after every epoch and at the end; saves to ``out`` after
        every epoch, at the end, and when stopped early.

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
                while self.step < total and not self.stop_requested:
                    started = time.perf_counter()
                    loss = self.train_step()
                    self.seconds += time.perf_counter() - started
                    if bar is not None:
                        rate = (self.chars_seen - chars_at_start) / max(self.seconds - seconds_at_start, 1e-9)
                        bar.set_postfix({"loss": f"{loss:.3f}", "chars/s": f"{rate:,.0f}"}, refresh=False)
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
        """Write the model and everything needed to resume to one ``.npz`` file, atomically."""
        from . import __version__

        arrays = {_LOSSES_KEY: np.asarray(self.losses, dtype=np.float64)}
        optimizer_state = {}
        for key, value in self.optimizer.state_dict().items():
            if hasattr(value, "shape"):
                arrays[_OPTIM_PREFIX + key] = value
            else:
                optimizer_state[key] = value
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
        self.model.save(path, arrays=arrays, meta={"trainer": trainer})

    @classmethod
    def resume(cls, path, lines, *, backend="auto", epochs=None, steps=None, source=None):
        """Continue a run saved by :meth:`save`.

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

        Raises
        ------
        CheckpointError
            Unreadable or corrupt file, no training state in it, another format
            version, or a corpus that differs from the saved run's.
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
        try:
            config = dict(state["config"])
            if epochs is not None or steps is not None:
                config.update(epochs=epochs, steps=steps)
            config = TrainConfig(**config)
            recorded = state["corpus"]
            if recorded["sha256"] != corpus_fingerprint(lines):
                raise CheckpointError(
                    f"{where} was trained on another corpus ({recorded['source'] or 'unknown source'}, "
                    f"{recorded['sequences']} sequences) than {source or 'the given one'} "
                    f"({len(lines)} sequences); resume with the same corpus")
            trainer = cls.__new__(cls)
            trainer._setup(lines, config, model, source if source is not None else recorded["source"])
            trainer.optimizer.load_state_dict({
                **state["optimizer"],
                **{k[len(_OPTIM_PREFIX):]: v for k, v in arrays.items() if k.startswith(_OPTIM_PREFIX)}})
            trainer.step, trainer.epoch = state["step"], state["epoch"]
            trainer.batch_in_epoch = state["batch_in_epoch"]
            trainer.shuffle_rng.bit_generator.state = state["shuffle_rng"]
            if trainer.batch_in_epoch:
                trainer._epoch_start_rng_state = trainer.shuffle_rng.bit_generator.state
                trainer._order = trainer.shuffle_rng.permutation(len(trainer.train_ids))
            model.layer.dropout_rng.bit_generator.state = state["dropout_rng"]
            trainer.losses = [float(x) for x in arrays[_LOSSES_KEY]]
            trainer.history = list(state["history"])
            trainer.seconds, trainer.chars_seen = float(state["seconds"]), int(state["chars_seen"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} has an invalid training state: {type(exc).__name__}: {exc}") from None
        if len(trainer.losses) != trainer.step:
            raise CheckpointError(f"{where} records {len(trainer.losses)} losses for {trainer.step} steps")
        return trainer


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
