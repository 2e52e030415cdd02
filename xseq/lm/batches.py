"""Id sequences as arrays on any backend: padded (:func:`pad_ids`) and one-hot (:func:`one_hot`, the course's
input layout ``(V, m, T_x)``), with their masks, and the batches of the line plan (:func:`line_batch`).
"""

from __future__ import annotations

import numbers

import numpy as np
from array_api_compat import is_array_api_obj

from ..backends.arrays import backend as _backend_named
from ..backends.arrays import dtype_of, refuse_masked, to_numpy
from .vocab import EOS_ID, PAD_ID
from .vocab import _check_int

def _host_ids(ids):
    """``ids`` as a host int64 array ``(m, T_x)`` and its bool mask; validates everything but the range."""
    refuse_masked("ids", ids)
    if is_array_api_obj(ids) or isinstance(ids, np.ndarray):
        arr = to_numpy(ids)
        if arr.ndim != 2:
            raise ValueError(f"ids has {arr.ndim} dimensions, shape {arr.shape}; expected 2: (m, T_x)")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"ids has dtype {arr.dtype}; expected an integer dtype")
        if arr.shape[0] == 0:
            raise ValueError(f"ids has shape {arr.shape}: m = 0; the batch is empty")
        if arr.shape[1] == 0:
            raise ValueError(f"ids has shape {arr.shape}: T_x = 0; a sequence needs at least one id")
        return arr.astype(np.int64), np.ones(arr.shape, dtype=bool)
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"ids must be a list of id sequences or a 2-D integer array; got {type(ids).__name__}")
    seqs = list(ids)
    if not seqs:
        raise ValueError("ids is empty (m = 0); expected at least one sequence")
    rows = []
    for i, seq in enumerate(seqs):
        if isinstance(seq, (str, bytes)) or not hasattr(seq, "__iter__"):
            raise TypeError(f"ids[{i}] must be a sequence of int; got {type(seq).__name__}")
        row = list(seq)
        if not row:
            raise ValueError(f"ids[{i}] is empty; every sequence needs at least one id")
        for t, value in enumerate(row):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
                raise TypeError(f"ids[{i}][{t}] must be an int; got {type(value).__name__} {value!r}")
        rows.append(row)
    T_x = max(len(r) for r in rows)
    arr = np.zeros((len(rows), T_x), dtype=np.int64)
    mask = np.zeros((len(rows), T_x), dtype=bool)
    for i, row in enumerate(rows):
        arr[i, : len(row)] = row
        mask[i, : len(row)] = True
    return arr, mask


def _check_range(arr, mask, vocab_size):
    valid = arr[mask]
    if valid.size and valid.min() < 0:
        i, t = np.argwhere((arr < 0) & mask)[0]
        raise ValueError(f"ids[{i}][{t}] = {arr[i, t]} is negative; expected 0 <= id < vocab_size = {vocab_size}")
    if valid.size and valid.max() >= vocab_size:
        i, t = np.argwhere((arr >= vocab_size) & mask)[0]
        raise ValueError(f"ids[{i}][{t}] = {arr[i, t]} is out of range; expected 0 <= id < vocab_size = {vocab_size}")


def pad_ids(ids, *, backend="numpy", pad_id=PAD_ID):
    """Pad id sequences of unequal lengths into one integer array.

    Parameters
    ----------
    ids : list of sequences of int, or 2-D integer array (m, T_x)
    backend : str or namespace
        Where the result lives (see :func:`xseq.backend`).
    pad_id : int
        Value written after the end of each shorter sequence (``<pad>`` = 0).

    Returns
    -------
    ids : (m, T_x) int64 array
        ``T_x`` is the longest sequence's length.
    mask : (m, T_x) bool array
        True where ``ids`` holds a real id. A 2-D array input is all True.
    """
    _check_int("pad_id", pad_id, 0)
    arr, mask = _host_ids(ids)
    arr = np.where(mask, arr, pad_id)
    xp = _backend_named(backend)
    return xp.asarray(arr), xp.asarray(mask)


def one_hot(ids, vocab_size, *, backend="numpy", dtype="float32"):
    """One-hot encode a batch of id sequences in the course's layout.

    Parameters
    ----------
    ids : list of sequences of int, or 2-D integer array (m, T_x) of any backend
        Sequences may differ in length; shorter ones are padded at the end.
        Every position of a 2-D array counts as valid (id 0 included).
    vocab_size : int
        ``V``; every valid id must satisfy ``0 <= id < V``.
    backend : str or namespace
        Where ``X`` and ``mask`` live (see :func:`xseq.backend`).
    dtype : {"float32", "float64"} or a dtype of that backend

    Returns
    -------
    X : (V, m, T_x) array
        ``X[v, i, t] = 1`` where example ``i`` has id ``v`` at step ``t``;
        padding positions are all-zero columns.
    mask : (m, T_x) bool array
        True where the position holds a real id.

    Raises
    ------
    TypeError
        ``ids`` not integers (floats, bools, strings).
    ValueError
        Empty batch, an empty sequence, or an id negative or >= ``vocab_size``.
    """
    _check_int("vocab_size", vocab_size, 1)
    arr, mask = _host_ids(ids)
    _check_range(arr, mask, vocab_size)
    xp = _backend_named(backend)
    float_dtype = dtype_of(xp, dtype)
    if not xp.isdtype(float_dtype, "real floating"):
        raise TypeError(f"dtype must be a real floating dtype (float32 or float64); got {dtype!r}")
    # Only the small (m, T_x) id array crosses to the device; the (V, m, T_x)
    # one-hot is built there, which matters for a GPU and a large V.
    ids_dev = xp.asarray(np.where(mask, arr, -1))
    mask_dev = xp.asarray(mask)
    vocab = xp.reshape(xp.arange(vocab_size, dtype=ids_dev.dtype), (vocab_size, 1, 1))
    X = xp.astype(vocab == xp.reshape(ids_dev, (1, *arr.shape)), float_dtype)
    return X, mask_dev


# Why: see docs/decisions/015-charlm-batch-at-once.md
def line_batch(sequences, vocab_size):
    """Inputs, targets and mask of a batch of id sequences, one line a sequence (host arrays).

    A sequence ``c1 .. cn`` is learned as inputs ``[0, c1, ..., cn]`` (id 0,
    ``<pad>``, the course's zero first input) and targets ``[c1, ..., cn,
    <eos>]``; shorter sequences are padded at the end with id 0, left out by
    the mask.

    Parameters
    ----------
    sequences : list of sequences of int
        Ids ``0 <= id < vocab_size`` without ``<eos>``; a sequence may be empty.
    vocab_size : int

    Returns
    -------
    inputs, targets : (m, T) int64 NumPy arrays
        ``T`` is the longest ``n`` plus one.
    mask : (m, T) bool NumPy array
        True at the ``n + 1`` predicted positions of each sequence.
    """
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__") or len(sequences) == 0:
        raise ValueError("sequences must be a non-empty list of id sequences")
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
    m, T = len(arrays), int(lengths.max()) + 1
    # Every id of the batch at once, in row order: checked with one min and max, written with one
    # boolean assignment (which fills a row-major array's True positions in the same order).
    flat = np.concatenate(arrays)
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        i = next(i for i, ids in enumerate(arrays) if ids.size and (ids.min() < 0 or ids.max() >= vocab_size))
        raise ValueError(f"sequences[{i}] holds an id outside 0 <= id < V = {vocab_size}")
    inside = np.arange(T)[None, :] < lengths[:, None]  # (m, T): the first n positions of each row
    inputs = np.zeros((m, T), dtype=np.int64)
    targets = np.zeros((m, T), dtype=np.int64)
    inputs[:, 1:][inside[:, :-1]] = flat
    targets[inside] = flat
    targets[np.arange(m), lengths] = EOS_ID
    mask = np.arange(T)[None, :] <= lengths[:, None]
    return inputs, targets, mask
