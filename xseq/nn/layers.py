"""Multi-layer, bidirectional RNN, LSTM and GRU layers with variable-length sequences.

:class:`RNN`, :class:`LSTM` and :class:`GRU` hold their weights, run a stack
of recurrent layers forward, keep what backward needs, and accumulate weight
gradients, on any backend (NumPy, CuPy, PyTorch, array-api-strict).

Layouts use the course's letters: ``n_x`` input size, ``n_a`` hidden size,
``m`` examples, ``T_x`` time steps, ``D`` = 2 when bidirectional else 1.

* input ``x``: ``(n_x, m, T_x)``, the course layout;
* outputs: ``(D*n_a, m, T_x)``, the forward direction's ``n_a`` rows first,
  then the reverse direction's (PyTorch's concatenation order);
* states (``h0``, the final state, their gradients): ``(num_layers*D, n_a, m)``,
  hidden first and examples as columns like the course's ``a0``; the first
  index is ``layer*D + direction``, PyTorch's order. The LSTM's state is a
  tuple ``(h, c)`` of two such arrays.

Weights are named, shaped and gate-ordered exactly like the state dict of
``torch.nn.RNN/LSTM/GRU`` (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), so
they exchange with PyTorch unchanged (:meth:`~RecurrentLayer.from_torch`,
:meth:`~RecurrentLayer.to_torch`).

Variable lengths: ``forward(x, lengths=...)`` takes each example's length
``L`` (``1 <= L <= T_x``, any order). Steps ``t >= L`` are padding: their
outputs are zero, they leave the state unchanged (so the final state is the
state at the example's own last step), their gradients are zero, and the
reverse direction starts at step ``L - 1``. This matches PyTorch's
``pack_padded_sequence(..., enforce_sorted=False)``.

Truncated back-propagation through time: pass the final state of one call as
``h0`` of the next. The next call's graph starts at that state; its backward
stores the gradient of that state (:attr:`~RecurrentLayer.d_initial_state`)
but does not propagate into the previous call's weights.

Inference: a forward pass under :class:`xseq.inference_mode` returns the same
outputs and final state but keeps nothing for a backward pass (no trace of
any layer, no dropout masks; see :mod:`xseq.engine.sequence` for the buffers
it then skips); a following :meth:`~RecurrentLayer.backward` raises
:class:`~xseq.ops.inference.InferenceModeError`.
"""

from __future__ import annotations

import numpy as np

from ..backends.arrays import asarray, backend_name, dtype_of
from ..backends.arrays import backend as backend_named
from ..backends.checks import (
    check_ndim,
    check_shape,
    check_sizes,
    host_lengths,
)
from ..course.rnn import check_input, time_major
from ..engine import sequence as engine
from ..ops.inference import is_inference_mode_enabled, refuse_backward
from .params import check_layer_array, checked_layer_state, host_copies


class RecurrentLayer:
    """A stack of recurrent layers; the base class of :class:`RNN`, :class:`LSTM` and :class:`GRU`.

    Parameters
    ----------
    input_size : int
        ``n_x``, the number of features of one step of ``x``.
    hidden_size : int
        ``n_a``, the size of the hidden state of each direction.
    num_layers : int, default 1
        Layers stacked; layer ``l > 0`` reads the outputs of layer ``l - 1``.
    bidirectional : bool, default False
        Add a reverse-time direction to every layer (``D = 2``).
    dropout : float in [0, 1), default 0
        Inverted-dropout probability on the outputs of every layer but the
        last, applied by ``forward(..., training=True)`` only.
    backend : str or namespace, default "numpy"
        Where the parameters live (see :func:`xseq.backend`).
    dtype : {"float32", "float64"}, default "float32"
    seed : int, default 0
        Initial weights are drawn from ``numpy.random.default_rng(seed)``,
        uniform in ``(-1/sqrt(n_a), 1/sqrt(n_a))`` like PyTorch, in PyTorch's
        parameter order, so a seed gives the same weights on every backend.
        Dropout masks come from :attr:`dropout_rng`, an independent NumPy
        stream derived from the same seed.

    Attributes
    ----------
    parameters : dict of arrays
        PyTorch's state-dict names and shapes: ``weight_ih_l{l}`` ``(G*n_a, n_in)``
        (``n_in`` is ``n_x`` for layer 0, ``D*n_a`` above), ``weight_hh_l{l}``
        ``(G*n_a, n_a)``, ``bias_ih_l{l}`` and ``bias_hh_l{l}`` ``(G*n_a,)``, with
        a ``_reverse`` suffix for the reverse direction. ``G`` gates are stacked
        in PyTorch's order (RNN 1; LSTM 4: i, f, g, o; GRU 3: r, z, n).
    grads : dict of arrays
        Same keys and shapes; :meth:`backward` adds to them, :meth:`zero_grad` clears them.
    d_initial_state : array or tuple of arrays
        Gradient of the last backward's loss with respect to the ``h0`` of the
        forward it followed: ``(num_layers*D, n_a, m)``, a tuple ``(d_h0, d_c0)``
        for the LSTM. Overwritten (not accumulated) by every backward.
    dropout_rng : numpy.random.Generator
        Draws the dropout masks; replace it to reseed.
    """

    kind = None  # "rnn", "lstm" or "gru": the engine's name for the cell
    torch_name = None  # "RNN", "LSTM" or "GRU": the torch.nn module with the same weights

    def __init__(self, input_size, hidden_size, *, num_layers=1, bidirectional=False, dropout=0.0,
                 backend="numpy", dtype="float32", seed=0):
        check_sizes(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False; got {bidirectional!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.dropout = float(dropout)
        self.xp = backend_named(backend)
        self.dtype = dtype_of(self.xp, dtype)
        self.dtype_name = f"float{self.xp.finfo(self.dtype).bits}"

        rng = np.random.default_rng(seed)
        bound = 1 / np.sqrt(self.hidden_size)
        shapes = self._shapes()
        self.parameters = {k: self._from_host(rng.uniform(-bound, bound, size=s)) for k, s in shapes.items()}
        self.dropout_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self.zero_grad()
        self.d_initial_state = None
        self._cache = None

    # ------------------------------------------------------------------ structure

    @property
    def gates(self):
        """``G``, the number of stacked gates (1, 4 or 3)."""
        return engine.GATES[self.kind]

    def _keys(self, layer, direction):
        """The four parameter names of one layer and direction, in PyTorch's order."""
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        return tuple(f"{p}{suffix}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _shapes(self):
        """Every parameter's name and shape, in PyTorch's order."""
        G, n_a, D = self.gates, self.hidden_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else D * n_a
            for direction in range(D):
                w_ih, w_hh, b_ih, b_hh = self._keys(layer, direction)
                shapes.update({w_ih: (G * n_a, n_in), w_hh: (G * n_a, n_a), b_ih: (G * n_a,), b_hh: (G * n_a,)})
        return shapes

    def _from_host(self, a):
        """A NumPy array as an array of this layer's backend and dtype."""
        return asarray(a, backend=self.xp, dtype=self.dtype)

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, dropout={self.dropout}, "
                f"backend={backend_name(self.xp)!r}, dtype={self.dtype_name!r})")

    # ------------------------------------------------------------------ forward

    def forward(self, x, h0=None, lengths=None, training=False):
        """Run every layer and direction over the sequence ``x``.

        Parameters
        ----------
        x : (n_x, m, T_x) array of this layer's backend and dtype
        h0 : (num_layers*D, n_a, m) array, or for the LSTM a tuple ``(h0, c0)`` of two;
            None for zeros. A final state returned by an earlier call may be passed here.
        lengths : sequence of int or 1-D integer array of length m, optional
            Each example's number of valid steps, ``1 <= L <= T_x``, in any order.
        training : bool, default False
            Apply dropout between layers (when ``dropout > 0``). Under
            :class:`xseq.inference_mode` nothing is kept for :meth:`backward`
            (which then raises); the results are the same.

        Returns
        -------
        outputs : (D*n_a, m, T_x) hidden states of the last layer (forward direction's
            rows first); zero at steps past an example's length.
        final_state : (num_layers*D, n_a, m) hidden state after each example's last step
            (for the reverse direction: after step 0); the LSTM returns ``(h_n, c_n)``.
        """
        xp = self.xp
        check_layer_array(self, "x", x)
        check_input("x", x)
        n_x, m, T = x.shape
        check_shape("x", x, (self.input_size, m, T), "(n_x, m, T_x)", f"from input_size={self.input_size}")
        states = self._split_state("h0", h0, m)
        mask = None if lengths is None else self._length_mask(lengths, m, T)

        keep_trace = not is_inference_mode_enabled()
        # The last forward's trace is dropped before this one runs: its buffers return to the pool for this call.
        self._cache = None
        inputs = time_major(xp, x)
        traces, dropout_masks = [], []
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0 and training and self.dropout > 0:
                keep = self.dropout_rng.random(inputs.shape) >= self.dropout
                scale = self._from_host(keep / (1 - self.dropout))
                inputs = inputs * scale
                dropout_masks.append(scale if keep_trace else None)
            else:
                dropout_masks.append(None)
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                W_ih, W_hh, b_ih, b_hh = (self.parameters[key] for key in self._keys(layer, direction))
                h = self._initial(states[0], k, m)
                c = self._initial(states[1], k, m) if self.kind == "lstm" else None
                Y, h_T, c_T, trace = engine.sequence_forward(
                    self.kind, inputs, W_ih, W_hh, b_ih, b_hh, h, c, mask=mask, reverse=bool(direction),
                    keep=keep_trace)
                outputs.append(Y)
                traces.append(trace)
                h_n.append(h_T.T)
                if self.kind == "lstm":
                    c_n.append(c_T.T)
            inputs = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=2)

        # Under inference mode the cache only records that the last forward kept nothing (backward refuses).
        self._cache = ({"traces": traces, "dropout_masks": dropout_masks, "m": m, "T": T} if keep_trace
                       else {"inference": True})
        final_state = xp.stack(h_n, axis=0)
        if self.kind == "lstm":
            final_state = (final_state, xp.stack(c_n, axis=0))
        return time_major(xp, inputs), final_state

    __call__ = forward

    # ------------------------------------------------------------------ backward

    def backward(self, d_outputs, d_final_state=None):
        """Back-propagate through the last forward call; add the weight gradients to :attr:`grads`.

        Parameters
        ----------
        d_outputs : (D*n_a, m, T_x) gradient of the loss with respect to ``outputs``,
            or None when the loss depends on the final state only.
        d_final_state : (num_layers*D, n_a, m) gradient with respect to the final state,
            for the LSTM a tuple ``(d_h_n, d_c_n)`` (either may be None); None for zero.

        Returns
        -------
        dx : (n_x, m, T_x) gradient with respect to ``x``; zero at steps past an example's length.

        The gradient with respect to ``h0`` (and ``c0``) is stored in :attr:`d_initial_state`.

        Raises
        ------
        RuntimeError
            No forward ran before.
        xseq.ops.inference.InferenceModeError
            The last forward ran under :class:`xseq.inference_mode` and kept nothing.
        """
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward was called before forward: "
                               "run forward first; backward uses what it keeps")
        if "inference" in self._cache:
            refuse_backward(f"{type(self).__name__}.backward", f"{type(self).__name__}.forward")
        xp, D, n_a = self.xp, self.num_directions, self.hidden_size
        m, T = self._cache["m"], self._cache["T"]
        d_states = self._split_state("d_final_state", d_final_state, m)
        dY = None
        if d_outputs is not None:
            check_layer_array(self, "d_outputs", d_outputs)
            check_ndim("d_outputs", d_outputs, 3, "(D*n_a, m, T_x)")
            check_shape("d_outputs", d_outputs, (D * n_a, m, T), "(D*n_a, m, T_x)", "from the last forward")
            dY = time_major(xp, d_outputs)

        d_h0, d_c0 = [None] * (self.num_layers * D), [None] * (self.num_layers * D)
        for layer in reversed(range(self.num_layers)):
            dX = None
            for direction in range(D):
                k = layer * D + direction
                dh_T, dc_T = (None if s is None else s[k, ...].T for s in d_states)
                dY_k = None if dY is None else dY[:, :, direction * n_a:(direction + 1) * n_a]
                g = engine.sequence_backward(self._cache["traces"][k], dY_k, dh_T, dc_T)
                for key, grad in zip(self._keys(layer, direction), ("dW_ih", "dW_hh", "db_ih", "db_hh")):
                    self.grads[key] = self.grads[key] + g[grad]
                dX = g["dX"] if dX is None else dX + g["dX"]
                d_h0[k] = g["dh0"].T
                if self.kind == "lstm":
                    d_c0[k] = g["dc0"].T
            scale = self._cache["dropout_masks"][layer]
            dY = dX if scale is None else dX * scale

        self.d_initial_state = xp.stack(d_h0, axis=0)
        if self.kind == "lstm":
            self.d_initial_state = (self.d_initial_state, xp.stack(d_c0, axis=0))
        return time_major(xp, dY)

    def zero_grad(self):
        """Set every entry of :attr:`grads` to zero."""
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.parameters.items()}

    # ------------------------------------------------------------------ checks

    def _split_state(self, name, state, m):
        """Validate a state argument (``h0`` or its gradient); return ``[h, c]``, each an array or None."""
        if state is None:
            return [None, None]
        if self.kind == "lstm":
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"{name} of an LSTM must be a tuple (h, c) of two arrays "
                                f"(num_layers*D, n_a, m), or None; got {type(state).__name__}")
            parts = list(state)
        else:
            parts = [state, None]
        L, D, n_a = self.num_layers, self.num_directions, self.hidden_size
        expected = (L * D, n_a, m)
        source = f"from num_layers={L}, bidirectional={self.bidirectional}, hidden_size={n_a} and m={m}"
        for i, part in enumerate(parts):
            if part is None:
                continue
            label = f"{name}[{i}]" if self.kind == "lstm" else name
            check_layer_array(self, label, part)
            check_ndim(label, part, 3, "(num_layers*D, n_a, m)")
            check_shape(label, part, expected, "(num_layers*D, n_a, m)", source)
        return parts

    def _initial(self, state, k, m):
        """The engine's (m, n_a) initial state of layer-direction ``k``: from ``state`` or zeros."""
        if state is None:
            return self.xp.zeros((m, self.hidden_size), dtype=self.dtype)
        return state[k, ...].T

    def _length_mask(self, lengths, m, T):
        """The engine's (T_x, m, 1) boolean mask ``t < L`` from validated lengths."""
        host = host_lengths(lengths, m, T)
        return asarray(np.arange(T)[:, None, None] < host[None, :, None], backend=self.xp)

    # ------------------------------------------------------------------ saving and PyTorch

    def state_dict(self):
        """Host (NumPy) copies of :attr:`parameters`, keyed by PyTorch's names."""
        return host_copies(self.parameters)

    def load_state_dict(self, state):
        """Replace :attr:`parameters` with the arrays of ``state`` (any backend, or NumPy).

        Raises
        ------
        KeyError
            A parameter is missing from ``state``, or ``state`` has a key this layer does not.
        ValueError
            An array's shape differs from this layer's.
        """
        host = checked_layer_state(state, self._shapes(), type(self).__name__)  # copies: nothing shared
        self.parameters = {k: self._from_host(a) for k, a in host.items()}

    @classmethod
    def from_torch(cls, module, *, backend="numpy", dtype=None):
        """A layer with the exact weights of a ``torch.nn.RNN/LSTM/GRU``.

        Parameters
        ----------
        module : the torch module of the same name as ``cls`` (any ``num_layers``,
            ``bidirectional``, ``batch_first``; ``bias=True``; RNN: ``nonlinearity="tanh"``;
            LSTM: ``proj_size=0``).
        backend : where the new layer lives.
        dtype : {"float32", "float64"} or None for the module's dtype.
        """
        import torch

        if not isinstance(module, getattr(torch.nn, cls.torch_name)):
            raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{cls.torch_name}; got {type(module).__name__}")
        if getattr(module, "nonlinearity", "tanh") != "tanh":
            raise ValueError(f"nonlinearity={module.nonlinearity!r} is not supported; xseq's RNN uses tanh")
        if not module.bias:
            raise ValueError("bias=False is not supported; xseq layers always have both biases")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"proj_size={module.proj_size} is not supported; xseq's LSTM has no projection")
        if dtype is None:
            dtype = str(module.weight_ih_l0.dtype).replace("torch.", "")
        layer = cls(module.input_size, module.hidden_size, num_layers=module.num_layers,
                    bidirectional=module.bidirectional, dropout=float(module.dropout),
                    backend=backend, dtype=dtype)
        layer.load_state_dict({k: v.detach().cpu().numpy() for k, v in module.state_dict().items()})
        return layer

    def to_torch(self):
        """A ``torch.nn.RNN/LSTM/GRU`` (CPU, ``batch_first=False``) with exactly these weights."""
        import torch

        module = getattr(torch.nn, self.torch_name)(
            self.input_size, self.hidden_size, num_layers=self.num_layers, bias=True,
            dropout=self.dropout, bidirectional=self.bidirectional, dtype=getattr(torch, self.dtype_name))
        module.load_state_dict({k: torch.from_numpy(v) for k, v in self.state_dict().items()})
        return module


class RNN(RecurrentLayer):
    """Elman RNN with tanh, ``a<t> = tanh(W_ih x<t> + b_ih + W_hh a<t-1> + b_hh)``; see :class:`RecurrentLayer`."""

    kind, torch_name = "rnn", "RNN"


class LSTM(RecurrentLayer):
    """LSTM with PyTorch's gates (i, f, g, o); see :class:`RecurrentLayer`.

    The forget-gate biases get the same uniform initialisation as every other
    weight, as in PyTorch, so default layers match ``torch.nn.LSTM`` in
    distribution. The common "forget bias = 1" trick is not applied; to use
    it, add 1 to rows ``n_a:2*n_a`` of ``bias_ih_l{l}`` (and ``_reverse``).

    ``forward`` takes and returns the state as a tuple ``(h, c)``;
    :attr:`d_initial_state` is ``(d_h0, d_c0)``.
    """

    kind, torch_name = "lstm", "LSTM"


class GRU(RecurrentLayer):
    """GRU in the PyTorch/cuDNN form (gates r, z, n; see :mod:`xseq.course.gru`); see :class:`RecurrentLayer`."""

    kind, torch_name = "gru", "GRU"
