"""The compiler driver of the host build: which compiler, which flags, where the result is cached, and the build.

``-O3 -march=native -ffast-math`` so that the loops vectorize, ``exp`` and
``tanh`` included: they are ``xseq/ops/native/vecmath.h``'s own, inline and
branch-free, so g++ and clang vectorize them alike on x86 with FMA (Haswell
on) and on aarch64 (NEON); only an x86 target without FMA falls back to the C
library's, which GCC vectorizes through glibc's libmvec (hence ``-lmvec``
where it links). ``-ffast-math`` is given to the compile step only: the link
step without it does not add GCC's ``crtfastmath.o``, which would turn on
flush-to-zero for the whole process on load.

``XSEQ_HOST_MARCH`` (default ``native``: this CPU) builds for another target,
``-march=$XSEQ_HOST_MARCH`` -- e.g. ``haswell`` or ``x86-64-v3`` (AVX2),
``x86-64-v4`` (AVX-512), ``armv8-a`` on aarch64 -- for tests, benchmarks and
users whose library must run on older CPUs than the one that builds it
(:func:`host_march`, :func:`flag_sets`).

The cache key (:func:`cached_path`) is a hash of the translation unit, every
native source file (:func:`xseq.ops.native_source.native_digest`), the
target and the flags, the compiler and its version, and the CPU: a binary is
reused only for the same code on the same kind of CPU. Where it is kept, and
how far it is trusted, is :mod:`xseq.ops.kernel_cache`'s.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess

from .kernel_cache import cache_dir
from .native_source import INCLUDE_FLAGS, native_digest

# Tried in order; the first that compiles is used (the x86 options are unknown to other targets'
# compilers). The fast-math reciprocal would make sigmoid(100) 1 - 2^-24 instead of 1: g++ keeps divisions
# IEEE with -mno-recip only (GCC 12 still divides float vectors by vrcp14ps and a Newton step with
# -mrecip=none), which clang rejects; clang keeps them IEEE with -mrecip=none. "-march=native" stands
# for -march=$XSEQ_HOST_MARCH (flag_sets); the last set, -mcpu=native (aarch64 compilers that take no
# -march=native), is tried for the default target only.
FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-mno-recip"),
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-mrecip=none"),
    ("-O3", "-march=native", "-ffast-math", "-mrecip=none"),
    ("-O3", "-march=native", "-ffast-math"),
    ("-O3", "-mcpu=native", "-ffast-math"),
)

#: What ``XSEQ_HOST_MARCH`` may hold: a compiler's name of a target, as ``-march=`` takes it.
_MARCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def host_march():
    """The target of the host build: ``$XSEQ_HOST_MARCH`` (read at each call), ``"native"`` where unset or empty.

    Raises ``ValueError`` for a value that is no target name (``-march=`` takes
    letters, digits and ``. _ + -``, not starting with ``-``); a name the
    compiler does not know fails the build, whose reason the status names.
    """
    march = os.environ.get("XSEQ_HOST_MARCH", "").strip()
    if not march:
        return "native"
    if not _MARCH.fullmatch(march):
        raise ValueError(f"XSEQ_HOST_MARCH is {march!r}; expected a target name for -march= such as "
                         "'native', 'haswell', 'x86-64-v4' or 'armv8-a'")
    return march


def flag_sets(march=None):
    """:data:`FLAG_SETS` for the target ``march`` (default :func:`host_march`): each ``-march=`` names it.

    For a target other than ``native`` the ``-mcpu=native`` set is left out:
    it would build for this CPU instead.
    """
    march = host_march() if march is None else march
    sets = []
    for flags in FLAG_SETS:
        if "-mcpu=native" in flags and march != "native":
            continue
        sets.append(tuple(f"-march={march}" if flag == "-march=native" else flag for flag in flags))
    return tuple(sets)


def find_compiler():
    """The first of ``$CXX``, ``g++``, ``c++`` and ``clang++`` on ``PATH``, or None."""
    for candidate in (os.environ.get("CXX", ""), "g++", "c++", "clang++"):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def cpu_description():
    """What -march=native depends on: a binary is reused only on the same kind of CPU."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        pass
    return text


def run_tool(cmd, cwd):
    """``(succeeded, its output)``; a compiler that cannot be started or hangs is a failure, not an error."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{cmd[0]}: {exc}"
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def build(compiler, source, directory, march=None):
    """Compile and link the translation unit ``source`` in ``directory`` for the target ``march``.

    ``march``: default :func:`host_march`. Returns ``(library path or None,
    what went wrong)``. The native files are included from where they are
    (``-I``), so that messages name their lines.
    """
    src, obj, lib = directory / "kernels.cpp", directory / "kernels.o", directory / "kernels.so"
    src.write_text(source)
    errors = []
    for flags in flag_sets(march):
        ok, err = run_tool([compiler, "-std=c++17", "-fPIC", *INCLUDE_FLAGS, *flags, "-c", str(src), "-o", str(obj)],
                           directory)
        if not ok:
            errors.append(_first_error(err) or "compile failed")
            continue
        # no -ffast-math here: see the module docstring
        for libs in (["-lmvec", "-lm"], ["-lm"]):
            ok, err = run_tool([compiler, "-shared", str(obj), "-o", str(lib), *libs], directory)
            if ok:
                return lib, ""
        errors.append(_first_error(err) or "link failed")
    return None, "; ".join(errors)


def _first_error(output):
    """The line of a compiler's output that says what failed (its file:line where it names one), or ``""``."""
    lines = output.splitlines()
    return next((line for line in lines if "error" in line), lines[-1] if lines else "")


def cached_path(compiler, source, march=None):
    """Where the cache keeps the build of ``source`` (and the native files it includes) by ``compiler`` here.

    ``march``: the target (default :func:`host_march`), part of the key with the flags it gives.
    """
    march = host_march() if march is None else march
    _, version = run_tool([compiler, "--version"], None)
    parts = [source, native_digest(), f"-march={march}", repr(flag_sets(march)), compiler, version,
             cpu_description()]
    key = hashlib.sha256("\n".join(parts).encode())
    return cache_dir() / f"host_kernels_{key.hexdigest()[:20]}.so"
