"""A character-level language model: the course's dinosaur-names model over the xseq layers.

:class:`CharLM` reads one-hot characters, runs them through a stack of
:class:`~xseq.RNN`, :class:`~xseq.LSTM` or :class:`~xseq.GRU` layers and
projects every hidden state to scores over the vocabulary::

    a<t>      = layer(x<1..t>)                  (n_a, m)
    logits<t> = Wy a<t> + by                    (V, m)
    y_hat<t>  = softmax(logits<t>)

Layouts use the course's letters: ``V`` vocabulary size (the one-hot input
size ``n_x`` and the output size ``n_y``), ``n_a`` hidden size, ``m``
examples, ``T_x`` time steps.

Sequences, as in the course's dinosaur-names model
----------------------------------------------------
A sequence ``c1 .. cn`` (ids of a :class:`~xseq.Vocabulary`) is learned as

* inputs  ``x<1..n+1>`` = ``[0, c1, ..., cn]``, the first input being the
  all-zero vector;
* targets ``y<1..n+1>`` = ``[c1, ..., cn, <eos>]``.

Id 0 (``<pad>``) is encoded as the all-zero column, so the zero first input
is simply id 0. A batch of sequences of different lengths is padded at the
end; padded positions are left out of the loss. The layers run over the
padding unmasked: they are causal (one direction only), so steps after a
sequence's end cannot change its earlier outputs, and the zero loss gradient
there back-propagates as zero.

Parameters and optimisers
-------------------------
:meth:`CharLM.parameters` is one flat dict, the layer's arrays under
PyTorch's names (``weight_ih_l0``, ...) plus ``"Wy"`` ``(V, n_a)`` and
``"by"`` ``(V, 1)``. It is always the same dict object, so an optimiser
built on it (``xseq.Adam(model.parameters())``) updates the model; the
model reads its weights from that dict at every forward pass.
:meth:`CharLM.grads` holds the gradients of the last
:meth:`CharLM.loss_and_backward` under the same keys.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.arrays import refuse_masked, to_numpy
from ..backends.checks import check_sizes
from ..engine import sequence as engine
from ..nn.layers import GRU, LSTM, RNN
from ..nn.losses import softmax_cross_entropy
from .language_model import LanguageModel, check_prefix, check_sampling, check_stored_shapes
from .vocab import EOS_ID, PAD_ID, UNK_ID, Vocabulary

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
MODEL_FORMAT = "xseq.CharLM"


class CharLM(LanguageModel):
    """Character (or word) language model: one-hot input, recurrent layers, linear output.

    Parameters
    ----------
    vocab : Vocabulary
        Its size is ``V``; ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<eos>``.
    hidden_size : int, default 128
        ``n_a``.
    cell : {"lstm", "gru", "rnn"}, default "lstm"
    num_layers : int, default 1
    dropout : float in [0, 1), default 0
        Dropout between stacked layers during training (needs ``num_layers > 1`` to act).
    backend : str or namespace, default "numpy"
        See :func:`xseq.backend` (``"auto"`` picks CuPy where it runs).
    dtype : {"float32", "float64"}, default "float32"
    seed : int, default 0
        The layer's weights come from ``numpy.random.default_rng(seed)`` (see
        :class:`~xseq.LSTM`); ``Wy`` and ``by`` from an independent stream
        derived from the same seed, uniform in ``(-1/sqrt(n_a), 1/sqrt(n_a))``
        like ``torch.nn.Linear``.

    Attributes
    ----------
    vocab : Vocabulary
    layer : RNN, LSTM or GRU
        ``input_size = V``, unidirectional.
    xp : namespace
        The backend's array namespace.
    """

    MODEL_FORMAT = MODEL_FORMAT
    KIND = "language model"

    def __init__(self, vocab, hidden_size=128, *, cell="lstm", num_layers=1, dropout=0.0,
                 backend="numpy", dtype="float32", seed=0):
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be an xseq.Vocabulary; got {type(vocab).__name__}")
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}; got {cell!r}")
        self.vocab = vocab
        self.cell = cell
        self.layer = CELLS[cell](len(vocab), hidden_size, num_layers=num_layers, dropout=dropout,
                                 backend=backend, dtype=dtype, seed=seed)
        self.xp = self.layer.xp
        self.dtype = self.layer.dtype
        V, n_a = len(vocab), self.layer.hidden_size
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
        bound = 1 / math.sqrt(n_a)
        self._params = dict(self.layer.parameters)
        self._params["Wy"] = self._from_host(rng.uniform(-bound, bound, size=(V, n_a)))
        self._params["by"] = self._from_host(rng.uniform(-bound, bound, size=(V, 1)))
        self._grads = {k: self.xp.zeros_like(v) for k, v in self._params.items()}
        # One-hot codes: row v of the input is 1 where the id is v, except id 0
        # (<pad>, also the course's zero first input), which matches no row.
        codes = self.xp.arange(V)
        self._input_codes = self.xp.where(codes == PAD_ID, -1, codes)
        self._cache = None

    # ------------------------------------------------------------------ structure

    def config(self):
        """The constructor arguments that fix the architecture (JSON-serialisable)."""
        return {"cell": self.cell, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "dropout": self.layer.dropout}

    def __repr__(self):
        return (f"CharLM(V={self.vocab_size}, cell={self.cell!r}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, backend={self.backend_name!r}, dtype={self.dtype_name!r})")

    # ------------------------------------------------------------------ batches

    # Why: see docs/decisions/015-charlm-batch-at-once.md
    def batch(self, sequences):
        """Inputs, targets and mask for a batch of id sequences (see the module docstring).

        Parameters
        ----------
        sequences : list of sequences of int
            Ids without ``<eos>`` (it is added as the last target); may be empty.

        Returns
        -------
        X : (V, m, T_x) array
            One-hot inputs ``[0, c1, ..., cn]``, zero columns after the end;
            ``T_x`` is the longest ``n`` plus one.
        targets : (m, T_x) int64 array
            ``[c1, ..., cn, <eos>]``, 0 after the end.
        mask : (m, T_x) bool array
            True at the ``n + 1`` positions of each sequence.
        """
        if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__") or len(sequences) == 0:
            raise ValueError("sequences must be a non-empty list of id sequences")
        V = self.vocab_size
        arrays = []
        for i, seq in enumerate(sequences):
            refuse_masked(f"sequences[{i}]", seq)
            ids = np.asarray(seq)
            if ids.ndim != 1:
                raise ValueError(f"sequences[{i}] has shape {ids.shape}; expected a 1-D sequence of ids")
            if ids.size and not np.issubdtype(ids.dtype, np.integer):
                raise TypeError(f"sequences[{i}] has dtype {ids.dtype}; expected integer ids")
            arrays.append(ids if ids.size else np.zeros(0, dtype=np.int64))
        lengths = np.array([len(ids) for ids in arrays])
        m, T_x = len(arrays), int(lengths.max()) + 1
        # Every id of the batch at once, in row order: checked with one min and max, written with one
        # boolean assignment (which fills a row-major array's True positions in the same order).
        flat = np.concatenate(arrays)
        if flat.size and (flat.min() < 0 or flat.max() >= V):
            i = next(i for i, ids in enumerate(arrays) if ids.size and (ids.min() < 0 or ids.max() >= V))
            raise ValueError(f"sequences[{i}] holds an id outside 0 <= id < V = {V}")
        inside = np.arange(T_x)[None, :] < lengths[:, None]  # (m, T_x): the first n positions of each row
        inputs = np.zeros((m, T_x), dtype=np.int64)
        targets = np.zeros((m, T_x), dtype=np.int64)
        inputs[:, 1:][inside[:, :-1]] = flat
        targets[inside] = flat
        targets[np.arange(m), lengths] = EOS_ID
        mask = np.arange(T_x)[None, :] <= lengths[:, None]
        return self._one_hot(inputs), self.xp.asarray(targets), self.xp.asarray(mask)

    def _one_hot(self, ids):
        """(m, T_x) host ids -> (V, m, T_x) one-hot, id 0 as the zero column, built time-major."""
        xp = self.xp
        ids_tm = xp.asarray(np.ascontiguousarray(ids.T))  # (T_x, m)
        X_tm = xp.astype(xp.reshape(ids_tm, (*ids_tm.shape, 1)) == self._input_codes, self.dtype)
        return xp.permute_dims(X_tm, (2, 1, 0))

    # ------------------------------------------------------------------ forward and backward

    def forward(self, X, h0=None, training=False):
        """Scores over the vocabulary at every step.

        Parameters
        ----------
        X : (V, m, T_x) array of this model's backend and dtype
            One-hot inputs (from :meth:`batch`).
        h0 : initial state of the layer, or None for zeros (see :class:`~xseq.LSTM`).
        training : bool
            Apply the layer's dropout.

        Returns
        -------
        logits : (V, m, T_x) array
        final_state : the layer's final state, ``(num_layers, n_a, m)`` or a tuple ``(h, c)``.
        """
        xp = self.xp
        self.layer.parameters = {k: self._params[k] for k in self.layer.parameters}
        outputs, final_state = self.layer.forward(X, h0, training=training)
        # Work time-major: the layer's outputs are a view of a (T_x, m, n_a) array.
        A = xp.permute_dims(outputs, (2, 1, 0))
        T_x, m, n_a = A.shape
        A2 = xp.reshape(A, (T_x * m, n_a))
        logits = xp.matmul(A2, self._params["Wy"].T) + self._params["by"][:, 0]
        self._cache = (A2, (T_x, m))
        return xp.permute_dims(xp.reshape(logits, (T_x, m, self.vocab_size)), (2, 1, 0)), final_state

    __call__ = forward

    def loss_and_backward(self, X, targets, mask, training=True):
        """Mean cross-entropy of a batch and the gradient of every parameter.

        Parameters
        ----------
        X, targets, mask : from :meth:`batch`
        training : bool, default True
            Apply dropout in the forward pass.

        Returns
        -------
        float
            The mean cross-entropy in nats per predicted token (``<eos>`` included).
            :meth:`grads` then holds its gradients (replacing the previous ones).
        """
        xp = self.xp
        logits, _ = self.forward(X, training=training)
        loss, dlogits = softmax_cross_entropy(logits, targets, mask)
        A2, (T_x, m) = self._cache
        dL2 = xp.reshape(xp.permute_dims(dlogits, (2, 1, 0)), (T_x * m, self.vocab_size))
        dWy = xp.matmul(dL2.T, A2)
        dby = xp.reshape(xp.sum(dL2, axis=0), (self.vocab_size, 1))
        dA = xp.reshape(xp.matmul(dL2, self._params["Wy"]), (T_x, m, self.hidden_size))
        self.layer.zero_grad()
        self.layer.backward(xp.permute_dims(dA, (2, 1, 0)))
        self._grads = {**self.layer.grads, "Wy": dWy, "by": dby}
        return loss

    def loss(self, X, targets, mask):
        """Summed cross-entropy of a batch (no dropout, no gradients).

        Returns
        -------
        total : float
            The sum over the valid positions, in nats.
        count : int
            The number of valid positions (predicted tokens).
        """
        logits, _ = self.forward(X)
        mean, _ = softmax_cross_entropy(logits, targets, mask)
        count = int(to_numpy(mask).sum())
        return mean * count, count

    # ------------------------------------------------------------------ sampling

    def sample(self, n=1, *, temperature=1.0, top_k=None, prefix="", max_len=50, seed=0):
        """Generate sequences, one token at a time, from the model's distribution.

        Each step draws the next token from ``softmax(logits / temperature)``
        restricted to the ``top_k`` most likely tokens. A temperature so small
        that the scores would overflow (``1e-320``) is greedy decoding: the
        likeliest token every time. ``<pad>`` and ``<unk>``
        are never drawn, and ``<eos>`` is not drawn as the first token of an
        empty sequence, so a sample is never empty. A sample ends at ``<eos>``
        or when it reaches ``max_len`` tokens.

        A vocabulary of the three specials alone leaves nothing to draw, and
        scores that are not numbers (NaN or +inf, from weights that overflow)
        give no distribution: both raise :class:`~xseq.lm.language_model.SamplingError`, never a NaN
        draw. See :func:`check_prefix` for what a prefix may hold.

        Parameters
        ----------
        n : int, default 1
            The number of samples, drawn together as one batch.
        temperature : float > 0, default 1
            Below 1 sharpens the distribution (safer, more common names), above 1 flattens it.
        top_k : int >= 1 or None
            Draw only among the ``top_k`` most likely allowed tokens.
        prefix : str
            Every sample starts with this text; its tokens must be in the
            vocabulary, and ``<eos>`` is not one of them (:func:`check_prefix`).
        max_len : int >= 1, default 50
            Longest sample, in tokens, the prefix included.
        seed : int
            Seed of the NumPy generator that draws the tokens: the same seed gives the same samples.

        Returns
        -------
        list of str
            ``n`` texts, each starting with ``prefix``.

        Raises
        ------
        SamplingError
            Nothing to draw, or scores that are not numbers (a ValueError).
        ValueError
            A bad argument, or a prefix that holds ``<eos>`` or unknown tokens.
        """
        temperature = check_sampling(n, max_len, temperature, top_k, prefix)
        unknown = sorted({t for t in self.vocab.tokenize(prefix) if t not in self.vocab})
        if unknown:
            raise ValueError(f"prefix {prefix!r} holds tokens that are not in the model's vocabulary: {unknown}")
        prefix_ids = check_prefix(self.vocab, prefix, max_len)

        # id 0 (<pad>) is the zero first input; every id is scored, <pad> and <unk> never drawn
        return self._sample_ids(prefix_ids, n, max_len, first_input=PAD_ID, offset=0, never=(PAD_ID, UNK_ID),
                                top_k=top_k, temperature=temperature, seed=seed)

    def _step(self, ids, state):
        """One step for every sample: host ids (m,) -> host float64 logits (V, m) and the new state."""
        X = self._one_hot(ids[:, None])
        with np.errstate(over="ignore", invalid="ignore"):  # choose_next refuses what overflowed
            logits, state = self.forward(X, state)
        return np.array(to_numpy(logits[:, :, 0]), dtype=np.float64), state  # a copy: the loop writes into it

    # ------------------------------------------------------------------ saving

    @classmethod
    def _from_stored(cls, vocab, config, state, dtype, backend):
        _check_stored_parameters(state, config["cell"], len(vocab), config["hidden_size"], config["num_layers"], dtype)
        return cls(vocab, config["hidden_size"], cell=config["cell"], num_layers=config["num_layers"],
                   dropout=config["dropout"], backend=backend, dtype=dtype)


def parameter_shapes(cell, V, hidden_size, num_layers):
    """The name and shape of every parameter of a unidirectional :class:`CharLM`, without building one.

    Parameters
    ----------
    cell : {"lstm", "gru", "rnn"}
    V, hidden_size, num_layers : int
        The vocabulary size, ``n_a`` and the number of stacked layers.

    Returns
    -------
    dict[str, tuple of int]
        The layer's arrays under PyTorch's names, ``(G*n_a, V)`` for
        ``weight_ih_l0``, then ``"Wy"`` ``(V, n_a)`` and ``"by"`` ``(V, 1)``.
    """
    G, n_a = engine.GATES[cell], hidden_size
    shapes = {}
    for layer in range(num_layers):
        shapes.update({f"weight_ih_l{layer}": (G * n_a, V if layer == 0 else n_a),
                       f"weight_hh_l{layer}": (G * n_a, n_a),
                       f"bias_ih_l{layer}": (G * n_a,), f"bias_hh_l{layer}": (G * n_a,)})
    shapes.update(Wy=(V, n_a), by=(V, 1))
    return shapes


def _check_stored_parameters(state, cell, V, hidden_size, num_layers, dtype):
    """Compare stored host arrays with what a configuration implies, before anything is allocated.

    Raises ValueError or TypeError naming the field or the array that does not fit.
    """
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"cell must be one of {tuple(CELLS)}; got {cell!r}")
    check_sizes(hidden_size=hidden_size, num_layers=num_layers)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    # Every layer has four arrays: this bounds num_layers by what the file holds before names are made for it.
    if num_layers > len(state):
        raise ValueError(f"num_layers = {num_layers} needs {4 * num_layers + 2} parameter arrays; "
                         f"the checkpoint holds {len(state)}")
    shapes = parameter_shapes(cell, V, hidden_size, num_layers)
    source = f"cell={cell!r}, hidden_size={hidden_size}, num_layers={num_layers} and V={V}"
    check_stored_shapes(state, shapes, dtype, source)
