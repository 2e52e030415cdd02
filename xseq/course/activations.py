"""The course's activation functions, numerically stable on every backend."""

from __future__ import annotations

from ..backends.checks import namespace_and_checks
from ..ops.pointwise import sigmoid as sigmoid_of
from ..ops.pointwise import softmax_along


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)), elementwise.

    Stable for any input: exp is only taken of non-positive numbers, so
    ``sigmoid(-1000)`` is 0 and ``sigmoid(1000)`` is 1 without overflow warnings.

    Parameters
    ----------
    x : array of float32 or float64, any shape

    Returns
    -------
    array of x's shape, dtype and namespace
    """
    xp = namespace_and_checks(x=x)
    if x.ndim == 0:
        # NumPy < 2 computes a 0-d float32 with the formula's Python 1 in float64 (its legacy promotion
        # of scalars); a 1-element array keeps x's dtype there as on every other backend.
        return xp.reshape(sigmoid_of(xp, xp.reshape(x, (1,))), ())
    return sigmoid_of(xp, x)


def softmax(x):
    """Softmax over axis 0 (the course's layout: classes are rows, examples columns).

    The column maximum is subtracted first, so ``softmax`` of values around
    1000 does not overflow.

    Parameters
    ----------
    x : array (n_y, ...) of float32 or float64

    Returns
    -------
    array of x's shape, dtype and namespace; every column sums to 1
    """
    xp = namespace_and_checks(x=x)
    if x.ndim == 0:
        raise ValueError("x has shape (); expected at least one dimension (softmax runs over axis 0)")
    return softmax_along(xp, x, axis=0)

