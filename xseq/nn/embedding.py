"""A word-embedding layer: the course's ``e = E o`` computed as a row lookup.

The course multiplies an embedding matrix by a one-hot vector, ``e<t> = E o<t>``
with ``E`` of shape ``(dim, V)``. Multiplying by a one-hot column only picks a
column of ``E``, so :class:`Embedding` stores ``weight = E.T`` of shape
``(V, dim)``, PyTorch's layout (``torch.nn.Embedding.weight``), and looks rows
up instead of multiplying by a ``(V, m, T_x)`` one-hot batch. Its outputs come
back in the course layout ``(dim, m, T_x)`` that :class:`xseq.LSTM` (and the
RNN and GRU) take as ``x``, with ``n_x = dim``.

The gradient is the transpose of the lookup: row ``v`` of ``dW`` is the sum of
the output gradients at every position holding id ``v``. It is accumulated by
index (:func:`add_rows`), never through a one-hot product.

Under :class:`xseq.inference_mode` :meth:`Embedding.forward` keeps no ids, and
a following :meth:`Embedding.backward` raises
:class:`~xseq.ops.inference.InferenceModeError`.
"""

from __future__ import annotations

import numbers

import numpy as np
from array_api_compat import (
    array_namespace,
    is_array_api_obj,
    is_cupy_array,
    is_numpy_array,
    is_torch_array,
)

from ..backends.arrays import (
    asarray,
    backend_name,
    namespace_of,
    refuse_masked,
    to_numpy,
)
from ..backends.arrays import backend as backend_named
from ..backends.checks import _dtype_name as dtype_name
from ..backends.checks import check_ndim, check_shape, check_sizes
from ..ops.inference import is_inference_mode_enabled, refuse_backward
from .params import check_layer_array, floating_dtype, host_copies, host_copy


def add_rows(grad, ids, rows):
    """``grad[ids[k]] += rows[k]`` for every ``k``, repeated ids accumulating.

    The one place that picks the route per backend:

    * NumPy: sort the ids, sum each run of equal ids with ``np.add.reduceat``
      and add the sums at the distinct ids (about twice as fast as
      ``np.add.at`` for 400 ids into a ``(10000, 200)`` float32 gradient);
    * CuPy: ``cupyx.scatter_add`` (atomic adds on the GPU);
    * PyTorch: ``Tensor.index_add_``;
    * anything else (array-api-strict): :func:`add_rows_standard`.

    Parameters
    ----------
    grad : (V, dim) floating array
        Updated in place on NumPy, CuPy and PyTorch.
    ids : (N,) int64 array of the same backend, ``0 <= id < V``
    rows : (N, dim) array of ``grad``'s dtype

    Returns
    -------
    grad : (V, dim) the updated gradient (a new array for array-api-strict).
    """
    if is_numpy_array(grad):
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
        grad[sorted_ids[starts]] += np.add.reduceat(rows[order], starts, axis=0)
        return grad
    if is_cupy_array(grad):
        import cupyx

        cupyx.scatter_add(grad, ids, rows)
        return grad
    if is_torch_array(grad):
        return grad.index_add_(0, ids, rows)
    return add_rows_standard(grad, ids, rows)


def add_rows_standard(grad, ids, rows):
    """:func:`add_rows` written against the array API standard only; returns a new array.

    The standard has no scatter. Sorting the ids makes the positions of each
    id one run; a cumulative sum ``C`` of the sorted rows (with a leading zero
    row) gives each run's sum as a difference ``C[hi] - C[lo]``, where
    ``[lo, hi)`` is the run of id ``v`` found by ``searchsorted`` for every
    ``v`` at once (an empty run for an absent id gives exactly 0). Cost:
    ``O(N log N + V log N + V dim)``, no ``(V, N)`` one-hot. The cumulative
    sum runs in float64 so that the differences keep float32's precision.
    """
    xp = array_namespace(grad)
    order = xp.argsort(ids, stable=True)
    sorted_ids = xp.take(ids, order)
    sorted_rows = xp.astype(xp.take(rows, order, axis=0), xp.float64)
    C = xp.cumulative_sum(sorted_rows, axis=0, include_initial=True)
    vocab = xp.arange(grad.shape[0], dtype=ids.dtype)
    lo = xp.searchsorted(sorted_ids, vocab, side="left")
    hi = xp.searchsorted(sorted_ids, vocab, side="right")
    return grad + xp.astype(xp.take(C, hi, axis=0) - xp.take(C, lo, axis=0), grad.dtype)


class Embedding:
    """A lookup table of ``vocab_size`` word vectors of size ``dim``.

    Parameters
    ----------
    vocab_size : int
        ``V``; ids satisfy ``0 <= id < V``.
    dim : int
        Size of one word vector (the ``n_x`` of the layer it feeds).
    backend : str or namespace, default "numpy"
        Where the weight lives (see :func:`xseq.backend`).
    dtype : {"float32", "float64"}, default "float32"
    seed : int, default 0
        The weight is drawn from ``numpy.random.default_rng(seed)``, so a seed
        gives the same weight on every backend.
    init_scale : float, optional
        Draw the weight uniform in ``[-init_scale, init_scale]`` (Zaremba et
        al. use 0.1 or 0.05). By default it is standard normal, like
        ``torch.nn.Embedding``.

    Attributes
    ----------
    parameters : dict
        ``{"weight": (V, dim)}``: row ``v`` is the vector of id ``v``; the
        course's ``E`` (``(dim, V)``, word vectors as columns) is ``weight.T``.
    grads : dict
        ``{"weight": (V, dim)}``; :meth:`backward` adds to it, :meth:`zero_grad` clears it.

    Examples
    --------
    >>> import numpy as np, xseq
    >>> from xseq.nn.embedding import Embedding
    >>> emb = Embedding(10, 4, seed=0)
    >>> e = emb.forward(np.array([[1, 2, 2], [0, 9, 1]]))   # (dim, m, T_x)
    >>> e.shape
    (4, 2, 3)
    >>> bool((e[:, 1, 1] == emb.parameters["weight"][9]).all())
    True
    """

    def __init__(self, vocab_size, dim, *, backend="numpy", dtype="float32", seed=0, init_scale=None):
        check_sizes(vocab_size=vocab_size, dim=dim)
        if init_scale is not None and (isinstance(init_scale, bool) or not isinstance(init_scale, numbers.Real)
                                       or not 0 < init_scale < float("inf")):
            raise ValueError(f"init_scale must be a positive number or None; got {init_scale!r}")
        self.vocab_size, self.dim = int(vocab_size), int(dim)
        self.xp = backend_named(backend)
        self.dtype, self.dtype_name = floating_dtype(self.xp, dtype)

        rng = np.random.default_rng(seed)
        shape = (self.vocab_size, self.dim)
        weight = rng.standard_normal(shape) if init_scale is None else rng.uniform(-init_scale, init_scale, shape)
        self.parameters = {"weight": asarray(weight, backend=self.xp, dtype=self.dtype)}
        self.zero_grad()
        self._ids = self._out_shape = None
        self._inference = False  # whether the last forward ran in inference mode (and kept no ids)

    def __repr__(self):
        return (f"Embedding({self.vocab_size}, {self.dim}, backend={backend_name(self.xp)!r}, "
                f"dtype={self.dtype_name!r})")

    def forward(self, ids):
        """Look up the vectors of ``ids``; the same as ``weight.T @ one_hot(ids)``.

        Parameters
        ----------
        ids : (m, T_x) or (T_x,) integer array of this layer's backend, or a NumPy integer array
            Every entry satisfies ``0 <= id < vocab_size``.

        Returns
        -------
        e : (dim, m, T_x), or (dim, T_x) for 1-D ``ids``, in this layer's dtype
            ``e[:, i, t] = weight[ids[i, t]]``: the course layout of ``x``.

        Under :class:`xseq.inference_mode` the ids are not kept (:meth:`backward` then raises).
        """
        xp = self.xp
        ids = self._check_ids(ids)
        # Flattened time-major, so that the looked-up rows, viewed (T_x, m, dim), are already the
        # engine layout into which a recurrent layer permutes its x: no copy on the way there.
        flat = xp.reshape(xp.permute_dims(ids, (1, 0)) if ids.ndim == 2 else ids, (-1,))
        rows = xp.take(self.parameters["weight"], flat, axis=0)
        self._inference = is_inference_mode_enabled()
        self._ids = None if self._inference else flat
        if ids.ndim == 1:
            e = xp.permute_dims(rows, (1, 0))
        else:
            m, T_x = ids.shape
            e = xp.permute_dims(xp.reshape(rows, (T_x, m, self.dim)), (2, 1, 0))
        self._out_shape = tuple(e.shape)
        return e

    __call__ = forward

    def backward(self, d_out):
        """Add the gradient of the last forward's lookup to ``grads["weight"]``, by index.

        The addition is in place on NumPy, CuPy and PyTorch (see :func:`add_rows`);
        read ``grads["weight"]`` after the call rather than keeping an older reference.

        Parameters
        ----------
        d_out : (dim, m, T_x) or (dim, T_x) array, the shape of the last forward's output
            Gradient of the loss with respect to that output.

        Returns
        -------
        None : the ids are integers and have no gradient.

        Raises
        ------
        RuntimeError
            No forward ran before.
        xseq.ops.inference.InferenceModeError
            The last forward ran under :class:`xseq.inference_mode` and kept no ids.
        """
        if self._inference:
            refuse_backward("Embedding.backward", "Embedding.forward")
        if self._ids is None:
            raise RuntimeError("Embedding.backward was called before forward: run forward first; "
                               "backward uses the ids it keeps")
        xp = self.xp
        check_layer_array(self, "d_out", d_out)
        layout = "(dim, m, T_x)" if len(self._out_shape) == 3 else "(dim, T_x)"
        check_ndim("d_out", d_out, len(self._out_shape), layout)
        check_shape("d_out", d_out, self._out_shape, layout, "from the last forward")
        axes = tuple(reversed(range(d_out.ndim)))
        rows = xp.reshape(xp.permute_dims(d_out, axes), (-1, self.dim))
        self.grads["weight"] = add_rows(self.grads["weight"], self._ids, rows)

    def zero_grad(self):
        """Set ``grads["weight"]`` to zero."""
        self.grads = {k: self.xp.zeros_like(v) for k, v in self.parameters.items()}

    # ------------------------------------------------------------------ checks

    def _check_ids(self, ids):
        """Validated ``ids`` as an int64 array of this layer's backend."""
        refuse_masked("ids", ids)
        if not is_array_api_obj(ids):
            raise TypeError(f"ids must be an integer array (m, T_x) or (T_x,); got {type(ids).__name__}; "
                            "convert a list with numpy.asarray, or pad unequal sequences with xseq.pad_ids")
        xp = namespace_of(ids=ids)
        if xp is not self.xp and not is_numpy_array(ids):
            raise TypeError(f"ids is a {backend_name(xp)} array but this Embedding holds {backend_name(self.xp)} "
                            f"parameters; pass ids of that backend or a NumPy array")
        if not xp.isdtype(ids.dtype, "integral"):
            raise TypeError(f"ids has dtype {dtype_name(ids.dtype)}; expected an integer dtype")
        if ids.ndim not in (1, 2):
            raise ValueError(f"ids has {ids.ndim} dimensions, shape {tuple(ids.shape)}; expected (m, T_x) or (T_x,)")
        if 0 in ids.shape:
            raise ValueError(f"ids has shape {tuple(ids.shape)}; expected at least one example and one step")
        ids = asarray(ids, backend=self.xp)
        # Compared as int64: a narrow dtype cannot hold vocab_size, and only a uint64 above 2**63 - 1
        # changes (it turns negative, so it is still refused).
        wide = self.xp.astype(ids, self.xp.int64)
        if bool(self.xp.any((wide < 0) | (wide >= self.vocab_size))):
            host = to_numpy(ids)  # the caller's dtype, so that the message shows the id as given
            index = tuple(int(i) for i in np.argwhere((host < 0) | (host >= self.vocab_size))[0])
            position = "".join(f"[{i}]" for i in index)
            raise ValueError(f"ids{position} = {host[index]} is out of range; expected 0 <= id < "
                             f"vocab_size = {self.vocab_size}")
        return wide

    # ------------------------------------------------------------------ saving and PyTorch

    def state_dict(self):
        """``{"weight": (V, dim)}`` as a host (NumPy) copy, ``torch.nn.Embedding``'s state-dict name."""
        return host_copies(self.parameters)

    def load_state_dict(self, state):
        """Replace the weight with ``state["weight"]`` (any backend, or NumPy), copied.

        Raises
        ------
        KeyError
            ``state`` lacks ``"weight"`` or has another key.
        ValueError
            The weight's shape is not ``(vocab_size, dim)``.
        """
        if set(state) != {"weight"}:
            raise KeyError(f"state dict has keys {list(state)}; this Embedding has ['weight']")
        host = host_copy(state["weight"])
        expected = (self.vocab_size, self.dim)
        if host.shape != expected:
            raise ValueError(f"state dict entry 'weight' has shape {host.shape}; expected (vocab_size, dim) = "
                             f"{expected}")
        self.parameters = {"weight": asarray(host, backend=self.xp, dtype=self.dtype)}

    @classmethod
    def from_torch(cls, module, *, backend="numpy", dtype=None):
        """An Embedding with the exact weight of a ``torch.nn.Embedding``.

        ``padding_idx``, ``max_norm`` and ``scale_grad_by_freq`` change what
        PyTorch computes and are refused; ``sparse`` only changes the form of
        PyTorch's gradient and is accepted. ``dtype`` None keeps the module's.
        """
        import torch

        if not isinstance(module, torch.nn.Embedding):
            raise TypeError(f"Embedding.from_torch needs a torch.nn.Embedding; got {type(module).__name__}")
        for option, default in (("padding_idx", None), ("max_norm", None), ("scale_grad_by_freq", False)):
            if getattr(module, option) != default:
                raise ValueError(f"{option}={getattr(module, option)!r} is not supported; xseq's Embedding "
                                 f"is a plain lookup ({option}={default!r})")
        if dtype is None:
            dtype = str(module.weight.dtype).replace("torch.", "")
        layer = cls(module.num_embeddings, module.embedding_dim, backend=backend, dtype=dtype)
        layer.load_state_dict({"weight": module.weight.detach().cpu().numpy()})
        return layer

    def to_torch(self):
        """A CPU ``torch.nn.Embedding`` with exactly this weight."""
        import torch

        module = torch.nn.Embedding(self.vocab_size, self.dim, dtype=getattr(torch, self.dtype_name))
        module.load_state_dict({"weight": torch.from_numpy(self.state_dict()["weight"])})
        return module
