"""The language model's loss: softmax cross-entropy over the vocabulary, with padding masked out."""

from __future__ import annotations

from array_api_compat import device as device_of

from ..backends.arrays import namespace_of
from ..backends.checks import _dtype_name, check_floating, check_ndim, check_shape


def softmax_cross_entropy(logits, targets, mask=None):
    """Mean cross-entropy of softmax(logits) against integer targets, and its gradient.

    For every valid position ``(i, t)``, with ``p = softmax(logits[:, i, t])``,
    the loss is ``-log p[targets[i, t]]``; the result is the mean over the
    ``n_valid`` valid positions. Computed through log-sum-exp, so logits of
    any finite size (1e4 in float32) neither overflow nor give NaN.

    Parameters
    ----------
    logits : (V, m, T_x) floating array
        Unnormalised scores, the course's layout (vocabulary along axis 0).
        Its namespace is used for everything.
    targets : (m, T_x) integer array, same namespace
        The right id at each position. At masked-out positions it may hold
        anything (e.g. ``<pad>`` = 0, or -1); it is not read there.
    mask : (m, T_x) bool array or None
        True where a position counts; None means all positions count.

    Returns
    -------
    loss : float
        A Python float (the mean over valid positions), ready for logging.
        Producing it synchronises with the device once.
    dlogits : (V, m, T_x) array, dtype of ``logits``
        Gradient of ``loss``: ``(softmax(logits) - onehot(targets)) / n_valid``
        at valid positions and 0 at masked-out ones.

    Raises
    ------
    TypeError
        Arrays of different libraries, floating ``targets``, a non-bool ``mask``,
        or non-floating ``logits``.
    ValueError
        Shapes that do not match, a valid target outside ``0 <= id < V``, or
        no valid position at all.
    """
    xp = namespace_of(logits=logits, targets=targets, mask=mask)
    check_floating(xp, "logits", logits)
    check_ndim("logits", logits, 3, "(V, m, T_x)")
    V, m, T_x = logits.shape
    check_ndim("targets", targets, 2, "(m, T_x)")
    check_shape("targets", targets, (m, T_x), "(m, T_x)", "from logits (V, m, T_x)")
    if not xp.isdtype(targets.dtype, "integral"):
        raise TypeError(f"targets has dtype {_dtype_name(targets.dtype)}; expected an integer dtype (ids)")
    if mask is None:
        mask = xp.ones((m, T_x), dtype=xp.bool, device=device_of(logits))
    else:
        if mask.dtype != xp.bool:
            raise TypeError(f"mask has dtype {_dtype_name(mask.dtype)}; expected bool (True where valid)")
        check_shape("mask", mask, (m, T_x), "(m, T_x)", "from logits (V, m, T_x)")
    if V == 0:
        raise ValueError(f"logits has shape {tuple(logits.shape)}: V = 0; the vocabulary is empty")

    n_valid = int(xp.sum(xp.astype(mask, xp.int64)))
    if n_valid == 0:
        raise ValueError(f"mask has no True position (shape {(m, T_x)}); the mean loss over 0 positions is undefined")
    # Ids at masked-out positions are replaced by 0 before use, so padding
    # may hold any value without tripping the range check or the indexing.
    safe_targets = xp.where(mask, targets, xp.zeros_like(targets))
    lo, hi = int(xp.min(safe_targets)), int(xp.max(safe_targets))
    if lo < 0 or hi >= V:
        bad = lo if lo < 0 else hi
        raise ValueError(f"targets holds {bad} at a valid position; expected 0 <= target < V = {V} (from logits)")

    vocab = xp.reshape(xp.arange(V, dtype=safe_targets.dtype, device=device_of(logits)), (V, 1, 1))
    onehot = xp.astype(vocab == xp.reshape(safe_targets, (1, m, T_x)), logits.dtype)
    shifted = logits - xp.max(logits, axis=0, keepdims=True)
    exp = xp.exp(shifted)
    sum_exp = xp.sum(exp, axis=0)
    # -log softmax[target] = log(sum exp(shifted)) - shifted[target]
    per_position = xp.log(sum_exp) - xp.sum(shifted * onehot, axis=0)
    per_position = xp.where(mask, per_position, xp.zeros_like(per_position))
    loss = float(xp.sum(per_position)) / n_valid

    dlogits = (exp / sum_exp - onehot) / n_valid
    # where, not a multiply by the mask: whatever the logits hold at padding
    # (even inf or NaN) must not leak into the gradient.
    dlogits = xp.where(xp.reshape(mask, (1, m, T_x)), dlogits, xp.zeros_like(dlogits))
    return loss, dlogits
