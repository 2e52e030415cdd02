"""The compiler driver of the host build: which compiler, which flags, where the result is cached, and the build.

``-O3 -march=native -ffast-math`` so that the loops vectorize, ``exp`` and
``tanh`` included (glibc's libmvec). ``-ffast-math`` is given to the compile
step only: the link step without it does not add GCC's ``crtfastmath.o``,
which would turn on flush-to-zero for the whole process on load.

The cache key (:func:`cached_path`) is a hash of the translation unit, every
native source file (:func:`xseq.ops.native_source.native_digest`), the
flags, the compiler and its version, and the CPU: a binary is reused only
for the same code on the same kind of CPU. Where it is kept, and how far it
is trusted, is :mod:`xseq.ops.kernel_cache`'s.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess

from .kernel_cache import cache_dir
from .native_source import INCLUDE_FLAGS, native_digest

# Tried in order; the first that compiles is used (the x86 options are unknown to other
# targets' compilers). -ffast-math is what makes glibc declare its vector exp/tanh;
# -mrecip=none keeps divisions IEEE (fast-math's approximate reciprocal would make
# sigmoid(100) 1 - 2^-24 instead of 1).
FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-mrecip=none"),
    ("-O3", "-march=native", "-ffast-math", "-mrecip=none"),
    ("-O3", "-march=native", "-ffast-math"),
)


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


def build(compiler, source, directory):
    """Compile and link the translation unit ``source`` in ``directory``.

    Returns ``(library path or None, what went wrong)``. The native files are
    included from where they are (``-I``), so that messages name their lines.
    """
    src, obj, lib = directory / "kernels.cpp", directory / "kernels.o", directory / "kernels.so"
    src.write_text(source)
    errors = []
    for flags in FLAG_SETS:
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


def cached_path(compiler, source):
    """Where the cache keeps the build of ``source`` (and the native files it includes) by ``compiler`` here."""
    _, version = run_tool([compiler, "--version"], None)
    parts = [source, native_digest(), repr(FLAG_SETS), compiler, version, cpu_description()]
    key = hashlib.sha256("\n".join(parts).encode())
    return cache_dir() / f"host_kernels_{key.hexdigest()[:20]}.so"
