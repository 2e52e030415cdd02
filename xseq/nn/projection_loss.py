"""The output projection and softmax cross-entropy of a whole window, fused.

A word-level language model projects every hidden state of a window to a
10,000-word vocabulary. Done per time step that is ``T`` thin matrix
products; done here it is one product over all ``N = T * m`` rows of the
window (the steps stacked), followed by a softmax cross-entropy that picks
each row's target by index and so never builds one-hot targets::

    logits = h W^T + b                  (N, V)   one GEMM
    nll    = sum_r  logsumexp(logits[r]) - logits[r, targets[r]]
    g      = scale * (softmax(logits) - onehot(targets))   in place, by index
    dh     = g W,   dW = g^T h,   db = sum_r g[r]           two GEMMs

``W`` has PyTorch's ``Linear`` layout ``(V, n_a)``, the same as an embedding
table, so a model that ties its input embedding to its output projection
passes the one array as both.

Memory
------
At most ``chunk_rows`` rows of logits exist at a time (see
:func:`projection_cross_entropy`); ``dW`` and ``db`` accumulate across
chunks. The default chunk keeps the logits under ``LOGITS_BUDGET_BYTES``
(64 MiB): 1,677 rows of a 10,000-word float32 vocabulary, so a Penn
Treebank window (batch 20 x bptt 35 = 700 rows) is a single chunk.

Implementations
---------------
:class:`StandardOps` is the reference, written against the array API
standard alone. The standard has no scatter, so it subtracts the one at each
target with ``where(vocab_ids == targets[:, None], g - scale, g)``. The
comparison is a bool mask of the chunk's shape (one byte per logit, a quarter
of float32 logits), made and dropped inside the chunk; no float one-hot is
built, but ``g - scale`` is a temporary as large as the logits, so the
reference peaks at about three float arrays of the chunk's shape. It does
not write into ``g`` because the standard leaves in-place writes optional
(JAX arrays cannot be written).
:class:`NumpyLikeOps` (NumPy, CuPy) and :class:`TorchOps` compute the same
in one buffer, in place, and subtract the one at the ``N`` target entries by
fancy indexing. :func:`ops_for` is the one place that picks among them.
"""

from __future__ import annotations

import importlib
import math
from typing import NamedTuple

import numpy as np
from array_api_compat import device as device_of

from ..backends.arrays import backend_name, namespace_of
from ..backends.checks import (
    _dtype_name,
    check_ndim,
    check_shape,
    check_sizes,
    namespace_and_checks,
)
from ..ops.host import softmax_xent_rows

LOGITS_BUDGET_BYTES = 64 * 2**20
"""Default bound on the logits buffer of one chunk, in bytes."""


class ProjectionLoss(NamedTuple):
    """What :func:`projection_cross_entropy` returns."""

    nll: float
    """Summed negative log-likelihood of the targets over all rows, in nats (unscaled)."""
    dh: object
    """(N, n_a) gradient of ``scale * nll`` with respect to ``h``."""
    dW: object
    """(V, n_a) gradient of ``scale * nll`` with respect to ``W``."""
    db: object
    """(V,) gradient of ``scale * nll`` with respect to ``b``."""


def projection_cross_entropy(h, W, b, targets, *, scale=1.0, chunk_rows=None):
    """Summed cross-entropy of ``softmax(h W^T + b)`` against ``targets``, and its gradients.

    Parameters
    ----------
    h : (N, n_a) floating array
        Hidden states of every step of a window, stacked (``N = T * m`` rows;
        a time-major ``(T, m, n_a)`` array reshaped).
    W : (V, n_a) array, dtype of ``h``
        Output weight, PyTorch ``Linear`` layout (an embedding table, for tied weights).
    b : (V,) array, dtype of ``h``
        Output bias.
    targets : (N,) integer array
        The next word's id for each row, ``0 <= id < V``.
    scale : float, default 1.0
        The gradients are those of ``scale * nll``. The Penn Treebank
        convention (sum over a window's steps, mean over the batch) is
        ``scale = 1 / m``.
    chunk_rows : int or None
        Rows of logits computed at a time. None takes as many as fit in
        ``LOGITS_BUDGET_BYTES``: ``max(1, 64 MiB // (V * itemsize))``, which for
        most windows is the whole window, one GEMM each way.

    Returns
    -------
    ProjectionLoss
        ``(nll, dh, dW, db)``: ``nll`` a Python float, the sum over the ``N``
        rows of ``-log softmax(h W^T + b)[row, target]`` (not scaled; the token
        count is ``N``), and the gradients of ``scale * nll``, new arrays in
        the namespace, device and dtype of ``h``. Producing ``nll`` synchronises
        with the device once.

    Notes
    -----
    Memory per call is bounded by ``chunk_rows x V`` logits, never by
    ``N x V``. NumPy, CuPy and PyTorch keep one ``(chunk_rows, V)`` buffer that
    becomes the probabilities and then the logits' gradient in place; beyond
    it and the returned gradients they use ``O(chunk_rows + V)`` scratch, and
    NumPy/CuPy a ``(V, n_a)`` partial ``dW`` when there is more than one chunk.
    The array-API reference holds up to three arrays of the chunk's shape and
    a bool mask of it at once. Inputs are never modified.

    Raises
    ------
    TypeError
        Arrays of different libraries, non-floating or mixed dtypes among ``h``,
        ``W``, ``b``, non-integer ``targets``, a ``scale`` that is not a real number.
    ValueError
        Shapes that do not match, an empty window or vocabulary, a target
        outside ``0 <= id < V``, arrays on different devices, a non-finite
        ``scale`` or a ``chunk_rows`` that is not a positive integer.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> h = rng.standard_normal((6, 4)).astype(np.float32)       # T = 3 steps x m = 2
    >>> W = rng.standard_normal((10, 4)).astype(np.float32)      # V = 10 words
    >>> b = np.zeros(10, dtype=np.float32)
    >>> nll, dh, dW, db = projection_cross_entropy(h, W, b, np.array([1, 2, 3, 4, 5, 6]), scale=1 / 2)
    >>> dh.shape, dW.shape, db.shape, dW.dtype
    ((6, 4), (10, 4), (10,), dtype('float32'))
    """
    xp, targets, scale, chunk_rows = _checked(h, W, b, targets, scale, chunk_rows)
    return ProjectionLoss(*ops_for(xp).run(h, W, b, targets, scale, chunk_rows, grad=True))


def projection_nll(h, W, b, targets, *, chunk_rows=None):
    """Summed negative log-likelihood only (evaluation): no gradients, the same chunking.

    Parameters and errors are those of :func:`projection_cross_entropy`.

    Returns
    -------
    float
        The sum over the ``N`` rows of ``-log softmax(h W^T + b)[row, target]``;
        the token count is ``N = h.shape[0]``, so perplexity over a corpus is
        ``exp(sum of nll / sum of N)``.
    """
    xp, targets, _, chunk_rows = _checked(h, W, b, targets, 1.0, chunk_rows)
    return ops_for(xp).run(h, W, b, targets, 1.0, chunk_rows, grad=False)[0]


# ---------------------------------------------------------------- implementations

class StandardOps:
    """The reference: the array API standard only, pure expressions, any backend."""

    name = "array-api"

    def __init__(self, xp):
        self.xp = xp

    def chunk(self, h, W, b, targets, scale, grad):
        """One chunk of rows: ``(nll summed over them as a 0-d array, gradient of the logits or None)``."""
        xp = self.xp
        z = xp.matmul(h, W.T) + b
        z = z - xp.max(z, axis=1, keepdims=True)  # log-sum-exp never sees a positive exponent
        # Row r's target logit sits at r * V + targets[r] of the flattened chunk; take is in every
        # version of the standard (take_along_axis only from 2024.12).
        n, V = z.shape
        picked = xp.take(xp.reshape(z, (-1,)), xp.arange(n, dtype=targets.dtype, device=device_of(z)) * V + targets)
        e = xp.exp(z)
        s = xp.sum(e, axis=1, keepdims=True)
        nll = xp.sum(xp.log(s[:, 0]) - picked)
        if not grad:
            return nll, None
        g = e * (scale / s)
        vocab_ids = xp.arange(V, dtype=targets.dtype, device=device_of(z))
        return nll, xp.where(vocab_ids == targets[:, None], g - scale, g)

    def run(self, h, W, b, targets, scale, chunk_rows, grad):
        """``(nll, dh, dW, db)`` over all rows, chunk by chunk; the gradients are None when not ``grad``."""
        xp = self.xp
        total, dh_parts, dW, db = 0.0, [], None, None
        N = h.shape[0]
        for r0 in range(0, N, chunk_rows):
            r1 = min(r0 + chunk_rows, N)  # the standard leaves slices past the end unspecified
            h_c = h[r0:r1, :]
            nll, g = self.chunk(h_c, W, b, targets[r0:r1], scale, grad)
            total = total + nll
            if grad:
                dh_parts.append(xp.matmul(g, W))
                dW_c, db_c = xp.matmul(g.T, h_c), xp.sum(g, axis=0)
                dW, db = (dW_c, db_c) if dW is None else (dW + dW_c, db + db_c)
        if not grad:
            return float(total), None, None, None
        dh = dh_parts[0] if len(dh_parts) == 1 else xp.concat(dh_parts, axis=0)
        return float(total), dh, dW, db


class NumpyLikeOps(StandardOps):
    """NumPy or CuPy (``lib``): one logits buffer, turned into the gradient in place; GEMMs write with ``out=``."""

    name = "numpy-inplace"

    def __init__(self, xp, lib, rows_pass=None):
        super().__init__(xp)
        self.lib = lib
        # NumPy's host build (xseq.ops.host.softmax_xent_rows): bias, softmax, loss and gradient in one
        # pass a row, the row in cache, instead of seven passes over the whole chunk; None where it
        # cannot serve the arrays
        self.rows_pass = rows_pass

    def run(self, h, W, b, targets, scale, chunk_rows, grad):
        lib = self.lib
        (N, n_a), V = h.shape, W.shape[0]
        n_max = min(chunk_rows, N)
        buffer = lib.empty((n_max, V), dtype=h.dtype)
        all_rows = lib.arange(n_max)
        total = 0.0
        if grad:
            dh = lib.empty((N, n_a), dtype=h.dtype)
            dW = lib.empty((V, n_a), dtype=h.dtype)
            db = lib.empty(V, dtype=h.dtype)
            partial_dW = lib.empty((V, n_a), dtype=h.dtype) if N > n_max else None
            db[...] = 0  # every chunk adds its column sums
        # The host build's pass a row for the loss alone, and for the gradients of a window in one chunk.
        fused = self.rows_pass is not None and (not grad or N <= n_max)
        for r0 in range(0, N, n_max):
            r1 = min(r0 + n_max, N)
            h_c, t_c, rows, z = h[r0:r1], targets[r0:r1], all_rows[:r1 - r0], buffer[:r1 - r0]
            lib.matmul(h_c, W.T, out=z)
            nll = self.rows_pass(z, b, t_c, scale, db if grad else None) if fused else None
            if nll is None:  # NumPy's (or CuPy's) passes over the chunk
                z += b
                z -= z.max(axis=1, keepdims=True)
                picked = z[rows, t_c]  # a copy: z is about to become exp(z)
                lib.exp(z, out=z)
                s = z.sum(axis=1, keepdims=True)
                nll = (lib.log(s[:, 0]) - picked).sum()
                if grad:
                    z *= scale / s
                    z[rows, t_c] -= scale  # the one-hot's N ones, by index: no (N, V) one-hot anywhere
                    db += z.sum(axis=0)
            total = total + nll
            if not grad:
                continue
            lib.matmul(z, W, out=dh[r0:r1])
            if r0 == 0:  # NumPy's matmul cannot accumulate, so later chunks go through partial_dW
                lib.matmul(z.T, h_c, out=dW)
            else:
                lib.matmul(z.T, h_c, out=partial_dW)
                dW += partial_dW
        if not grad:
            return float(total), None, None, None
        return float(total), dh, dW, db


class TorchOps(StandardOps):
    """PyTorch: one logits buffer in place, ``addmm`` for the bias and for accumulating ``dW``.

    Runs under ``torch.no_grad()``: the gradients are computed here, and
    tensors that require grad (``nn.Parameter``) must not record a graph.
    """

    name = "torch-inplace"

    def __init__(self, xp, torch):
        super().__init__(xp)
        self.torch = torch

    def run(self, h, W, b, targets, scale, chunk_rows, grad):
        torch = self.torch
        with torch.no_grad():
            (N, n_a), V = h.shape, W.shape[0]
            n_max = min(chunk_rows, N)
            like = {"dtype": h.dtype, "device": h.device}
            buffer = torch.empty((n_max, V), **like)
            all_rows = torch.arange(n_max, device=h.device)
            total = torch.zeros((), **like)
            if grad:
                dh, dW, db = torch.empty((N, n_a), **like), torch.empty((V, n_a), **like), torch.empty(V, **like)
            for r0 in range(0, N, n_max):
                r1 = min(r0 + n_max, N)
                h_c, t_c, rows, z = h[r0:r1], targets[r0:r1], all_rows[:r1 - r0], buffer[:r1 - r0]
                torch.addmm(b, h_c, W.t(), out=z)
                z.sub_(z.amax(dim=1, keepdim=True))
                picked = z[rows, t_c]
                z.exp_()
                s = z.sum(dim=1, keepdim=True)
                total += (torch.log(s[:, 0]) - picked).sum()
                if not grad:
                    continue
                z.mul_(scale / s)
                z[rows, t_c] -= scale
                torch.mm(z, W, out=dh[r0:r1])
                if r0 == 0:
                    torch.mm(z.t(), h_c, out=dW)
                    torch.sum(z, dim=0, out=db)
                else:
                    dW.addmm_(z.t(), h_c)
                    db.add_(z.sum(dim=0))
        if not grad:
            return float(total), None, None, None
        return float(total), dh, dW, db


def ops_for(xp):
    """The implementation for namespace ``xp``: the single dispatch point."""
    name = backend_name(xp)
    if name == "numpy":
        return NumpyLikeOps(xp, np, rows_pass=softmax_xent_rows)
    if name == "cupy":
        return NumpyLikeOps(xp, importlib.import_module("cupy"))
    if name == "torch":
        return TorchOps(xp, importlib.import_module("torch"))
    return StandardOps(xp)


# ---------------------------------------------------------------- argument checks

def default_chunk_rows(V, itemsize):
    """Rows of ``V`` logits of ``itemsize`` bytes that fit in ``LOGITS_BUDGET_BYTES`` (at least one)."""
    return max(1, LOGITS_BUDGET_BYTES // (V * itemsize))


def _checked(h, W, b, targets, scale, chunk_rows):
    """Validate the arguments; return ``(xp, targets as int64, scale as float, chunk_rows as int)``."""
    xp = namespace_and_checks(h=h, W=W, b=b)
    if targets is None:
        raise TypeError("targets must be an array of integer ids; got None")
    namespace_of(h=h, targets=targets)
    check_ndim("h", h, 2, "(N, n_a): the hidden states of a window's steps, stacked")
    check_ndim("W", W, 2, "(V, n_a)")
    check_ndim("b", b, 1, "(V,)")
    check_ndim("targets", targets, 1, "(N,)")
    (N, n_a), V = h.shape, W.shape[0]
    check_shape("W", W, (V, n_a), "(V, n_a)", "from h (N, n_a)")
    check_shape("b", b, (V,), "(V,)", "from W (V, n_a)")
    check_shape("targets", targets, (N,), "(N,)", "from h (N, n_a)")
    for name, value, size, what in (("h", h, N, "N = 0 rows, an empty window"),
                                    ("h", h, n_a, "n_a = 0, no hidden units"),
                                    ("W", W, V, "V = 0, an empty vocabulary")):
        if size == 0:
            raise ValueError(f"{name} has shape {tuple(value.shape)}: {what}; expected at least one")
    if not xp.isdtype(targets.dtype, "integral"):
        raise TypeError(f"targets has dtype {_dtype_name(targets.dtype)}; expected an integer dtype (word ids)")
    for name, value in (("W", W), ("b", b), ("targets", targets)):
        if device_of(value) != device_of(h):
            raise ValueError(
                f"{name} is on device {device_of(value)} but h is on {device_of(h)}; move them to one device"
            )
    out_of_range = (targets < 0) | (targets >= V)
    if bool(xp.any(out_of_range)):
        row = int(xp.argmax(xp.astype(out_of_range, xp.int8)))
        raise ValueError(f"targets holds {int(targets[row])} at row {row}; expected 0 <= id < V = {V} (from W)")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a real number (e.g. 1 / m); got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite; got {scale!r}")
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(V, xp.finfo(h.dtype).bits // 8)
    check_sizes(chunk_rows=chunk_rows)
    # Ids are already known to lie in [0, V): int64 holds them exactly, and it is the index dtype every library takes.
    return xp, xp.astype(targets, xp.int64, copy=False), float(scale), int(chunk_rows)
