"""The recipe of a training run (:class:`TrainConfig`), its defaults, and the error of a run that diverged.

:class:`~xseq.lm.stream_train.StreamConfig` adds a stream run's fields to it.
"""

from __future__ import annotations

import dataclasses
import math

from .model import CELLS
from .vocab import _check_int as check_int

OPTIMIZERS = ("adam", "sgd")
CLIP_MODES = ("norm", "value")
DEFAULT_EPOCHS = 15
DEFAULT_MAX_SEQ_LEN = 256
EVALUATION_BATCH = 256  # sequences per forward pass of evaluate
DEFAULT_LR = {"adam": 0.003, "sgd": 0.5}


class DivergedError(ArithmeticError):
    """The loss stopped being a finite number (the learning rate is too large, or clipping is off)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every plan's recipe has (:class:`TrainConfig`, :class:`~xseq.lm.stream_train.StreamConfig`); every
    field has the default of ``xseq train``.

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


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunConfig):
    """The recipe of a line run: :class:`RunConfig`'s fields and ``max_seq_len``.

    Parameters
    ----------
    max_seq_len : int
        Longest sequence in tokens: longer lines are split into pieces of this
        length (see :func:`~xseq.lm.lines_data.split_sequences`).
    """

    max_seq_len: int = DEFAULT_MAX_SEQ_LEN

    def __post_init__(self):
        super().__post_init__()
        check_int("max_seq_len", self.max_seq_len, 1)


def _check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
