"""The course's character model: :class:`~xseq.lm.language_model.LanguageModel` with a one-hot input.

:class:`CharLM` is the dinosaur-names model of the course, over the xseq
layers: one-hot characters in, a stack of :class:`~xseq.RNN`,
:class:`~xseq.LSTM` or :class:`~xseq.GRU` layers, every hidden state projected
to scores over the vocabulary::

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

Besides the model's own interface (ids in,
:meth:`~xseq.lm.language_model.LanguageModel.loss_and_backward`), :class:`CharLM` keeps
the course's: :meth:`CharLM.batch` builds the one-hot inputs ``X`` ``(V, m, T_x)``,
:meth:`CharLM.forward` gives the scores ``(V, m, T_x)``, and
:meth:`CharLM.sequences_loss_and_backward` the mean cross-entropy of a batch.
"""

from __future__ import annotations

import numpy as np

from ..backends.arrays import to_numpy
from .language_model import CELLS, LanguageModel, parameter_shapes  # noqa: F401
from .batches import line_batch

MODEL_FORMAT = "xseq.CharLM"  # the format xseq 0.1.0 wrote for this model; it still loads


class CharLM(LanguageModel):
    """The course's character (or word) language model: one-hot input, recurrent layers, linear output.

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
    """

    INPUT = "one_hot"

    def __init__(self, vocab, hidden_size=128, *, cell="lstm", num_layers=1, dropout=0.0,
                 backend="numpy", dtype="float32", seed=0):
        super().__init__(vocab, hidden_size, input="one_hot", cell=cell, num_layers=num_layers, dropout=dropout,
                         backend=backend, dtype=dtype, seed=seed)

    # Why: see docs/decisions/015-charlm-batch-at-once.md
    def batch(self, sequences):
        """One-hot inputs, targets and mask for a batch of id sequences (see the module docstring).

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
        inputs, targets, mask = line_batch(sequences, self.vocab_size)
        return self._one_hot(inputs), self.xp.asarray(targets), self.xp.asarray(mask)

    def forward(self, X, h0=None, training=False):
        """Scores over the vocabulary at every step (the course's layout).

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
        A = xp.permute_dims(outputs, (2, 1, 0))  # a view of the layer's (T_x, m, n_a) outputs
        T_x, m, n_a = A.shape
        W, b = self._output()
        logits = xp.matmul(xp.reshape(A, (T_x * m, n_a)), W.T) + b
        return xp.permute_dims(xp.reshape(logits, (T_x, m, self.vocab_size)), (2, 1, 0)), final_state

    __call__ = forward

    def sequences_loss_and_backward(self, sequences, training=True):
        """Mean cross-entropy per predicted token (``<eos>`` included) of a batch of id sequences, and the
        gradient of every parameter (then in :meth:`grads`): :meth:`batch`, then the model's
        ``loss_and_backward(..., average="tokens")``."""
        inputs, targets, mask = line_batch(sequences, self.vocab_size)
        loss, _ = self.loss_and_backward(inputs, targets, mask=mask, average="tokens", training=training)
        return loss

    def loss(self, sequences):
        """Summed cross-entropy of a batch of id sequences (no dropout, no gradients).

        Returns
        -------
        total : float
            The sum over the predicted positions, in nats.
        count : int
            The number of predicted positions.
        """
        inputs, targets, mask = line_batch(sequences, self.vocab_size)
        total, _ = self.nll(inputs, targets, mask=mask)
        return total, int(np.asarray(to_numpy(mask)).sum())
