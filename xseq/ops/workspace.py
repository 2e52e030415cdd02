"""Reused NumPy buffers for the sequence engine.

A sequence pass works in buffers of megabytes (input projection, states, saved
gates, their gradients). Allocating them afresh on every call costs more than
the allocation: glibc gives large freed blocks back to the operating system,
so the next call writes to new pages and takes one page fault per 4 KiB. On
the 2-core benchmark machine that was over 2,000 faults per RNN forward and
backward at (n_x, n_a, m, T_x) = (64, 256, 64, 100), about 15% of its time,
and whether it happened depended on the order of earlier allocations.

The pool keeps every buffer it has handed out and hands it out again once
nothing outside the pool refers to it. CPython counts references: a buffer
held only by the pool's list has a known count, and anything a caller keeps --
an output, a cache, a gradient, or any view of one (a view refers to its base
array) -- raises it. So results the caller still holds are never reused, and
what the caller has dropped is reused instead of reallocated.

The pool holds at most ``XSEQ_WORKSPACE_MB`` megabytes (default 1024) of
buffers that are not in use; ``XSEQ_WORKSPACE_MB=0`` turns it off (every
request is a fresh ``numpy.empty``). :func:`clear` drops the free buffers.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading

import numpy as np


def _calibrate():
    """The reference count a pooled buffer shows, in the pool's loops, when nothing else holds it.

    Measured rather than assumed (3 on CPython 3.10-3.13: the list, the loop
    variable, getrefcount's argument), with the same loop as the pool uses; and
    a buffer with one more holder must show more. If not, the count cannot tell
    free from held on this interpreter, and the pool stays off (``None``).
    """
    bufs = [np.empty(1)]
    for buf in bufs:
        free = sys.getrefcount(buf)
    del buf
    held = bufs[0]
    for buf in bufs:
        busy = sys.getrefcount(buf)
    del buf, held
    return free if busy > free else None


_FREE_REFCOUNT = _calibrate()


def _limit_bytes():
    """``XSEQ_WORKSPACE_MB`` in bytes, read at every call (parsed once per value: every buffer asks)."""
    return _parsed_limit(os.environ.get("XSEQ_WORKSPACE_MB", "1024"))


@functools.lru_cache(maxsize=8)
def _parsed_limit(raw):
    text = raw.strip()
    try:
        mb = float(text)
    except ValueError:
        raise ValueError(f"XSEQ_WORKSPACE_MB is {text!r}; expected a number of megabytes (0 turns the pool off)") from None
    if mb < 0:
        raise ValueError(f"XSEQ_WORKSPACE_MB is {text!r}; expected a number of megabytes >= 0")
    return int(mb * 2**20)


# Why: see docs/decisions/002-workspace-pool.md
class Workspace:
    """A pool of NumPy buffers keyed by (shape, dtype); see the module docstring."""

    def __init__(self):
        self._buffers = {}  # (shape, dtype) -> [array, ...]
        self._lock = threading.Lock()
        self.allocations = 0  # fresh arrays made (for tests and curiosity)

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` that nobody else holds."""
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        limit = _limit_bytes()
        if limit == 0 or _FREE_REFCOUNT is None:
            self.allocations += 1
            return np.empty(shape, dtype=dtype)
        key = (shape, dtype)
        with self._lock:
            for buf in self._buffers.get(key, ()):
                if sys.getrefcount(buf) == _FREE_REFCOUNT:
                    return buf
            buf = None  # the loop variable would make the last buffer look held to _trim
            self._trim(limit - dtype.itemsize * math.prod(shape))
            buf = np.empty(shape, dtype=dtype)
            self.allocations += 1
            self._buffers.setdefault(key, []).append(buf)
            return buf

    def free_bytes(self):
        """Bytes held in buffers that nothing outside the pool refers to."""
        total = 0
        with self._lock:
            for bufs in self._buffers.values():
                for buf in bufs:
                    if sys.getrefcount(buf) == _FREE_REFCOUNT:
                        total += buf.nbytes
        return total

    def clear(self):
        """Drop every free buffer (buffers still in use stay with their users)."""
        with self._lock:
            self._trim(0)

    def _trim(self, budget):
        """Drop free buffers, the shapes first used longest ago first, until the free ones fit in ``budget`` bytes."""
        free_ids, total = set(), 0
        for bufs in self._buffers.values():
            for buf in bufs:
                if sys.getrefcount(buf) == _FREE_REFCOUNT:
                    free_ids.add(id(buf))
                    total += buf.nbytes
        if total <= budget:
            return
        drop = set()
        for bufs in self._buffers.values():
            for buf in bufs:
                if total > budget and id(buf) in free_ids:
                    drop.add(id(buf))
                    total -= buf.nbytes
        self._buffers = {key: kept for key, bufs in self._buffers.items()
                         if (kept := [buf for buf in bufs if id(buf) not in drop])}


#: The process-wide pool used by the NumPy step implementation.
WORKSPACE = Workspace()


def clear():
    """Give the free buffers of the pool back (to Python's and the system's allocator)."""
    WORKSPACE.clear()
