"""The language model of xseq: an input layer, a recurrent stack and a projection to the vocabulary.

One model serves every way of reading text (:mod:`xseq.lm.plan_lines`, :mod:`xseq.lm.plan_stream`), at character
and at word level::

    x<t>      = input(id<t>)                     (n_x, m)   one-hot column, or embedding row
    a<t>      = layer(x<1..t>, state)            (n_a, m)   RNN, LSTM or GRU stack
    logits<t> = Wy a<t> + by                     (n_y, m)
    y_hat<t>  = softmax(logits<t>)

The input is configured (``input=``):

* ``"one_hot"``, the course's dinosaur-names model: ``x<t>`` is the one-hot column of ``id<t>`` (``n_x = V``),
  id 0 (``<pad>``, also the course's zero first input) the all-zero column. Its projection scores every id, with
  the course's shapes ``Wy`` ``(V, n_a)`` and ``by`` ``(V, 1)``, through a dense softmax
  (:func:`~xseq.nn.losses.softmax_cross_entropy`). Dropout acts between stacked layers only.
* ``"embedding"``, the word-level model of Zaremba et al. (2014) and of PyTorch's ``word_language_model``:
  ``x<t>`` is row ``id<t>`` of an ``(V, D)`` :class:`~xseq.Embedding` (the one-hot product without the product).
  ``<pad>`` is never predicted, so the projection scores ids 1 .. V-1 only (``Wy`` ``(V-1, n_a)``, ``by``
  ``(V-1,)``: a Penn Treebank model has exactly the published 10,000-way softmax), through the fused, chunked
  :func:`~xseq.nn.projection_loss.projection_cross_entropy`. ``tie_weights`` makes the embedding's rows 1 .. V-1
  the output matrix (Press and Wolf 2017; needs ``D == n_a``). Dropout also drops the embedding's outputs and the
  last layer's outputs (Zaremba's non-recurrent dropout), every mask from the layer's
  :attr:`~xseq.LSTM.dropout_rng`, in that order.

A batch is ``inputs`` and ``targets``, ``(m, T)`` integer ids, with an optional ``mask`` of the predicted positions
and an optional carried ``state``. :meth:`LanguageModel.loss_and_backward` averages the summed cross-entropy over
the tokens (``average="tokens"``, the course's cost) or over the ``m`` rows (``"streams"``, the Penn Treebank
convention).

Parameters live in one dict (:meth:`LanguageModel.parameters`, the same object at every call, the object an
optimiser updates): ``"embedding"`` (embedding input), the layer's arrays under PyTorch's names (``weight_ih_l0``,
...), ``"Wy"`` (untied) and ``"by"``. A checkpoint holds them as ``param/<name>`` arrays beside the metadata of
:mod:`xseq.lm.model_schema`; files of xseq 0.1.0 load too. :class:`~xseq.CharLM` and :class:`~xseq.StreamLM` are
this model with its input fixed.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.arrays import refuse_masked, to_numpy
from ..backends.checks import check_sizes
from ..nn.embedding import Embedding, add_rows
from ..nn.losses import softmax_cross_entropy
from ..nn.optim import _check_positive as check_positive
from ..nn.params import PARAM_PREFIX, ModelWeights, seed_child  # noqa: F401 (PARAM_PREFIX: re-exported)
from ..nn.projection_loss import projection_cross_entropy, projection_nll
from ..ops.inference import inference_mode
from . import checkpoint
from .checkpoint import CheckpointError
from .model_schema import (  # noqa: F401
    CELLS,
    INPUTS,
    LEGACY_FORMATS,
    MODEL_FORMAT,
    bias_shape,
    check_stored_parameters,
    checked_state_dict,
    model_config,
    parameter_shapes,
)
from .sampling import check_prefix, check_sampling, sample_ids
from .vocab import EOS_ID, PAD_ID, UNK_ID, Vocabulary

AVERAGES = ("tokens", "streams")
# Children of numpy.random.SeedSequence(seed): 0 is the layer's dropout stream (see xseq.LSTM),
# 1 the output weights, 2 the embedding, 3 the draws of init_scale.
_OUTPUT_SEED, _EMBEDDING_SEED, _INIT_SCALE_SEED = 1, 2, 3


class LanguageModel(ModelWeights):
    """Input layer, recurrent stack and output projection: see the module docstring.

    The weights' methods (``parameters``, ``grads``, ``state_dict``, ``load_state_dict``, ``save``, ``load``, ...)
    are :class:`~xseq.nn.params.ModelWeights`'s.

    Parameters
    ----------
    vocab : Vocabulary
        ``V = len(vocab)``; ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<eos>``.
    hidden_size : int, default 128
        ``n_a``.
    input : {"embedding", "one_hot"}, default "embedding"
    cell : {"lstm", "gru", "rnn"}, default "lstm"
    num_layers : int, default 1
    embed_size : int or None
        ``D`` of an embedding input; None for ``hidden_size``. A one-hot input
        has ``n_x = V`` and takes None.
    tie_weights : bool, default False
        Use the embedding's rows 1 .. V-1 as the output matrix (needs ``D == n_a``).
    dropout : float in [0, 1), default 0
        In training only; where it acts depends on the input (module docstring).
    init_scale : float > 0 or None
        Draw every parameter, biases included, uniform in ``[-init_scale, init_scale]``
        (Zaremba et al.: 0.1 for the small model, 0.05 for the medium). None keeps
        PyTorch's defaults: the embedding standard normal, the layers and the
        projection uniform in ``(-1/sqrt(n_a), 1/sqrt(n_a))``.
    backend : str or namespace, default "numpy"
        See :func:`xseq.backend` (``"auto"`` picks CuPy where it runs).
    dtype : {"float32", "float64"}, default "float32"
    seed : int, default 0
        Seeds every weight and the dropout stream (independent streams derived from it).

    Attributes
    ----------
    vocab : Vocabulary
    input : str
    embedding : xseq.Embedding or None
        ``(V, D)``, for an embedding input.
    layer : RNN, LSTM or GRU
        Unidirectional, ``input_size`` ``V`` (one-hot) or ``D``.
    xp : namespace
        The backend's array namespace.
    """

    MODEL_FORMAT = MODEL_FORMAT
    MODEL_FORMAT_VERSION = 1
    _checkpoint = checkpoint  # its checkpoint file's functions, for xseq.nn.params.ModelWeights

    def __init__(self, vocab, hidden_size=128, *, input="embedding", cell="lstm", num_layers=1, embed_size=None,
                 tie_weights=False, dropout=0.0, init_scale=None, backend="numpy", dtype="float32", seed=0):
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be an xseq.Vocabulary; got {type(vocab).__name__}")
        if input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}; got {input!r}")
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}; got {cell!r}")
        if not isinstance(tie_weights, bool):
            raise TypeError(f"tie_weights must be True or False; got {tie_weights!r}")
        one_hot = input == "one_hot"
        if one_hot and (embed_size is not None or tie_weights):
            raise ValueError(f"a one-hot input has no embedding: embed_size must be None and tie_weights False; "
                             f"got embed_size={embed_size!r}, tie_weights={tie_weights}")
        embed_size = hidden_size if embed_size is None and not one_hot else embed_size
        if not one_hot:
            check_sizes(hidden_size=hidden_size, embed_size=embed_size)
        if tie_weights and embed_size != hidden_size:
            raise ValueError(f"tie_weights needs embed_size equal to hidden_size (the output matrix is the "
                             f"embedding); got embed_size={embed_size}, hidden_size={hidden_size}")
        if init_scale is not None:
            init_scale = check_positive("init_scale", init_scale)
        V = len(vocab)
        self.vocab, self.input, self.cell, self.tie_weights = vocab, input, cell, tie_weights
        self.layer = CELLS[cell](V if one_hot else embed_size, hidden_size, num_layers=num_layers, dropout=dropout,
                                 backend=backend, dtype=dtype, seed=seed)
        self.xp, self.dtype = self.layer.xp, self.layer.dtype
        n_a = self.layer.hidden_size
        # The first id the projection scores: every id (the course's), or all but <pad>.
        self._first = 0 if one_hot else 1
        self._params = {}
        self.embedding = None
        if not one_hot:
            self.embedding = Embedding(V, embed_size, backend=self.xp, dtype=self.layer.dtype_name,
                                       seed=seed_child(seed, _EMBEDDING_SEED))
            self._params["embedding"] = self.embedding.parameters["weight"]
        self._params.update(self.layer.parameters)
        rng = np.random.default_rng(seed_child(seed, _OUTPUT_SEED))
        bound = 1 / math.sqrt(n_a)
        if not tie_weights:
            self._params["Wy"] = self._from_host(rng.uniform(-bound, bound, size=(V - self._first, n_a)))
        self._params["by"] = self._from_host(rng.uniform(-bound, bound, size=bias_shape(input, V)))
        if init_scale is not None:
            scaled = np.random.default_rng(seed_child(seed, _INIT_SCALE_SEED))
            for key, p in self._params.items():
                self._params[key] = self._from_host(scaled.uniform(-init_scale, init_scale, size=tuple(p.shape)))
        self._grads = {k: self.xp.zeros_like(v) for k, v in self._params.items()}
        if one_hot:
            # Row v of a one-hot input is 1 where the id is v, except id 0, which matches no row.
            codes = self.xp.arange(V)
            self._input_codes = self.xp.where(codes == PAD_ID, -1, codes)

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
    def embed_size(self):
        """``D`` of an embedding input; None for a one-hot input."""
        return None if self.embedding is None else self.embedding.dim

    @property
    def _recurrent(self):
        """The layer (xseq.nn.params.ModelWeights reads its dropout stream and dtype)."""
        return self.layer

    def config(self):
        """The constructor arguments that fix the architecture (JSON-serialisable)."""
        return {"input": self.input, "cell": self.cell, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "embed_size": self.embed_size, "tie_weights": self.tie_weights,
                "dropout": self.dropout}

    def initial_state(self, m):
        """The zero state of ``m`` rows: ``(num_layers, n_a, m)``, a tuple ``(h, c)`` for the LSTM."""
        h = self.xp.zeros((self.num_layers, self.hidden_size, m), dtype=self.dtype)
        return (h, self.xp.zeros_like(h)) if self.cell == "lstm" else h

    def __repr__(self):
        embedding = "" if self.embedding is None else f", embed_size={self.embed_size}, tie_weights={self.tie_weights}"
        return (f"{type(self).__name__}(V={self.vocab_size}, level={self.vocab.level!r}, input={self.input!r}, "
                f"cell={self.cell!r}{embedding}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
                f"backend={self.backend_name!r}, dtype={self.dtype_name!r})")

    # ------------------------------------------------------------------ forward and backward

    def _one_hot(self, ids):
        """(m, T) host ids -> (V, m, T) one-hot, id 0 as the zero column, built time-major."""
        xp = self.xp
        ids_tm = xp.asarray(np.ascontiguousarray(ids.T))  # (T, m)
        X_tm = xp.astype(xp.reshape(ids_tm, (*ids_tm.shape, 1)) == self._input_codes, self.dtype)
        return xp.permute_dims(X_tm, (2, 1, 0))

    def _inputs(self, inputs):
        """The layer's input ``(n_x, m, T)`` for ``(m, T)`` ids (checked)."""
        refuse_masked("inputs", inputs)
        if getattr(inputs, "ndim", None) != 2:
            raise ValueError(f"inputs must be a 2-D integer array (m, T); got {type(inputs).__name__} "
                             f"of shape {getattr(inputs, 'shape', None)}")
        if self.embedding is not None:
            self.embedding.parameters = {"weight": self._params["embedding"]}
            return self.embedding.forward(inputs)  # (D, m, T), a view of time-major (T, m, D) rows
        host = np.asarray(to_numpy(inputs))
        if not np.issubdtype(host.dtype, np.integer):
            raise TypeError(f"inputs has dtype {host.dtype}; expected integer ids")
        if host.size and (host.min() < 0 or host.max() >= self.vocab_size):
            i, t = np.argwhere((host < 0) | (host >= self.vocab_size))[0]
            raise ValueError(f"inputs[{i}][{t}] = {host[i, t]} is out of range; expected 0 <= id < V = "
                             f"{self.vocab_size}")
        return self._one_hot(host)

    def _hidden(self, inputs, state, training):
        """The last layer's states ``(T*m, n_a)`` (time-major rows), the final state, and the dropout masks."""
        xp = self.xp
        self.layer.parameters = {k: self._params[k] for k in self.layer.parameters}
        m, T = inputs.shape
        drop = training and self.dropout > 0 and self.embedding is not None
        e = self._inputs(inputs)
        embed_mask = out_mask = None
        if drop:
            embed_mask = self._mask((T, m, self.embed_size))
            e = xp.permute_dims(xp.permute_dims(e, (2, 1, 0)) * embed_mask, (2, 1, 0))
        outputs, final_state = self.layer.forward(e, state, training=training)
        A = xp.reshape(xp.permute_dims(outputs, (2, 1, 0)), (T * m, self.hidden_size))
        if drop:
            out_mask = xp.reshape(self._mask((T, m, self.hidden_size)), (T * m, self.hidden_size))
            A = A * out_mask
        return A, final_state, (embed_mask, out_mask)

    def _output(self):
        """``(W, b)`` of the projection: ``Wy`` (or the embedding's rows 1 .. V-1 when tied), ``by`` as a vector."""
        W = self._params["embedding"][1:, ...] if self.tie_weights else self._params["Wy"]
        b = self._params["by"]
        return W, (b[:, 0] if self.embedding is None else b)

    def _targets(self, inputs, targets, mask):
        """Host ``targets`` and ``mask`` (m, T), checked: a masked-out position may hold any id in range."""
        refuse_masked("targets", targets)
        host = np.asarray(to_numpy(targets))
        if not np.issubdtype(host.dtype, np.integer):
            raise TypeError(f"targets has dtype {host.dtype}; expected integer ids")
        if host.shape != tuple(inputs.shape):
            raise ValueError(f"targets has shape {host.shape}; expected (m, T) = {tuple(inputs.shape)} from inputs")
        if mask is not None:
            refuse_masked("mask", mask)
            mask = np.asarray(to_numpy(mask))
            if mask.dtype != np.bool_ or mask.shape != host.shape:
                raise ValueError(f"mask must be a bool array of shape {host.shape}; got {mask.dtype} {mask.shape}")
        valid = np.ones(host.shape, dtype=bool) if mask is None else mask
        bad = valid & ((host < self._first) | (host >= self.vocab_size))
        if bad.any():
            i, t = np.argwhere(bad)[0]
            what = ("<pad> (id 0), which an embedding model never predicts"
                    if host[i, t] == PAD_ID and self._first else "out of range")
            raise ValueError(f"targets[{i}][{t}] = {host[i, t]} is {what}; expected {self._first} <= id < "
                             f"V = {self.vocab_size}")
        return host, mask

    def loss_and_backward(self, inputs, targets, state=None, *, mask=None, average="streams", training=True):
        """The cross-entropy of a batch, and the gradient of every parameter (then in :meth:`grads`).

        Parameters
        ----------
        inputs : (m, T) integer array (NumPy or this model's backend)
            Ids ``0 <= id < V``.
        targets : (m, T) integer array
            The next ids; an embedding model never predicts ``<pad>``.
        state : the carried state, or None for zeros
            ``(num_layers, n_a, m)``, a tuple ``(h, c)`` for the LSTM, e.g. the
            final state of an earlier call. No gradient flows into it
            (truncated back-propagation through time).
        mask : (m, T) bool array, optional
            The positions that are predicted (None: all); the others are left
            out of the loss.
        average : {"streams", "tokens"}
            ``"streams"`` (the Penn Treebank convention): the gradients are of
            the cross-entropy summed over the predicted positions and averaged
            over the ``m`` rows, and the summed cross-entropy is returned.
            ``"tokens"`` (the course's cost): the gradients are of the mean
            over the predicted positions, which is returned.
        training : bool, default True
            Apply dropout.

        Returns
        -------
        loss : float
            In nats: the sum (``"streams"``) or the mean (``"tokens"``).
        final_state
            The state after the last step, to carry into the next batch.
        """
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}; got {average!r}")
        xp = self.xp
        host, mask = self._targets(inputs, targets, mask)
        m, T = host.shape
        count = int(mask.sum()) if mask is not None else m * T
        A, final_state, (embed_mask, out_mask) = self._hidden(inputs, state, training)
        W, b = self._output()
        if self.embedding is None:
            loss, dA, dW, db = self._dense_loss(A, W, b, host, mask, count, m, average)
        else:
            rows, keep = self._rows(host, mask)
            scale = 1 / m if average == "streams" else 1 / count
            A_kept = A if keep is None else xp.take(A, keep, axis=0)
            nll, dA_kept, dW, db = projection_cross_entropy(A_kept, W, b, rows, scale=scale)
            loss = nll if average == "streams" else nll / count
            dA = dA_kept if keep is None else _scatter_rows(xp, dA_kept, keep, A.shape)
        if out_mask is not None:
            dA = dA * out_mask
        self.layer.zero_grad()
        dE = self.layer.backward(xp.permute_dims(xp.reshape(dA, (T, m, self.hidden_size)), (2, 1, 0)))
        grads = {}
        if self.embedding is not None:
            if embed_mask is not None:
                dE = xp.permute_dims(xp.permute_dims(dE, (2, 1, 0)) * embed_mask, (2, 1, 0))
            self.embedding.zero_grad()
            self.embedding.backward(dE)
            grads["embedding"] = self.embedding.grads["weight"]
        grads.update(self.layer.grads)
        if self.tie_weights:
            grads["embedding"][1:, ...] += dW
        else:
            grads["Wy"] = dW
        grads["by"] = db
        self._grads = grads
        return loss, final_state

    def _dense_loss(self, A, W, b, host, mask, count, m, average):
        """The one-hot model's loss: scores of every id, a dense softmax (the course's); its gradients."""
        xp = self.xp
        T_m = A.shape[0]
        T = T_m // m
        logits = xp.matmul(A, W.T) + b
        logits = xp.permute_dims(xp.reshape(logits, (T, m, self.vocab_size)), (2, 1, 0))
        mean, dlogits = softmax_cross_entropy(logits, xp.asarray(host), None if mask is None else xp.asarray(mask))
        loss = mean
        if average == "streams":
            loss = mean * count
            dlogits = dlogits * (count / m)
        dL2 = xp.reshape(xp.permute_dims(dlogits, (2, 1, 0)), (T_m, self.vocab_size))
        dW = xp.matmul(dL2.T, A)
        db = xp.reshape(xp.sum(dL2, axis=0), (self.vocab_size, 1))
        dA = xp.matmul(dL2, W)
        return loss, dA, dW, db

    def _rows(self, host, mask):
        """The projection's targets (time-major rows, id ``v`` as row ``v - 1``) and the kept rows (None: all)."""
        ids = np.ascontiguousarray(host.T, dtype=np.int64).reshape(-1) - self._first
        if mask is None:
            return self.xp.asarray(ids), None
        keep = np.flatnonzero(np.ascontiguousarray(mask.T).reshape(-1))
        return self.xp.asarray(ids[keep]), self.xp.asarray(keep)

    @inference_mode()
    def nll(self, inputs, targets, state=None, *, mask=None):
        """The summed negative log-likelihood of a batch (no dropout, no gradients) and the final state.

        Parameters are those of :meth:`loss_and_backward`.
        """
        host, mask = self._targets(inputs, targets, mask)
        A, final_state, _ = self._hidden(inputs, state, training=False)
        W, b = self._output()
        if self.embedding is None:
            count = int(mask.sum()) if mask is not None else host.size
            return self._dense_nll(A, W, b, host, mask) * count, final_state
        rows, keep = self._rows(host, mask)
        return projection_nll(A if keep is None else self.xp.take(A, keep, axis=0), W, b, rows), final_state

    def _dense_nll(self, A, W, b, host, mask):
        xp = self.xp
        m = host.shape[0]
        logits = xp.matmul(A, W.T) + b
        logits = xp.permute_dims(xp.reshape(logits, (A.shape[0] // m, m, self.vocab_size)), (2, 1, 0))
        mean, _ = softmax_cross_entropy(logits, xp.asarray(host), None if mask is None else xp.asarray(mask))
        return mean

    # ------------------------------------------------------------------ sampling

    def sample(self, n=1, *, temperature=1.0, top_k=None, prefix="", max_len=50, seed=0):
        """Generate texts (names, sentences), one token at a time, from the model's distribution.

        Every sample starts from the zero state where a sequence starts (after the zero first input of a one-hot
        model, after ``<eos>`` for an embedding model, as each was trained), reads the tokens of ``prefix``, then
        draws the next token from ``softmax(logits / temperature)`` restricted to the ``top_k`` likeliest, until
        ``<eos>`` or ``max_len`` tokens (:func:`~xseq.lm.sampling.sample_ids`). ``<pad>`` and ``<unk>`` are never
        drawn, nor ``<eos>`` as the first token of an empty sample; a temperature so small that the scores would
        overflow is greedy decoding. Nothing to draw, or scores that are not numbers, raise
        :class:`~xseq.lm.sampling.SamplingError` (a ValueError), never a NaN draw.

        Parameters
        ----------
        n : int, default 1
            The number of samples, drawn together as one batch.
        temperature : float > 0, default 1
        top_k : int >= 1 or None
        prefix : str
            Text every sample starts with, tokenized like the corpus; ``<eos>`` is refused
            (:func:`~xseq.lm.sampling.check_prefix`). A one-hot model refuses tokens its vocabulary lacks; an
            embedding model reads them as ``<unk>``.
        max_len : int >= 1, default 50
            Longest sample in tokens, the prefix included.
        seed : int
            Seed of the NumPy generator that draws the tokens: the same seed gives the same samples.

        Returns
        -------
        list of str
            ``n`` texts, tokens joined by spaces at word level, by nothing at character level.
        """
        temperature = check_sampling(n, max_len, temperature, top_k, prefix)
        if self.embedding is None:
            unknown = sorted({t for t in self.vocab.tokenize(prefix) if t not in self.vocab})
            if unknown:
                raise ValueError(f"prefix {prefix!r} holds tokens that are not in the model's vocabulary: {unknown}")
        prefix_ids = check_prefix(self.vocab, prefix, max_len)
        first_input = PAD_ID if self.embedding is None else EOS_ID
        never = (PAD_ID, UNK_ID)[self._first:]  # <pad> is not scored by an embedding model
        return sample_ids(self, prefix_ids, n, max_len, first_input=first_input, offset=self._first, never=never,
                          top_k=top_k, temperature=temperature, seed=seed)

    @inference_mode()
    def _step(self, ids, state):
        """One step for every sample: host ids (m,) -> host float64 scores (n_y, m) and the new state."""
        xp = self.xp
        with np.errstate(over="ignore", invalid="ignore"):  # choose_next refuses what overflowed
            A, state, _ = self._hidden(ids[:, None], state, training=False)
            W, b = self._output()
            logits = xp.matmul(A, W.T) + b
        return np.asarray(to_numpy(logits), dtype=np.float64).T.copy(), state

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_contents(self):
        """``(arrays, meta)`` of this model for :func:`xseq.save_checkpoint`: ``"param/<name>"`` -> host array, and
        ``{"format": "xseq.LanguageModel", "format_version": 1, "model": config(), "dtype", "vocab"}``."""
        arrays = self._parameter_arrays()
        meta = {"format": MODEL_FORMAT, "format_version": self.MODEL_FORMAT_VERSION, "model": self.config(),
                "dtype": self.dtype_name, "vocab": self.vocab.to_json()}
        return arrays, meta

    @classmethod
    def from_checkpoint(cls, arrays, meta, *, backend="numpy", where="checkpoint"):
        """Rebuild a model from what :func:`xseq.load_checkpoint` returned (this format, or xseq 0.1.0's).

        The configuration and the stored parameters are checked against each other before anything is built
        (:func:`~xseq.lm.model_schema.check_stored_parameters`), so a configuration that disagrees with the file
        costs no memory; then every value must be finite. Called on :class:`~xseq.CharLM` or
        :class:`~xseq.StreamLM`, the file must hold a model of that input. CheckpointError otherwise.
        """
        config = model_config(meta, where, LanguageModel.MODEL_FORMAT_VERSION)
        wanted = getattr(cls, "INPUT", None)
        if wanted is not None and config["input"] != wanted:
            raise CheckpointError(f"{where} holds a language model with {config['input']} input, not a "
                                  f"{cls.__name__} ({wanted} input); load it with xseq.LanguageModel")
        with cls._invalid_model(where):
            vocab = Vocabulary.from_json(meta["vocab"])
            dtype = meta["dtype"]
            state = cls._stored_parameters(arrays)
            check_stored_parameters(state, config, len(vocab), dtype)
            model = cls.__new__(cls)
            LanguageModel.__init__(model, vocab, config["hidden_size"], input=config["input"], cell=config["cell"],
                                   num_layers=config["num_layers"], embed_size=config["embed_size"],
                                   tie_weights=config["tie_weights"], dropout=config["dropout"], backend=backend,
                                   dtype=dtype)
            model.load_state_dict(state)
        return model


def _scatter_rows(xp, rows, keep, shape):
    """``rows`` put at the (distinct) row indices ``keep`` of zeros of ``shape``."""
    return add_rows(xp.zeros(shape, dtype=rows.dtype), keep, rows)
