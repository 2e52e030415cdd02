"""The pointwise part of one time step, for every cell: the pure definitions.

A sequence function (:mod:`xseq.engine.sequence`) does the matrix products itself and hands each
step's pointwise work to an *ops* object (:mod:`xseq.ops.select` picks it); every implementation --
the array-API reference (:mod:`xseq.ops.reference`), NumPy in place, the host build and the CUDA
kernels -- computes what the functions below define, and the tests compare them element by element.

Layouts are row-major with examples as rows: a step's gate pre-activations
``z`` are ``(m, G*n_a)`` with the gate blocks side by side, in PyTorch's
order (LSTM ``i f g o``, GRU ``r z n``). The biases are already folded into
the hoisted input projection ``xw`` (all but the GRU's ``b_hn``, which the
reset gate multiplies).
"""

from __future__ import annotations


def sigmoid(xp, x):
    """Stable logistic function: never evaluates exp of a positive number."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


# ---------------------------------------------------------------- reference definitions

def rnn_pointwise_forward(xp, xw, hw):
    """h = tanh(xw + hw)."""
    return xp.tanh(xw + hw)


def rnn_pointwise_backward(xp, h, dh):
    """Gradient of the pre-activation: dz = dh * (1 - h**2)."""
    return dh * (1 - h * h)


def lstm_pointwise_forward(xp, xw, hw, c_prev):
    """Returns (gates, c, h): activated gates ``[i f g o]`` (m, 4n_a), the cell and hidden states."""
    n_a = c_prev.shape[1]
    z = xw + hw
    i = sigmoid(xp, z[:, :n_a])
    f = sigmoid(xp, z[:, n_a:2 * n_a])
    g = xp.tanh(z[:, 2 * n_a:3 * n_a])
    o = sigmoid(xp, z[:, 3 * n_a:])
    c = f * c_prev + i * g
    h = o * xp.tanh(c)
    return xp.concat([i, f, g, o], axis=1), c, h


def lstm_pointwise_backward(xp, gates, c_prev, c, dh, dc):
    """Returns (dz, dc_prev): gradients of the four pre-activations (m, 4n_a) and of c_prev."""
    n_a = c.shape[1]
    i, f, g, o = (gates[:, k * n_a:(k + 1) * n_a] for k in range(4))
    tanh_c = xp.tanh(c)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    di = dc * g * i * (1 - i)
    df = dc * c_prev * f * (1 - f)
    dg = dc * i * (1 - g * g)
    do = dh * tanh_c * o * (1 - o)
    return xp.concat([di, df, dg, do], axis=1), dc * f


def gru_pointwise_forward(xp, xw, hw, b_hn, h_prev):
    """PyTorch/cuDNN GRU step. Returns (saved, h) with saved = ``[r z n hn]`` (m, 4n_a).

    r = sigmoid(xw_r + hw_r), z = sigmoid(xw_z + hw_z), hn = hw_n + b_hn,
    n = tanh(xw_n + r * hn), h = (1 - z) * n + z * h_prev.
    """
    n_a = h_prev.shape[1]
    r = sigmoid(xp, xw[:, :n_a] + hw[:, :n_a])
    z = sigmoid(xp, xw[:, n_a:2 * n_a] + hw[:, n_a:2 * n_a])
    hn = hw[:, 2 * n_a:] + b_hn
    n = xp.tanh(xw[:, 2 * n_a:] + r * hn)
    h = n + z * (h_prev - n)
    return xp.concat([r, z, n, hn], axis=1), h


def gru_pointwise_backward(xp, saved, h_prev, dh):
    """Returns (dxw, dhw, dh_direct).

    dxw (m, 3n_a): gradient of the input projection's pre-activations; dhw (m, 3n_a):
    gradient of the recurrent product plus its bias; dh_direct (m, n_a): the part of
    dh_prev that does not pass through W_hh.
    """
    n_a = h_prev.shape[1]
    r, z, n, hn = (saved[:, k * n_a:(k + 1) * n_a] for k in range(4))
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dxw = xp.concat([dr, dz, dn], axis=1)
    dhw = xp.concat([dr, dz, dn * r], axis=1)
    return dxw, dhw, dh * z


def softmax_along(xp, x, axis):
    """Softmax over ``axis``, the maximum subtracted first so that large values do not overflow."""
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)
