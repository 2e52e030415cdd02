"""The course's assignment, end to end: RNN and LSTM forward, backward, and a gradient check.

Run: python examples/course_walkthrough.py [--backend auto|numpy|torch|cupy|array_api_strict]
"""

import argparse

import numpy as np

import xseq


def gradient_check(xp, parameters, x, a0, key, eps=1e-6):
    """Relative error between lstm_backward's d<key> and central differences of sum(a)."""
    def loss(params):
        a = xseq.lstm_forward(x, a0, params)[0]
        return float(xp.sum(a))

    a, _, _, caches = xseq.lstm_forward(x, a0, parameters)
    analytic = xseq.to_numpy(xseq.lstm_backward(xp.ones_like(a), caches)["d" + key])
    base = xseq.to_numpy(parameters[key])
    numeric = np.zeros_like(base)
    for index in np.ndindex(base.shape):
        for sign in (1, -1):
            shifted = base.copy()
            shifted[index] += sign * eps
            numeric[index] += sign * loss({**parameters, key: xp.asarray(shifted)}) / (2 * eps)
    return np.linalg.norm(numeric - analytic) / (np.linalg.norm(numeric) + np.linalg.norm(analytic))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    xp = xseq.backend(args.backend)
    rng = np.random.default_rng(1)
    n_x, n_a, n_y, m, T_x = 3, 5, 2, 10, 4

    x = xseq.asarray(rng.standard_normal((n_x, m, T_x)), backend=xp, dtype="float64")
    a0 = xseq.asarray(rng.standard_normal((n_a, m)), backend=xp, dtype="float64")

    rnn = xseq.init_rnn_parameters(n_x, n_a, n_y, backend=xp, dtype="float64", seed=1)
    a, y_pred, caches = xseq.rnn_forward(x, a0, rnn)
    print("rnn_forward:  a", tuple(a.shape), " y_pred", tuple(y_pred.shape))
    grads = xseq.rnn_backward(xp.ones_like(a), caches)
    print("rnn_backward:", {k: tuple(v.shape) for k, v in grads.items()})

    lstm = xseq.init_lstm_parameters(n_x, n_a, n_y, backend=xp, dtype="float64", seed=1)
    a, y, c, caches = xseq.lstm_forward(x, a0, lstm)
    print("lstm_forward: a", tuple(a.shape), " y", tuple(y.shape), " c", tuple(c.shape))
    grads = xseq.lstm_backward(xp.ones_like(a), caches)
    print("lstm_backward:", {k: tuple(v.shape) for k, v in grads.items()})

    for key in ("Wf", "bi", "Wo"):
        print(f"gradient check d{key}: relative error {gradient_check(xp, lstm, x, a0, key):.1e}")
    print("backend:", xseq.backends.arrays.backend_name(xp))


if __name__ == "__main__":
    main()
