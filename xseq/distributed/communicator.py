"""Communicators: what a training loop needs from the other processes of a data-parallel job.

A communicator is handed to an otherwise unchanged training loop (ChainerMN's
design). It knows this process's ``rank`` among ``size`` processes and offers
four collective operations -- every rank must call them, in the same order:

* ``allreduce_sum(array)`` -- the element-wise sum of one array over all ranks;
* ``broadcast(value, root=0)`` -- rank ``root``'s array (copied into every
  rank's array of the same shape and dtype) or Python object;
* ``barrier()`` -- wait until every rank arrives;

and ``abort(code)``, which ends the whole job at once from any one rank (the
others may be blocked in a collective that will never complete).

:class:`SingleProcess` is the special case of one rank, where all of this is
free; :class:`MPICommunicator` runs over MPI (``mpi4py``) with host buffers;
:class:`~xseq.distributed.nccl.NCCLCommunicator` sums CuPy arrays with NCCL.
:func:`from_environment` picks one from what the launcher (``mpiexec``,
``srun``) left in the environment, importing ``mpi4py`` only when there is one.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from typing import Protocol, runtime_checkable

import numpy as np
from array_api_compat import device as device_of

from ..backends.arrays import namespace_of, to_numpy
from ..backends.checks import _dtype_name, is_real_number

# Variables that MPI launchers set in every process they start: Open MPI's mpirun/prterun, MPICH's and
# Intel MPI's Hydra (PMI), MVAPICH, and PMIx (Slurm's srun --mpi=pmix, Open MPI 5). Slurm's own
# SLURM_* variables are left out on purpose: a batch script's plain `python` has them too.
LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
LAUNCHER_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")

#: Seconds between flushing a failed rank's output and aborting the job (see MPICommunicator.abort).
ABORT_GRACE_S = 0.5


class DistributedError(RuntimeError):
    """The ranks of a job disagree (different corpus, parameters or arguments), or a collective was misused."""


@runtime_checkable
class Communicator(Protocol):
    """What a data-parallel training loop asks of the job's other processes.

    Attributes
    ----------
    rank : int
        This process, ``0 <= rank < size``; rank 0 prints and writes files.
    size : int
        The number of processes in the job.
    local_rank, local_size : int
        The same on this node only (the local rank picks this process's GPU).
    description : str
        For the user, e.g. ``"MPI"``, ``"MPI + NCCL"`` or ``"single process"``.
    """

    rank: int
    size: int
    local_rank: int
    local_size: int
    description: str

    def allreduce_sum(self, array):
        """The sum of ``array`` over all ranks, of the same library, device, shape and dtype.

        It may be ``array`` itself, summed in place: use the returned array, not ``array``.
        """

    def broadcast(self, value, root=0):
        """Rank ``root``'s ``value`` on every rank: an array (every rank passes one of the same shape and
        dtype) or a picklable Python object."""

    def barrier(self):
        """Return once every rank has called it."""

    def abort(self, code=1):
        """End every process of the job now, with exit status ``code``; does not return."""


class SingleProcess:
    """The communicator of a job of one process: every collective is the identity.

    Examples
    --------
    >>> import numpy as np
    >>> comm = SingleProcess()
    >>> comm.rank, comm.size
    (0, 1)
    >>> comm.allreduce_sum(np.ones(3))
    array([1., 1., 1.])
    """

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    description = "single process"

    def allreduce_sum(self, array):
        _check_reducible(array)
        return array

    def broadcast(self, value, root=0):
        _check_root(root, self.size)
        return value

    def barrier(self):
        pass

    def abort(self, code=1):
        raise SystemExit(code)

    def __repr__(self):
        return "SingleProcess()"


class MPICommunicator:
    """A communicator over MPI (``mpi4py``); arrays travel through host memory.

    NumPy arrays are summed in place with ``MPI_Allreduce`` (no copy); arrays
    of other libraries (PyTorch on the CPU, array-api-strict, CuPy without
    NCCL) are copied to the host, summed, and copied back.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.

    Attributes
    ----------
    watchdog : CollectiveWatchdog or None
        Told when each collective starts and returns (:mod:`~xseq.distributed.watchdog`); None: no timeout.
    """

    description = "MPI"
    watchdog = None

    def __init__(self, comm=None):
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        finally:
            node.Free()

    def allreduce_sum(self, array):
        _check_reducible(array)
        if isinstance(array, np.ndarray) and array.flags.c_contiguous and array.flags.writeable:
            self._wait(self.comm.Allreduce, self._MPI.IN_PLACE, array, op=self._MPI.SUM)
            return array
        host = np.array(to_numpy(array), copy=True, order="C")
        self._wait(self.comm.Allreduce, self._MPI.IN_PLACE, host, op=self._MPI.SUM)
        return _like(host, array)

    def broadcast(self, value, root=0):
        _check_root(root, self.size)
        if not _is_array(value):
            return self._wait(self.comm.bcast, value, root=root)
        shape, dtype = tuple(value.shape), _dtype_name(value.dtype)
        expected = self._wait(self.comm.bcast, (shape, dtype), root=root)
        agree_or_raise(self, (shape, dtype) == expected,
                       f"broadcast: rank {root} sends an array of shape {expected[0]} and dtype {expected[1]}; "
                       f"rank {self.rank} passed shape {shape}, dtype {dtype}")
        if isinstance(value, np.ndarray) and value.flags.c_contiguous and value.flags.writeable:
            self._wait(self.comm.Bcast, value, root=root)
            return value
        host = np.array(to_numpy(value), copy=True, order="C")
        self._wait(self.comm.Bcast, host, root=root)
        return _like(host, value)

    def barrier(self):
        self._wait(self.comm.Barrier)

    def _wait(self, collective, *args, **kwargs):
        """Run one MPI collective, its start and end told to the watchdog where there is one."""
        watchdog = self.watchdog
        if watchdog is None:
            return collective(*args, **kwargs)
        watchdog.begin()
        try:
            return collective(*args, **kwargs)
        finally:
            watchdog.end()

    def abort(self, code=1):
        _flush_standard_streams()
        # The launcher forwards a rank's output through a pipe of its own; MPI_Abort kills the job at once,
        # and what was flushed a moment ago may still sit in that pipe (seen: the error line lost under
        # load). A short pause lets it reach the terminal before every rank is ended.
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)

    def __repr__(self):
        return f"MPICommunicator(rank={self.rank}, size={self.size})"


def launcher_size(environ=None):
    """The number of processes a launcher announced in the environment; None when none did.

    A PMIx launcher announces a rank but no size: then the answer is 0
    ("launched, size unknown until MPI is asked").
    """
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    if any(name in environ for name in LAUNCHER_RANK_VARIABLES):
        return 0
    return None


def from_environment(environ=None):
    """The communicator of this process: MPI under a launcher of several processes, else :class:`SingleProcess`.

    Without a launcher's variables (see :data:`LAUNCHER_SIZE_VARIABLES`)
    ``mpi4py`` is not even imported: a plain ``python`` or ``xseq`` command
    is one process. Under a launcher of one process, or where ``mpi4py`` is
    not installed, the result is :class:`SingleProcess`; in the second case
    with a warning, because every process then trains on its own.

    Parameters
    ----------
    environ : mapping, optional
        Default ``os.environ``.

    Returns
    -------
    SingleProcess or MPICommunicator

    Raises
    ------
    DistributedError
        Under a launcher of several processes, ``mpi4py`` is installed but MPI
        cannot start (its library is missing or fails to initialise).
    """
    size = launcher_size(environ)
    if size is None or size == 1:
        return SingleProcess()
    try:
        import mpi4py  # noqa: F401  (only to know whether it is installed before MPI is initialised)
    except ImportError:
        warnings.warn(f"started by an MPI launcher ({'of ' + str(size) + ' processes' if size else 'PMIx'}) but "
                      "mpi4py is not installed, so every process trains alone as a single process; "
                      "install it with: pip install 'xseq[mpi]'", RuntimeWarning, stacklevel=2)
        return SingleProcess()
    try:
        comm = MPICommunicator()
    except (ImportError, RuntimeError) as exc:  # mpi4py without a loadable MPI library, or MPI_Init failing
        raise DistributedError(f"started by an MPI launcher, but MPI cannot start in this process: {exc}") from None
    return comm if comm.size > 1 else SingleProcess()


def agree_or_raise(comm, ok, message):
    """Raise :class:`DistributedError` on every rank when ``ok`` is False on any rank.

    One rank raising alone would leave the others waiting in their next
    collective; here every rank learns how many disagree and raises together.
    The message of a rank that is fine says which ranks are not.
    """
    flags = np.zeros(comm.size, dtype=np.float64)
    flags[comm.rank] = 0.0 if ok else 1.0
    flags = comm.allreduce_sum(flags)
    if flags.any():
        if not ok:
            raise DistributedError(message)
        bad = [int(r) for r in np.flatnonzero(flags)]
        raise DistributedError(f"rank{'s' * (len(bad) > 1)} {', '.join(map(str, bad))} "
                               f"disagree{'s' * (len(bad) == 1)} with the others; see their message")


def check_same_on_all_ranks(comm, what, value):
    """Raise :class:`DistributedError` on every rank unless ``value`` (a string) is the same on all ranks.

    Parameters
    ----------
    what : str
        Names the value in the message, e.g. ``"the parameters after resuming"``.
    value : str
        A digest (:func:`digest`), a fingerprint, a description.
    """
    expected = comm.broadcast(value, root=0)
    ours, theirs = _where_they_differ(value, expected)
    agree_or_raise(comm, value == expected, f"{what} differ between ranks: rank 0 has {theirs}, "
                                            f"rank {comm.rank} has {ours}")


def check_settings_agree(comm, what, settings):
    """Raise :class:`DistributedError` on every rank unless ``settings`` are the same on all ranks.

    Rank 0's settings go to every rank; a rank whose settings differ names
    each setting that differs, with its value and rank 0's; the others say
    which ranks differ (see :func:`agree_or_raise`).

    Parameters
    ----------
    what : str
        Names the settings in the message, e.g. ``"the ranks' commands"``.
    settings : dict
        Name (as the user writes it, e.g. ``"--hidden"``) -> a printable, comparable value.
    """
    expected = comm.broadcast(settings, root=0)
    differ = [name for name in {**expected, **settings} if expected.get(name, _MISSING) != settings.get(name, _MISSING)]
    described = "; ".join(f"{name} {_shown(settings, name)} here, {_shown(expected, name)} on rank 0" for name in differ)
    agree_or_raise(comm, not differ, f"{what} differ from rank 0's: {described}")


def digest(arrays):
    """SHA-256 (hex) of a dict of arrays: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(to_numpy(arrays[name]))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


_MISSING = "(not given)"


def _shown(settings, name):
    return repr(settings[name]) if name in settings else _MISSING


def _where_they_differ(a, b, width=24):
    """``repr``s of two strings cut to ``width`` characters around the first one where they differ."""
    if len(a) <= width and len(b) <= width:
        return repr(a), repr(b)
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, min(first - width // 2, max(len(a), len(b)) - width))

    def cut(text):
        return repr(("..." if start else "") + text[start:start + width] + ("..." if start + width < len(text) else ""))

    return cut(a), cut(b)


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _check_reducible(array):
    if not _is_array(array):
        raise TypeError(f"allreduce_sum takes an array; got {type(array).__name__}")
    xp = namespace_of(array=array)
    if not is_real_number(xp, array):
        raise TypeError(f"allreduce_sum takes a real integer or floating array; got dtype {_dtype_name(array.dtype)}")


def _check_root(root, size):
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < size:
        raise ValueError(f"root must be a rank, an int with 0 <= root < size = {size}; got {root!r}")


def _like(host, array):
    """``host`` (NumPy) as an array of ``array``'s library and device."""
    if isinstance(array, np.ndarray):
        return host
    xp = namespace_of(array=array)
    return xp.asarray(host, device=device_of(array))


def _flush_standard_streams():
    """Push out what this rank has printed: MPI_Abort ends the process without flushing Python's buffers."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
