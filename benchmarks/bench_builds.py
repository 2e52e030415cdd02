"""The host build on other machines' terms: the default build against clang++ and AVX2 builds, on this machine.

Issue 22's target "no machine left behind": the clang build and the AVX2 build each within 1.15x of the default
build's time. Every contender is xseq (NumPy float32, the layer API as ``bench_cpu.py`` times it) with a host
library built another way (``xseq/ops/native_build.py``), each kept in the cache under its own key:

* ``default`` -- g++, ``-march=native`` (this CPU; AVX-512 here);
* ``clang`` -- ``CXX=clang++``, ``-march=native``: no libmvec, vecmath.h's exp/tanh;
* ``avx2`` -- g++, ``XSEQ_HOST_MARCH=haswell``: 256-bit vectors; the lanes' products as the build chooses
  (the packed product on a CPU whose widest vectors are 256-bit, OpenBLAS's on a wider one:
  :func:`xseq.ops.native_features.cpu_vector_bytes`);
* ``avx2-packed`` and ``avx2-openblas`` -- the same library with the packed product forced on, and off (the
  lanes call one-thread OpenBLAS): whether the packed product is worth keeping at 256 bits;
* ``avx2-clang`` -- ``CXX=clang++ XSEQ_HOST_MARCH=haswell``, the build's choice of products.

Check
-----
Before timing, each contender's build is made (or found in the cache) in a process of its own with the
contender's environment and checked: the compiler and target asked for built it (``.comment``, the packed
product's vector width), every feature is on (the packed product as the contender asks), and every output and
gradient of every case agrees with xseq's array-API reference (``XSEQ_FUSED=0``) within
``checks.SAME_FORMULAS``. A failure stops the script before anything is timed.

Method
------
``harness/method.py``: every round of every case starts a new interpreter per contender (its environment is
its build), and times them in interleaved turns (two iterations a turn, the second timed), the order rotated
from round to round; the table shows the median over rounds of each contender's median, and the median of the
per-round ratios to ``default``. OpenBLAS's overrides (``OPENBLAS_CORETYPE``) are removed as for bench_cpu.py's
xseq workers.

``--avx2-machine`` gives the ``avx2*`` contenders NumPy's OpenBLAS as an AVX2 machine has it
(``OPENBLAS_CORETYPE=Haswell``: its AVX2 kernels) instead of this CPU's: the packed product's question is
whether it beats OpenBLAS on the machines that would run an AVX2 build.

Products (``--products``)
-------------------------
The lanes' per-step products alone, in each contender's process: the packed product
(``xseq_packed_gemm_*``, the weight packed beforehand) against NumPy's OpenBLAS on one thread (a lane's
product), at the lanes' shapes of the (64, 256, 64, 100) LSTM (32 rows a lane) and PTB small's; median of
300 calls after 30, microseconds (docs/decisions/016-packed-weight-product-avx512.md's table, per build).

Usage::

    python benchmarks/bench_builds.py                         # lstm-layer 64x256x64x100 fwd+bwd, 5 rounds
    python benchmarks/bench_builds.py --models lstm-layer gru --repeats 7
    python benchmarks/bench_builds.py --avx2-machine --contenders default avx2-packed avx2-openblas
    python benchmarks/bench_builds.py --quick                 # tiny size, 1 round: smoke run
    python benchmarks/bench_builds.py --products --avx2-machine --contenders default avx2-packed
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# benchmarks/ is on sys.path as this script's directory, wherever it is run from
from harness import checks, method, report  # noqa: E402
from harness.contenders import cpu  # noqa: E402

SCRIPT = Path(__file__).resolve()
SIZE = (64, 256, 64, 100)
QUICK_SIZE = (10, 16, 16, 11)
TARGET = 1.15  # clang and AVX2 builds within 1.15x of the default build's time

#: contender -> (environment of its build, whether its lanes use the packed product: None the build's choice)
CONTENDERS = {
    "default": ({}, None),
    "clang": ({"CXX": "clang++"}, None),
    "avx2": ({"XSEQ_HOST_MARCH": "haswell"}, None),
    "avx2-packed": ({"XSEQ_HOST_MARCH": "haswell"}, True),
    "avx2-openblas": ({"XSEQ_HOST_MARCH": "haswell"}, False),
    "avx2-clang": ({"CXX": "clang++", "XSEQ_HOST_MARCH": "haswell"}, None),
}
#: what each contender's library must show: the compiler (in its .comment) and the packed product's vector width
EXPECTED = {
    "default": ("GCC", None),
    "clang": ("clang", None),
    "avx2": ("GCC", 32),
    "avx2-packed": ("GCC", 32),
    "avx2-openblas": ("GCC", 32),
    "avx2-clang": ("clang", 32),
}
TARGETED = ("clang", "avx2", "avx2-clang")  # held to TARGET against default
#: other ratios worth a line: the packed product against OpenBLAS's in the same AVX2 build
EXTRA_PAIRS = [("avx2-packed", "avx2-openblas")]


def worker_env(contender, avx2_machine=False):
    """The contender's environment: its compiler and target, nothing else of this process's choosing.

    ``avx2_machine``: the ``avx2*`` contenders get OpenBLAS's AVX2 kernels (``OPENBLAS_CORETYPE=Haswell``).
    """
    env = method.environment(strip_openblas=True)
    for var in ("CXX", "XSEQ_HOST_MARCH", "XSEQ_HOST_KERNELS", "XSEQ_FUSED"):
        env.pop(var, None)
    env.update(CONTENDERS[contender][0])
    if avx2_machine and contender.startswith("avx2"):
        env["OPENBLAS_CORETYPE"] = "Haswell"
    return env


#: (rows, K, N) of the products timed by --products: a lane's (32 of 64 rows) forward and backward products of
#: the LSTM at n_a = 256, and PTB small's forward (10 rows a lane, 200 units)
PRODUCTS = [(32, 256, 1024), (32, 1024, 256), (10, 200, 800)]


def time_products(contender, calls=300, warm=30):
    """``--time-products CONTENDER``: each product of :data:`PRODUCTS` by the packed product and by OpenBLAS."""
    import ctypes

    import numpy as np

    prepare(contender)
    from xseq.ops import host

    lib = host.library()
    blas, why = host.numpy_openblas()
    if lib.lib is None or blas is None:
        print(json.dumps({"error": lib.reason or why}))
        return 1
    rows = []
    for dtype in (np.float32, np.float64):
        ctype = "float" if dtype == np.float32 else "double"
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        pack, size, gemm = (getattr(lib.lib, f"xseq_{name}_{ctype}") for name in ("pack", "packed_size", "packed_gemm"))
        I64, P = ctypes.c_int64, ctypes.c_void_p
        pack.argtypes, pack.restype = [P, I64, I64, P], None
        size.argtypes, size.restype = [I64, I64], I64
        gemm.argtypes, gemm.restype = [I64, I64, I64, P, I64, P, scalar, P, I64], None
        for M, K, N in PRODUCTS:
            if dtype == np.float64 and (M, K, N) != PRODUCTS[0]:
                continue
            rng = np.random.default_rng(0)
            a, b = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
            c = np.empty((M, N), dtype=dtype)
            panels = np.empty(size(K, N), dtype=dtype)
            pack(b.ctypes.data, K, N, panels.ctypes.data)

            def packed():
                gemm(M, N, K, a.ctypes.data, K, panels.ctypes.data, 0.0, c.ctypes.data, N)

            def openblas():
                np.matmul(a, b, out=c)

            packed()
            np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-3)  # the product timed is the right one
            blas.set_threads_local(1)  # a lane's product: one thread
            times = {}
            for name, fn in (("packed", packed), ("openblas", openblas)):
                for _ in range(warm):
                    fn()
                ts = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    fn()
                    ts.append((time.perf_counter() - t0) * 1e6)
                ts.sort()
                times[name] = ts[len(ts) // 2]
            rows.append({"shape": [M, K, N], "dtype": np.dtype(dtype).name, **times})
    print(json.dumps({"contender": contender, "vector_bytes": lib.lib.xseq_packed_vector_bytes(), "rows": rows}))
    return 0


def prepare(contender):
    """In the contender's process, before xseq's library is loaded: the packed product forced on or off if asked.

    On: as on a CPU /proc does not describe (no check of the build's width against the CPU's); off: no width
    kept for it.
    """
    from xseq.ops import native_features

    packed = CONTENDERS[contender][1]
    if packed is True:
        native_features.cpu_vector_bytes = lambda: None
    elif packed is False:
        native_features.PACKED_VECTOR_BYTES = ()


def build_step(contender, model, size_text, mode):
    """The timed step of ``contender``: xseq's layer (bench_cpu.py's ``xseq``) on the contender's library."""
    prepare(contender)
    return cpu.build("xseq", model, size_text, mode)


def check_contender(contender, models, sizes, modes):
    """``--check CONTENDER``: its build as asserted, every feature on, every result as the reference's."""
    prepare(contender)
    from xseq.ops import host

    lib = host.library()
    failures = []
    if lib.lib is None:
        print(json.dumps({"contender": contender, "failures": [f"no host library: {lib.reason}"]}))
        return 1
    compiler, width = EXPECTED[contender]
    built = Path(lib.path).read_bytes()
    comment = "clang version" if compiler == "clang" else "GCC: ("
    if comment.encode() not in built or (compiler == "GCC" and b"clang version" in built):
        failures.append(f"{lib.path} was not built by {compiler}")
    found = lib.lib.xseq_packed_vector_bytes()
    if width is not None and found != width:
        failures.append(f"the packed product's vectors are {found} bytes, expected {width}")
    packed_wanted = CONTENDERS[contender][1]
    for name, feature in lib.features.items():
        if name == "packed products":
            if packed_wanted is not None and feature.on != packed_wanted:
                failures.append(f"packed products {'off' if packed_wanted else 'on'}: {feature.reason}")
        elif not feature.on:
            failures.append(f"{name} off: {feature.reason}")
    check = checks.Check()
    worst = {}
    for model in models:
        for size in sizes:
            text = cpu.size_name(size)
            reference = cpu.build("xseq", model, text, "forward+backward")
            with cpu.reference_path():
                want = reference.results()
            for mode in modes:
                required = list(cpu.REQUIRED_OUTPUTS[model])
                if mode == "forward+backward":
                    required += checks.gradient_names(want)
                step = build_step(contender, model, text, mode)
                step()
                label = f"{model} {text} {mode}: {contender}"
                worst[label] = check.compare(label, step.results(), want, checks.SAME_FORMULAS, required)
    failures += check.failures
    print(json.dumps({"contender": contender, "failures": failures, "worst": worst, "library": str(lib.path),
                      "vector_bytes": found, "status": host.status(), "lanes": host.lanes_status()}))
    return 1 if failures else 0


def print_products(contenders, env_of, repeats):
    """``--products``: each contender's products in a process of its own, ``repeats`` rounds; a table of medians."""
    found = {}
    for r in range(repeats):
        for contender in method.rotated(contenders, r):
            result = method.run_json(SCRIPT, ["--time-products", contender], env=env_of(contender), cwd=ROOT)
            if "error" in result:
                print(f"{contender}: no packed product to time: {result['error']}")
                return 1
            for row in result["rows"]:
                key = (contender, result["vector_bytes"], tuple(row["shape"]), row["dtype"])
                found.setdefault(key, []).append((row["packed"], row["openblas"]))
    print(f"\nProducts, one thread: median over {repeats} processes of each one's median of 300 calls, microseconds")
    print(f"{'contender':14s} {'vectors':>7s} {'(rows, K) @ (K, N)':>22s} {'dtype':>7s} {'packed':>8s} "
          f"{'OpenBLAS':>9s} {'packed/OpenBLAS':>16s}")
    for (contender, width, (M, K, N), dtype), pairs in found.items():
        packed = statistics.median(p for p, _ in pairs)
        openblas = statistics.median(o for _, o in pairs)
        ratio = statistics.median(p / o for p, o in pairs)
        shape = f"({M}, {K}) @ ({K}, {N})"
        print(f"{contender:14s} {8 * width:>4d}-bit {shape:>22s} {dtype:>7s} {packed:8.1f} {openblas:9.1f} "
              f"{ratio:15.2f}x")
    return 0


def parse_size(text):
    parts = text.replace(",", "x").split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: expected n_x x n_a x m x T_x, e.g. 64x256x64x100")
    return tuple(int(p) for p in parts)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contenders", nargs="+", choices=list(CONTENDERS),
                    default=["default", "clang", "avx2", "avx2-packed", "avx2-openblas"])
    ap.add_argument("--models", nargs="+", choices=("lstm-layer", "gru"), default=["lstm-layer"])
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                    help="n_x x n_a x m x T_x (default 64x256x64x100)")
    ap.add_argument("--modes", nargs="+", choices=cpu.MODES, default=["forward+backward"])
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 5; 1 with --quick)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per turn (default 3; 1 with --quick)")
    ap.add_argument("--gap", type=float, default=0.2, metavar="SECONDS", help="pause before each turn (default 0.2)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each turn, wait up to SECONDS for the CPUs to be idle (0: never)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: size {cpu.size_name(QUICK_SIZE)}, 1 round")
    ap.add_argument("--avx2-machine", action="store_true",
                    help="the avx2* contenders' OpenBLAS with its AVX2 kernels (OPENBLAS_CORETYPE=Haswell), as on an "
                         "AVX2 machine")
    ap.add_argument("--products", action="store_true",
                    help="time the lanes' products alone (packed against one-thread OpenBLAS) in each contender's "
                         "build instead of the layer")
    ap.add_argument("--time-products", metavar="CONTENDER", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    ap.add_argument("--check", metavar="CONTENDER", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=4, metavar=("CONTENDER", "MODEL", "SIZE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--connect", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iters is None:
        args.iters = 1 if args.quick else 3
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.iters < 1 or args.repeats < 1:
        ap.error(f"--iters and --repeats must be >= 1; got --iters {args.iters}, --repeats {args.repeats}")
    args.sizes = [QUICK_SIZE] if args.quick else (args.sizes or [SIZE])
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        contender, model, size_text, mode = args.worker
        return method.serve_case(build_step, contender, [model, size_text, mode], args.connect)
    if args.check:
        return check_contender(args.check, args.models, args.sizes, args.modes)
    if args.time_products:
        return time_products(args.time_products)

    print("Machine")
    for line in report.machine_lines():
        print("  " + line)
    contenders = list(dict.fromkeys(["default", *args.contenders]))
    env_of = lambda c: worker_env(c, args.avx2_machine)  # noqa: E731
    if args.products:
        return print_products(contenders, env_of, args.repeats)
    sizes = [cpu.size_name(size) for size in args.sizes]
    for contender in contenders:  # builds each library (or finds it in the cache) and checks it
        done = subprocess.run([sys.executable, str(SCRIPT), "--check", contender, "--models", *args.models,
                               "--sizes", *sizes, "--modes", *args.modes],
                              env=env_of(contender), cwd=ROOT, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        if done.returncode != 0 or result is None:
            for line in (result or {}).get("failures", []):
                print(f"MISMATCH {contender}: {line}")
            print(f"the check of {contender} failed: nothing is timed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        largest = max(result["worst"].values(), default=0.0)
        products = "packed products" if "packed once a loop" in result["lanes"] else "OpenBLAS products"
        print(f"  {contender}: {result['library']} ({8 * result['vector_bytes']}-bit packed-product vectors, "
              f"lanes with {products}); largest difference from the reference {largest:.1e}")
    idle = method.cpu_idle(1.0)
    if idle is not None and idle < 0.85:
        print(f"warning: the CPUs were only {idle:.0%} idle before the run: the timings will be noisy")
    load_before = method.load_average()

    cases = [(model, size, mode) for model in args.models for size in args.sizes for mode in args.modes]
    pairs = [(c, "default") for c in contenders if c != "default"]
    pairs += [pair for pair in EXTRA_PAIRS if set(pair) <= set(contenders)]
    rounds = method.Rounds(pairs)
    runner = method.Runner(SCRIPT, lambda c: "numpy", env_of, spawn_each=True, cwd=ROOT)
    waiter = method.IdleWaiter(args.wait_idle) if args.wait_idle > 0 else None
    t_start = time.perf_counter()
    try:
        for r in range(args.repeats):
            for case in cases:
                model, size, mode = case
                order = method.rotated(contenders, r)
                medians = method.interleaved_round(runner, [model, cpu.size_name(size), mode], order, args.iters,
                                                   args.gap, waiter.wait if waiter else None)
                rounds.add(case, medians)
            print(f"  round {r + 1}/{args.repeats} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr,
                  flush=True)
    finally:
        runner.close()

    print()
    print(f"Times: median over {args.repeats} rounds of each contender's median of {args.iters} interleaved "
          "iterations, ms; ratios: median of the per-round ratios to default [range].")
    met = True
    for case in cases:
        model, size, mode = case
        print(f"\n{model} {cpu.size_name(size)} {mode}")
        for contender in contenders:
            ms = rounds.median(contender, case)
            line = f"  {contender:14s} {ms:9.1f} ms"
            if contender != "default":
                ratio = rounds.ratio(case, contender, "default")
                lo, hi = rounds.ratio_range(case, contender, "default")
                line += f"   {ratio:.3f}x default [{lo:.3f}-{hi:.3f}]"
                if contender in TARGETED:
                    met &= ratio <= TARGET
            print(line)
        for a, b in EXTRA_PAIRS:
            if a in contenders and b in contenders:
                lo, hi = rounds.ratio_range(case, a, b)
                print(f"  {a} / {b}: {rounds.ratio(case, a, b):.3f} [{lo:.3f}-{hi:.3f}] (per-round ratio)")
    spread, (who, _) = rounds.widest_spread()
    print(f"\nwidest spread of one contender's round medians: {spread:.0%} ({who})")
    targeted = [c for c in contenders if c in TARGETED]
    if targeted:
        print(f"target ({', '.join(targeted)} within {TARGET}x of default): {'met' if met else 'NOT met'}")
    if load_before is not None:
        print(f"load average (1 min) before {load_before:.2f}, after {method.load_average():.2f}")
    if waiter is not None:
        print(f"waited {waiter.waited:.0f} s in all for idle CPUs; {waiter.busy} of {waiter.turns} turns started "
              "on a busy machine")
    print(f"timing took {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
