"""What every xseq language model shares: its sizes, its parameters, and its place in a checkpoint.

:class:`~xseq.lm.model.CharLM` (one-hot inputs, one sequence a line) and
:class:`~xseq.lm.stream_model.StreamLM` (an embedding, a token stream in
windows) differ in how text comes in; both hold a recurrent layer
(``self.layer``), a vocabulary, their weights in one dict (``self._params``,
the object an optimiser updates) and gradients keyed alike. Their checkpoints
hold the weights as ``param/<name>`` arrays beside the metadata ``{"format",
"format_version", "model": config(), "dtype", "vocab"}``; a subclass names its
format and checks the stored arrays against its configuration
(:meth:`LanguageModel._from_stored`) before anything is built.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.arrays import asarray, backend_name, to_numpy
from ..nn.optim import _check_positive as check_positive
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .vocab import EOS, EOS_ID, PAD, PAD_ID, SPECIALS, UNK, Vocabulary
from .vocab import _check_int as check_int

PARAM_PREFIX = "param/"


class LanguageModel:
    """The members :class:`~xseq.lm.model.CharLM` and :class:`~xseq.lm.stream_model.StreamLM` share.

    A subclass sets ``vocab``, ``cell``, ``layer``, ``xp``, ``dtype``,
    ``_params`` and ``_grads``, the class attributes ``MODEL_FORMAT`` (the
    checkpoint's ``"format"``) and ``KIND`` (for messages), and implements
    :meth:`config` and :meth:`_from_stored`.
    """

    MODEL_FORMAT = None
    MODEL_FORMAT_VERSION = 1
    KIND = "language model"

    # ------------------------------------------------------------------ structure

    @property
    def vocab_size(self):
        """``V``, the specials included."""
        return len(self.vocab)

    @property
    def hidden_size(self):
        """``n_a``."""
        return self.layer.hidden_size

    @property
    def num_layers(self):
        """Stacked recurrent layers."""
        return self.layer.num_layers

    @property
    def dropout(self):
        """The dropout probability (between layers; a stream model also drops its embedding's outputs and the
        last layer's)."""
        return self.layer.dropout

    @property
    def dropout_rng(self):
        """The NumPy generator of every dropout mask (the layer's)."""
        return self.layer.dropout_rng

    @property
    def dtype_name(self):
        """``"float32"`` or ``"float64"``."""
        return self.layer.dtype_name

    @property
    def backend_name(self):
        """``"numpy"``, ``"cupy"``, ``"torch"`` or ``"array_api_strict"``."""
        return backend_name(self.xp)

    def parameters(self):
        """Every weight in one dict (the same object at every call); an optimiser updates it in place."""
        return self._params

    def grads(self):
        """The gradients of the last ``loss_and_backward``, keyed like :meth:`parameters`."""
        return self._grads

    def num_parameters(self):
        """The number of scalar weights (a tied output matrix counted once)."""
        return sum(math.prod(p.shape) for p in self._params.values())

    def config(self):
        """The constructor arguments that fix the architecture (JSON-serialisable)."""
        raise NotImplementedError

    def _from_host(self, a):
        return asarray(a, backend=self.xp, dtype=self.dtype)

    # ------------------------------------------------------------------ weights

    def state_dict(self):
        """Host (NumPy) copies of :meth:`parameters`."""
        return {k: np.array(to_numpy(v), copy=True) for k, v in self._params.items()}

    def load_state_dict(self, state):
        """Replace every parameter with the arrays of ``state`` (NumPy or any backend).

        float32 and float64 arrays are converted to the model's dtype; integer,
        bool and other arrays are refused, not cast.

        Raises
        ------
        ValueError
            ``state`` lacks a parameter, has one this model does not, an array
            of another shape, or NaN or infinite values.
        TypeError
            An array is not float32 or float64.
        """
        missing = sorted(set(self._params) - set(state))
        unexpected = sorted(set(state) - set(self._params))
        if missing or unexpected:
            raise ValueError(f"state dict does not fit this {self!r}: missing {missing}, unexpected {unexpected}")
        host = {k: np.asarray(to_numpy(v)) for k, v in state.items()}
        for k, p in self._params.items():
            a = host[k]
            if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
                raise TypeError(f"state dict entry {k!r} has dtype {a.dtype}; expected float32 or float64")
            if a.shape != tuple(p.shape):
                raise ValueError(f"state dict entry {k!r} has shape {a.shape}; expected {tuple(p.shape)}")
            finite = np.isfinite(a)
            if not finite.all():
                raise ValueError(f"state dict entry {k!r} holds {a.size - np.count_nonzero(finite)} NaN or "
                                 f"infinite values (of {a.size}); a model with them computes nothing but NaN")
        for k in self._params:  # same dict object: an optimiser built on it stays attached
            self._params[k] = self._from_host(host[k])

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_contents(self):
        """The arrays and metadata of this model for :func:`xseq.save_checkpoint`.

        Returns
        -------
        arrays : dict
            ``"param/<name>"`` -> host array.
        meta : dict
            ``{"format": MODEL_FORMAT, "format_version": 1, "model": config(),
            "dtype": ..., "vocab": vocab.to_json()}``.
        """
        arrays = {PARAM_PREFIX + k: v for k, v in self.state_dict().items()}
        meta = {"format": self.MODEL_FORMAT, "format_version": self.MODEL_FORMAT_VERSION, "model": self.config(),
                "dtype": self.dtype_name, "vocab": self.vocab.to_json()}
        return arrays, meta

    def save(self, path, *, arrays=None, meta=None):
        """Write the model to one ``.npz`` checkpoint, atomically (see :func:`xseq.save_checkpoint`).

        Parameters
        ----------
        path : str or os.PathLike
        arrays, meta : dict, optional
            More arrays and metadata to store alongside (a trainer's state);
            their names must not collide with the model's.
        """
        own_arrays, own_meta = self.checkpoint_contents()
        arrays, meta = dict(arrays or {}), dict(meta or {})
        for name, extra, own in (("arrays", arrays, own_arrays), ("meta", meta, own_meta)):
            clash = sorted(set(extra) & set(own))
            if clash:
                raise ValueError(f"{name} keys {clash} are the model's own; choose other names")
        save_checkpoint(path, arrays={**own_arrays, **arrays}, meta={**own_meta, **meta})

    @classmethod
    def from_checkpoint(cls, arrays, meta, *, backend="numpy", where="checkpoint"):
        """Rebuild a model from what :func:`xseq.load_checkpoint` returned.

        The configuration and the stored parameters are checked against each
        other before anything is built: every parameter's name, shape and dtype
        must be those the configuration implies, so a configuration that
        disagrees with the file costs no memory. Then every value must be finite.

        Raises
        ------
        CheckpointError
            The metadata is not this class's, of another format version, or does
            not match the arrays; an array is not of the model's dtype, or holds
            NaN or infinite values.
        """
        if meta.get("format") != cls.MODEL_FORMAT:
            raise CheckpointError(f"{where} holds no xseq {cls.KIND} (format {meta.get('format')!r}; "
                                  f"expected {cls.MODEL_FORMAT!r})")
        if meta.get("format_version") != cls.MODEL_FORMAT_VERSION:
            raise CheckpointError(f"{where} has model format_version {meta.get('format_version')!r}; "
                                  f"this version of xseq reads {cls.MODEL_FORMAT_VERSION}")
        try:
            vocab = Vocabulary.from_json(meta["vocab"])
            config, dtype = meta["model"], meta["dtype"]
            if not isinstance(config, dict):
                raise TypeError(f"metadata entry 'model' must be an object; got {type(config).__name__}")
            state = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
            model = cls._from_stored(vocab, config, state, dtype, backend)
            model.load_state_dict(state)
        except KeyError as exc:
            raise CheckpointError(f"{where} has an invalid model: no metadata entry {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} has an invalid model: {exc}") from None
        return model

    @classmethod
    def _from_stored(cls, vocab, config, state, dtype, backend):
        """The model ``config`` describes, once the stored parameters ``state`` are checked against it (their
        names, shapes and dtype); TypeError, ValueError or KeyError otherwise."""
        raise NotImplementedError

    @classmethod
    def load(cls, path, *, backend="numpy"):
        """Read a model saved by :meth:`save` (or by training).

        Raises
        ------
        CheckpointError
            Missing, truncated, corrupt, wrong-version or non-model file; the message names the path.
        """
        arrays, meta = load_checkpoint(path)
        return cls.from_checkpoint(arrays, meta, backend=backend, where=f"checkpoint {str(path)!r}")

    # ------------------------------------------------------------------ sampling

    def _sample_ids(self, prefix_ids, n, max_len, *, first_input, offset, never, top_k, temperature, seed):
        """Draw ``n`` samples together and decode them: every one starts from the zero state with the input
        ``first_input``, reads ``prefix_ids``, then draws (:func:`choose_next`) until ``<eos>`` or ``max_len``.

        ``self._step(ids, state)`` gives host scores whose row ``j`` scores id ``j + offset`` (a copy the loop
        may write into); the ids of ``never`` are never drawn, nor ``<eos>`` as a sample's first token.
        """
        rng = np.random.default_rng(seed)
        samples = np.zeros((n, max_len), dtype=np.int64)
        samples[:, :len(prefix_ids)] = prefix_ids
        done = np.zeros(n, dtype=bool)
        state, previous = None, np.full(n, first_input, dtype=np.int64)
        for t in range(max_len):
            scores, state = self._step(previous, state)
            if t < len(prefix_ids):
                previous = samples[:, t]
                continue
            scores[[i - offset for i in never]] = -np.inf
            if t == 0:
                scores[EOS_ID - offset] = -np.inf
            drawn = choose_next(scores, top_k=top_k, temperature=temperature, rng=rng) + offset
            samples[:, t] = np.where(done, PAD_ID, drawn)
            done |= drawn == EOS_ID
            if done.all():
                break
            previous = samples[:, t]
        return [self.vocab.decode(row.tolist()) for row in samples]


def check_stored_shapes(state, shapes, dtype, source):
    """The stored parameters ``state`` must be exactly ``shapes`` (name -> shape), each of ``dtype``; ValueError
    or TypeError naming the parameter and ``source`` (the configuration that implies the shapes)."""
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the model of {source}: missing {missing}, unexpected {unexpected}")
    for name, shape in shapes.items():
        a = state[name]
        if a.dtype != np.dtype(dtype):
            raise TypeError(f"parameter {name!r} has dtype {a.dtype}; expected {dtype}, the checkpoint's dtype")
        if a.shape != shape:
            raise ValueError(f"parameter {name!r} has shape {a.shape}; expected {shape} from {source}")


class SamplingError(ValueError):
    """A model that cannot be sampled: no token to draw, or scores that are not numbers."""


def check_sampling(n, max_len, temperature, top_k, prefix):
    """The arguments of a model's ``sample`` (TypeError or ValueError naming a bad one); the temperature as a
    float."""
    check_int("n", n, 1)
    check_int("max_len", max_len, 1)
    temperature = check_positive("temperature", temperature)
    if top_k is not None:
        check_int("top_k", top_k, 1)
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str; got {type(prefix).__name__}")
    return temperature


def check_prefix(vocab, prefix, max_len):
    """The ids of a sample's ``prefix``, once sampling can honour it; ValueError naming what cannot be.

    ``<eos>`` ends a sample, and :meth:`Vocabulary.decode` stops there, so a
    prefix holding it would print as its text before the ``<eos>`` alone: it
    is refused. Only a word vocabulary of the whitespace tokenizer reads the
    word ``<eos>`` as that token; at character level ``"<eos>"`` is five
    characters and the regex tokenizer gives ``<``, ``eos``, ``>``, ordinary
    text. A vocabulary of the specials alone raises :class:`SamplingError`:
    ``<pad>`` and ``<unk>`` are never drawn and a sample never starts with
    ``<eos>``, so there is no token to draw.
    """
    if len(vocab) == len(SPECIALS):
        raise SamplingError(
            f"the model's vocabulary has no token to draw: it holds only {' '.join(SPECIALS)} (V = {len(vocab)}); "
            f"{PAD} and {UNK} are never drawn and a sample never starts with {EOS}, so a model needs another "
            "token to be sampled (train it with a larger --vocab-size)")
    prefix_ids = vocab.encode(prefix)
    if EOS_ID in prefix_ids:
        raise ValueError(
            f"prefix {prefix!r} holds {EOS} (its token {prefix_ids.index(EOS_ID) + 1} of {len(prefix_ids)}): "
            f"{EOS} ends a sample, so a prefix cannot hold it; give the text of one line")
    if len(prefix_ids) > max_len:
        raise ValueError(f"prefix has {len(prefix_ids)} tokens, more than max_len = {max_len}")
    return prefix_ids


def choose_next(scores, *, top_k, temperature, rng):
    """One id per column of ``scores`` (V, m): the ``top_k`` best (None: all), softened by ``temperature``, drawn.

    ``scores`` is modified; entries of -inf are never drawn. A column with no
    finite entry, or with a NaN or +inf (a model whose weights overflow),
    raises :class:`SamplingError`: it gives no distribution to draw from.
    """
    _check_scores(scores)
    V = scores.shape[0]
    if top_k is not None and top_k < V:
        cut = np.partition(scores, V - top_k, axis=0)[V - top_k]
        scores[scores < cut] = -np.inf
    # Shift before dividing: the likeliest token scores 0 at any
    # temperature, so a tiny one sends every other score to -inf
    # (greedy decoding) instead of overflowing to inf - inf = NaN.
    with np.errstate(over="ignore", under="ignore"):
        scores = (scores - scores.max(axis=0, keepdims=True)) / temperature
    return _draw(scores, rng)


def _check_scores(scores):
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise SamplingError("the model's scores hold NaN or +inf (weights so large that the output overflows): "
                            "they give no distribution to draw from")
    if np.isneginf(scores).all(axis=0).any():
        raise SamplingError("no token is left to draw: every token that may be drawn scores -inf")


def _draw(scores, rng):
    """One id per column of ``scores`` (V, m), drawn from softmax over each column (-inf = never)."""
    p = np.exp(scores - scores.max(axis=0, keepdims=True))
    cumulative = np.cumsum(p, axis=0)
    u = rng.random(scores.shape[1]) * cumulative[-1]
    # The first id whose cumulative mass exceeds u: always one of positive probability.
    return (cumulative <= u).sum(axis=0)
