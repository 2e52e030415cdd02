"""Thread pools of several ranks on one node: share the cores instead of oversubscribing them.

OpenBLAS starts one thread per core in every process. With one rank per core
each rank's GEMMs then fight every other rank's threads for the same cores:
measured on a 2-core machine, two ranks with OpenBLAS's default threads took
71 ms per step of the character model, with one thread each 5.8 ms.

The default, applied by :func:`apply_thread_defaults` under a launcher of
several ranks: each rank's BLAS gets ``cores // ranks on the node`` threads
(at least 1), where ``cores`` is the CPUs this process may run on, or only
the CPUs the launcher bound the rank to when it did bind. A user who sets
``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` keeps
that choice. The limit is set at run time, in the libraries already loaded:
OpenBLAS's own ``openblas_set_num_threads`` (the library NumPy loaded) and
``omp_set_num_threads`` of an OpenMP runtime (GNU, Intel or LLVM: oneDNN's
and PyTorch's threads). Other libraries, and ones loaded later, are not
changed: set those variables for them.
"""

from __future__ import annotations

import ctypes
import os
import re

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Thread-count setters by library: OpenBLAS (plain, 64-bit-integer builds with the suffix 64_, and the
# scipy-openblas wheels NumPy ships, with the prefix scipy_), and the OpenMP runtimes.
_SETTERS = {"openblas": ("openblas_set_num_threads", "openblas_set_num_threads64_",
                         "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads"),
            "libgomp": ("omp_set_num_threads",), "libiomp": ("omp_set_num_threads",),
            "libomp": ("omp_set_num_threads",)}
# libgomp.so.1, libgomp-a34b3233.so.1 (a wheel's copy), libiomp5.so, libomp.so
_OPENMP = re.compile(r"(libgomp|libiomp|libomp)5?[.-]")


def usable_cpus():
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(local_size, cpus=None, total_cpus=None):
    """BLAS threads for one of ``local_size`` ranks on a node.

    Parameters
    ----------
    local_size : int >= 1
        Ranks on this node.
    cpus : int, optional
        CPUs this rank may run on (default :func:`usable_cpus`).
    total_cpus : int, optional
        CPUs of the node (default ``os.cpu_count()``). When ``cpus`` is fewer,
        the launcher bound the rank to its own cores, and they are all its.

    Returns
    -------
    int >= 1
    """
    cpus = usable_cpus() if cpus is None else cpus
    total_cpus = (os.cpu_count() or cpus) if total_cpus is None else total_cpus
    if cpus < total_cpus:
        return max(1, cpus)
    return max(1, cpus // max(1, local_size))


def loaded_thread_pools():
    """``(kind, path)`` of every OpenBLAS and OpenMP library loaded in this process (Linux: ``/proc/self/maps``).

    ``kind`` is a key of the setters' table: ``"openblas"``, ``"libgomp"``, ``"libiomp"`` or ``"libomp"``.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if line.count(" ") >= 5}
    except OSError:
        return []
    found = []
    for path in sorted(p for p in paths if p.startswith("/") and ".so" in os.path.basename(p)):
        name = os.path.basename(path).lower()
        openmp = _OPENMP.match(name)
        if "openblas" in name:
            found.append(("openblas", path))
        elif openmp:
            found.append((openmp.group(1), path))
    return found


def limit_blas_threads(threads):
    """Set the thread count of every loaded OpenBLAS and OpenMP runtime; returns the libraries it was set in.

    Parameters
    ----------
    threads : int >= 1

    Returns
    -------
    list of str
        Paths of the libraries changed (empty where none was found, e.g. NumPy
        built on another BLAS, or a system without ``/proc``).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1; got {threads!r}")
    changed = []
    for kind, path in loaded_thread_pools():
        try:
            library = ctypes.CDLL(path)  # already loaded: dlopen returns the same handle
        except OSError:
            continue
        for name in _SETTERS[kind]:
            setter = getattr(library, name, None)
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                setter(threads)
                changed.append(path)
                break
    return changed


def apply_thread_defaults(comm, environ=None):
    """Give each of several ranks on a node its share of the cores for BLAS (see the module docstring).

    Parameters
    ----------
    comm : Communicator
    environ : mapping, optional
        Default ``os.environ``.

    Returns
    -------
    int or None
        The thread count set, or None when nothing was changed (one rank on
        the node, or the user chose with one of :data:`THREAD_VARIABLES`).
    """
    environ = os.environ if environ is None else environ
    if comm.local_size <= 1 or any(environ.get(name) for name in THREAD_VARIABLES):
        return None
    threads = default_threads(comm.local_size)
    limit_blas_threads(threads)
    return threads
