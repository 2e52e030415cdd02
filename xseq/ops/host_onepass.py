"""Two updates of the host library in one pass over memory: the projection loss's softmax cross-entropy and Adam.

Each has its own gate (:mod:`xseq.ops.native_features`): the cross-entropy
calls ``exp`` and is off where the build did not vectorize it; Adam's step
calls no math function but ``sqrt`` and is on wherever the library loaded
with its entry points. Each function returns None where it cannot serve its
arrays, and the caller keeps NumPy's passes.
"""

from __future__ import annotations

import numpy as np

from .native_bindings import entry
from .native_features import FUSED_ADAM, SOFTMAX_XENT
from .native_library import library
from .switches import fused_enabled


def _serving(feature):
    """The loaded library where ``feature`` is on and the fast paths are, else None."""
    lib = library()
    if not fused_enabled() or not lib.on(feature):
        return None
    return lib.lib


# Why: see docs/decisions/009-projection-loss-one-pass-a-row.md
def softmax_xent_rows(z, b, targets, scale, db):
    """The host build's fused softmax cross-entropy of the logits ``z`` (rows, V), in place; None where it cannot run.

    ``z`` (C-contiguous, float32/float64) gets the bias ``b`` (V,) added and
    becomes ``(softmax - one_hot(targets)) * scale``, its column sums added
    into ``db`` (V,); without ``db`` only the loss is computed (``z`` is left
    as the exponentials). ``targets`` are int64 ids (rows,), checked by the
    caller. Returns the sum over the rows of ``-log softmax(z + b)[target]``.
    """
    lib = _serving(SOFTMAX_XENT)
    if lib is None:
        return None
    function = entry(lib, "softmax_xent_rows", z.dtype)
    arrays = (z, b, targets) + ((db,) if db is not None else ())
    if (function is None or z.ndim != 2 or z.shape[1] == 0 or targets.dtype != np.int64
            or any(not a.flags.c_contiguous for a in arrays) or b.dtype != z.dtype
            or (db is not None and (db.dtype != z.dtype or not db.flags.writeable))):
        return None
    return function(z.ctypes.data, b.ctypes.data, targets.ctypes.data, z.shape[0], z.shape[1], scale,
                    int(db is not None), 0 if db is None else db.ctypes.data)


# Why: see docs/decisions/014-adam-in-one-pass.md
def adam_step(p, g, m, v, lr, beta1, beta2, eps, t):
    """The host build's Adam step: new arrays ``(p, m, v)`` in one pass; None where it cannot run.

    ``p``, ``g``, ``m``, ``v`` are NumPy arrays of one shape and one dtype
    (float32/float64); nothing is written into them. ``t`` is the step
    count (from 1). The formulas and their order are
    :meth:`xseq.nn.optim.Adam._update`'s, so the result is the reference's
    up to the rounding of fused multiply-adds.
    """
    lib = _serving(FUSED_ADAM)
    if lib is None:
        return None
    function = entry(lib, "adam", p.dtype)
    arrays = (p, g, m, v)
    if function is None or any(a.dtype != p.dtype or a.shape != p.shape or not a.flags.c_contiguous for a in arrays):
        return None
    out = tuple(np.empty_like(p) for _ in range(3))
    function(*(a.ctypes.data for a in arrays + out), p.size, lr, beta1, beta2, eps, 1 - beta1**t, 1 - beta2**t)
    return out
