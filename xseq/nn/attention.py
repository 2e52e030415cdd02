"""The course's additive attention, with source lengths and a projection of the encoder outputs made once.

The Neural Machine Translation assignment's ``one_step_attention(a, s_prev)``
scores every encoder output ``a<t'>`` against the decoder's previous state
``s_prev`` with a small two-layer network, turns the scores into weights with a
softmax over the source steps and returns the weighted sum of the encoder
outputs::

    e<t'>     = W2 tanh(W1 [a<t'>; s_prev] + b1) + b2        "densor1" (tanh), "densor2"
    alpha<t'> = exp(e<t'>) / sum_t'' exp(e<t''>)             softmax over t' = 0 .. T_x - 1
    context   = sum_t' alpha<t'> a<t'>

``W1`` is split by the concatenation, ``W1 [a; s] = W1_a a + W1_s s``. The part
``W1_a a<t'> + b1`` does not depend on the decoder step, so :meth:`Attention.precompute`
computes it once per source batch (one matrix product over all ``m * T_x``
encoder outputs) and every decoder step adds only ``W1_s s_prev``. The gradient
of that part is accumulated over the decoder steps and turned into the
gradients of ``W1_a``, ``b1`` and ``a`` once, by :meth:`Attention.keys_backward`.

Layouts, in the course's letters (``n_enc`` is the encoder's output size,
``D*n_a`` for a bidirectional :class:`xseq.LSTM`; ``n_s`` the decoder's state
size; ``n_e`` the energy layer's size, 10 in the course):

* ``a``: ``(n_enc, m, T_x)``, the ``outputs`` of :class:`xseq.LSTM` (and the RNN and GRU) as they come;
* ``s_prev``: ``(n_s, m)``, a step like the course's ``a_prev``;
* ``context``: ``(n_enc, m)``;
* ``alphas``: ``(m, T_x)``: ``alphas[i, t]`` weighs ``a[:, i, t]`` (``a``'s layout without its feature axis).

Energies: the course's ``densor2`` is ``Dense(1, activation="relu")``. A ReLU
there clips every negative score to 0, so an example whose scores are all
negative gets uniform weights and no gradient through the scores. The default
here is Bahdanau's linear score (``energy_activation="linear"``);
``energy_activation="relu"`` is the course's network exactly. With the linear
score ``b2`` shifts every score of an example alike, which the softmax ignores:
its gradient is 0 (up to rounding), and it is kept so that the parameters are
the course's.

Source lengths: ``precompute(a, lengths)`` takes each example's number of valid
source steps, ``1 <= L <= T_x`` (the ``lengths`` of the encoder layer).
Scores at ``t' >= L`` are set to ``-inf`` before the softmax, so their weights
are exactly 0, the context ignores those columns of ``a`` and their gradients
are exactly 0. Padded columns of ``a`` must be finite (``0 * inf`` is NaN);
the layers return zeros there.

Internally the encoder outputs are kept batch-first, ``(m, T_x, n_enc)``, so
that the context and its gradient are batched matrix products (one per
example) rather than reductions over a strided axis.
"""

from __future__ import annotations

import numpy as np

from ..backends.arrays import asarray, backend_name
from ..backends.arrays import backend as backend_named
from ..backends.checks import check_cache, check_ndim, check_shape, check_sizes, host_lengths
from .params import check_layer_array, checked_layer_state, floating_dtype, host_copies

ENERGY_ACTIVATIONS = ("linear", "relu")


class AttentionKeys:
    """The encoder side of one source batch, made by :meth:`Attention.precompute` and shared by every decoder step.

    Attributes
    ----------
    m, T_x : int
        Examples and source steps.
    lengths : (m,) int64 NumPy array or None
        The validated source lengths (None: every step is valid).

    The rest is private: the encoder outputs batch-first ``(m, T_x, n_enc)``,
    their projection ``W1_a a + b1`` ``(m, T_x, n_e)``, the mask of valid steps
    and what the decoder steps' backward passes accumulate for
    :meth:`Attention.keys_backward`.
    """

    made_by = "Attention.precompute"

    def __init__(self, owner, A, K, valid, lengths):
        self._owner = owner
        self._A, self._K, self._valid = A, K, valid
        self.m, self.T_x = A.shape[0], A.shape[1]
        self.lengths = lengths
        self._dK = None  # (m, T_x, n_e): sum over the decoder steps of the gradient of K
        self._dcontexts, self._alphas = [], []  # per backpropagated step: (m, n_enc) and (m, T_x)
        self._finished = False


class AttentionStep:
    """What :meth:`Attention.step_backward` needs from one :meth:`Attention.step` (private fields)."""

    made_by = "Attention.step"

    def __init__(self, keys, s_prev, h, scores, alphas):
        self.keys, self.s_prev, self.h, self.scores, self.alphas = keys, s_prev, h, scores, alphas


class Attention:
    """Additive attention over encoder outputs (the course's ``one_step_attention``), forward and backward.

    Parameters
    ----------
    encoder_size : int
        ``n_enc``, the size of one encoder output ``a<t'>``.
    state_size : int
        ``n_s``, the size of the decoder state ``s_prev``.
    energy_size : int, default 10
        ``n_e``, the units of the tanh layer (the course's ``densor1 = Dense(10, activation="tanh")``).
    energy_activation : {"linear", "relu"}, default "linear"
        The activation of the score ``W2 h + b2``: none (Bahdanau), or the
        course's ``densor2 = Dense(1, activation="relu")``.
    backend : str or namespace, default "numpy"
        Where the parameters live (see :func:`xseq.backend`).
    dtype : {"float32", "float64"}, default "float32"
    seed : int, default 0
        Initial weights are drawn from ``numpy.random.default_rng(seed)``, uniform
        in ``(-1/sqrt(fan_in), 1/sqrt(fan_in))`` like ``torch.nn.Linear``
        (``fan_in = n_enc + n_s`` for the first layer, ``n_e`` for the second),
        in the order ``W1 = [W1_a | W1_s]``, ``b1``, ``W2``, ``b2``, so a seed gives
        the same weights on every backend.

    Attributes
    ----------
    parameters : dict of arrays
        ``W1_a`` ``(n_e, n_enc)`` and ``W1_s`` ``(n_e, n_s)``: the first layer's
        weight split by the concatenation ``[a<t'>; s_prev]`` (the course's
        ``densor1`` kernel is ``concat([W1_a, W1_s], axis=1).T``); ``b1`` ``(n_e,)``;
        ``W2`` ``(1, n_e)`` and ``b2`` ``(1,)``, the score layer (``densor2``'s
        kernel is ``W2.T``).
    grads : dict of arrays
        Same keys and shapes; the backward methods add to them, :meth:`zero_grad` clears them.

    Notes
    -----
    A decoder uses the pieces one source batch at a time::

        keys = attention.precompute(a, lengths)             # once: W1_a a + b1
        for t in range(T_y):
            context, alphas, cache = attention.step(keys, s_prev)
            ...
        for t in reversed(range(T_y)):                      # any order: the steps add up
            ds_prev = attention.step_backward(dcontext, cache, dalphas=None)
            ...
        da = attention.keys_backward(keys)                  # once: (n_enc, m, T_x)

    :meth:`step_backward` adds the gradients of ``W1_s``, ``W2`` and ``b2``;
    :meth:`keys_backward` those of ``W1_a`` and ``b1``. :meth:`forward` and
    :meth:`backward` are the same for a single decoder step.

    Examples
    --------
    >>> import numpy as np
    >>> from xseq.nn.attention import Attention
    >>> att = Attention(6, 4, dtype="float64", seed=0)
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((6, 2, 5))                  # (n_enc, m, T_x)
    >>> context, alphas = att.forward(a, rng.standard_normal((4, 2)), lengths=[5, 3])
    >>> context.shape, alphas.shape
    ((6, 2), (2, 5))
    >>> alphas[1, 3:].tolist(), bool(np.allclose(alphas.sum(axis=1), 1))
    ([0.0, 0.0], True)
    """

    def __init__(self, encoder_size, state_size, *, energy_size=10, energy_activation="linear",
                 backend="numpy", dtype="float32", seed=0):
        check_sizes(encoder_size=encoder_size, state_size=state_size, energy_size=energy_size)
        if energy_activation not in ENERGY_ACTIVATIONS:
            raise ValueError(f"energy_activation must be one of {ENERGY_ACTIVATIONS}; got {energy_activation!r}")
        self.encoder_size, self.state_size, self.energy_size = int(encoder_size), int(state_size), int(energy_size)
        self.energy_activation = energy_activation
        self.xp = backend_named(backend)
        self.dtype, self.dtype_name = floating_dtype(self.xp, dtype)

        rng = np.random.default_rng(seed)
        n_enc, n_e = self.encoder_size, self.energy_size
        bound1, bound2 = 1 / np.sqrt(n_enc + self.state_size), 1 / np.sqrt(n_e)
        W1 = rng.uniform(-bound1, bound1, size=(n_e, n_enc + self.state_size))
        host = {"W1_a": W1[:, :n_enc], "W1_s": W1[:, n_enc:], "b1": rng.uniform(-bound1, bound1, size=n_e),
                "W2": rng.uniform(-bound2, bound2, size=(1, n_e)), "b2": rng.uniform(-bound2, bound2, size=1)}
        self.parameters = {k: asarray(np.ascontiguousarray(v), backend=self.xp, dtype=self.dtype)
                           for k, v in host.items()}
        self.zero_grad()
        self._last = None  # the keys and step of the last forward, for backward

    def _shapes(self):
        """Every parameter's name and shape."""
        n_enc, n_s, n_e = self.encoder_size, self.state_size, self.energy_size
        return {"W1_a": (n_e, n_enc), "W1_s": (n_e, n_s), "b1": (n_e,), "W2": (1, n_e), "b2": (1,)}

    def __repr__(self):
        return (f"Attention({self.encoder_size}, {self.state_size}, energy_size={self.energy_size}, "
                f"energy_activation={self.energy_activation!r}, backend={backend_name(self.xp)!r}, "
                f"dtype={self.dtype_name!r})")

    # ------------------------------------------------------------------ forward

    def precompute(self, a, lengths=None):
        """The encoder side of the scores, ``W1_a a<t'> + b1`` for every example and source step.

        Parameters
        ----------
        a : (n_enc, m, T_x) array of this attention's backend and dtype
            The encoder outputs. Columns past an example's length must be finite; they get weight 0.
        lengths : sequence of int or 1-D integer array of length m, optional
            Each example's number of valid source steps, ``1 <= L <= T_x``.

        Returns
        -------
        AttentionKeys
            Pass it to every :meth:`step` of the decoder, and once to :meth:`keys_backward`.
        """
        xp = self.xp
        check_layer_array(self, "a", a)
        check_ndim("a", a, 3, "(n_enc, m, T_x)")
        n_enc, m, T_x = a.shape
        if m == 0 or T_x == 0:
            raise ValueError(f"a has shape {tuple(a.shape)}; expected at least one example and one source step")
        check_shape("a", a, (self.encoder_size, m, T_x), "(n_enc, m, T_x)", f"from encoder_size={self.encoder_size}")
        host = None if lengths is None else host_lengths(lengths, m, T_x)
        valid = None if host is None else asarray(np.arange(T_x)[None, :] < host[:, None], backend=xp)

        # One C-order copy, batch-first: every step's products then read each example's (T_x, n_enc) block whole.
        A = xp.reshape(xp.permute_dims(a, (1, 2, 0)), (m * T_x, n_enc))
        K = A @ xp.permute_dims(self.parameters["W1_a"], (1, 0)) + self.parameters["b1"]
        return AttentionKeys(self, xp.reshape(A, (m, T_x, n_enc)), xp.reshape(K, (m, T_x, self.energy_size)),
                             valid, host)

    def step(self, keys, s_prev):
        """One decoder step: the attention weights of every source step and the context.

        Parameters
        ----------
        keys : AttentionKeys
            From this attention's :meth:`precompute`.
        s_prev : (n_s, m) array of this attention's backend and dtype
            The decoder's previous state.

        Returns
        -------
        context : (n_enc, m) the weighted sum of the encoder outputs.
        alphas : (m, T_x) the weights; each row sums to 1 and is exactly 0 past the example's length.
        cache : AttentionStep
            For :meth:`step_backward`.
        """
        xp = self.xp
        self._check_keys(keys, "step")
        check_layer_array(self, "s_prev", s_prev)
        check_ndim("s_prev", s_prev, 2, "(n_s, m)")
        check_shape("s_prev", s_prev, (self.state_size, keys.m), "(n_s, m)",
                    f"from state_size={self.state_size} and the m={keys.m} examples of keys")
        p = self.parameters
        q = xp.permute_dims(s_prev, (1, 0)) @ xp.permute_dims(p["W1_s"], (1, 0))  # (m, n_e)
        h = xp.tanh(keys._K + q[:, None, :])                                      # (m, T_x, n_e)
        scores = h @ p["W2"][0, :] + p["b2"]                                      # (m, T_x)
        e = xp.maximum(scores, xp.zeros_like(scores)) if self.energy_activation == "relu" else scores
        if keys._valid is not None:
            e = xp.where(keys._valid, e, xp.full_like(e, -xp.inf))
        e = xp.exp(e - xp.max(e, axis=1, keepdims=True))
        alphas = e / xp.sum(e, axis=1, keepdims=True)
        context = xp.permute_dims((alphas[:, None, :] @ keys._A)[:, 0, :], (1, 0))
        return context, alphas, AttentionStep(keys, s_prev, h, scores, alphas)

    def forward(self, a, s_prev, lengths=None):
        """:meth:`precompute` and one :meth:`step`: the course's ``one_step_attention``.

        Parameters
        ----------
        a : (n_enc, m, T_x) encoder outputs
        s_prev : (n_s, m) decoder state
        lengths : optional (m,) source lengths, ``1 <= L <= T_x``

        Returns
        -------
        context : (n_enc, m)
        alphas : (m, T_x)
        """
        keys = self.precompute(a, lengths)
        context, alphas, cache = self.step(keys, s_prev)
        self._last = cache
        return context, alphas

    __call__ = forward

    # ------------------------------------------------------------------ backward

    def step_backward(self, dcontext, cache, dalphas=None):
        """Back-propagate one :meth:`step`; add the gradients of ``W1_s``, ``W2`` and ``b2`` to :attr:`grads`.

        The gradient reaching ``a`` and the precomputed ``W1_a a + b1`` is added to
        the step's keys, for :meth:`keys_backward`.

        Parameters
        ----------
        dcontext : (n_enc, m) gradient of the loss with respect to the step's ``context``
        cache : AttentionStep
            What the :meth:`step` returned.
        dalphas : (m, T_x), optional
            Gradient with respect to the step's ``alphas``, when the loss reads them.

        Returns
        -------
        ds_prev : (n_s, m) gradient with respect to the step's ``s_prev``.
        """
        xp = self.xp
        check_cache(cache, AttentionStep, "Attention.step_backward", "Attention.step")
        keys = cache.keys
        self._check_keys(keys, "step_backward")
        m, T_x = keys.m, keys.T_x
        check_layer_array(self, "dcontext", dcontext)
        check_ndim("dcontext", dcontext, 2, "(n_enc, m)")
        check_shape("dcontext", dcontext, (self.encoder_size, m), "(n_enc, m)", "from the step's context")
        dcontext_rows = xp.permute_dims(dcontext, (1, 0))                          # (m, n_enc)
        # dL/dalpha<t'> = dcontext . a<t'>, example by example
        dal = (dcontext_rows[:, None, :] @ xp.matrix_transpose(keys._A))[:, 0, :]  # (m, T_x)
        if dalphas is not None:
            check_layer_array(self, "dalphas", dalphas)
            check_ndim("dalphas", dalphas, 2, "(m, T_x)")
            check_shape("dalphas", dalphas, (m, T_x), "(m, T_x)", "from the step's alphas")
            dal = dal + dalphas
        alphas = cache.alphas
        # the softmax's backward; alphas = 0 makes it exactly 0 at padded steps, whatever dalphas holds there
        de = alphas * (dal - xp.sum(alphas * dal, axis=1, keepdims=True))
        if self.energy_activation == "relu":
            de = xp.where(cache.scores > 0, de, xp.zeros_like(de))
        p, g, h = self.parameters, self.grads, cache.h
        n_e = self.energy_size
        g["W2"] = g["W2"] + xp.reshape(de, (1, m * T_x)) @ xp.reshape(h, (m * T_x, n_e))
        g["b2"] = g["b2"] + xp.reshape(xp.sum(de), (1,))
        dpre = de[:, :, None] * p["W2"][0, :] * (1 - h * h)                        # (m, T_x, n_e)
        keys._dK = dpre if keys._dK is None else keys._dK + dpre
        keys._dcontexts.append(dcontext_rows)
        keys._alphas.append(alphas)
        dq = xp.sum(dpre, axis=1)                                                  # (m, n_e)
        g["W1_s"] = g["W1_s"] + xp.permute_dims(dq, (1, 0)) @ xp.permute_dims(cache.s_prev, (1, 0))
        return xp.permute_dims(p["W1_s"], (1, 0)) @ xp.permute_dims(dq, (1, 0))

    def keys_backward(self, keys):
        """Back-propagate :meth:`precompute` once, after every step's :meth:`step_backward`.

        Adds the gradients of ``W1_a`` and ``b1`` (from the steps' accumulated
        gradient of ``W1_a a + b1``) to :attr:`grads` and returns the gradient of
        ``a``: through the scores and through the contexts, summed over the steps.

        Parameters
        ----------
        keys : AttentionKeys
            From :meth:`precompute`; each keys can be back-propagated once.

        Returns
        -------
        da : (n_enc, m, T_x) gradient with respect to ``a``; exactly 0 past an example's length.
            Zeros when no step was back-propagated.
        """
        xp = self.xp
        self._check_keys(keys, "keys_backward")
        keys._finished = True
        m, T_x, n_enc, n_e = keys.m, keys.T_x, self.encoder_size, self.energy_size
        if keys._dK is None:
            return xp.zeros((n_enc, m, T_x), dtype=self.dtype)
        g = self.grads
        dK = xp.reshape(keys._dK, (m * T_x, n_e))
        g["W1_a"] = g["W1_a"] + xp.permute_dims(dK, (1, 0)) @ xp.reshape(keys._A, (m * T_x, n_enc))
        g["b1"] = g["b1"] + xp.sum(dK, axis=0)
        # through the contexts: sum over steps t of alphas_t[i, :]^T dcontext_t[i, :], one product per example
        alphas = xp.stack(keys._alphas, axis=1)                                   # (m, T_y, T_x)
        dcontexts = xp.stack(keys._dcontexts, axis=1)                             # (m, T_y, n_enc)
        dA = keys._dK @ self.parameters["W1_a"] + xp.matrix_transpose(alphas) @ dcontexts  # (m, T_x, n_enc)
        keys._dK, keys._dcontexts, keys._alphas = None, [], []
        return xp.permute_dims(dA, (2, 0, 1))

    def backward(self, dcontext, dalphas=None):
        """Back-propagate the last :meth:`forward`; add every parameter's gradient to :attr:`grads`.

        Parameters
        ----------
        dcontext : (n_enc, m) gradient with respect to ``context``
        dalphas : (m, T_x), optional, gradient with respect to ``alphas``

        Returns
        -------
        da : (n_enc, m, T_x) gradient with respect to ``a``
        ds_prev : (n_s, m) gradient with respect to ``s_prev``
        """
        if self._last is None:
            raise RuntimeError("Attention.backward was called before forward (or twice after one): run forward "
                               "first; backward uses, once, what it keeps")
        cache, self._last = self._last, None
        ds_prev = self.step_backward(dcontext, cache, dalphas)
        return self.keys_backward(cache.keys), ds_prev

    def zero_grad(self):
        """Set every entry of :attr:`grads` to zero."""
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.parameters.items()}

    # ------------------------------------------------------------------ checks

    def _check_keys(self, keys, method):
        check_cache(keys, AttentionKeys, f"Attention.{method}", "Attention.precompute")
        if keys._owner is not self:
            raise ValueError(f"keys were made by another Attention's precompute; Attention.{method} needs "
                             "keys from its own")
        if keys._finished:
            raise RuntimeError(f"keys_backward was already called for these keys; Attention.{method} cannot use "
                               "them again: precompute new keys for the next source batch")

    # ------------------------------------------------------------------ saving

    def state_dict(self):
        """Host (NumPy) copies of :attr:`parameters`."""
        return host_copies(self.parameters)

    def load_state_dict(self, state):
        """Replace :attr:`parameters` with the arrays of ``state`` (any backend, or NumPy), copied.

        Keys computed by :meth:`precompute` before the call still hold the old ``W1_a`` and ``b1``.

        Raises
        ------
        KeyError
            A parameter is missing from ``state``, or ``state`` has a key this attention does not.
        ValueError
            An array's shape differs from this attention's.
        """
        host = checked_layer_state(state, self._shapes(), type(self).__name__)
        self.parameters = {k: asarray(a, backend=self.xp, dtype=self.dtype) for k, a in host.items()}
