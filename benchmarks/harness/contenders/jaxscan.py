"""``bench_cpu.py``'s JAX contender: each model written the way a JAX user would write it fast.

* Time-major arrays (``X`` is ``(T_x, m, n_x)``), examples as rows.
* Stacked gates in torch's order (LSTM ``i f g o``, GRU ``r z n``): a step's
  recurrent product is one ``(m, n_a) @ (n_a, G*n_a)`` matrix product.
* The input projection hoisted out of the recurrence: one
  ``(T_x*m, n_x) @ (n_x, G*n_a)`` product for the whole sequence, with the
  biases added there (the GRU's ``b_hn`` stays in the step, where ``r``
  multiplies it).
* The recurrence is :func:`jax.lax.scan` (``reverse=True`` for a
  bidirectional layer's reverse direction), and the whole forward, or
  forward + backward, is one :func:`jax.jit`-compiled function.
* forward+backward is :func:`jax.value_and_grad` of the same loss as every
  other contender's, ``sum(a * da)``, with respect to the input, the initial
  state(s) and every weight and bias: ``dx``, ``da0``/``dh0``/``dc0`` and every
  weight gradient. The course models' softmax output ``y`` is computed in the
  forward pass (an auxiliary output) but not back-propagated, as in the
  course, and the course's ``c<0>`` is a constant.

The weights are those of :func:`cpu.make_problem` (the course models'
converted to torch's stacked layout as for the torch contender), so the check
compares this contender with xseq's reference like any other
(``checks.OTHER_IMPLEMENTATION``). Float32 throughout (JAX's default).

Threads: XLA's CPU client runs its operations on a pool of one thread per
core, as torch and OpenBLAS do; nothing here changes that.

JAX is optional: :func:`cpu.jax_available` says whether it is installed, and
``bench_cpu.py`` skips this contender with a note where it is not.
"""

from __future__ import annotations

import numpy as np

from . import cpu


def _direction(jax, jnp, kind, X, W_ih, W_hh, b_ih, b_hh, h0, c0, reverse, keep_c):
    """One direction of one layer: ``(H (T, m, n_a), C or None, h_T, c_T or None)``."""
    n_a = W_hh.shape[1]
    if kind == "gru":
        # r and z take both biases in the hoisted projection; n's recurrent bias stays in the step
        b_fold = b_ih + jnp.concatenate([b_hh[:2 * n_a], jnp.zeros((n_a,), X.dtype)])
        b_hn = b_hh[2 * n_a:]
    else:
        b_fold = b_ih + b_hh
    XW = X @ W_ih.T + b_fold  # (T, m, G*n_a): one product for every step
    W_hhT = W_hh.T
    sigmoid = jax.nn.sigmoid

    if kind == "rnn":
        def step(h, xw):
            h = jnp.tanh(xw + h @ W_hhT)
            return h, h
        h_T, H = jax.lax.scan(step, h0, XW, reverse=reverse)
        return H, None, h_T, None

    if kind == "gru":
        def step(h, xw):
            hw = h @ W_hhT
            r = sigmoid(xw[:, :n_a] + hw[:, :n_a])
            z = sigmoid(xw[:, n_a:2 * n_a] + hw[:, n_a:2 * n_a])
            n = jnp.tanh(xw[:, 2 * n_a:] + r * (hw[:, 2 * n_a:] + b_hn))
            h = n + z * (h - n)
            return h, h
        h_T, H = jax.lax.scan(step, h0, XW, reverse=reverse)
        return H, None, h_T, None

    def step(carry, xw):
        h, c = carry
        z = xw + h @ W_hhT
        i = sigmoid(z[:, :n_a])
        f = sigmoid(z[:, n_a:2 * n_a])
        g = jnp.tanh(z[:, 2 * n_a:3 * n_a])
        o = sigmoid(z[:, 3 * n_a:])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), ((h, c) if keep_c else h)

    (h_T, c_T), out = jax.lax.scan(step, (h0, c0), XW, reverse=reverse)
    H, C = out if keep_c else (out, None)
    return H, C, h_T, c_T


def _layers(jax, jnp, kind, params, X, h0, c0, num_layers, directions, keep_c):
    """A stack of layers: ``(outputs (T, m, D*n_a), h_n (L*D, m, n_a), c_n or None, C of the last layer or None)``."""
    inp, h_n, c_n, C = X, [], [], None
    for layer in range(num_layers):
        outs = []
        for d in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            k = layer * directions + d
            H, C, h_T, c_T = _direction(
                jax, jnp, kind, inp, params[f"weight_ih{suffix}"], params[f"weight_hh{suffix}"],
                params[f"bias_ih{suffix}"], params[f"bias_hh{suffix}"], h0[k], None if c0 is None else c0[k],
                reverse=bool(d), keep_c=keep_c)
            outs.append(H)
            h_n.append(h_T)
            c_n.append(c_T)
        inp = outs[0] if directions == 1 else jnp.concatenate(outs, axis=-1)
    return inp, jnp.stack(h_n), (None if c0 is None else jnp.stack(c_n)), C


def build(model, size, x, da, p, backward):
    """The :class:`cpu.Step` of the JAX contender for one case, from :func:`cpu.make_problem`'s ``x, da, p``."""
    import jax
    import jax.numpy as jnp

    n_x, n_a, m, T = size
    kind = "gru" if model == "gru" else ("rnn" if model == "rnn" else "lstm")
    functional = model in cpu.FUNCTIONAL
    if functional:
        stacked = cpu.stacked_course_parameters(model, p)
        Wy, by = jnp.asarray(stacked.pop("Wy")), jnp.asarray(stacked.pop("by"))
        params = {k: jnp.asarray(v) for k, v in stacked.items()}
        num_layers, directions = 1, 1
    else:
        params = {k: jnp.asarray(v) for k, v in p.items()}
        options = cpu.layer_options(model)
        num_layers, directions = options.get("num_layers", 1), 2 if options.get("bidirectional") else 1
    states = num_layers * directions
    X = jnp.asarray(np.ascontiguousarray(x.transpose(2, 1, 0)))  # (T, m, n_x)
    dA = jnp.asarray(np.ascontiguousarray(da.transpose(2, 1, 0)))
    h0 = jnp.zeros((states, m, n_a), jnp.float32)
    c0 = jnp.zeros((states, m, n_a), jnp.float32) if kind == "lstm" else None
    keep_c = functional and kind == "lstm"  # the course's lstm_forward returns every c<t>

    def forward(diff, c0_const):
        """Everything the contender reports, from the differentiated inputs ``diff``."""
        c_init = diff.get("c0", c0_const)
        out, h_n, c_n, C = _layers(jax, jnp, kind, diff["params"], diff["x"], diff["h0"], c_init,
                                   num_layers, directions, keep_c)
        res = {"out": out, "h_n": h_n, "c_n": c_n, "C": C}
        if functional:
            res["y"] = jax.nn.softmax(out @ Wy.T + by[:, 0], axis=-1)
        return res

    diff = {"params": params, "x": X, "h0": h0}
    c0_const = None
    if c0 is not None:
        if functional:
            c0_const = c0  # the course's c<0> is a constant zero, as for every other contender
        else:
            diff["c0"] = c0

    if backward:
        def loss(diff, c0_const):
            res = forward(diff, c0_const)
            return jnp.sum(res["out"] * dA), res

        fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    else:
        fn = jax.jit(forward)

    def run(kept):
        result = jax.block_until_ready(fn(diff, c0_const))
        if kept is not None:
            kept["result"] = result

    def collect(kept):
        if backward:
            (_, res), grads = kept["result"]
        else:
            res, grads = kept["result"], None
        return _results(model, functional, res, grads)

    return cpu.Step(run, collect)


def _results(model, functional, res, grads):
    """What the contender computed, as NumPy arrays in the course's layout, named like the other contenders'."""
    def course(t):  # (T, m, n) -> (n, m, T)
        return np.asarray(t).transpose(2, 1, 0)

    def state(t):  # (L*D, m, n_a) -> (L*D, n_a, m)
        return np.asarray(t).transpose(0, 2, 1)

    if functional:
        out = {"a": course(res["out"]), "y": course(res["y"])}
        if res["C"] is not None:
            out["c"] = course(res["C"])
        if grads is not None:
            out.update(dx=course(grads["x"]), da0=state(grads["h0"])[0])
    else:
        out = {"outputs": course(res["out"]), "h_n": state(res["h_n"])}
        if res["c_n"] is not None:
            out["c_n"] = state(res["c_n"])
        if grads is not None:
            out.update(dx=course(grads["x"]), dh0=state(grads["h0"]))
            if "c0" in grads:
                out["dc0"] = state(grads["c0"])
    if grads is not None:
        out.update({cpu.gradient_name(name): np.asarray(g) for name, g in grads["params"].items()})
    return out
