"""Speed of xseq's own vector exp/tanh (``xseq/ops/native/vecmath.h``) against glibc's libmvec, scalar libm and NumPy.

Contenders, on ``--n`` elements (default 64 * 256 = 16384, one (m, n_a) step of the LSTM benchmarks)
in [-8, 8), float32 and float64, in ns per element:

* ``xseq g++`` / ``xseq clang++``: the header's functions in a loop (``tests/native/vecmath_check.cpp``,
  ``bench`` mode), built with the host kernels' flags (``-O3 -march=native -mprefer-vector-width=512
  -ffast-math -mrecip=none`` on x86);
* ``xseq g++ -mno-recip`` (x86): the same with ``-mno-recip`` for ``-mrecip=none``, which in GCC 12
  leaves float vector division to an approximate reciprocal and a Newton step; ``-mno-recip`` does not;
* ``libmvec g++``: ``std::exp``/``std::tanh`` in the same loop, same flags: GCC vectorizes them through
  glibc's libmvec (``_ZGV...``), today's host build;
* ``libm clang++``: the same with clang, which has no libmvec: scalar calls;
* ``NumPy``: ``np.exp(x, out=y)`` / ``np.tanh(x, out=y)`` in its own interpreter.

Each C++ build times its contenders in one process (the median of ``--reps`` loops each); NumPy runs in
its own process. ``--rounds`` rounds (default 5), the contenders' order rotated from round to round; the
table gives the median over rounds, and each xseq build's time over libmvec's. Target (issue 22): each
xseq build within 1.3x of ``libmvec g++``.

Before timing, every contender's results on the timed range are compared with NumPy's float64 / long
double values (within 4 ulps); a difference prints ``MISMATCH`` and exits with status 1.

    python benchmarks/bench_vecmath.py [--n 16384] [--reps 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import report  # noqa: E402

from xseq.ops.kernel_source import PREAMBLE  # noqa: E402

HARNESS = ROOT / "tests" / "native" / "vecmath_check.cpp"
NATIVE = ROOT / "xseq" / "ops" / "native"
X86 = platform.machine().lower() in ("x86_64", "amd64")
FLAGS = (("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-mrecip=none")
         if X86 else ("-O3", "-march=native", "-ffast-math"))
FUNCS = ("exp", "tanh")
DTYPES = {"f32": np.float32, "f64": np.float64}
TARGET_RATIO = 1.3
CHECK_ULPS = 4.0

NUMPY_WORKER = r"""
import statistics, sys, time
import numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
golden = np.arange(n) * 0.6180339887498949
base = -8.0 + 16.0 * (golden - np.floor(golden))
for func in ("exp", "tanh"):
    for dtype, np_dtype in (("f32", np.float32), ("f64", np.float64)):
        x = base.astype(np_dtype)
        y = np.empty_like(x)
        f = getattr(np, func)
        f(x, out=y)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            f(x, out=y)
            times.append((time.perf_counter_ns() - t0) / n)
        print("numpy", func, dtype, statistics.median(times))
"""


def build(compiler, flags, name, directory):
    """The harness with the C library's functions as contender ``libm``; returns the executable."""
    preamble = directory / "preamble.inc"
    preamble.write_text(PREAMBLE)
    obj, exe = directory / f"{name}.o", directory / f"{name}.bin"
    subprocess.run([compiler, "-std=c++17", *flags, f"-I{NATIVE}", f'-DXSEQ_CHECK_PREAMBLE="{preamble}"',
                    "-DXSEQ_CHECK_LIBM", "-c", str(HARNESS), "-o", str(obj)], check=True)
    libs = ["-lmvec", "-lm"] if compiler == "g++" else ["-lm"]
    # linked without -ffast-math, as the host build links (no flush-to-zero for the process)
    subprocess.run([compiler, str(obj), "-o", str(exe), *libs], check=True)
    return exe


def ulp_errors(y, ref, np_dtype):
    fi = np.finfo(np_dtype)
    _, e = np.frexp(ref)
    ulp = np.ldexp(np.ones_like(ref), np.maximum(e - 1, fi.minexp) - fi.nmant)
    return np.abs(y.astype(ref.dtype) - ref) / ulp


def check(exe, n):
    """Every contender of one build within CHECK_ULPS of NumPy's wider reference on the timed range."""
    ok = True
    x64 = np.linspace(-8.0, 8.0, n, endpoint=False)
    for func in FUNCS:
        for dtype, np_dtype in DTYPES.items():
            x = x64.astype(np_dtype)
            wide = np.float64 if np_dtype == np.float32 else np.longdouble
            ref = getattr(np, func)(x.astype(wide))
            for impl in ("xseq", "libm"):
                out = subprocess.run([str(exe), "map", func, dtype, impl], input=x.tobytes(),
                                     capture_output=True, check=True).stdout
                err = ulp_errors(np.frombuffer(out, dtype=np_dtype), ref, np_dtype).max()
                if not err <= CHECK_ULPS:
                    print(f"MISMATCH {exe.name} {impl} {func} {dtype}: {err:.2f} ulps (allowed {CHECK_ULPS})")
                    ok = False
    return ok


def parse(lines, labels):
    """``{(contender, func, dtype): ns}`` from a worker's "IMPL FUNC DTYPE NS" lines; ``labels`` names each IMPL kept."""
    out = {}
    for line in lines.splitlines():
        impl, func, dtype, ns = line.split()
        if func in FUNCS and impl in labels:
            out[(labels[impl], func, dtype)] = float(ns)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=64 * 256, help="elements per loop (default 16384)")
    parser.add_argument("--reps", type=int, default=1000, help="loops timed per contender and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    for name in ("n", "reps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")

    if shutil.which("g++") is None:
        print("g++ is not installed: nothing to compare with libmvec")
        return 1
    # (label, compiler, flags, {harness contender: table column})
    builds = [("g++", "g++", FLAGS, {"xseq": "xseq g++", "libm": "libmvec g++"})]
    if X86:
        no_recip = tuple("-mno-recip" if f == "-mrecip=none" else f for f in FLAGS)
        builds.append(("g++-no-recip", "g++", no_recip, {"xseq": "xseq g++ -mno-recip"}))
    if shutil.which("clang++"):
        builds.append(("clang++", "clang++", FLAGS, {"xseq": "xseq clang++", "libm": "libm clang++"}))
    else:
        print("clang++ is not installed: no clang columns")
    workers, contenders = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, compiler, flags, labels in builds:
            exe = build(compiler, flags, name, Path(tmp))
            if not check(exe, args.n):
                return 1
            workers.append(([str(exe), "bench", str(args.n), str(args.reps)], labels))
            contenders += labels.values()
        workers.append(([sys.executable, "-c", NUMPY_WORKER, str(args.n), str(args.reps)], {"numpy": "NumPy"}))
        contenders.append("NumPy")

        load = os.getloadavg()[0]
        samples = {}
        for r in range(args.rounds):
            for cmd, labels in workers[r % len(workers):] + workers[:r % len(workers)]:
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                for key, ns in parse(out, labels).items():
                    samples.setdefault(key, []).append(ns)

    med = {key: statistics.median(v) for key, v in samples.items()}
    mine = [c for c in contenders if c.startswith("xseq")]
    rows, met = [], {c: True for c in mine}
    for func in FUNCS:
        for dtype in DTYPES:
            ratios = {c: med[(c, func, dtype)] / med[("libmvec g++", func, dtype)] for c in mine}
            for c, ratio in ratios.items():
                met[c] &= ratio <= TARGET_RATIO
            rows.append([f"{func} {'float32' if dtype == 'f32' else 'float64'}",
                         *(f"{med[(c, func, dtype)]:.3f}" for c in contenders),
                         *(f"{ratios[c]:.2f}x" for c in mine)])
    for line in report.machine_lines():
        print(line)
    print(f"n = {args.n} elements in [-8, 8), median of {args.reps} loops, median of {args.rounds} rounds; "
          f"flags {' '.join(FLAGS)}; load average {load:.2f} before timing")
    print()
    header = ["ns / element", *contenders, *(f"{c} / libmvec g++" for c in mine)]
    for line in report.markdown_table(header, rows, right_from=1):
        print(line)
    print()
    for c in mine:
        print(f"target ({c} within {TARGET_RATIO}x of libmvec g++): {'met' if met[c] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
