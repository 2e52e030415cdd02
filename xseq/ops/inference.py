"""Inference mode: forward passes that keep nothing for a backward pass.

Inside ``with xseq.inference_mode():`` the recurrent layers, the embedding
and the course's sequence functions compute their outputs exactly as
always but keep nothing that only a backward pass reads: no trace of the
engine (input copy, states, gates), no caches. Their backward passes then
raise :class:`InferenceModeError`. Like ``torch.inference_mode``:

* it is a context manager and a decorator (``@xseq.inference_mode()``, or
  ``@xseq.inference_mode`` without the call);
* ``xseq.inference_mode(False)`` turns it off again inside;
* it nests: leaving a block restores the mode that was on before it;
* it belongs to a thread: each thread starts with it off, and turning it
  on in one thread changes nothing in another.

:func:`is_inference_mode_enabled` says whether the calling thread is in it.
The flag lives here, below the engine, so that every layer of the package
reads it without importing upwards.
"""

from __future__ import annotations

import functools
import inspect
import threading

__all__ = ["InferenceModeError", "inference_mode", "is_inference_mode_enabled", "refuse_backward"]

_state = threading.local()


def is_inference_mode_enabled():
    """Whether the calling thread is in inference mode (``False`` in a new thread)."""
    return getattr(_state, "enabled", False)


class InferenceModeError(RuntimeError):
    """A backward pass was asked of a forward pass that ran in inference mode and so kept nothing for it."""


def refuse_backward(what, forward):
    """Raise :class:`InferenceModeError`: ``what`` (a backward pass) follows a ``forward`` that ran in inference mode."""
    raise InferenceModeError(
        f"{what} cannot run: the last {forward} ran under xseq.inference_mode(), which keeps nothing for a "
        f"backward pass; run {forward} outside inference mode (or inside xseq.inference_mode(False)) to "
        "train")


class inference_mode:  # noqa: N801 -- named like torch.inference_mode, which it mirrors
    """Context manager and decorator that turns inference mode on (or, with ``False``, off) in this thread.

    Parameters
    ----------
    mode : bool, default True
        ``True`` turns inference mode on, ``False`` turns it off (inside an
        enclosing ``inference_mode()``). Given a function instead (the
        decorator written without parentheses, ``@xseq.inference_mode``),
        returns that function decorated with ``inference_mode(True)``.

    Notes
    -----
    One instance may be entered any number of times, nested and from several
    threads at once: what each ``with`` restores is kept per thread.
    Generator and coroutine functions are refused as decorator targets (their
    bodies run after the call returns, outside the block); use ``with``
    inside them.

    Examples
    --------
    >>> import numpy as np, xseq
    >>> layer = xseq.LSTM(3, 4)
    >>> x = np.zeros((3, 2, 5), dtype=np.float32)
    >>> with xseq.inference_mode():
    ...     outputs, (h, c) = layer.forward(x)
    ...     xseq.is_inference_mode_enabled()
    True
    >>> xseq.is_inference_mode_enabled()
    False
    """

    def __new__(cls, mode=True):
        if callable(mode) and not isinstance(mode, bool):  # @xseq.inference_mode without parentheses
            return cls(True)(mode)
        return super().__new__(cls)

    def __init__(self, mode=True):
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be True or False; got {mode!r} of type {type(mode).__name__}")
        self.mode = mode

    def __repr__(self):
        return f"xseq.inference_mode({self.mode})"

    def __enter__(self):
        stack = _state.__dict__.setdefault("stack", [])
        stack.append(is_inference_mode_enabled())
        _state.enabled = self.mode
        return self

    def __exit__(self, exc_type, exc, tb):
        _state.enabled = _state.stack.pop()
        return False

    def __call__(self, function):
        """``function`` run under this mode at every call."""
        if not callable(function):
            raise TypeError(f"inference_mode decorates a function; got {function!r} of type "
                            f"{type(function).__name__}")
        if (inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)
                or inspect.iscoroutinefunction(function)):
            raise TypeError(f"inference_mode cannot decorate {function.__qualname__}, a generator or coroutine "
                            "function: its body runs after the call returns, outside the mode; write `with "
                            "xseq.inference_mode():` inside it instead")
        mode = self.mode

        @functools.wraps(function)
        def run_in_mode(*args, **kwargs):
            with inference_mode(mode):
                return function(*args, **kwargs)

        return run_in_mode
