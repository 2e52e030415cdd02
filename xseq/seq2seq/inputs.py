"""The checks of a sequence-to-sequence batch: integer ids, lengths, padding, and what each side may hold.

A batch is ``source`` ``(m, T_x)`` and ``target`` ``(m, T_y)`` integer ids (NumPy or any backend), each padded with
``0`` (``<pad>``) after its example's length, and ``source_lengths``, ``target_lengths`` ``(m,)``. Every function
here returns host (NumPy) arrays and raises a TypeError or ValueError that names the argument, the entry and what
was expected; nothing is cast, clipped or broadcast.
"""

from __future__ import annotations

import numbers

import numpy as np
from array_api_compat import is_array_api_obj

from ..backends.arrays import refuse_masked, to_numpy
from ..lm.vocab import EOS_ID, PAD_ID


def host_ids(name, ids, layout):
    """``ids`` as a 2-D integer NumPy array (a copy only where it lives on another backend)."""
    refuse_masked(name, ids)
    if not (isinstance(ids, np.ndarray) or is_array_api_obj(ids)):
        raise TypeError(f"{name} must be a 2-D integer array {layout}; got {type(ids).__name__} (pad sequences of "
                        "unequal lengths with 0, e.g. with xseq.pad_ids)")
    host = np.asarray(to_numpy(ids))
    if host.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {host.dtype}; expected integer ids")
    if host.ndim != 2:
        raise ValueError(f"{name} has shape {host.shape}; expected a 2-D array {layout}")
    return host


def host_lengths(name, lengths, m, low, high, of):
    """``lengths`` as an int64 NumPy array ``(m,)`` with ``low <= L <= high``; ``of`` names what bounds them."""
    refuse_masked(name, lengths)
    if isinstance(lengths, np.ndarray) or is_array_api_obj(lengths):
        host = np.asarray(to_numpy(lengths))
        if host.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers; got dtype {host.dtype}")
    elif isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
        raise TypeError(f"{name} must be a sequence of int or a 1-D integer array; got {type(lengths).__name__}")
    else:
        items = list(lengths)
        for i, value in enumerate(items):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must hold integers; {name}[{i}] is {type(value).__name__} {value!r}")
        host = np.array([int(v) for v in items], dtype=object)  # object: no int64 overflow yet
    if host.ndim != 1 or host.shape[0] != m:
        raise ValueError(f"{name} has shape {host.shape}; expected (m,) = ({m},), one length per example")
    bad = np.flatnonzero((host < low) | (host > high))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {host[i]} is out of range; expected {low} <= length <= {of} = {high}")
    return host.astype(np.int64)


def check_padding(name, ids, lengths, lengths_name):
    """Every entry of ``ids`` past its example's length is ``0`` (``<pad>``), and none before it is."""
    inside = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    outside = ~inside & (ids != PAD_ID)
    if outside.any():
        i, t = (int(k) for k in np.argwhere(outside)[0])
        raise ValueError(f"{name}[{i}][{t}] = {ids[i, t]} lies past {lengths_name}[{i}] = {lengths[i]}; the "
                         f"padding after an example's length must be 0 (<pad>)")
    pad = inside & (ids == PAD_ID)
    if pad.any():
        i, t = (int(k) for k in np.argwhere(pad)[0])
        raise ValueError(f"{name}[{i}][{t}] is 0 (<pad>) inside {lengths_name}[{i}] = {lengths[i]}; <pad> may only "
                         "follow an example's last id")
    return inside


def check_range(name, ids, inside, V, vocab):
    """Every id inside the lengths is ``0 <= id < V``."""
    bad = inside & ((ids < 0) | (ids >= V))
    if bad.any():
        i, t = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(f"{name}[{i}][{t}] = {ids[i, t]} is out of range; expected 0 < id < V = {V} (the "
                         f"{vocab} vocabulary's size)")


def source_batch(source, source_lengths, V_x):
    """Checked host ``(source (m, T_x) int64, source_lengths (m,) int64)``."""
    ids = host_ids("source", source, "(m, T_x)")
    m, T_x = ids.shape
    if m == 0 or T_x == 0:
        raise ValueError(f"source has shape {ids.shape}; expected at least one example and one step")
    lengths = host_lengths("source_lengths", source_lengths, m, 1, T_x, "T_x, source's columns,")
    inside = check_padding("source", ids, lengths, "source_lengths")
    check_range("source", ids, inside, V_x, "source")
    return ids.astype(np.int64), lengths


def target_batch(target, target_lengths, m, V_y):
    """Checked host ``(target (m, T_y) int64, target_lengths (m,) int64)`` for ``m`` source examples.

    A target holds its tokens without ``<eos>`` (the model appends it); an empty target (length 0) is the
    output ``<eos>`` alone.
    """
    ids = host_ids("target", target, "(m, T_y)")
    if ids.shape[0] != m:
        raise ValueError(f"target has {ids.shape[0]} rows (shape {ids.shape}); expected m = {m}, one per example "
                         "of source")
    lengths = host_lengths("target_lengths", target_lengths, m, 0, ids.shape[1], "T_y, target's columns,")
    inside = check_padding("target", ids, lengths, "target_lengths")
    check_range("target", ids, inside, V_y, "target")
    eos = inside & (ids == EOS_ID)
    if eos.any():
        i, t = (int(k) for k in np.argwhere(eos)[0])
        raise ValueError(f"target[{i}][{t}] is {EOS_ID} (<eos>); target holds the output tokens without <eos>, "
                         "which the model appends itself")
    return ids.astype(np.int64), lengths


def outputs_batch(outputs, m, V_y):
    """Output id sequences (lists of int, without ``<eos>``) as a checked padded ``(target, target_lengths)``."""
    if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__len__"):
        raise TypeError(f"outputs must be a list of id sequences, one per example; got {type(outputs).__name__}")
    if len(outputs) != m:
        raise ValueError(f"outputs holds {len(outputs)} sequences; expected m = {m}, one per example of source")
    rows = []
    for i, seq in enumerate(outputs):
        if isinstance(seq, np.ndarray) or is_array_api_obj(seq):
            seq = np.asarray(to_numpy(seq))
            if seq.ndim != 1 or seq.dtype.kind not in "iu":
                raise TypeError(f"outputs[{i}] must be a 1-D sequence of int; got shape {seq.shape}, dtype {seq.dtype}")
            seq = seq.tolist()
        elif isinstance(seq, (str, bytes)) or not hasattr(seq, "__iter__"):
            raise TypeError(f"outputs[{i}] must be a sequence of int; got {type(seq).__name__}")
        seq = list(seq)
        for t, value in enumerate(seq):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise TypeError(f"outputs[{i}][{t}] must be an int id; got {type(value).__name__} {value!r}")
            if not 0 < value < V_y or value == EOS_ID:
                raise ValueError(f"outputs[{i}][{t}] = {value}; expected an id 0 < id < V_y = {V_y} other than "
                                 f"{EOS_ID} (<eos>, which the model appends itself)")
        rows.append(seq)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.zeros((m, int(lengths.max(initial=0))), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, lengths


def previous_tokens(target, lengths):
    """``(m, T)`` ids of the decoder's previous token at each of its ``T = max(lengths) + 1`` steps: ``<eos>``,
    then the target's tokens, then padding (checked host ``target`` and ``lengths``)."""
    m = target.shape[0]
    T = int(lengths.max()) + 1
    previous = np.zeros((m, T), dtype=np.int64)
    previous[:, 0] = EOS_ID
    previous[:, 1:] = target[:, :T - 1]
    return previous


def projection_rows(target, lengths, T):
    """The predicted tokens of the ``T`` decoder steps as the projection's rows: ``(rows, keep)``.

    ``rows`` holds the target id of every valid position, time-major (step by step, examples within a step), as
    its row of ``Wy`` (id ``v`` is row ``v - 1``), ``<eos>`` at each example's step ``L``; ``keep`` the indices of
    those positions among the ``T * m`` time-major ones (None: all are valid).
    """
    m = target.shape[0]
    ids = np.zeros((T, m), dtype=np.int64)
    ids[:target.shape[1], :] = target.T[:T, :]
    ids[lengths, np.arange(m)] = EOS_ID
    valid = np.arange(T)[:, None] <= lengths[None, :]
    ids, valid = ids.reshape(-1), valid.reshape(-1)
    if valid.all():
        return ids - 1, None
    keep = np.flatnonzero(valid)
    return ids[keep] - 1, keep
