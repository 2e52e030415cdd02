"""The fused step kernels of ``_kernels`` built for the CPU with the system C++ compiler.

NumPy runs a step's pointwise work as about ten passes over memory (see
``_numpy_ops``); the CUDA operation strings in ``_kernels.KERNELS`` do it in
one. They are plain C++ once the CUDA qualifiers are defined away, so this
module wraps each in a host loop over the ``(m, n_a)`` elements, the way
``cupy.ElementwiseKernel`` binds its parameters, compiles them for float and
double into one shared library and calls it through ``ctypes``: the same
kernel source serves the GPU and the CPU.

Build and use
-------------
* Built on the first NumPy sequence call that wants it (never at import),
  with ``$CXX``, ``g++``, ``c++`` or ``clang++``: ``-O3 -march=native
  -ffast-math`` so that the loops vectorize, ``exp`` and ``tanh`` included
  (glibc's libmvec). ``-ffast-math`` is given to the compile step only: the
  link step without it does not add GCC's ``crtfastmath.o``, which would
  turn on flush-to-zero for the whole process on load.
* Used only when the library came out with vectorized math (it references
  libmvec's ``_ZGV`` functions): scalar ``tanhf`` is 40x slower than NumPy's.
* Cached by a hash of the source, the flags, the compiler's version and the
  CPU in ``$XSEQ_CACHE_DIR`` (default ``$XDG_CACHE_HOME/xseq`` or
  ``~/.cache/xseq``). The name is no secret, so the cache is trusted only as
  far as it is checked: the directory is opened once (not through a symbolic
  link) and must belong to the user with no one else allowed to write it (one
  of the user's own that others could write is made 0700); the library is
  opened once inside it (not through a symbolic link) and must be a regular
  file of the user's, with one name, that no one else can write; and the
  file loaded is that open file (``/proc/self/fd``, or a private copy where
  there is none), so a path swapped after the checks changes nothing.
  Anything else is built in a private temporary directory for this process,
  and :func:`status` says why. Builds go to a private temporary directory
  and are copied into the cache atomically, the library 0600 and new
  directories 0700 whatever the umask.
* Anything missing (no compiler, a failed build, math not vectorized, a
  dtype other than float32/float64) leaves NumPy's in-place steps in charge;
  :func:`status` says which path is active and why. ``XSEQ_HOST_KERNELS=0``
  (read once, at the first NumPy sequence call) turns the build off,
  ``XSEQ_FUSED=0`` every fast path.

Numerics: the reference's formulas in the same order, with the C library's
``exp``/``tanh`` and fast-math rounding: within a few ulps of the reference
(``tests/test_host_kernels.py``); NaN and infinities still propagate, and
subnormals are kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import secrets
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .fused import FusedSteps
from .kernel_source import CTYPES, KERNELS, elementwise_signature
from .numpy_inplace import NumpyOps
from .switches import fused_enabled

# NVRTC declares the CUDA qualifiers and the float/double overloads of the math
# functions implicitly; on the host the qualifiers mean nothing and the overloads
# come from <cmath>. XSEQ_ROW is the host loop's row counter (see _kernels.PREAMBLE).
HOST_PRELUDE = r"""
#include <cmath>
#include <cstddef>
#define __device__
#define __forceinline__ inline
#define XSEQ_ROW(i, n_a) _row
using std::exp;
using std::fabs;
using std::tanh;
"""

# Tried in order; the first that compiles is used (the x86 options are unknown to other
# targets' compilers). -ffast-math is what makes glibc declare its vector exp/tanh;
# -mrecip=none keeps divisions IEEE (fast-math's approximate reciprocal would make
# sigmoid(100) 1 - 2^-24 instead of 1).
FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-mrecip=none"),
    ("-O3", "-march=native", "-ffast-math", "-mrecip=none"),
    ("-O3", "-march=native", "-ffast-math"),
)


def host_function(name, src, ctype):
    """One kernel for one dtype: a loop over rows and columns around the CUDA operation."""
    params, bindings = elementwise_signature(name, src)
    has_rows = any(pname == "n_a" for pname, *_ in src.parameters())
    cols = "n_a" if has_rows else "_n"
    return f"""
namespace k_{name}_{ctype} {{
typedef {ctype} T;
{src.preamble}
extern "C" void {name}_{ctype}({", ".join(params)}) {{
    const ptrdiff_t _cols = {cols};
    const ptrdiff_t _rows = _cols > 0 ? _n / _cols : 0;
    for (ptrdiff_t _row = 0; _row < _rows; ++_row) {{
        // elements of one row are independent (outputs may alias inputs only element for element)
        #pragma GCC ivdep
        for (ptrdiff_t _col = 0; _col < _cols; ++_col) {{
            const ptrdiff_t i = _row * _cols + _col;
            {bindings}
            {src.operation}
        }}
    }}
}}
}}
"""


# Two host-only helpers around the steps (no GPU counterpart: CuPy's own copies and
# reductions serve there): the course layout read time-major in tiles, and an
# in-place softmax of each row.
HELPERS = r"""
namespace xseq_helpers {
// dst[t, k, j] = src[t, k, j] for (n0, n1, n2) arrays, strides in elements, dst's last
// stride 1. The course layout read time-major has j as its slowest axis and t as its
// fastest: tiles of 16 x 16 (t, j) read whole cache lines of src and write whole lines of
// dst. (A register transpose of each tile with AVX-512 was measured no faster.)
template <typename T>
void gather3(const T* src, ptrdiff_t s0, ptrdiff_t s1, ptrdiff_t s2, T* dst, ptrdiff_t d0, ptrdiff_t d1,
             ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t n2) {
    const ptrdiff_t B = 16;
    for (ptrdiff_t k = 0; k < n1; ++k)
        for (ptrdiff_t t0 = 0; t0 < n0; t0 += B)
            for (ptrdiff_t j0 = 0; j0 < n2; j0 += B) {
                const ptrdiff_t t1 = t0 + B < n0 ? t0 + B : n0, j1 = j0 + B < n2 ? j0 + B : n2;
                for (ptrdiff_t t = t0; t < t1; ++t)
                    for (ptrdiff_t j = j0; j < j1; ++j)
                        dst[t * d0 + k * d1 + j] = src[t * s0 + k * s1 + j * s2];
            }
}
// Each row of the (rows, cols) array z replaced by its softmax, the reference's way:
// exp(z - max(z)) / sum.
template <typename T>
void softmax_rows(T* z, ptrdiff_t rows, ptrdiff_t cols) {
    for (ptrdiff_t r = 0; r < rows; ++r) {
        T* row = z + r * cols;
        T top = row[0];
        for (ptrdiff_t j = 1; j < cols; ++j) top = row[j] > top ? row[j] : top;
        T total = T(0);
        for (ptrdiff_t j = 0; j < cols; ++j) {
            row[j] = exp(row[j] - top);
            total += row[j];
        }
        for (ptrdiff_t j = 0; j < cols; ++j) row[j] /= total;
    }
}
}
"""


def _helper_exports(ctype):
    return f"""
extern "C" void xseq_gather3_{ctype}(const {ctype}* src, ptrdiff_t s0, ptrdiff_t s1, ptrdiff_t s2, {ctype}* dst,
                                  ptrdiff_t d0, ptrdiff_t d1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t n2) {{
    xseq_helpers::gather3(src, s0, s1, s2, dst, d0, d1, n0, n1, n2);
}}
extern "C" void xseq_softmax_rows_{ctype}({ctype}* z, ptrdiff_t rows, ptrdiff_t cols) {{
    xseq_helpers::softmax_rows(z, rows, cols);
}}
"""


def host_source():
    """The C++ of every kernel and helper in both precisions."""
    return (
        HOST_PRELUDE
        + "".join(host_function(name, src, ctype) for name, src in KERNELS.items() for ctype in CTYPES.values())
        + HELPERS
        + "".join(_helper_exports(ctype) for ctype in CTYPES.values())
    )


def find_compiler():
    for candidate in (os.environ.get("CXX", ""), "g++", "c++", "clang++"):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def cache_dir():
    if os.environ.get("XSEQ_CACHE_DIR"):
        return Path(os.environ["XSEQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xseq"


def _cpu_description():
    """What -march=native depends on: a binary is reused only on the same kind of CPU."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        pass
    return text


def _run(cmd, cwd):
    """``(succeeded, its output)``; a compiler that cannot be started or hangs is a failure, not an error."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{cmd[0]}: {exc}"
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def _build(compiler, source, directory):
    """Compile and link in ``directory``; returns ``(library path or None, what went wrong)``."""
    src, obj, lib = directory / "kernels.cpp", directory / "kernels.o", directory / "kernels.so"
    src.write_text(source)
    errors = []
    for flags in FLAG_SETS:
        ok, err = _run([compiler, "-std=c++17", "-fPIC", *flags, "-c", str(src), "-o", str(obj)], directory)
        if not ok:
            errors.append(err.splitlines()[-1] if err else "compile failed")
            continue
        # no -ffast-math here: see the module docstring
        for libs in (["-lmvec", "-lm"], ["-lm"]):
            ok, err = _run([compiler, "-shared", str(obj), "-o", str(lib), *libs], directory)
            if ok:
                return lib, ""
        errors.append(err.splitlines()[-1] if err else "link failed")
    return None, "; ".join(errors)


class _Library:
    """The loaded shared library, or why there is none; with a library, what happened to the cache, if anything."""

    def __init__(self, lib=None, path=None, reason=""):
        self.lib, self.path, self.reason = lib, path, reason


def _join(*notes):
    return "; ".join(note for note in notes if note)


# Opened as /proc/self/fd/N, a file is loaded through the descriptor that was checked.
PROC_FD = "/proc/self/fd"

# What the checks need (POSIX); without it the cache is not used.
CACHE_CHECKABLE = (
    hasattr(os, "geteuid") and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")
    and os.open in os.supports_dir_fd
)


def _load(fd, path, note=""):
    """Load the library open as ``fd``, which this function takes over; ``path`` names it in messages."""
    kept = False
    try:
        with open(fd, "rb", closefd=False) as f:
            f.seek(0)  # _install hands over the descriptor it has just written
            data = f.read()
        if b"_ZGV" not in data:
            slow = f"{path}: exp/tanh did not vectorize (no libmvec); NumPy's steps are faster"
            return _Library(reason=_join(slow, note))
        if os.path.isdir(PROC_FD):
            lib = ctypes.CDLL(f"{PROC_FD}/{fd}")
            # glibc knows a loaded library by the name it was opened under and hands it back for
            # that name: the descriptor stays open so that its number never names another file here
            kept = True
        else:
            lib = _load_private_copy(data, path.name)
        return _Library(lib, path, note)
    except OSError as exc:  # not a library this process can load
        return _Library(reason=_join(f"{path} could not be loaded: {exc}", note))
    finally:
        if not kept:
            os.close(fd)


def _load_private_copy(data, name):
    """Load the bytes of a checked file from a copy in a directory only this user can reach."""
    with tempfile.TemporaryDirectory(prefix="xseq_load_") as private:
        copy = os.path.join(private, name)
        with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        return ctypes.CDLL(copy)  # the mapping outlives the file


def cached_path(compiler, source):
    """Where the cache keeps the build of ``source`` by ``compiler`` for this CPU."""
    _, version = _run([compiler, "--version"], None)
    key = hashlib.sha256("\n".join([source, repr(FLAG_SETS), compiler, version, _cpu_description()]).encode())
    return cache_dir() / f"host_kernels_{key.hexdigest()[:20]}.so"


def _make_directories(directory):
    """Create ``directory`` and its missing parents, each 0700 (the umask can only narrow that)."""
    missing = []
    while not os.path.lexists(directory) and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            os.mkdir(path, 0o700)


def _refusal(exc, name, dir_fd=None):
    """Why an ``os.open`` of ``name`` with ``O_NOFOLLOW`` failed, for a message (the open decided).

    A symbolic link fails with ELOOP, or with ENOTDIR where ``O_DIRECTORY`` is asked too.
    """
    try:
        is_link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        is_link = False
    return "is a symbolic link" if is_link else f"cannot be opened: {exc.strerror}"


def _open_cache_dir(directory):
    """The cache directory, opened once, if it is this user's and no one else can write it.

    Returns
    -------
    (int or None, str)
        A descriptor of the directory and a note (what was changed), or None and
        why the directory is not used. Everything after this goes through the
        descriptor, so renaming or swapping a directory on the path afterwards
        changes nothing.
    """
    if not CACHE_CHECKABLE:
        return None, "this platform cannot check the cache directory (no O_NOFOLLOW, O_DIRECTORY or dir_fd)"
    try:
        _make_directories(directory)
    except OSError as exc:
        return None, f"the cache directory {directory} cannot be created: {exc.strerror}"
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        return None, f"the cache directory {directory} {_refusal(exc, directory)}"
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            problem = f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
        elif st.st_mode & 0o022:
            # no one else can add a file from now on; what others planted before is not the
            # user's (or has a second name) and is refused file by file
            os.fchmod(fd, 0o700)
            mode = stat.S_IMODE(st.st_mode)
            return fd, f"the cache directory {directory} was writable by others (mode {mode:04o}); made it 0700"
        else:
            return fd, ""
    except OSError as exc:
        problem = f"cannot be made private: {exc.strerror}"
    os.close(fd)
    return None, f"the cache directory {directory} {problem}"


def _open_cached(dir_fd, name):
    """The cached library ``name`` in the open cache directory, opened once and checked as opened.

    Returns
    -------
    (int or None, str)
        A descriptor and ``""``; None and ``""`` where there is no such file;
        None and why not where there is one that must not be loaded.
    """
    try:
        # O_NONBLOCK: opening a FIFO planted under the name would otherwise wait for a writer
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, _refusal(exc, name, dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    elif st.st_nlink != 1:
        # xseq writes it with one name; a second may be a link to another of the user's files
        problem = f"has {st.st_nlink} names (hard links)"
    else:
        return fd, ""
    os.close(fd)
    return None, problem


def _install(built, dir_fd, name):
    """Copy the library ``built`` into the open cache directory as ``name``, 0600, atomically.

    Returns a descriptor of the installed file, for :func:`_load`: what was
    written is what is loaded.
    """
    temporary = f".{name}.{secrets.token_hex(8)}"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with open(built, "rb") as src, open(fd, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst)
        os.fsync(fd)
        # atomic: another process sees the old state or the whole file
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    return fd


def _build_and_load(compiler, source, cached, dir_fd, note):
    """Build in a private temporary directory; install into the cache open as ``dir_fd`` (None: none) and load."""
    with tempfile.TemporaryDirectory(prefix="xseq_build_") as tmp:
        built, error = _build(compiler, source, Path(tmp))
        if built is None:
            return _Library(reason=_join(f"the host build with {compiler} failed: {error}", note))
        if dir_fd is not None:
            try:
                fd = _install(built, dir_fd, cached.name)
            except OSError as exc:
                note = _join(note, f"{cached} could not be written: {exc.strerror}")
            else:
                return _load(fd, cached, note)
        # loaded before the temporary directory goes: the mapping outlives the file
        return _load(os.open(built, os.O_RDONLY), built, f"built for this process only: {note}")


@functools.cache
def library():
    """Build (or find in the cache) and load the host kernels, once per process."""
    if os.environ.get("XSEQ_HOST_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return _Library(reason="turned off by XSEQ_HOST_KERNELS")
    compiler = find_compiler()
    if compiler is None:
        return _Library(reason="no C++ compiler ($CXX, g++, c++ or clang++) on PATH")
    source = host_source()
    cached = cached_path(compiler, source)
    dir_fd, note = _open_cache_dir(cached.parent)
    if dir_fd is None:
        return _build_and_load(compiler, source, cached, None, note)
    try:
        fd, problem = _open_cached(dir_fd, cached.name)
        if fd is not None:
            return _load(fd, cached, note)
        if problem:
            refused = f"{cached} {problem}, so it is not loaded (remove it to let xseq build it again)"
            return _build_and_load(compiler, source, cached, None, _join(note, refused))
        return _build_and_load(compiler, source, cached, dir_fd, note)
    finally:
        os.close(dir_fd)


def status():
    """Which step implementation NumPy arrays get, and why: a line for humans."""

    if not fused_enabled():
        return "array-API reference steps (XSEQ_FUSED=0)"
    lib = library()
    if lib.lib is None:
        return f"NumPy in-place steps; host kernels unavailable: {lib.reason}"
    loaded = f"host kernels (fused C++ steps) from {lib.path}"
    return f"{loaded} ({lib.reason})" if lib.reason else loaded


class HostKernel:
    """One kernel of the host library, called like ``cupy.ElementwiseKernel``: inputs, then outputs."""

    def __init__(self, lib, name):
        self.name = name
        params = KERNELS[name].parameters()
        self.names = [pname for pname, *_ in params]
        self.outputs = [is_output for _, _, _, is_output in params]
        self.is_int = [typ == "int32" for _, typ, _, _ in params]
        # the loop runs over the elements of the first non-raw array
        self.size_from = next(k for k, (_, typ, raw, _) in enumerate(params) if typ == "T" and not raw)
        self.functions = {}
        for dtype, ctype in CTYPES.items():
            fn = getattr(lib, f"{name}_{ctype}")
            fn.argtypes = [ctypes.c_int if is_int else ctypes.c_void_p for is_int in self.is_int]
            fn.argtypes += [ctypes.c_ssize_t]
            fn.restype = None
            self.functions[dtype] = fn

    def __call__(self, *args):
        dtype = args[self.size_from].dtype
        c_args = list(args)
        copies = []  # contiguous copies of strided inputs, alive until the call returns
        for k, a in enumerate(args):
            if self.is_int[k]:
                continue
            if a.dtype != dtype:
                raise TypeError(f"{self.name}: {self.names[k]} is {a.dtype}, the other arrays {dtype}")
            if not a.flags.c_contiguous:
                # The loop indexes every array linearly. Inputs may be copied; outputs are the
                # engine's step views, contiguous by construction.
                if self.outputs[k]:
                    raise ValueError(f"{self.name}: output {self.names[k]} is not C-contiguous")
                a = np.ascontiguousarray(a)
                copies.append(a)
            c_args[k] = _address(a)
        self.functions[dtype](*c_args, args[self.size_from].size)


def _address(a):
    """The address of a C-contiguous array's first element.

    Through the buffer protocol: a sixth of the time of ``a.ctypes.data``, which
    counts at several calls per time step. Read-only arrays do not export a
    writable buffer and take the slow way.
    """
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


class HostFusedOps(FusedSteps, NumpyOps):
    """NumPy's ops with every step one call of a host-compiled kernel.

    Buffers, products and everything but the six step methods are NumPy's
    (``_numpy_ops.NumpyOps``); the step methods are ``_kernels.FusedSteps``',
    the same launches the GPU makes.
    """

    name = "host-kernels"

    def __init__(self, xp, lib):
        super().__init__(xp)
        self._lib = lib

    def _launch(self, name, *args):
        _kernel(self._lib, name)(*args)

    def _step_array(self, key, like):
        return self._buffer(key, like.shape, like.dtype)

    def copy_into(self, out, x):
        functions = _helpers(self._lib).get(x.dtype)
        itemsize = x.dtype.itemsize
        if (
            functions is None or x.ndim != 3 or x.flags.c_contiguous or out.dtype != x.dtype
            or out.shape != x.shape or out.strides[2] != itemsize
            or any(stride % itemsize for stride in x.strides + out.strides)
        ):
            return super().copy_into(out, x)
        s0, s1, s2 = (stride // itemsize for stride in x.strides)
        d0, d1 = (stride // itemsize for stride in out.strides[:2])
        functions["gather3"](x.ctypes.data, s0, s1, s2, out.ctypes.data, d0, d1, *x.shape)
        return out

    def softmax_rows(self, z):
        functions = _helpers(self._lib).get(z.dtype)
        if functions is None or z.ndim != 2 or not z.flags.c_contiguous or z.shape[1] == 0:
            return super().softmax_rows(z)
        functions["softmax_rows"](z.ctypes.data, z.shape[0], z.shape[1])
        return z


@functools.lru_cache(maxsize=None)
def _kernel(lib, name):
    return HostKernel(lib, name)


@functools.lru_cache(maxsize=None)
def _helpers(lib):
    """``{dtype: {"gather3": fn, "softmax_rows": fn}}`` with their ctypes signatures."""
    P, N = ctypes.c_void_p, ctypes.c_ssize_t
    signatures = {"gather3": [P, N, N, N, P, N, N, N, N, N], "softmax_rows": [P, N, N]}
    helpers = {}
    for dtype, ctype in CTYPES.items():
        helpers[dtype] = {}
        for name, argtypes in signatures.items():
            fn = getattr(lib, f"xseq_{name}_{ctype}")
            fn.argtypes, fn.restype = argtypes, None
            helpers[dtype][name] = fn
    return helpers


def host_ops(xp, dtype):
    """``HostFusedOps`` for arrays of ``dtype``, or None where the host kernels cannot serve them."""
    if dtype is None or np.dtype(dtype) not in CTYPES:
        return None
    lib = library()
    return None if lib.lib is None else HostFusedOps(xp, lib.lib)
