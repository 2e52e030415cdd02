"""The recipe of a training run (:class:`TrainConfig`), its defaults, and the error of a run that diverged.

:class:`StreamConfig` adds a stream run's fields to it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .language_model import CELLS
from .vocab import _check_int as check_int

OPTIMIZERS = ("adam", "sgd")
CLIP_MODES = ("norm", "value")
DEFAULT_EPOCHS = 15
DEFAULT_MAX_SEQ_LEN = 256
EVALUATION_BATCH = 256  # sequences per forward pass of evaluate
DEFAULT_LR = {"adam": 0.003, "sgd": 0.5}
LEVELS = ("word", "char")
DEFAULT_BPTT = 20
STREAM_DEFAULT_LR = {"adam": 0.003, "sgd": 1.0}
# The sequence-to-sequence defaults: the built-in dates to 99.5% exact match on held-out dates in about two minutes
# on a 2-core laptop (benchmarks/README.md, "Sequence to sequence").
DEFAULT_SEQ2SEQ = {"hidden_size": 32, "decoder_size": 64, "embed_size": 16, "batch_size": 64, "lr": 0.005,
                   "epochs": 10, "pairs": 12000}


class DivergedError(ArithmeticError):
    """The loss stopped being a finite number (the learning rate is too large, or clipping is off)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every plan's recipe has (:class:`TrainConfig`, :class:`StreamConfig`); every
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

    def learning_rate(self, epoch):
        """The learning rate of the epoch after ``epoch`` whole epochs: ``lr``, for the whole run."""
        return self.lr


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


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig(RunConfig):
    """The recipe of a sequence-to-sequence run: :class:`RunConfig`'s fields (``hidden_size`` is the encoder's,
    per direction) and these; the defaults train the built-in dates to the issue's target on a laptop.

    Parameters
    ----------
    level : {"char", "word"}
        Tokens of both vocabularies.
    decoder_size : int
        ``n_s``, the decoder LSTM's state.
    embed_size : int
        ``D`` of the source and target embeddings.
    attention_size : int
        Units of the attention's energy layer (the course: 10).
    feed_previous : bool
        Feed the decoder the previous target token besides the context (teacher forcing in training).
    beam : int >= 1
        Beam width of decoding after training and in ``evaluate``/``translate`` by default (1: greedy).
    pairs : int >= 2
        Pairs the built-in date generator writes (held-out dates included) when no file is given.
    """

    hidden_size: int = DEFAULT_SEQ2SEQ["hidden_size"]
    batch_size: int = DEFAULT_SEQ2SEQ["batch_size"]
    level: str = "char"
    decoder_size: int = DEFAULT_SEQ2SEQ["decoder_size"]
    embed_size: int = DEFAULT_SEQ2SEQ["embed_size"]
    attention_size: int = 10
    feed_previous: bool = True
    beam: int = 1
    pairs: int = DEFAULT_SEQ2SEQ["pairs"]

    def __post_init__(self):
        if self.epochs is None and self.steps is None:
            object.__setattr__(self, "epochs", DEFAULT_SEQ2SEQ["epochs"])
        if self.lr is None and self.optimizer == "adam":
            object.__setattr__(self, "lr", DEFAULT_SEQ2SEQ["lr"])
        super().__post_init__()
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}; got {self.level!r}")
        for name in ("decoder_size", "embed_size", "attention_size", "beam"):
            check_int(name, getattr(self, name), 1)
        check_int("pairs", self.pairs, 2)
        if not isinstance(self.feed_previous, bool):
            raise TypeError(f"feed_previous must be True or False; got {self.feed_previous!r}")


def _check_real(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
