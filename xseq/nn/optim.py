"""Optimisers and gradient clipping over a dict of parameter arrays, on any array API backend.

Parameters and gradients are the course's dictionaries: ``parameters`` maps
names (``"Wax"``, ``"ba"``, ...) to arrays, and a gradient dict holds each
gradient under the same name or under ``"d" + name`` (``"dWax"``, as the
course's backward functions return them). Keys of a gradient dict that match
no parameter (``"dx"``, ``"da0"``) are ignored.

Updates are functional: :meth:`SGD.step` / :meth:`Adam.step` compute new
arrays and store them in the *same* dict object under the same keys, never
writing into an old array. That works on every backend (array_api_strict
arrays cannot be modified in place) and means an array held elsewhere is not
changed behind its holder's back; read parameters from the dict after a step.
"""

from __future__ import annotations

import math
import numbers

from array_api_compat import device as device_of

from ..backends.arrays import backend_name, namespace_of, to_numpy
from ..backends.checks import _dtype_name
from ..ops.host import adam_step


def _check_positive(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value}")
    return float(value)


def _check_fraction(name, value):
    """A decay rate in [0, 1)."""
    value = _check_positive(name, value, allow_zero=True)
    if value >= 1:
        raise ValueError(f"{name} must be in [0, 1); got {value}")
    return value


def _check_array_dict(name, arrays):
    if not isinstance(arrays, dict):
        raise TypeError(f"{name} must be a dict of name -> array; got {type(arrays).__name__}")
    if not arrays:
        raise ValueError(f"{name} is empty; expected at least one array")
    xp = namespace_of(**{f"{name}[{k!r}]": v for k, v in arrays.items()})
    for key, value in arrays.items():
        if not xp.isdtype(value.dtype, "real floating"):
            raise TypeError(
                f"{name}[{key!r}] has dtype {_dtype_name(value.dtype)}; expected a real floating dtype"
            )
    return xp


def _gradients_for(params, grads):
    """``grads`` re-keyed by parameter name; accepts ``name`` or ``"d" + name`` keys."""
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict of name -> array; got {type(grads).__name__}")
    out = {}
    for key, p in params.items():
        plain, course = key in grads, ("d" + key) in grads
        if plain and course:
            raise KeyError(f"grads holds both {key!r} and {'d' + key!r}; expected one gradient per parameter")
        if not (plain or course):
            raise KeyError(f"grads has no gradient for parameter {key!r} (looked for {key!r} and {'d' + key!r})")
        gname = key if plain else "d" + key
        g = grads[gname]
        namespace_of(**{f"params[{key!r}]": p, f"grads[{gname!r}]": g})
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(
                f"grads[{gname!r}] has shape {tuple(g.shape)}; expected {tuple(p.shape)} from params[{key!r}]"
            )
        if g.dtype != p.dtype:
            raise TypeError(
                f"grads[{gname!r}] has dtype {_dtype_name(g.dtype)} but params[{key!r}] is "
                f"{_dtype_name(p.dtype)}; convert them to one floating dtype first"
            )
        out[key] = g
    return out


class _Optimizer:
    """Shared bookkeeping: the params dict, per-parameter state buffers, and state_dict."""

    kind = ""
    _buffers = ()  # names of per-parameter state arrays, e.g. ("m", "v")
    _hyper = ()  # names of float hyperparameters saved in the state

    def __init__(self, params):
        self._xp = _check_array_dict("params", params)
        self.params = params
        self.step_count = 0
        self.state = {b: {k: self._xp.zeros_like(p) for k, p in params.items()} for b in self._buffers}

    def step(self, grads):
        """Apply one update; returns the (same, updated) params dict."""
        grads = _gradients_for(self.params, grads)
        self.step_count += 1
        for key, g in grads.items():
            self.params[key] = self._update(key, self.params[key], g)
        return self.params

    def state_dict(self):
        """The optimiser state as a flat dict: arrays of the params' backend and Python scalars.

        Keys: ``"optimizer"`` (str), ``"step"`` (int), each hyperparameter
        (float) and ``"<buffer>/<param name>"`` for each state array. Move the
        arrays to the host (``xseq.to_numpy``) to put them in a checkpoint.
        """
        state = {"optimizer": self.kind, "step": self.step_count}
        state.update({h: getattr(self, h) for h in self._hyper})
        for b in self._buffers:
            for key, arr in self.state[b].items():
                state[f"{b}/{key}"] = arr
        return state

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s output (arrays may be NumPy or of any backend).

        The step count, the hyperparameters and the buffers are all restored,
        so training resumes exactly. Arrays are moved to the params' backend
        and device; their shape and dtype must match the parameters', their
        values must be finite (and Adam's second moments ``>= 0``): a state
        no step can produce is refused (ValueError), not trained on.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict (from state_dict()); got {type(state).__name__}")
        expected = {"optimizer", "step", *self._hyper}
        expected |= {f"{b}/{k}" for b in self._buffers for k in self.params}
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(
                f"state does not fit this {self.kind} optimiser over params {list(self.params)}: "
                f"missing keys {missing}, unexpected keys {extra}"
            )
        kind = _scalar(state, "optimizer")
        if kind != self.kind:
            raise ValueError(f"state is for optimizer {kind!r}; this optimiser is {self.kind!r}")
        step = _scalar(state, "step")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"state['step'] must be an int >= 0; got {step!r}")
        hyper = {h: _scalar(state, h) for h in self._hyper}
        buffers = {b: {k: self._like(f"{b}/{k}", state[f"{b}/{k}"], p) for k, p in self.params.items()}
                   for b in self._buffers}
        self._set_hyper(**hyper)  # validates before anything is changed
        self.step_count = int(step)
        self.state = buffers

    def _like(self, name, value, ref):
        xp = self._xp
        arr = xp.asarray(to_numpy(value), device=device_of(ref))
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(
                f"state[{name!r}] has shape {tuple(arr.shape)}; expected {tuple(ref.shape)} as its parameter"
            )
        if arr.dtype != ref.dtype:
            raise TypeError(
                f"state[{name!r}] has dtype {_dtype_name(arr.dtype)}; its parameter is {_dtype_name(ref.dtype)}"
            )
        self._check_buffer(name, arr)
        return arr

    def _check_buffer(self, name, arr):
        """ValueError unless ``arr`` holds what this optimiser's steps can leave in state ``name``: finite values."""
        xp = self._xp
        bad = xp.logical_not(xp.isfinite(arr))
        if bool(xp.any(bad)):
            raise ValueError(f"state[{name!r}] holds NaN or infinite values ({_count(xp, bad)} of {_size(arr)}); "
                             "expected finite values")

    def __repr__(self):
        hyper = ", ".join(f"{h}={getattr(self, h)}" for h in self._hyper)
        return f"{self.kind}({hyper}, params={list(self.params)}, backend={backend_name(self._xp)})"


def _count(xp, mask):
    """How many entries of the boolean array ``mask`` are true."""
    return int(xp.sum(xp.astype(mask, xp.int64)))


def _size(arr):
    return math.prod(arr.shape)


def _scalar(state, key):
    """``state[key]`` as a Python scalar; it may be a 0-d array, as an .npz gives it back."""
    value = state[key]
    if hasattr(value, "shape"):
        arr = to_numpy(value)
        if arr.shape != ():
            raise ValueError(f"state[{key!r}] must be a scalar; got an array of shape {arr.shape}")
        return arr.item()
    return value


class SGD(_Optimizer):
    """Stochastic gradient descent, optionally with momentum.

    ``v = momentum * v + g``; ``p = p - lr * v`` (PyTorch's form, no dampening).
    With ``momentum=0`` this is the course's ``p = p - lr * dp``. The other
    common form, ``v = beta * v + (1 - beta) * g``, is this one with
    ``lr * (1 - beta)`` as the learning rate.

    Parameters
    ----------
    params : dict[str, array]
        Floating arrays of one backend; :meth:`step` replaces its entries.
    lr : float
        Learning rate, > 0.
    momentum : float
        In [0, 1).
    """

    kind = "SGD"
    _hyper = ("lr", "momentum")

    def __init__(self, params, lr, momentum=0.0):
        # Plain SGD keeps no state at all, so the buffers depend on momentum.
        self._buffers = ("velocity",) if _check_fraction("momentum", momentum) > 0 else ()
        self._set_hyper(lr=lr, momentum=momentum)
        super().__init__(params)

    def _set_hyper(self, lr, momentum):
        lr = _check_positive("lr", lr)
        momentum = _check_fraction("momentum", momentum)
        if bool(self._buffers) != (momentum > 0):
            have = "momentum > 0" if self._buffers else "momentum = 0"
            raise ValueError(f"state has momentum = {momentum} but this SGD was created with {have}")
        self.lr, self.momentum = lr, momentum

    def _update(self, key, p, g):
        if self.momentum == 0:
            return p - self.lr * g
        v = self.momentum * self.state["velocity"][key] + g
        self.state["velocity"][key] = v
        return p - self.lr * v


class Adam(_Optimizer):
    """Adam with bias correction, as in the course.

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g**2``;
    ``p = p - lr * m_hat / (sqrt(v_hat) + eps)`` with
    ``m_hat = m / (1 - b1**t)``, ``v_hat = v / (1 - b2**t)``, ``t`` the step
    count starting at 1.

    Parameters
    ----------
    params : dict[str, array]
        Floating arrays of one backend; :meth:`step` replaces its entries.
    lr : float
        > 0.
    betas : (float, float)
        Decay rates, each in [0, 1).
    eps : float
        > 0, added to the square root of ``v_hat``.
    """

    kind = "Adam"
    _buffers = ("m", "v")
    _hyper = ("lr", "beta1", "beta2", "eps")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        self._set_hyper(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps)
        super().__init__(params)
        # The one choice of implementation: NumPy's arrays take the host build's one-pass step
        # (xseq.ops.host.adam_step, which says None where it cannot serve them), every other
        # backend the formulas below; NumPy does them as ten passes, each allocating an array.
        self._fused = adam_step if backend_name(self._xp) == "numpy" else None

    def _set_hyper(self, lr, beta1, beta2, eps):
        values = (
            _check_positive("lr", lr),
            _check_fraction("beta1", beta1),
            _check_fraction("beta2", beta2),
            _check_positive("eps", eps),
        )
        self.lr, self.beta1, self.beta2, self.eps = values

    def _check_buffer(self, name, arr):
        """Finite moments, and second moments ``v`` (averages of squared gradients) >= 0."""
        super()._check_buffer(name, arr)
        if not name.startswith("v/"):
            return
        xp = self._xp
        negative = arr < 0
        if bool(xp.any(negative)):
            raise ValueError(f"state[{name!r}] holds negative values ({_count(xp, negative)} of {_size(arr)}, the "
                             f"least {float(xp.min(arr))!r}); expected second moments >= 0 (averages of squared "
                             "gradients)")

    def _update(self, key, p, g):
        t = self.step_count
        if self._fused is not None:
            new = self._fused(p, g, self.state["m"][key], self.state["v"][key], self.lr, self.beta1, self.beta2,
                              self.eps, t)
            if new is not None:
                p, self.state["m"][key], self.state["v"][key] = new
                return p
        m = self.beta1 * self.state["m"][key] + (1 - self.beta1) * g
        v = self.beta2 * self.state["v"][key] + (1 - self.beta2) * (g * g)
        self.state["m"][key], self.state["v"][key] = m, v
        m_hat = m / (1 - self.beta1**t)
        v_hat = v / (1 - self.beta2**t)
        return p - self.lr * m_hat / (self._xp.sqrt(v_hat) + self.eps)


# ---------------------------------------------------------------------- clipping


def _check_grads(grads):
    return _check_array_dict("grads", grads)


def clip_by_value(grads, max_value):
    """The course's ``clip``: every gradient entry limited to ``[-max_value, max_value]``.

    Parameters
    ----------
    grads : dict[str, array]
        Floating arrays of one backend (every entry is clipped, ``"dx"`` included).
    max_value : float
        > 0.

    Returns
    -------
    dict[str, array]
        A new dict with the same keys; ``grads`` and its arrays are not modified
        (unlike the course's in-place ``np.clip(..., out=...)``).
    """
    max_value = _check_positive("max_value", max_value)
    xp = _check_grads(grads)
    return {k: xp.clip(g, min=-max_value, max=max_value) for k, g in grads.items()}


# Why: see docs/decisions/010-clipping-norm-by-blocks.md
#: Elements per dot product in :func:`_sum_of_squares`.
_SQUARES_BLOCK = 1024


def _sum_of_squares(xp, g):
    """``sum(g * g)`` without the squared copy (a word model's window has megabytes of gradients).

    Dot products of blocks of :data:`_SQUARES_BLOCK` elements, then their
    sum: as accurate as the summation of ``sum(g * g)`` (one long float32
    dot product was measured 100x less accurate over 2 million elements),
    in a fifth of its time.
    """
    flat = xp.reshape(g, (-1,))
    n = flat.shape[0]
    whole = n - n % _SQUARES_BLOCK
    total = 0.0
    if whole:
        blocks = xp.reshape(flat[:whole], (whole // _SQUARES_BLOCK, _SQUARES_BLOCK))
        total += float(xp.sum(xp.vecdot(blocks, blocks)))
    if whole < n:
        rest = flat[whole:]
        total += float(xp.vecdot(rest, rest))
    return total


def clip_by_global_norm(grads, max_norm):
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``.

    ``total_norm = sqrt(sum over arrays of sum(g**2))``; when it exceeds
    ``max_norm`` every array is multiplied by ``max_norm / total_norm``, which
    keeps the direction of the update (clipping by value does not).

    Parameters
    ----------
    grads : dict[str, array]
        Floating arrays of one backend.
    max_norm : float
        > 0.

    Returns
    -------
    clipped : dict[str, array]
        A new dict with the same keys (the same arrays when no scaling was needed).
    total_norm : float
        The norm before clipping. If it is inf or NaN the gradients are returned
        unscaled, so the caller can see it and skip the step.
    """
    max_norm = _check_positive("max_norm", max_norm)
    xp = _check_grads(grads)
    total_norm = math.sqrt(sum(_sum_of_squares(xp, g) for g in grads.values()))
    if not math.isfinite(total_norm) or total_norm <= max_norm:
        return dict(grads), total_norm
    scale = max_norm / total_norm
    return {k: g * scale for k, g in grads.items()}, total_norm
