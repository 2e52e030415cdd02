"""The CPU runtime: the one owner of the lanes, NumPy's OpenBLAS thread count and the lanes' packed weights.

NumPy's time loops run in *lanes* (:mod:`xseq.ops.lanes`): the rows of a
batch split over NumPy's own OpenBLAS threads, each lane one core with
one-thread products. While lanes run, OpenBLAS must be set to one thread, and
in NumPy's (pthreads) build that count is the whole process's. So something
has to own it: :class:`CPURuntime`, one per process (:func:`cpu_runtime`).

What it owns
------------
* **The lanes**: how many a loop may get (:meth:`CPURuntime.lane_limit`) and
  which Python thread holds them (:meth:`CPURuntime.lane_run`). OpenBLAS runs
  one lane job at a time, so at most one Python thread holds the lanes.
* **OpenBLAS's thread count**: set to 1 when a loop starts and back to the
  count before it when the last loop ends (or, where several Python threads
  run loops, when one thread is left): no thread restores a 1 that another
  set, and a loop asks for lanes by the count from before, never by the 1
  of another thread's run.
* **The packed weights**: the buffer a loop packs ``W_hh`` into, one per
  Python thread, so two threads' loops never share one; on Linux in 2 MiB
  pages where the kernel gives them (:func:`huge_page_array`).

Settings (:func:`cpu_runtime`)
------------------------------
``lanes``
    None (the default): from the environment, ``XSEQ_LANES=0`` for none,
    else one per OpenBLAS thread; an int ``n >= 1``: at most ``n`` lanes a
    loop (1: none, the engine's loop), never more than OpenBLAS has threads
    nor :data:`MAX_LANES`.
``blas_threads``
    None (the default): NumPy's OpenBLAS keeps its count
    (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, else one per core); an
    int ``n >= 1``: set it to ``n`` now (it is also the lanes' limit).
``contention``
    How loops of several Python threads share the cores: ``"share"`` (the
    default) or ``"wait"`` (below).

Python threads
--------------
Two Python threads that each train or run a model share the cores. With
``contention="share"`` a loop that finds another thread's lanes running
waits for them (they keep every core busy: a loop started beside them
would slow them down, and the lanes end with the slowest), and while the
last :data:`RECENT_CALLS` sequence calls (forward or backward) came from
more than one Python thread, every loop runs as one lane on its own
thread and OpenBLAS stays at one thread between the loops too: each
Python thread gets about one core, its products included. When the calls
come from one thread again, or every thread that made them has ended,
OpenBLAS gets its count back and loops get lanes. With ``"wait"``
every loop waits for the lanes and takes them, and the products between
the loops run on OpenBLAS's threads from both Python threads at once.
Measured, two threads each training its own LSTM layer against one thread
training both in turn: docs/decisions/018-cpu-runtime-threads.md.
:func:`xseq.ops.host.lanes_status` says how the loops ran.

Forks
-----
A child forked (``os.fork``, ``multiprocessing``'s ``"fork"``) while a
loop ran in another thread would inherit OpenBLAS at one thread and lanes
held by a thread that does not exist there; an ``os.register_at_fork``
handler gives the child a fresh runtime and OpenBLAS's count from before
the loop. But **do not fork while another thread computes**: NumPy's
OpenBLAS can hang in ``fork()`` (or leave the child hanging) when a thread
is inside one of its calls at that moment, with plain NumPy too. Start
processes with ``multiprocessing``'s ``"forkserver"`` or ``"spawn"``
methods (xseq's own corpus workers use ``"forkserver"``), or fork before
starting threads.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import threading
import weakref

import numpy as np

from .openblas import numpy_openblas
from .switches import lanes_enabled

__all__ = ["CONTENTION", "MAX_LANES", "UNIT_PAUSE_FIRST", "UNIT_PAUSE_MAX", "UNIT_STALL_SHARE", "CPURuntime",
           "cpu_runtime"]

#: The most lanes one loop gets, whatever OpenBLAS's thread count.
MAX_LANES = 8
#: The values of the ``contention`` setting.
CONTENTION = ("share", "wait")
#: With ``contention="share"``, the Python threads that started any of this many last sequence calls (a forward or a
#: backward that may run in lanes: :meth:`CPURuntime.note_sequence`) count as computing together: two threads that
#: each train a layer (a forward and a backward a step) see each other's calls.
RECENT_CALLS = 4

#: Lanes of units (:class:`xseq.ops.lanes.UnitSteps`) meet at every step; on a machine where another process keeps a
#: core busy a lane waits for a descheduled one at every step. A loop whose lanes slept, on average, more than this
#: share of its time waiting at the meetings stalled; UNIT_STALLS_TO_PAUSE such loops in a row (one alone is a lane
#: descheduled once: a virtual machine's host, a moment's other work) pause the lanes of units: the next
#: UNIT_PAUSE_FIRST loops that would take them run as one lane, twice as many after each further stalled loop (at
#: most UNIT_PAUSE_MAX), back to UNIT_PAUSE_FIRST, and two stalls needed again, after a loop that did not stall.
UNIT_STALL_SHARE = 0.25
UNIT_STALLS_TO_PAUSE = 2
UNIT_PAUSE_FIRST = 8
UNIT_PAUSE_MAX = 1024

_UNSET = object()


class _Watch:
    """Kept in a Python thread's local data: it goes when the thread ends (see :meth:`CPURuntime._watch`)."""


def _check_count(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be None (the environment's default) or an int >= 1; got {value!r}")
    return int(value)


# Why: see docs/decisions/018-cpu-runtime-threads.md
class CPURuntime:
    """The owner of NumPy's CPU threads: the lanes, OpenBLAS's thread count, the packed weights.

    One per process: use :func:`cpu_runtime` (which also changes its
    settings); the module docstring of :mod:`xseq.ops.runtime` says what
    each setting does. Do not fork while another thread computes: NumPy's
    OpenBLAS can hang in ``fork()``; use ``multiprocessing``'s
    ``"forkserver"`` or ``"spawn"`` start methods (the module docstring).

    Parameters
    ----------
    lanes : int >= 1 or None
        The most lanes a loop may get (None: ``XSEQ_LANES`` and OpenBLAS's count).
    blas_threads : int >= 1 or None
        NumPy's OpenBLAS thread count to set now (None: leave it).
    contention : {"share", "wait"}
        How loops of several Python threads share the cores.
    """

    def __init__(self, lanes=None, blas_threads=None, contention="share"):
        self._reset()
        self._lanes = None
        self._contention = "share"
        self.configure(lanes=lanes, blas_threads=blas_threads, contention=contention)

    def _reset(self):
        """No loop running, OpenBLAS not held, nothing counted (a new runtime, or a forked child's)."""
        # reentrant: a thread that ends runs _thread_ended wherever its last reference goes
        self._state = threading.Condition(threading.RLock())
        self._local = threading.local()
        self._pid = os.getpid()
        self._active = 0  # loops running now, in any Python thread
        self._holder = None  # the thread whose loop holds the lanes (several of them), or None
        self._recent = collections.deque(maxlen=RECENT_CALLS)  # the threads of the last sequence calls
        self._alive = set()  # the threads that made sequence calls and have not ended
        self._shared = False  # several Python threads compute: OpenBLAS stays at 1 thread between their loops
        self._saved = None  # OpenBLAS's count while the runtime holds it at 1 (None: not held)
        self._counts = {"lanes": 0, "one lane": 0, "shared": 0, "waited": 0, "units stalled": 0, "units paused": 0}
        self._unit_pause = 0  # loops of units left to run as one lane
        self._unit_pause_next = UNIT_PAUSE_FIRST  # how many the next stall pauses
        self._unit_stalls = 0  # loops of units in a row that stalled

    # ------------------------------------------------------------------ settings

    def configure(self, *, lanes=_UNSET, blas_threads=_UNSET, contention=_UNSET):
        """Change the settings given (see :class:`CPURuntime`); the others stay. Returns ``self``."""
        if lanes is not _UNSET:
            lanes = _check_count("lanes", lanes)
        if blas_threads is not _UNSET:
            blas_threads = _check_count("blas_threads", blas_threads)
        if contention is not _UNSET and contention not in CONTENTION:
            raise ValueError(f"contention must be one of {CONTENTION}; got {contention!r}")
        blas, reason = numpy_openblas()
        if blas is None and blas_threads not in (_UNSET, None):
            raise RuntimeError(f"blas_threads={blas_threads} cannot be set: {reason}")
        with self._state:
            if lanes is not _UNSET:
                self._lanes = lanes
            if contention is not _UNSET:
                self._contention = contention
                self._shared = self._shared and contention == "share"
                self._state.notify_all()
            if blas is not None:
                if blas_threads not in (_UNSET, None):
                    if self._saved is not None:
                        self._saved = blas_threads  # held at 1 now: set when it is let go
                    else:
                        blas.set_threads_local(blas_threads)
                self._hold(blas)
        return self

    @property
    def lanes(self):
        """The ``lanes`` setting: the most lanes a loop may get, or None for the environment's default."""
        return self._lanes

    @property
    def contention(self):
        """The ``contention`` setting: ``"share"`` or ``"wait"``."""
        return self._contention

    def blas_threads(self):
        """NumPy's OpenBLAS thread count outside the loops (None without that OpenBLAS).

        While a loop runs, or several Python threads compute, OpenBLAS has
        one thread; this is the count from before, which comes back after.
        """
        blas, _ = numpy_openblas()
        if blas is None:
            return None
        with self._state:
            return self._saved if self._saved is not None else blas.threads()

    def lane_limit(self):
        """``(n, reason)``: the most lanes a loop may get now, and, where ``n`` is 1, why no lanes run."""
        if self._lanes is None and not lanes_enabled():
            return 1, "XSEQ_LANES=0"
        if self._lanes == 1:
            return 1, "lanes=1 set by xseq.cpu_runtime"
        threads = self.blas_threads()
        if threads is None:
            return 1, numpy_openblas()[1]
        if threads < 2:
            return 1, "NumPy's OpenBLAS has 1 thread"
        return min(threads, MAX_LANES, self._lanes or MAX_LANES), ""

    def one_lane(self):
        """Whether a loop that gets no lanes still runs whole in C++ on the calling thread: where NumPy's OpenBLAS
        has one thread (a container limited to one CPU, ``OPENBLAS_NUM_THREADS=1``) and lanes are not switched
        off (``XSEQ_LANES=0``, ``lanes=1``): the engine's loop would make the same one-thread products with a
        Python call between them."""
        if (self._lanes is None and not lanes_enabled()) or self._lanes == 1:
            return False
        threads = self.blas_threads()
        return threads is not None and threads < 2

    # ------------------------------------------------------------------ the loops

    @contextlib.contextmanager
    def lane_run(self, wanted):
        """Run one loop: yields ``(lanes, threads)``, how many lanes it gets and OpenBLAS's threads to run them.

        ``contention="share"``: after waiting for another thread's lanes
        to end, ``wanted`` lanes where no other loop runs and no other
        Python thread computes (:meth:`note_sequence`), else one (the loop
        runs on this thread alone). ``"wait"``: ``wanted`` lanes once no
        other loop holds them. OpenBLAS has one thread inside. A loop inside
        another loop of the same thread (a check that runs the engine) takes
        what the outer one has.
        """
        if not isinstance(wanted, (int, np.integer)) or isinstance(wanted, bool) or wanted < 1:
            raise ValueError(f"wanted must be an int >= 1 (lanes); got {wanted!r}")
        outer = getattr(self._local, "run", None)
        if outer is not None:
            yield min(wanted, outer[0]), outer[1]
            return
        blas, reason = numpy_openblas()
        if blas is None:
            raise RuntimeError(f"lanes need NumPy's OpenBLAS: {reason}")
        me = threading.get_ident()
        with self._state:
            share = self._contention == "share"
            if self._holder is not None and (wanted > 1 or share) and self._holder != me:
                # the lanes keep every core busy: a loop started beside them would only slow them down
                self._counts["waited"] += 1
                self._state.wait_for(lambda: self._holder is None)
            # "share": the lanes only where no other loop runs and no other thread computes (beside one, lanes
            # would put two threads on a core, and the lanes end with the slowest)
            free = self._holder is None and (not share or (self._active == 0 and not self._shared))
            self._active += 1
            self._hold(blas)
            threads = self._saved
            lanes = 1
            if wanted > 1 and free:
                self._holder, lanes = me, wanted
                self._counts["lanes"] += 1
            else:
                self._counts["shared" if wanted > 1 else "one lane"] += 1
            self._local.run = (lanes, threads)
        try:
            yield lanes, threads
        finally:
            with self._state:
                self._local.run = None
                self._active -= 1
                if self._holder == me:
                    self._holder = None
                    self._state.notify_all()
                self._hold(blas)

    def note_sequence(self):
        """This Python thread starts a sequence call (a forward or a backward) that may run in lanes.

        Called before the call's products (:func:`xseq.ops.lanes.lane_count`).
        With ``contention="share"``, where the last :data:`RECENT_CALLS`
        calls came from more than one Python thread, OpenBLAS is held at one
        thread, between the loops too (each thread's products then take one
        core, not a share of two busy ones), until they come from one thread
        again or the other threads end.
        """
        blas, _ = numpy_openblas()
        if blas is None:
            return
        me = threading.get_ident()
        with self._state:
            self._watch(me)
            self._recent.append(me)
            self._shared = self._contention == "share" and len(set(self._recent)) > 1
            self._hold(blas)

    def forget_threads(self):
        """Forget which Python threads made the last sequence calls; where no loop runs, OpenBLAS gets its count
        back now.

        For a program whose other threads stopped computing but live on (an
        idle thread pool): otherwise OpenBLAS stays at one thread until this
        thread's calls fill the window (:data:`RECENT_CALLS`) or the others end.
        """
        blas, _ = numpy_openblas()
        with self._state:
            self._recent.clear()
            self._shared = False
            if blas is not None:
                self._hold(blas)

    def _hold(self, blas):
        """OpenBLAS at one thread while a loop runs or several Python threads compute; its count back after."""
        if self._active or self._shared:
            if self._saved is None:
                self._saved = blas.set_threads_local(1)
        elif self._saved is not None:
            blas.set_threads_local(self._saved)
            self._saved = None

    def _watch(self, ident):
        """Call :meth:`_thread_ended` when the Python thread ``ident`` ends (its thread-local data goes)."""
        self._alive.add(ident)
        if getattr(self._local, "watch", None) is None:
            self._local.watch = watch = _Watch()
            weakref.finalize(watch, self._thread_ended, ident, self._local).atexit = False

    def _thread_ended(self, ident, local):
        """A Python thread that computed sequences ended: where no thread of the last calls is left, OpenBLAS gets
        its count back at once (not at the next call, which may never come)."""
        if local is not self._local or os.getpid() != self._pid:
            return  # a thread of the process before a fork (its lock may be held by a thread the child lacks)
        with self._state:
            self._alive.discard(ident)
            # the calls of an ended thread stay in the window: threads started anew for each step (a thread per
            # request) share from their first call on; once every thread of the window has ended, nothing computes
            if self._shared and not self._alive.intersection(self._recent):
                self._shared = False
                blas, _ = numpy_openblas()
                if blas is not None:
                    self._hold(blas)

    def packed_buffer(self, dtype, size):
        """A buffer of at least ``size`` elements of ``dtype`` for this Python thread's packed weight, kept for
        its next loop."""
        buffers = getattr(self._local, "packed", None)
        if buffers is None:
            buffers = self._local.packed = {}
        dtype = np.dtype(dtype)
        buffer = buffers.get(dtype)
        if buffer is None or buffer.size < size:
            buffer = buffers[dtype] = huge_page_array(size, dtype)
        return buffer

    # ------------------------------------------------------------------ lanes of units on a busy machine

    def note_meetings(self, wall_ns, slept_ns, parties):
        """A loop of ``parties`` lanes of units took ``wall_ns``; its lanes slept ``slept_ns`` in all at the
        meetings. Returns whether it stalled (its lanes slept more than :data:`UNIT_STALL_SHARE` of the time, on
        average); :data:`UNIT_STALLS_TO_PAUSE` stalled loops in a row pause the lanes of units
        (:meth:`units_paused`)."""
        stalled = wall_ns > 0 and slept_ns > UNIT_STALL_SHARE * wall_ns * parties
        with self._state:
            if stalled:
                self._counts["units stalled"] += 1
                self._unit_stalls += 1
                if self._unit_stalls >= UNIT_STALLS_TO_PAUSE:
                    self._unit_pause = self._unit_pause_next
                    self._unit_pause_next = min(2 * self._unit_pause_next, UNIT_PAUSE_MAX)
            else:
                self._unit_stalls = 0
                self._unit_pause_next = UNIT_PAUSE_FIRST
        return stalled

    def units_paused(self):
        """Whether this loop runs as one lane rather than in lanes of units, a loop of them having stalled lately
        (:meth:`note_meetings`); counts it."""
        with self._state:
            if self._unit_pause <= 0:
                return False
            self._unit_pause -= 1
            self._counts["units paused"] += 1
            return True

    def end_unit_pause(self):
        """End a pause of the lanes of units after a stall (:meth:`note_meetings`), and start the next one at its
        shortest: the next loop of units runs in lanes again. For tests whose loops must not depend on how busy
        the machine was during earlier ones."""
        with self._state:
            self._unit_pause, self._unit_pause_next, self._unit_stalls = 0, UNIT_PAUSE_FIRST, 0

    def counts(self):
        """Loops run since the process (or its fork) started: ``{"lanes": that held the lanes, "one lane": that
        asked for one, "shared": that asked for lanes but ran as one beside another Python thread's loops,
        "waited": that waited for the lanes, "units stalled": loops in lanes of units that stalled (another process
        kept a core), "units paused": loops of units that ran as one lane after such a stall}``."""
        with self._state:
            return dict(self._counts)

    def status(self):
        """How loops of several Python threads share the cores, and how many ran which way: a line for humans."""
        with self._state:
            counts, shared, saved = dict(self._counts), self._shared, self._saved
        if self._contention == "share":
            policy = ("Python threads that compute together get one core each: their loops one lane on their own "
                      "thread, NumPy's OpenBLAS one thread meanwhile (contention='share')")
        else:
            policy = "Python threads take turns with the lanes (contention='wait')"
        now = "; several Python threads compute now" if shared else ""
        held = f", OpenBLAS held at 1 thread (back to {saved} after)" if saved is not None else ""
        stalls = (f"; {counts['units stalled']} loops in lanes of units stalled (a lane descheduled: another process "
                  f"busy), {counts['units paused']} ran as one lane after them" if counts["units stalled"] else "")
        return (f"{policy}{now}{held}; so far {counts['lanes']} loops in lanes, {counts['shared']} as one lane "
                f"beside another thread's, {counts['waited']} waited{stalls}")

    # ------------------------------------------------------------------ fork

    def _after_fork_in_child(self):
        """The forked child's runtime: no loop runs there, OpenBLAS has the count from before any loop."""
        saved = self._saved
        self._reset()
        if saved is not None:
            blas, _ = numpy_openblas()
            if blas is not None:
                blas.set_threads_local(saved)


_RUNTIME = None
_CREATE = threading.Lock()


#: Bytes of a huge page (x86-64's and most aarch64 kernels' transparent huge pages).
HUGE_PAGE = 2 << 20
#: Buffers from this size on are laid out in huge pages (:func:`huge_page_array`); smaller ones by NumPy.
HUGE_PAGE_FROM = 256 << 10


# Why: see docs/decisions/019-lanes-of-units.md (addendum)
def huge_page_array(size, dtype):
    """An uninitialised 1-D array of ``size`` elements of ``dtype`` for a loop's packed weights, starting on a
    2 MiB boundary of an anonymous mapping that asks the kernel for transparent huge pages
    (``madvise(MADV_HUGEPAGE)``; Linux with THP in ``madvise`` or ``always`` mode: one TLB entry instead of
    512). A lane reads its packed weight at every step; in 4 KiB pages a 512 KiB one (batch 1, 256 units)
    spans more pages than the first-level TLB holds. NumPy asks for huge pages only from 4 MiB on. Where the
    platform has no ``MADV_HUGEPAGE``, or for fewer than :data:`HUGE_PAGE_FROM` bytes, NumPy's ``empty``; the
    kernel may still give small pages (nothing is lost but the speed)."""
    dtype = np.dtype(dtype)
    nbytes = int(size) * dtype.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_PAGE_FROM or advice is None:
        return np.empty(size, dtype=dtype)
    length = -(-nbytes // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE  # whole huge pages, and room to align the start
    region = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(region, dtype=np.uint8)  # keeps the mapping alive as long as the array
    start = -raw.ctypes.data % HUGE_PAGE
    try:
        region.madvise(advice, start, length - start)
    except OSError:  # a kernel without transparent huge pages: small pages, the same buffer
        pass
    return raw[start:start + nbytes].view(dtype)


def cpu_runtime(*, lanes=_UNSET, blas_threads=_UNSET, contention=_UNSET):
    """The process's :class:`CPURuntime`, with the settings given changed (the others stay).

    ``xseq.cpu_runtime()`` returns it as it is; for example
    ``xseq.cpu_runtime(lanes=1)`` turns the lanes off,
    ``xseq.cpu_runtime(blas_threads=1)`` gives NumPy's OpenBLAS (and so the
    lanes) one thread, ``xseq.cpu_runtime(contention="wait")`` makes Python
    threads take turns with the lanes. The environment gives the defaults
    (``XSEQ_LANES``, ``OPENBLAS_NUM_THREADS``); see :mod:`xseq.ops.runtime`.
    """
    global _RUNTIME
    runtime = _RUNTIME
    if runtime is None:
        with _CREATE:
            if _RUNTIME is None:
                _RUNTIME = CPURuntime()
            runtime = _RUNTIME
    if lanes is _UNSET and blas_threads is _UNSET and contention is _UNSET:
        return runtime  # nothing to change: every sequence call asks for it, several times
    return runtime.configure(lanes=lanes, blas_threads=blas_threads, contention=contention)


def _after_fork_in_child():
    global _CREATE
    _CREATE = threading.Lock()
    if _RUNTIME is not None:
        _RUNTIME._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
