"""A language model of one token stream: embedding, recurrent stack, projection to the vocabulary.

:class:`StreamLM` is the word-level model of Zaremba, Sutskever and Vinyals
(2014) and of PyTorch's ``word_language_model``, on the xseq layers::

    e<t>      = E[x<t>]                          (D, m)     xseq.Embedding, a row lookup
    a<t>      = layer(e<1..t>, carried state)    (n_a, m)   RNN, LSTM or GRU stack
    logits<t> = Wy a<t> + by                     (V-1, m)   scores of the ids 1 .. V-1
    y_hat<t>  = softmax(logits<t>)

It reads a corpus as one stream of token ids (every line followed by
``<eos>``) in windows of ``bptt`` steps, the state of one window carried into
the next (:mod:`xseq.lm.stream_train`); it works at word level and, for
running text, at character level (characters are looked up in the embedding
like words: the lookup is exactly the one-hot product).

Outputs
-------
``<pad>`` (id 0) is not a token of any stream, so the model never predicts it:
the projection covers ids 1 .. V-1 only, ``Wy`` is ``(V-1, n_a)`` and row
``j`` scores id ``j + 1``. So a Penn Treebank model (9,998 words, ``<unk>``,
``<eos>`` and ``<pad>``: V = 10,001) has exactly the 10,000-way softmax of the
published numbers. With ``tie_weights`` the output matrix *is* the
embedding's rows 1 .. V-1 (Press and Wolf 2017; needs ``D == n_a``): there is
no ``"Wy"``, and its gradient is added to those rows of the embedding's.

A window's loss is computed by
:func:`~xseq.nn.projection_loss.projection_cross_entropy`: one projection over
all the window's steps, a fused softmax cross-entropy without a dense one-hot,
its logits bounded by that function's chunking (64 MiB) whatever the batch,
the window or the vocabulary.

Dropout
-------
``dropout = p`` drops, with inverted scaling, the embedding's outputs, the
outputs of every recurrent layer but the last (the layer's own dropout) and
the last layer's outputs before the projection: Zaremba's non-recurrent
dropout. Every mask comes from one NumPy stream, the layer's
:attr:`~xseq.LSTM.dropout_rng` (derived from ``seed``), drawn in that order,
so a seed gives the same masks on every backend and a saved stream state
resumes them exactly.

Parameter arrays
----------------
:meth:`StreamLM.parameters` is one flat dict (the same object at every call):
``"embedding"`` ``(V, D)``, the layer's arrays under PyTorch's names, ``"Wy"``
``(V-1, n_a)`` (untied only) and ``"by"`` ``(V-1,)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.arrays import refuse_masked, to_numpy
from ..backends.checks import check_sizes
from ..engine import sequence as engine
from ..nn.embedding import Embedding
from ..nn.optim import _check_positive as check_positive
from ..nn.projection_loss import projection_cross_entropy, projection_nll
from .language_model import LanguageModel, check_prefix, check_sampling, check_stored_shapes
from .model import CELLS
from .vocab import EOS_ID, PAD_ID, UNK_ID, Vocabulary

MODEL_FORMAT = "xseq.StreamLM"
# Children of numpy.random.SeedSequence(seed): 0 is the layer's dropout stream (see xseq.LSTM),
# 1 the output weights (as CharLM's), 2 the embedding, 3 the draws of init_scale.
_OUTPUT_SEED, _EMBEDDING_SEED, _INIT_SCALE_SEED = 1, 2, 3


def _seed_child(seed, index):
    return np.random.SeedSequence(seed).spawn(index + 1)[index]


class StreamLM(LanguageModel):
    """Embedding, recurrent stack and output projection over one token stream.

    Parameters
    ----------
    vocab : Vocabulary
        ``V = len(vocab)``; ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<eos>``.
    hidden_size : int, default 128
        ``n_a``.
    cell : {"lstm", "gru", "rnn"}, default "lstm"
    num_layers : int, default 1
    embed_size : int or None
        ``D``, the size of a token's vector; None for ``hidden_size``.
    tie_weights : bool, default False
        Use the embedding's rows 1 .. V-1 as the output matrix (needs ``D == n_a``).
    dropout : float in [0, 1), default 0
        Zaremba's non-recurrent dropout (see the module docstring), in training only.
    init_scale : float > 0 or None
        Draw every parameter, biases included, uniform in ``[-init_scale, init_scale]``
        (Zaremba et al.'s Torch code: 0.1 for the small model, 0.05 for the medium).
        None keeps PyTorch's defaults: the embedding standard normal
        (``torch.nn.Embedding``), the layers and the output projection uniform in
        ``(-1/sqrt(n_a), 1/sqrt(n_a))`` (``torch.nn.LSTM``, ``torch.nn.Linear``).
    backend : str or namespace, default "numpy"
    dtype : {"float32", "float64"}, default "float32"
    seed : int, default 0
        Seeds every weight and the dropout stream (independent streams derived from it).

    Attributes
    ----------
    vocab : Vocabulary
    embedding : xseq.Embedding
        ``(V, D)``.
    layer : RNN, LSTM or GRU
        ``input_size = D``, unidirectional, ``dropout`` between its layers.
    xp : namespace
    """

    MODEL_FORMAT = MODEL_FORMAT
    KIND = "stream model"

    def __init__(self, vocab, hidden_size=128, *, cell="lstm", num_layers=1, embed_size=None, tie_weights=False,
                 dropout=0.0, init_scale=None, backend="numpy", dtype="float32", seed=0):
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be an xseq.Vocabulary; got {type(vocab).__name__}")
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}; got {cell!r}")
        if not isinstance(tie_weights, bool):
            raise TypeError(f"tie_weights must be True or False; got {tie_weights!r}")
        embed_size = hidden_size if embed_size is None else embed_size
        check_sizes(hidden_size=hidden_size, embed_size=embed_size)
        if tie_weights and embed_size != hidden_size:
            raise ValueError(f"tie_weights needs embed_size equal to hidden_size (the output matrix is the "
                             f"embedding); got embed_size={embed_size}, hidden_size={hidden_size}")
        if init_scale is not None:
            init_scale = check_positive("init_scale", init_scale)
        self.vocab = vocab
        self.cell = cell
        self.tie_weights = tie_weights
        self.layer = CELLS[cell](embed_size, hidden_size, num_layers=num_layers, dropout=dropout,
                                 backend=backend, dtype=dtype, seed=seed)
        self.xp = self.layer.xp
        self.dtype = self.layer.dtype
        self.embedding = Embedding(len(vocab), embed_size, backend=self.xp, dtype=self.layer.dtype_name,
                                   seed=_seed_child(seed, _EMBEDDING_SEED))
        V, n_a = len(vocab), self.layer.hidden_size
        rng = np.random.default_rng(_seed_child(seed, _OUTPUT_SEED))
        bound = 1 / math.sqrt(n_a)
        self._params = {"embedding": self.embedding.parameters["weight"], **self.layer.parameters}
        if not tie_weights:
            self._params["Wy"] = self._from_host(rng.uniform(-bound, bound, size=(V - 1, n_a)))
        self._params["by"] = self._from_host(rng.uniform(-bound, bound, size=(V - 1,)))
        if init_scale is not None:
            scaled = np.random.default_rng(_seed_child(seed, _INIT_SCALE_SEED))
            for key, p in self._params.items():
                self._params[key] = self._from_host(scaled.uniform(-init_scale, init_scale, size=tuple(p.shape)))
        self._grads = {k: self.xp.zeros_like(v) for k, v in self._params.items()}

    # ------------------------------------------------------------------ structure

    @property
    def embed_size(self):
        """``D``."""
        return self.embedding.dim

    def config(self):
        """The constructor arguments that fix the architecture (JSON-serialisable)."""
        return {"cell": self.cell, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "embed_size": self.embed_size, "tie_weights": self.tie_weights, "dropout": self.dropout}

    def __repr__(self):
        return (f"StreamLM(V={self.vocab_size}, level={self.vocab.level!r}, cell={self.cell!r}, "
                f"embed_size={self.embed_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}, "
                f"tie_weights={self.tie_weights}, backend={self.backend_name!r}, dtype={self.dtype_name!r})")

    def initial_state(self, m):
        """The zero state of ``m`` streams: ``(num_layers, n_a, m)``, a tuple ``(h, c)`` for the LSTM."""
        h = self.xp.zeros((self.num_layers, self.hidden_size, m), dtype=self.dtype)
        return (h, self.xp.zeros_like(h)) if self.cell == "lstm" else h

    # ------------------------------------------------------------------ forward and backward

    def _output(self):
        """``(W, b)`` of the projection: ``Wy``, or the embedding's rows 1 .. V-1 when tied."""
        W = self._params["embedding"][1:, ...] if self.tie_weights else self._params["Wy"]
        return W, self._params["by"]

    def _mask(self, shape):
        """An inverted-dropout mask of ``shape`` from the dropout stream, in this model's dtype."""
        keep = self.dropout_rng.random(shape) >= self.dropout
        return self._from_host(keep / (1 - self.dropout))

    def _hidden(self, inputs, state, training):
        """The last layer's states ``(T*m, n_a)`` (time-major rows), the final state, and the dropout masks."""
        xp = self.xp
        self.embedding.parameters = {"weight": self._params["embedding"]}
        self.layer.parameters = {k: self._params[k] for k in self.layer.parameters}
        m, T = inputs.shape
        drop = training and self.dropout > 0
        e = self.embedding.forward(inputs)  # (D, m, T), a view of time-major (T, m, D) rows
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

    def _target_rows(self, inputs, targets):
        """``targets`` (m, T) as the projection's time-major rows ``(T*m,)``: id ``v`` is row ``v - 1``."""
        refuse_masked("targets", targets)
        host = np.asarray(to_numpy(targets))
        if not np.issubdtype(host.dtype, np.integer):
            raise TypeError(f"targets has dtype {host.dtype}; expected integer ids")
        if host.shape != tuple(inputs.shape):
            raise ValueError(f"targets has shape {host.shape}; expected (m, T) = {tuple(inputs.shape)} from inputs")
        bad = (host < 1) | (host >= self.vocab_size)
        if bad.any():
            i, t = np.argwhere(bad)[0]
            what = "<pad> (id 0), which a stream model never predicts" if host[i, t] == PAD_ID else "out of range"
            raise ValueError(f"targets[{i}][{t}] = {host[i, t]} is {what}; expected 1 <= id < V = {self.vocab_size}")
        return self.xp.asarray(np.ascontiguousarray(host.T, dtype=np.int64).reshape(-1) - 1)

    def _check_window(self, inputs):
        refuse_masked("inputs", inputs)
        if getattr(inputs, "ndim", None) != 2:
            raise ValueError(f"inputs must be a 2-D integer array (m, T); got {type(inputs).__name__} "
                             f"of shape {getattr(inputs, 'shape', None)}")

    def loss_and_backward(self, inputs, targets, state=None, training=True):
        """The summed cross-entropy of one window, and the gradient of every parameter.

        The loss whose gradients are taken is the Penn Treebank convention:
        the cross-entropy summed over the window's steps and averaged over the
        ``m`` streams (the returned value is the plain sum; divide by
        ``targets.size`` for nats per token).

        Parameters
        ----------
        inputs : (m, T) integer array (NumPy or this model's backend)
            Ids ``0 <= id < V`` of the window's steps.
        targets : (m, T) integer array
            The next ids, ``1 <= id < V`` (``<pad>`` is never a target).
        state : the carried state, or None for zeros
            ``(num_layers, n_a, m)``, a tuple ``(h, c)`` for the LSTM; a final
            state of an earlier call. No gradient flows into it (truncated
            back-propagation through time).
        training : bool, default True
            Apply dropout.

        Returns
        -------
        nll : float
            The summed negative log-likelihood of the ``m * T`` targets, in nats.
        final_state
            The state after the window's last step, to carry into the next window.
        """
        xp = self.xp
        self._check_window(inputs)
        rows = self._target_rows(inputs, targets)
        m, T = inputs.shape
        A, final_state, (embed_mask, out_mask) = self._hidden(inputs, state, training)
        W, b = self._output()
        nll, dA, dW, db = projection_cross_entropy(A, W, b, rows, scale=1 / m)
        if out_mask is not None:
            dA = dA * out_mask
        self.layer.zero_grad()
        dE = self.layer.backward(xp.permute_dims(xp.reshape(dA, (T, m, self.hidden_size)), (2, 1, 0)))
        if embed_mask is not None:
            dE = xp.permute_dims(xp.permute_dims(dE, (2, 1, 0)) * embed_mask, (2, 1, 0))
        self.embedding.zero_grad()
        self.embedding.backward(dE)
        d_embedding = self.embedding.grads["weight"]
        grads = {"embedding": d_embedding, **self.layer.grads}
        if self.tie_weights:
            d_embedding[1:, ...] += dW
        else:
            grads["Wy"] = dW
        grads["by"] = db
        self._grads = grads
        return nll, final_state

    def nll(self, inputs, targets, state=None):
        """The summed negative log-likelihood of one window (no dropout, no gradients) and the final state.

        Parameters are those of :meth:`loss_and_backward`.
        """
        self._check_window(inputs)
        rows = self._target_rows(inputs, targets)
        A, final_state, _ = self._hidden(inputs, state, training=False)
        W, b = self._output()
        return projection_nll(A, W, b, rows), final_state

    # ------------------------------------------------------------------ sampling

    def sample(self, n=1, *, temperature=1.0, top_k=None, prefix="", max_len=50, seed=0):
        """Generate sequences (sentences, for a word model), one token at a time.

        Every sample starts where the stream starts a line, after an ``<eos>``
        from the zero state, reads the tokens of ``prefix`` and then draws the
        next token from ``softmax(logits / temperature)`` restricted to the
        ``top_k`` likeliest, until ``<eos>`` or ``max_len`` tokens. ``<unk>`` is
        never drawn (nor ``<pad>``, which the model does not score), and
        ``<eos>`` is not drawn as the first token of an empty sample. A
        temperature so small that the scores would overflow is greedy decoding.
        A vocabulary of the three specials alone (``--vocab-size 3``) leaves
        nothing to draw, and scores that are not numbers (NaN or +inf, from
        weights that overflow) give no distribution: both raise
        :class:`~xseq.lm.language_model.SamplingError`, never a NaN draw.

        Parameters
        ----------
        n : int, default 1
        temperature : float > 0, default 1
        top_k : int >= 1 or None
        prefix : str
            Text every sample starts with, tokenized like the corpus; a token
            the vocabulary lacks is read as ``<unk>`` (and written so). The
            word ``<eos>`` (whitespace tokenizer) is refused: it ends a sample
            (:func:`~xseq.lm.language_model.check_prefix`).
        max_len : int >= 1, default 50
            Longest sample in tokens, the prefix included.
        seed : int
            Seed of the NumPy generator that draws the tokens.

        Returns
        -------
        list of str
            ``n`` texts, tokens joined by spaces at word level, by nothing at character level.

        Raises
        ------
        SamplingError
            Nothing to draw, or scores that are not numbers (a ValueError).
        ValueError
            A bad argument, or a prefix that holds ``<eos>``.
        """
        temperature = check_sampling(n, max_len, temperature, top_k, prefix)
        prefix_ids = check_prefix(self.vocab, prefix, max_len)

        # every sample starts where the stream starts a line, after <eos>; row j scores id j + 1 (no <pad>)
        return self._sample_ids(prefix_ids, n, max_len, first_input=EOS_ID, offset=1, never=(UNK_ID,),
                                top_k=top_k, temperature=temperature, seed=seed)

    def _step(self, ids, state):
        """One step for every sample: host ids (m,) -> host float64 scores (V-1, m) and the new state."""
        xp = self.xp
        with np.errstate(over="ignore", invalid="ignore"):  # choose_next refuses what overflowed
            A, state, _ = self._hidden(ids[:, None], state, training=False)
            W, b = self._output()
            logits = xp.matmul(A, W.T) + b
        return np.asarray(to_numpy(logits), dtype=np.float64).T.copy(), state

    # ------------------------------------------------------------------ saving

    @classmethod
    def _from_stored(cls, vocab, config, state, dtype, backend):
        tie = config["tie_weights"]
        if not isinstance(tie, bool):
            raise TypeError(f"tie_weights must be true or false; got {tie!r}")
        _check_stored_parameters(state, config["cell"], len(vocab), config["embed_size"], config["hidden_size"],
                                 config["num_layers"], tie, dtype)
        return cls(vocab, config["hidden_size"], cell=config["cell"], num_layers=config["num_layers"],
                   embed_size=config["embed_size"], tie_weights=tie, dropout=config["dropout"], backend=backend,
                   dtype=dtype)


def parameter_shapes(cell, V, embed_size, hidden_size, num_layers, tie_weights):
    """The name and shape of every parameter of a :class:`StreamLM`, without building one.

    Returns
    -------
    dict[str, tuple of int]
        ``"embedding"`` ``(V, D)``, the layer's arrays under PyTorch's names,
        ``"Wy"`` ``(V-1, n_a)`` unless tied, ``"by"`` ``(V-1,)``.
    """
    G, n_a = engine.GATES[cell], hidden_size
    shapes = {"embedding": (V, embed_size)}
    for layer in range(num_layers):
        shapes.update({f"weight_ih_l{layer}": (G * n_a, embed_size if layer == 0 else n_a),
                       f"weight_hh_l{layer}": (G * n_a, n_a),
                       f"bias_ih_l{layer}": (G * n_a,), f"bias_hh_l{layer}": (G * n_a,)})
    if not tie_weights:
        shapes["Wy"] = (V - 1, n_a)
    shapes["by"] = (V - 1,)
    return shapes


def _check_stored_parameters(state, cell, V, embed_size, hidden_size, num_layers, tie_weights, dtype):
    """Compare stored host arrays with what a configuration implies, before anything is allocated."""
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"cell must be one of {tuple(CELLS)}; got {cell!r}")
    check_sizes(embed_size=embed_size, hidden_size=hidden_size, num_layers=num_layers)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    # Every layer has four arrays: this bounds num_layers by what the file holds before names are made for it.
    if num_layers > len(state):
        raise ValueError(f"num_layers = {num_layers} needs at least {4 * num_layers + 2} parameter arrays; "
                         f"the checkpoint holds {len(state)}")
    shapes = parameter_shapes(cell, V, embed_size, hidden_size, num_layers, tie_weights)
    source = (f"cell={cell!r}, embed_size={embed_size}, hidden_size={hidden_size}, num_layers={num_layers}, "
              f"tie_weights={tie_weights} and V={V}")
    check_stored_shapes(state, shapes, dtype, source)
