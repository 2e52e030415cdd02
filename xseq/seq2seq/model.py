"""The sequence-to-sequence model with attention: the course's Neural Machine Translation, trained with explicit
backward passes.

Architecture (course letters; ``n_a`` the encoder's size per direction, ``n_enc = 2 n_a``, ``n_s`` the decoder's,
``D`` the embeddings', ``V_x`` and ``V_y`` the two vocabularies' sizes)::

    e<t'>       = source_embedding[x<t'>]                                    (D,)      t' < T_x
    a<t'>       = [a_fwd<t'>; a_rev<t'>] = encoder(e<1..T_x>, lengths)       (n_enc,)  bidirectional RNN/LSTM/GRU
    context<t>  = attention(a, s<t-1>)                                       (n_enc,)  xseq.Attention, padding weight 0
    x<t>        = [context<t>; target_embedding[y<t-1>]]                     (n_enc + D,)   (feed_previous)
                = context<t>                                                 (n_enc,)       (the course's decoder)
    s<t>, c<t>  = LSTMCell(x<t>, (s<t-1>, c<t-1>)),   s<0> = c<0> = 0          (n_s,)
    p(y<t>)     = softmax(Wy s<t> + by)                                      over the ids 1 .. V_y - 1

The output is projected from ``s<t>`` as in the course. The target ``y<1..n>`` is followed by ``<eos>``, which the
model learns to emit; ``y<0>``, the previous token of the first step, is ``<eos>`` too (the end of the "sequence
before"; like the language model's first input, so the first step needs no token of its own). ``<pad>`` is never
scored (``Wy`` has ``V_y - 1`` rows, row ``v - 1`` for id ``v``). In training the previous token is the target's
(teacher forcing); in decoding (:mod:`xseq.seq2seq.decode`) it is the model's own choice.

Loss: the mean over the target tokens of the batch (``<eos>`` included, padding excluded) of the cross-entropy,
in nats. :meth:`Seq2Seq.loss_and_backward` computes it and every gradient with the course's explicit backward
passes: the projection of every step at once (:func:`~xseq.nn.projection_loss.projection_cross_entropy`), the
decoder's steps backwards (the LSTM cell, the attention step, the previous token's embedding), the attention's
keys once (:meth:`xseq.Attention.keys_backward`), the encoder (:meth:`xseq.LSTM.backward`) and the source
embedding.

Speed: the decoder runs one step at a time (the attention reads ``s<t-1>``), so only what does not depend on
the step is hoisted out of the loop: the attention keys ``W1_a a + b1`` (once per batch), the target-embedding
part of the decoder's input projection with both biases (one product over every step), the output projection
and its softmax (one fused product over every step), and after the loop the weight gradients (one product each
over every step, from the saved pre-activation gradients). A step is then the attention step, one small product
(``[W_ic W_hh] [context<t>; s<t-1>]``, the context's part of the input projection and the recurrence together)
and the engine's fused LSTM kernel (:func:`xseq.ops.select.ops_for`: the host build on NumPy, CUDA on CuPy)
writing into sequence-sized buffers; its backward is the fused kernel, one product for the gradients of the
context and of ``s<t-1>`` together, and the attention step's. What stays per step is Python and launch overhead
(about 20 array operations a step each way, most of them the attention's): the decoder's steps cost about as much
as the bidirectional encoder's, whose loops run in the engine.

Parameters live in one dict (:meth:`Seq2Seq.parameters`, the same object at every call, the one an optimiser
updates), named as :func:`~xseq.seq2seq.schema.parameter_shapes` lists them. Dropout (training only) drops the
source embedding's outputs, the outputs of every encoder layer but the last (the layer's own), the target
embedding's outputs and the decoder states before the projection, every mask from :attr:`Seq2Seq.dropout_rng`
in that order, time-major ``(T, m, n)`` (so :class:`xseq.distributed.ExampleDropout` can stand in for it).
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.arrays import to_numpy
from ..engine.sequence import c_order
from ..lm import checkpoint
from ..lm.vocab import Vocabulary
from ..nn.attention import Attention
from ..nn.embedding import Embedding, add_rows
from ..nn.params import ModelWeights, seed_child
from ..nn.projection_loss import projection_cross_entropy, projection_nll
from ..ops.inference import inference_mode
from ..ops.select import ops_for
from . import decode
from .inputs import outputs_batch, previous_tokens, projection_rows, source_batch, target_batch
from .schema import (
    CELLS,
    CONFIG_KEYS,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    check_config,
    check_stored_parameters,
    checked_state_dict,
    model_config,
)

# Children of numpy.random.SeedSequence(seed) (0 is the encoder layer's dropout stream, as in xseq.LSTM).
_OUTPUT_SEED, _SOURCE_EMBEDDING_SEED, _TARGET_EMBEDDING_SEED, _ATTENTION_SEED, _DECODER_SEED = 1, 2, 3, 4, 5
_DECODER_KEYS = ("decoder.weight_ih", "decoder.weight_hh", "decoder.bias_ih", "decoder.bias_hh")


class Seq2Seq(ModelWeights):
    """Encoder, attention and decoder: see the module docstring.

    The weights' methods (``parameters``, ``grads``, ``state_dict``, ``load_state_dict``, ``save``, ``load``, ...)
    are :class:`~xseq.nn.params.ModelWeights`'s; the parameters' names and shapes are
    :func:`~xseq.seq2seq.schema.parameter_shapes`'s.

    Parameters
    ----------
    source_vocab, target_vocab : Vocabulary
        ``V_x`` and ``V_y`` ids each; ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<eos>``.
    cell : {"lstm", "gru", "rnn"}, default "lstm"
        The encoder's cell (the decoder is an LSTM cell).
    hidden_size : int, default 32
        ``n_a``, the encoder's size per direction (the attention reads ``n_enc = 2 n_a``).
    num_layers : int, default 1
        Stacked bidirectional encoder layers.
    decoder_size : int, default 64
        ``n_s``.
    embed_size : int, default 16
        ``D`` of the source and the target embeddings.
    attention_size : int, default 10
        ``n_e``, the attention's tanh layer (the course's ``Dense(10, activation="tanh")``).
    feed_previous : bool, default True
        Feed the decoder the previous target token's embedding beside the context; False is the course's
        decoder, fed the context only (and has no target embedding).
    dropout : float in [0, 1), default 0
        In training only; see the module docstring.
    backend : str or namespace, default "numpy"
    dtype : {"float32", "float64"}, default "float32"
    seed : int, default 0
        Seeds every weight and the dropout stream (independent streams derived from it): the embeddings
        standard normal (``torch.nn.Embedding``), the encoder, the decoder and the projection uniform in
        ``(-1/sqrt(n), 1/sqrt(n))`` for their ``n`` (PyTorch's ``LSTM``, ``LSTMCell``, ``Linear``), the
        attention as :class:`xseq.Attention` draws it.

    Attributes
    ----------
    source_vocab, target_vocab : Vocabulary
    source_embedding : xseq.Embedding
    encoder : xseq.RNN, xseq.LSTM or xseq.GRU
        Bidirectional, ``num_layers`` layers.
    attention : xseq.Attention
        Bahdanau's linear score (``energy_activation="linear"``).
    target_embedding : xseq.Embedding or None
    xp : namespace
    dtype : the backend's dtype
    """

    MODEL_FORMAT = MODEL_FORMAT
    MODEL_FORMAT_VERSION = MODEL_FORMAT_VERSION
    _checkpoint = checkpoint  # its checkpoint file's functions, for xseq.nn.params.ModelWeights

    def __init__(self, source_vocab, target_vocab, *, cell="lstm", hidden_size=32, num_layers=1, decoder_size=64,
                 embed_size=16, attention_size=10, feed_previous=True, dropout=0.0, backend="numpy", dtype="float32",
                 seed=0):
        for name, vocab in (("source_vocab", source_vocab), ("target_vocab", target_vocab)):
            if not isinstance(vocab, Vocabulary):
                raise TypeError(f"{name} must be an xseq.Vocabulary; got {type(vocab).__name__}")
        config = {"cell": cell, "hidden_size": hidden_size, "num_layers": num_layers, "decoder_size": decoder_size,
                  "embed_size": embed_size, "attention_size": attention_size, "feed_previous": feed_previous,
                  "dropout": dropout}
        check_config(config)
        self.source_vocab, self.target_vocab = source_vocab, target_vocab
        self.cell, self.feed_previous = cell, feed_previous
        V_x, V_y = len(source_vocab), len(target_vocab)
        n_s, D = int(decoder_size), int(embed_size)
        self.encoder = CELLS[cell](D, hidden_size, num_layers=num_layers, bidirectional=True, dropout=dropout,
                                   backend=backend, dtype=dtype, seed=seed)
        self.xp, self.dtype = self.encoder.xp, self.encoder.dtype
        n_enc = 2 * self.encoder.hidden_size
        self.source_embedding = Embedding(V_x, D, backend=self.xp, dtype=self.dtype_name,
                                          seed=seed_child(seed, _SOURCE_EMBEDDING_SEED))
        self.attention = Attention(n_enc, n_s, energy_size=attention_size, backend=self.xp, dtype=self.dtype_name,
                                   seed=seed_child(seed, _ATTENTION_SEED))
        self.target_embedding = None
        if feed_previous:
            self.target_embedding = Embedding(V_y, D, backend=self.xp, dtype=self.dtype_name,
                                              seed=seed_child(seed, _TARGET_EMBEDDING_SEED))
        self._params = {"source_embedding": self.source_embedding.parameters["weight"]}
        self._params.update({"encoder." + k: v for k, v in self.encoder.parameters.items()})
        self._params.update({"attention." + k: v for k, v in self.attention.parameters.items()})
        rng = np.random.default_rng(seed_child(seed, _DECODER_SEED))
        bound = 1 / math.sqrt(n_s)
        n_in = n_enc + (D if feed_previous else 0)
        for key, shape in zip(_DECODER_KEYS, ((4 * n_s, n_in), (4 * n_s, n_s), (4 * n_s,), (4 * n_s,))):
            self._params[key] = self._from_host(rng.uniform(-bound, bound, size=shape))
        if feed_previous:
            self._params["target_embedding"] = self.target_embedding.parameters["weight"]
        rng = np.random.default_rng(seed_child(seed, _OUTPUT_SEED))
        self._params["Wy"] = self._from_host(rng.uniform(-bound, bound, size=(V_y - 1, n_s)))
        self._params["by"] = self._from_host(rng.uniform(-bound, bound, size=(V_y - 1,)))
        self._grads = {k: self.xp.zeros_like(v) for k, v in self._params.items()}

    # ------------------------------------------------------------------ structure

    @property
    def hidden_size(self):
        """``n_a``, the encoder's size per direction."""
        return self.encoder.hidden_size

    @property
    def num_layers(self):
        """The encoder's stacked layers."""
        return self.encoder.num_layers

    @property
    def decoder_size(self):
        """``n_s``."""
        return self.attention.state_size

    @property
    def embed_size(self):
        """``D``."""
        return self.source_embedding.dim

    @property
    def attention_size(self):
        """``n_e``."""
        return self.attention.energy_size

    @property
    def _recurrent(self):
        """The encoder (xseq.nn.params.ModelWeights reads its dropout stream and dtype)."""
        return self.encoder

    def config(self):
        """The constructor arguments that fix the architecture (JSON-serialisable)."""
        return {key: getattr(self, key) for key in CONFIG_KEYS}

    def __repr__(self):
        return (f"Seq2Seq(V_x={len(self.source_vocab)}, V_y={len(self.target_vocab)}, cell={self.cell!r}, "
                f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, decoder_size={self.decoder_size}, "
                f"embed_size={self.embed_size}, attention_size={self.attention_size}, "
                f"feed_previous={self.feed_previous}, backend={self.backend_name!r}, dtype={self.dtype_name!r})")

    def _sync(self):
        """Hand the pieces the current arrays of :meth:`parameters` (an optimiser replaces them)."""
        p = self._params
        self.source_embedding.parameters = {"weight": p["source_embedding"]}
        self.encoder.parameters = {k: p["encoder." + k] for k in self.encoder.parameters}
        self.attention.parameters = {k: p["attention." + k] for k in self.attention.parameters}
        if self.target_embedding is not None:
            self.target_embedding.parameters = {"weight": p["target_embedding"]}

    # ------------------------------------------------------------------ encoder and teacher-forced decoder

    def _encoder_outputs(self, source, lengths, training):
        """Embed and encode checked host ids: the encoder outputs ``(n_enc, m, T_x)`` and the source embedding's
        dropout mask (None without dropout)."""
        xp = self.xp
        self._sync()
        m, T_x = source.shape
        e = self.source_embedding.forward(source)  # (D, m, T_x), a view of time-major rows
        mask = None
        if training and self.dropout > 0:
            mask = self._mask((T_x, m, self.embed_size))
            e = xp.permute_dims(xp.permute_dims(e, (2, 1, 0)) * mask, (2, 1, 0))
        a, _ = self.encoder.forward(e, lengths=lengths, training=training)
        return a, mask

    def _encode(self, source, lengths, training):
        """The attention keys of checked host ids, and the source embedding's dropout mask."""
        a, mask = self._encoder_outputs(source, lengths, training)
        return self.attention.precompute(a, lengths), mask

    def _teacher_forced(self, keys, prev, training):
        """Run the decoder over every step with the given previous tokens; returns what the backward pass needs.

        The states ``S`` ``(T+1, m, n_s)`` (``S[0] = 0``), cells ``C``, gates ``saved`` ``(T, m, 4 n_s)``, each
        step's ``[context<t>; s<t-1>]`` ``(T, m, n_enc + n_s)`` (the input of its one product), the attention
        steps' caches, the target embedding's rows ``(T*m, D)`` and the two dropout masks.
        """
        xp, p = self.xp, self._params
        ops = ops_for(xp, self.dtype)
        dtype = self.dtype
        m, T = prev.shape
        n_s, n_enc = self.decoder_size, 2 * self.hidden_size
        W_ih = p["decoder.weight_ih"]
        bias = p["decoder.bias_ih"] + p["decoder.bias_hh"]
        # [W_ic W_hh]^T: a step's context and previous state go through one product.
        W_chT = c_order(xp, xp.permute_dims(xp.concat([W_ih[:, :n_enc], p["decoder.weight_hh"]], axis=1), (1, 0)))

        def empty(*shape):
            return ops.empty(shape, dtype, None)

        E_rows = embed_mask = None
        XE = empty(T * m, 4 * n_s)
        if self.feed_previous:
            # The target embedding's part of every step's input projection, and both biases: one product.
            E = xp.permute_dims(self.target_embedding.forward(prev), (2, 1, 0))  # (T, m, D)
            if training and self.dropout > 0:
                embed_mask = self._mask((T, m, self.embed_size))
                E = E * embed_mask
            E_rows = xp.reshape(E, (T * m, self.embed_size))
            XE = ops.add_into(ops.matmul(E_rows, xp.permute_dims(W_ih[:, n_enc:], (1, 0)), XE), bias)
        else:
            XE[...] = xp.broadcast_to(bias, (T * m, 4 * n_s))
        XE = xp.reshape(XE, (T, m, 4 * n_s))
        S, C = empty(T + 1, m, n_s), empty(T + 1, m, n_s)
        S[0, ...] = xp.zeros((m, n_s), dtype=dtype)
        C[0, ...] = xp.zeros((m, n_s), dtype=dtype)
        saved = empty(T, m, 4 * n_s)
        Z = empty(T, m, n_enc + n_s)
        hw_buffer = empty(m, 4 * n_s)
        caches = []
        for t in range(T):
            context, _, cache = self.attention.step(keys, xp.permute_dims(S[t, ...], (1, 0)))
            Z[t, :, :n_enc] = xp.permute_dims(context, (1, 0))
            Z[t, :, n_enc:] = S[t, ...]
            hw = ops.matmul(Z[t, ...], W_chT, hw_buffer)
            ops.lstm_forward(XE[t, ...], hw, C[t, ...], saved, C, S, t)
            caches.append(cache)
        out_mask = None
        if training and self.dropout > 0:
            out_mask = xp.reshape(self._mask((T, m, n_s)), (T * m, n_s))
        return {"ops": ops, "S": S, "C": C, "saved": saved, "Z": Z, "caches": caches, "E_rows": E_rows,
                "embed_mask": embed_mask, "out_mask": out_mask, "T": T, "m": m}

    def _outputs(self, run):
        """The projection's input: the decoder states after every step ``(T*m, n_s)``, time-major, dropped out."""
        xp = self.xp
        A = xp.reshape(run["S"][1:, ...], (run["T"] * run["m"], self.decoder_size))
        return A if run["out_mask"] is None else A * run["out_mask"]

    def _batch(self, source, source_lengths, target, target_lengths):
        source, source_lengths = source_batch(source, source_lengths, len(self.source_vocab))
        target, target_lengths = target_batch(target, target_lengths, source.shape[0], len(self.target_vocab))
        return source, source_lengths, target, target_lengths

    # ------------------------------------------------------------------ loss and gradients

    def loss_and_backward(self, source, source_lengths, target, target_lengths, *, training=True):
        """The mean cross-entropy per target token of a batch, and the gradient of every parameter (in :meth:`grads`).

        Parameters
        ----------
        source : (m, T_x) integer array (NumPy or any backend)
            Source ids ``0 < id < V_x``, each example padded with 0 after its length.
        source_lengths : (m,) ints, ``1 <= L <= T_x``
        target : (m, T_y) integer array
            Target ids ``0 < id < V_y`` **without** ``<eos>`` (the model appends it; an ``<eos>`` inside a target
            is refused), padded with 0.
        target_lengths : (m,) ints, ``0 <= L <= T_y``
            Tokens before ``<eos>``; 0 is the output ``<eos>`` alone.
        training : bool, default True
            Apply dropout.

        Returns
        -------
        float
            The mean over the ``sum(target_lengths + 1)`` predicted tokens (``<eos>`` included) of
            ``-log p(token)``, in nats; the gradients are of this mean.
        """
        xp, p = self.xp, self._params
        source, source_lengths, target, target_lengths = self._batch(source, source_lengths, target, target_lengths)
        keys, src_mask = self._encode(source, source_lengths, training)
        prev = previous_tokens(target, target_lengths)
        run = self._teacher_forced(keys, prev, training)
        T, m, n_s, n_enc = run["T"], run["m"], self.decoder_size, 2 * self.hidden_size
        rows, keep = projection_rows(target, target_lengths, T)
        count = rows.shape[0]
        A = self._outputs(run)
        A_kept = A if keep is None else xp.take(A, xp.asarray(keep), axis=0)
        nll, dA_kept, dWy, dby = projection_cross_entropy(A_kept, p["Wy"], p["by"], xp.asarray(rows),
                                                          scale=1 / count)
        dA = dA_kept if keep is None else add_rows(xp.zeros(A.shape, dtype=self.dtype), xp.asarray(keep), dA_kept)
        if run["out_mask"] is not None:
            dA = dA * run["out_mask"]
        dY = xp.reshape(dA, (T, m, n_s))

        # The decoder's steps backwards: the LSTM cell, then the context's and the state's gradients in one product,
        # then the attention step (whose gradient of s<t-1> joins the one through W_hh).
        ops, saved, C = run["ops"], run["saved"], run["C"]
        self.attention.zero_grad()
        W_ih = p["decoder.weight_ih"]
        W_ch = xp.concat([W_ih[:, :n_enc], p["decoder.weight_hh"]], axis=1)  # (4 n_s, n_enc + n_s)
        dZ = ops.empty((T, m, 4 * n_s), self.dtype, None)
        dh = xp.zeros((m, n_s), dtype=self.dtype)
        dc = xp.zeros((m, n_s), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            dc = ops.lstm_backward(saved, C, t, dh, dY[t, ...], dc, dZ)
            back = dZ[t, ...] @ W_ch  # a new array each step: the attention keeps its context part until keys_backward
            ds_att = self.attention.step_backward(xp.permute_dims(back[:, :n_enc], (1, 0)), run["caches"][t])
            dh = back[:, n_enc:] + xp.permute_dims(ds_att, (1, 0))
        dZ2 = xp.reshape(dZ, (T * m, 4 * n_s))
        dZ2T = xp.permute_dims(dZ2, (1, 0))
        dW_ch = dZ2T @ xp.reshape(run["Z"], (T * m, n_enc + n_s))
        db = xp.sum(dZ2, axis=0)
        grads = {}
        dW_ic, dW_hh = dW_ch[:, :n_enc], c_order(xp, dW_ch[:, n_enc:])
        if self.feed_previous:
            dW_ih = xp.concat([dW_ic, dZ2T @ run["E_rows"]], axis=1)
            dE = dZ2 @ W_ih[:, n_enc:]  # (T*m, D)
            if run["embed_mask"] is not None:
                dE = dE * xp.reshape(run["embed_mask"], (T * m, self.embed_size))
            self.target_embedding.zero_grad()
            self.target_embedding.backward(xp.permute_dims(xp.reshape(dE, (T, m, self.embed_size)), (2, 1, 0)))
        else:
            dW_ih = c_order(xp, dW_ic)

        # The encoder side: the attention keys once, the encoder, the source embedding.
        da = self.attention.keys_backward(keys)
        self.encoder.zero_grad()
        dx = self.encoder.backward(da)
        if src_mask is not None:
            dx = xp.permute_dims(xp.permute_dims(dx, (2, 1, 0)) * src_mask, (2, 1, 0))
        self.source_embedding.zero_grad()
        self.source_embedding.backward(dx)

        grads["source_embedding"] = self.source_embedding.grads["weight"]
        grads.update({"encoder." + k: v for k, v in self.encoder.grads.items()})
        grads.update({"attention." + k: v for k, v in self.attention.grads.items()})
        grads.update({"decoder.weight_ih": dW_ih, "decoder.weight_hh": dW_hh, "decoder.bias_ih": db,
                      "decoder.bias_hh": xp.asarray(db, copy=True)})
        if self.feed_previous:
            grads["target_embedding"] = self.target_embedding.grads["weight"]
        grads.update({"Wy": dWy, "by": dby})
        self._grads = grads
        return nll / count

    @inference_mode()
    def nll(self, source, source_lengths, target, target_lengths):
        """The summed negative log-likelihood of a batch's targets (no dropout, no gradients) and its token count.

        Parameters are those of :meth:`loss_and_backward`.

        Returns
        -------
        (float, int)
            ``sum -log p(token)`` over the batch's target tokens, ``<eos>`` included, and their number
            ``sum(target_lengths + 1)``.
        """
        xp, p = self.xp, self._params
        source, source_lengths, target, target_lengths = self._batch(source, source_lengths, target, target_lengths)
        keys, _ = self._encode(source, source_lengths, False)
        run = self._teacher_forced(keys, previous_tokens(target, target_lengths), False)
        rows, keep = projection_rows(target, target_lengths, run["T"])
        A = self._outputs(run)
        A_kept = A if keep is None else xp.take(A, xp.asarray(keep), axis=0)
        return projection_nll(A_kept, p["Wy"], p["by"], xp.asarray(rows)), int(rows.shape[0])

    @inference_mode()
    def log_likelihood(self, source, source_lengths, outputs):
        """The model's log-probability of given output sequences, ``<eos>`` included, one per example.

        Parameters
        ----------
        source, source_lengths : as for :meth:`loss_and_backward`
        outputs : list of m sequences of int
            Output ids without ``<eos>`` (as :meth:`greedy` returns them); the model's probability of each followed
            by ``<eos>`` is computed.

        Returns
        -------
        (m,) float64 NumPy array
            ``sum_t log p(y<t> | y<1..t-1>, source)`` over each output's tokens and its ``<eos>``, computed in
            float64 from the model's logits (as the decoders score their hypotheses).
        """
        xp, p = self.xp, self._params
        source, source_lengths = source_batch(source, source_lengths, len(self.source_vocab))
        m = source.shape[0]
        target, target_lengths = outputs_batch(outputs, m, len(self.target_vocab))
        keys, _ = self._encode(source, source_lengths, False)
        run = self._teacher_forced(keys, previous_tokens(target, target_lengths), False)
        T = run["T"]
        rows, keep = projection_rows(target, target_lengths, T)
        keep = np.arange(T * m) if keep is None else keep
        A = xp.take(self._outputs(run), xp.asarray(keep), axis=0)
        logp = decode.log_softmax(to_numpy(A @ xp.permute_dims(p["Wy"], (1, 0)) + p["by"]))
        picked = logp[np.arange(rows.shape[0]), rows]
        return np.bincount(keep % m, weights=picked, minlength=m)

    # ------------------------------------------------------------------ decoding

    @inference_mode()
    def greedy(self, source, source_lengths, max_len=None):
        """Greedy decoding: see :func:`xseq.seq2seq.decode.greedy`."""
        return decode.greedy(self, source, source_lengths, max_len=max_len)

    @inference_mode()
    def beam_search(self, source, source_lengths, beam=4, max_len=None, length_normalization=0.0):
        """Beam search: see :func:`xseq.seq2seq.decode.beam_search`."""
        return decode.beam_search(self, source, source_lengths, beam=beam, max_len=max_len,
                                  length_normalization=length_normalization)

    @inference_mode()
    def translate(self, texts, beam=1, max_len=None):
        """Translate texts with the vocabularies: see :func:`xseq.seq2seq.decode.translate`."""
        return decode.translate(self, texts, beam=beam, max_len=max_len)

    @inference_mode()
    def sample(self, texts, *, temperature=1.0, top_k=None, max_len=None, seed=0):
        """Draw translations from the model's distribution: see :func:`xseq.seq2seq.decode.sample`."""
        return decode.sample(self, texts, temperature=temperature, top_k=top_k, max_len=max_len, seed=seed)

    # ------------------------------------------------------------------ weights and checkpoints

    def _checked_state(self, state):
        """Host copies of the arrays of ``state``, which must be a dict
        (:func:`~xseq.seq2seq.schema.checked_state_dict`), checked against :meth:`parameters`."""
        return checked_state_dict(self._params, state, self)

    def checkpoint_contents(self):
        """``(arrays, meta)`` of this model for :func:`xseq.save_checkpoint`: ``"param/<name>"`` -> host array, and
        ``{"format": "xseq.Seq2Seq", "format_version": 1, "model": config(), "dtype", "source_vocab",
        "target_vocab"}`` (the vocabularies as :meth:`xseq.Vocabulary.to_json` writes them)."""
        arrays = self._parameter_arrays()
        meta = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "model": self.config(),
                "dtype": self.dtype_name, "source_vocab": self.source_vocab.to_json(),
                "target_vocab": self.target_vocab.to_json()}
        return arrays, meta

    @classmethod
    def from_checkpoint(cls, arrays, meta, *, backend="numpy", where="checkpoint"):
        """Rebuild a model from what :func:`xseq.load_checkpoint` returned.

        The configuration, the vocabularies and the stored parameters (names, shapes, dtype) are checked against
        each other before anything is built (:func:`~xseq.seq2seq.schema.check_stored_parameters`), so a
        configuration that disagrees with the file costs no memory; then every value must be finite.
        CheckpointError naming ``where`` otherwise.
        """
        config = model_config(meta, where)
        with cls._invalid_model(where):
            source_vocab = Vocabulary.from_json(meta["source_vocab"])
            target_vocab = Vocabulary.from_json(meta["target_vocab"])
            dtype = meta["dtype"]
            state = cls._stored_parameters(arrays)
            check_stored_parameters(state, config, len(source_vocab), len(target_vocab), dtype)
            model = cls(source_vocab, target_vocab, **config, backend=backend, dtype=dtype)
            model.load_state_dict(state)
        return model
