"""A collective that never completes ends the job: a watchdog thread, not a timeout on every call.

A rank waits in a collective until every rank has joined it. When a node's
link goes down or a rank is stopped (``SIGSTOP``, a machine that froze), that
wait never ends, and MPI has no timeout of its own: the job would hold its
nodes until the scheduler kills it. The communicator stamps the time at which
it enters a collective and clears the stamp when the collective returns (two
stores per call, nothing per byte); a daemon thread looks at the stamp a few
times per timeout and, once one collective has waited longer than the timeout,
calls ``expire`` once -- which says so and ends the job (:func:`end_job`).
Every rank that still runs has a watchdog of its own, so each one that waits
ends itself, even where the launcher can no longer reach it.
"""

from __future__ import annotations

import math
import os
import threading
import time

#: PyTorch's default timeout of a collective (``torch.distributed``'s process groups): 10 minutes.
DEFAULT_TIMEOUT_S = 600.0
#: The exit status of a job ended by the watchdog, as timeout(1)'s.
EXIT_TIMED_OUT = 124
#: Seconds :func:`end_job` gives ``MPI_Abort`` before the process exits by itself: an abort whose launcher is
#: out of reach (the link of this node is down) may never return.
EXIT_GRACE_S = 10.0


class CollectiveWatchdog:
    """Calls ``expire(waited)`` once a collective has waited more than ``timeout`` seconds.

    A communicator calls :meth:`begin` as it enters a collective and
    :meth:`end` when it returns; :meth:`start` watches on a daemon thread
    (:meth:`check` is one look, which tests call with their own ``clock``).

    Parameters
    ----------
    timeout : float
        Seconds, > 0.
    expire : callable
        Called with the seconds waited, on the watchdog's thread, at most once.
    clock : callable, optional
        Seconds of a monotonic clock; default :func:`time.monotonic`.

    Attributes
    ----------
    step : int or None
        The training step in progress (set by the trainer through :func:`note_step`), for ``expire``'s message.
    """

    def __init__(self, timeout, expire, *, clock=time.monotonic):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0; got {timeout!r}")
        self.timeout = float(timeout)
        self.step = None
        self._expire, self._clock = expire, clock
        self._since = None
        self._expired = False
        self._stopped = threading.Event()

    def begin(self):
        """A collective starts waiting now."""
        self._since = self._clock()

    def end(self):
        """The collective returned."""
        self._since = None

    def check(self):
        """Call ``expire`` if the collective now waiting began more than ``timeout`` seconds ago; whether it did."""
        since = self._since
        if since is None or self._expired:
            return False
        waited = self._clock() - since
        if waited <= self.timeout:
            return False
        self._expired = True
        self._expire(waited)
        return True

    def start(self):
        """Watch on a daemon thread (it never keeps the process alive) until :meth:`stop`; returns ``self``."""
        period = min(max(self.timeout / 10, 0.01), 1.0)
        threading.Thread(target=self._watch, args=(period,), name="xseq-collective-watchdog", daemon=True).start()
        return self

    def stop(self):
        self._stopped.set()

    def _watch(self, period):
        while not self._stopped.wait(period):
            if self.check():
                return


def note_step(comm, step):
    """Tell ``comm``'s watchdog, where it has one, the training step in progress (for its message)."""
    watchdog = getattr(comm, "watchdog", None)
    if watchdog is not None:
        watchdog.step = step


def end_job(comm, code, *, grace=EXIT_GRACE_S):
    """``comm.abort(code)``; should the abort itself block, this process exits with ``code`` after ``grace`` s."""
    fallback = threading.Timer(grace, os._exit, args=(code,))
    fallback.daemon = True
    fallback.start()
    comm.abort(code)
