"""How close to the machine's limit: an LSTM layer's GFLOP/s, xseq against PyTorch, as a share of a measured peak.

Issue 22: "report GFLOP/s against the 2-core FP32 peak measured by a probe of
your own; target at least 75% of it for the LSTM at (64, 256, 64, 100)
forward+backward".

The peak (``peak_probe.cpp``)
-----------------------------
A C++ loop of fused multiply-adds on registers only, compiled here at run
time by the compiler of xseq's host build with its target flags
(``xseq.ops.native_build.find_compiler`` and ``flag_sets``: ``-O3
-march=native``, or ``-march=$XSEQ_HOST_MARCH``), so its vectors are the
build's (AVX-512: 16 floats, AVX2: 8, NEON: 4). Enough independent
accumulators to keep every FMA unit busy, each thread about ``--probe-seconds``
(0.5 s), best of ``--probe-repeats`` (3): GFLOP/s on one thread (one core) and
on one thread per usable core (all cores: the peak the table's percentages
use). A second reference line: NumPy's float32 ``4096 x 4096 @ 4096 x 4096``
matrix product (``2 * 4096**3`` FLOPs, best of 3 after a warm-up) in a
process of its own, without ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` as
xseq's workers run.

The FLOPs counted
-----------------
One layer (``harness/contenders/cpu.py``'s ``lstm-layer`` model: ``xseq.LSTM``
float32 and ``torch.nn.LSTM`` loaded with the same weights), ``x`` of
``(n_x, m, T_x)``, ``G = 4 n_a`` gate rows. Only the matrix products are
counted, ``2 * rows * cols * inner`` each (a multiply and an add per term),
every one of the ``T_x`` steps:

* forward: the input projection ``(m, n_x) @ (n_x, G)`` and the recurrent
  product ``(m, n_a) @ (n_a, G)``: ``F = 2 T_x m G (n_x + n_a) = 2 T_x m 4 n_a (n_x + n_a)``;
* backward: ``dX = dZ W_ih`` ``(m, G) @ (G, n_x)``, ``dW_ih += dZ^T X``
  ``(G, m) @ (m, n_x)``, ``dW_hh += dZ^T h`` ``(G, m) @ (m, n_a)`` and
  ``dh = dZ W_hh`` ``(m, G) @ (G, n_a)``: ``2 F``. Every contender computes
  all four at every step: the input's gradient, the weights', and the initial
  state's (``dh`` through ``W_hh`` at the first step);
* forward+backward: ``3 F``.

The gates' pointwise work (sigmoids, tanh, the cell update and their
derivatives: tens of operations per element of ``(m, G)``, about 1% of ``F``
at (64, 256, 64, 100)) and the bias gradients' sums are not counted, so the
GFLOP/s are the products' rate over the whole time.

Method
------
As ``bench_cpu.py`` (``harness/method.py``): before timing, a check process
compares every output and gradient of both contenders with xseq's reference
(``--no-check`` skips it); for every round of every size and mode a fresh
worker process per contender (forked from a server that has imported xseq,
or torch), one warm-up iteration, then interleaved turns (two iterations a
turn, the second timed) until each has ``--iters``; the table shows the median
over ``--repeats`` rounds of each contender's per-round median, and the median
over the rounds of the per-round ratio ``xseq / torch``. Threads: each
library's default (every core).

Usage::

    python benchmarks/bench_flops.py                    # (64, 256, 64, 100), 7 rounds, about a minute on 2 cores
    python benchmarks/bench_flops.py --sizes 64x256x64x100 123x320x64x100 --repeats 5
    python benchmarks/bench_flops.py --quick            # small size, short probe, 1 round: smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# benchmarks/ is on sys.path as this script's directory, wherever it is run from
from harness import method, report  # noqa: E402
from harness.contenders import cpu  # noqa: E402

SCRIPT = Path(__file__).resolve()
PROBE_SOURCE = SCRIPT.parent / "peak_probe.cpp"
MODEL = "lstm-layer"
MODES = ("forward", "forward+backward")
CONTENDERS = ("xseq", "torch")
GROUPS = {"xseq": "numpy", "torch": "torch"}
TARGET_SIZE = (64, 256, 64, 100)
TARGET_SHARE = 0.75  # xseq forward+backward at TARGET_SIZE: at least this share of the probe's all-core peak
SIZES = {"small": TARGET_SIZE, "large": (123, 320, 64, 100)}
QUICK_SIZE = (16, 32, 8, 10)
MATMUL_N = 4096
QUICK_MATMUL_N = 512


def parse_size(text):
    if text in SIZES:
        return SIZES[text]
    parts = text.replace(",", "x").split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: expected small, large or n_x x n_a x m x T_x, e.g. "
                                         "64x256x64x100")
    return tuple(int(p) for p in parts)


# ---------------------------------------------------------------- the FLOPs


def lstm_products(size, mode):
    """The matrix products of an LSTM layer's ``mode`` over ``size = (n_x, n_a, m, T_x)``.

    Returns
    -------
    list of (what, rows, cols, inner, count)
        Each product ``(rows, inner) @ (inner, cols)``, made ``count`` times
        (once per step); forward: the input projection and the recurrent
        product; forward+backward adds ``dX``, ``dW_ih``, ``dW_hh`` and ``dh``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    n_x, n_a, m, T = size
    G = 4 * n_a
    products = [("X W_ih^T", m, G, n_x, T), ("h W_hh^T", m, G, n_a, T)]
    if mode == "forward+backward":
        products += [("dX = dZ W_ih", m, n_x, G, T), ("dW_ih = dZ^T X", G, n_x, m, T),
                     ("dW_hh = dZ^T h", G, n_a, m, T), ("dh = dZ W_hh", m, n_a, G, T)]
    return products


def lstm_flops(size, mode):
    """FLOPs counted for ``mode`` at ``size``: ``2 * rows * cols * inner`` per product of :func:`lstm_products`."""
    return sum(2 * rows * cols * inner * count for _, rows, cols, inner, count in lstm_products(size, mode))


def gflops(flops, ms):
    """GFLOP/s of ``flops`` done in ``ms`` milliseconds."""
    return flops / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------- the peak probe


def build_probe(directory):
    """Compile ``peak_probe.cpp`` in ``directory`` as xseq's host build compiles: ``(executable, compiler, flags)``.

    Raises ``RuntimeError`` naming the reason where no compiler is found or
    no flag set compiles.
    """
    from xseq.ops import native_build

    compiler = native_build.find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler ($CXX, g++, c++ or clang++) on PATH: the peak probe cannot be built")
    exe = Path(directory) / "peak_probe"
    errors = []
    for flags in native_build.flag_sets():
        ok, out = native_build.run_tool([compiler, "-std=c++17", *flags, "-pthread", str(PROBE_SOURCE), "-o",
                                         str(exe)], directory)
        if ok:
            return exe, compiler, flags
        errors.append(out.splitlines()[-1] if out else "compile failed")
    raise RuntimeError(f"the peak probe did not compile with {compiler}: {'; '.join(errors)}")


def run_probe(threads, seconds, repeats):
    """Build and run the probe: its JSON result, with ``compiler`` and ``flags`` added."""
    with tempfile.TemporaryDirectory(prefix="bench_flops_") as tmp:
        exe, compiler, flags = build_probe(tmp)
        done = subprocess.run([str(exe), str(threads), str(seconds), str(repeats)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the peak probe failed (exit {done.returncode}): {done.stderr.strip()}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(compiler=compiler, flags=" ".join(flags))
    return result


def run_matmul(n):
    """``--matmul N`` (its own process): NumPy's float32 ``(n, n) @ (n, n)``, best of 3 after a warm-up."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    best = min(method.time_iterations(lambda: np.matmul(a, b, out=out), 3))
    print(json.dumps({"n": n, "ms": best, "gflops": gflops(2 * n ** 3, best)}), flush=True)
    return 0


# ---------------------------------------------------------------- workers


def worker_env(contender):
    """xseq's workers without OpenBLAS's overrides (as bench_cpu.py's); torch's with oneDNN, as in its wheels."""
    return method.environment(strip_openblas=contender != "torch", BENCH_TORCH_MKLDNN="1")


def preload(group):
    """What a fork server imports before it forks workers: xseq (and NumPy), or torch."""
    def load():
        if group == "torch":
            import torch  # noqa: F401
        else:
            import xseq  # noqa: F401
    return load


def build(contender, size_text, mode):
    """The step of ``contender`` (``xseq`` or ``torch``) for one LSTM layer case (``harness/contenders/cpu.py``)."""
    if contender not in CONTENDERS:
        raise ValueError(f"contender must be one of {CONTENDERS}; got {contender!r}")
    return cpu.build(contender, MODEL, size_text, mode)


def run_check(sizes):
    """``--check``: both contenders at every size and mode against xseq's reference; exits 1 on a difference."""
    result = cpu.check([MODEL], sizes, list(MODES), jax=False)
    result.exit_if_failed()
    return 0


# ---------------------------------------------------------------- the run


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                    help=f"small ({cpu.size_name(SIZES['small'])}), large ({cpu.size_name(SIZES['large'])}) or "
                         f"n_x x n_a x m x T_x; default {cpu.size_name(TARGET_SIZE)} (the issue's)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 7; 1 with --quick)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per turn (default 3; 1 with --quick)")
    ap.add_argument("--gap", type=float, default=0.2, metavar="SECONDS",
                    help="pause before each turn, so that the previous contender's idle threads stop spinning")
    ap.add_argument("--probe-seconds", type=float, default=None,
                    help="seconds of each probe run (default 0.5; 0.1 with --quick)")
    ap.add_argument("--probe-repeats", type=int, default=None, help="probe runs, best kept (default 3; 2 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: size {cpu.size_name(QUICK_SIZE)}, a 0.1 s probe, a {QUICK_MATMUL_N}^3 matrix "
                         "product, 1 round, 1 iteration")
    ap.add_argument("--no-check", action="store_true", help="skip the check (the target is then not claimed)")
    ap.add_argument("--json", metavar="PATH", help="also write the probe, the matrix product and every row to PATH")
    ap.add_argument("--worker", nargs=3, metavar=("CONTENDER", "SIZE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--connect", metavar="ADDRESS", help=argparse.SUPPRESS)
    ap.add_argument("--server", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--matmul", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    args.iters = args.iters if args.iters is not None else (1 if quick else 3)
    args.repeats = args.repeats if args.repeats is not None else (1 if quick else 7)
    args.probe_seconds = args.probe_seconds if args.probe_seconds is not None else (0.1 if quick else 0.5)
    args.probe_repeats = args.probe_repeats if args.probe_repeats is not None else (2 if quick else 3)
    if args.iters < 1 or args.repeats < 1 or args.probe_repeats < 1:
        ap.error(f"--iters, --repeats and --probe-repeats must be >= 1; got {args.iters}, {args.repeats}, "
                 f"{args.probe_repeats}")
    if args.probe_seconds <= 0:
        ap.error(f"--probe-seconds must be > 0; got {args.probe_seconds}")
    args.sizes = [QUICK_SIZE] if quick else (args.sizes or [TARGET_SIZE])
    args.matmul_n = QUICK_MATMUL_N if quick else MATMUL_N
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        contender, size_text, mode = args.worker
        return method.serve_case(build, contender, [cpu.size_name(parse_size(size_text)), mode], args.connect)
    if args.server:
        return method.run_fork_server(build, preload(args.server))
    if args.check:
        return run_check(args.sizes)
    if args.matmul:
        return run_matmul(args.matmul)

    print("Machine")
    for line in report.machine_lines():
        print("  " + line)
    load_before = method.load_average()
    idle = method.cpu_idle(1.0)
    if idle is not None and idle < 0.85:
        print(f"warning: the CPUs were only {idle:.0%} idle before the run: other processes are busy, the probe's "
              "peak and the timings will be low and noisy")

    cores = report.usable_cores()
    try:
        probe = run_probe(cores, args.probe_seconds, args.probe_repeats)
    except RuntimeError as exc:
        print(f"bench_flops.py: {exc}", file=sys.stderr)
        return 1
    peak = probe["all_threads_gflops"]
    print(f"probe (peak_probe.cpp; {probe['compiler']} {probe['flags']}): {probe['isa']}, {probe['width']} floats a "
          f"vector, {probe['accumulators']} accumulators; best of {args.probe_repeats} runs of "
          f"{args.probe_seconds:g} s: {probe['one_thread_gflops']:.1f} GFLOP/s on 1 core, {peak:.1f} GFLOP/s on "
          f"{probe['threads']} cores (the peak below)")
    if peak < 0.9 * probe["threads"] * probe["one_thread_gflops"]:
        print(f"warning: the all-core run gave {peak / probe['threads']:.1f} GFLOP/s a core, below the one-core "
              f"{probe['one_thread_gflops']:.1f}: other processes took part of the cores (see the load below), or the "
              "cores share their FMA units (SMT siblings); the percentages below are of the all-core number")
    mm = method.run_json(SCRIPT, ["--matmul", str(args.matmul_n)], env=method.environment(strip_openblas=True),
                         cwd=ROOT)
    print(f"reference: NumPy float32 {mm['n']}^3 matrix product (without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE), best "
          f"of 3: {mm['ms']:.1f} ms, {mm['gflops']:.1f} GFLOP/s ({mm['gflops'] / peak:.0%} of the probe's peak)")
    print("FLOPs counted (matrix products only; G = 4 n_a): forward F = 2 T_x m G (n_x + n_a); backward 2F "
          "(dX, dW_ih, dW_hh, dh through W_hh); forward+backward 3F")
    for size in args.sizes:
        print(f"  {size}: forward {lstm_flops(size, 'forward') / 1e9:.4g} GFLOP, forward+backward "
              f"{lstm_flops(size, 'forward+backward') / 1e9:.4g} GFLOP")

    checked = not args.no_check
    if checked:
        done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--sizes", *map(cpu.size_name, args.sizes)],
                              env=worker_env("xseq"), cwd=ROOT)
        if done.returncode != 0:
            print("the check failed (see above): nothing is timed", file=sys.stderr)
            return 1
    else:
        print("check: skipped (--no-check); the target is not claimed")

    cases = [(size, mode) for size in args.sizes for mode in MODES]
    rounds = method.Rounds([("xseq", "torch")])
    print(f"{len(cases)} cases x {args.repeats} rounds; a fresh worker process per contender and round, "
          f"{args.iters} timed iterations each in interleaved turns, {args.gap:g} s apart", flush=True)
    t_start = time.perf_counter()
    runner = method.Runner(SCRIPT, GROUPS.get, worker_env, cwd=ROOT)
    try:
        for r in range(args.repeats):
            for size, mode in cases:
                medians = method.interleaved_round(runner, [cpu.size_name(size), mode],
                                                   method.rotated(CONTENDERS, r), args.iters, args.gap)
                rounds.add((size, mode), medians)
            print(f"  round {r + 1}/{args.repeats} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr,
                  flush=True)
    finally:
        runner.close()

    rows = table_rows(cases, rounds, peak)
    print_report(args, rows, peak, checked)
    if args.json:
        Path(args.json).write_text(json.dumps({"probe": probe, "matmul": mm, "rows": rows}, indent=1))
    if load_before is not None:
        print(f"load average (1 min) before {load_before:.2f}, after {method.load_average():.2f}")
    return 0


def table_rows(cases, rounds, peak):
    """One dict per (size, mode, contender): median ms, GFLOP/s, % of ``peak``, median per-round ratio to torch."""
    rows = []
    for size, mode in cases:
        flops = lstm_flops(size, mode)
        for contender in CONTENDERS:
            ms = rounds.median(contender, (size, mode))
            rate = gflops(flops, ms)
            ratio = 1.0 if contender == "torch" else rounds.ratio((size, mode), contender, "torch")
            rows.append({"size": list(size), "mode": mode, "contender": contender, "flops": flops, "ms": ms,
                         "gflops": rate, "percent_of_peak": 100 * rate / peak, "ratio_to_torch": ratio})
    return rows


def print_report(args, rows, peak, checked):
    """The table, then the issue's target."""
    print()
    print(f"LSTM layer (xseq.LSTM / torch.nn.LSTM), float32. ms: median over {args.repeats} rounds of each "
          f"contender's median of {args.iters} interleaved iterations. GFLOP/s: the FLOPs counted above / ms. "
          f"% of peak: of the probe's {peak:.1f} GFLOP/s on all cores. Ratio: median over the rounds of "
          "contender / torch within the round.")
    print(method.thread_setting(None))
    print()
    header = ["size (n_x, n_a, m, T_x)", "contender", "mode", "median ms", "GFLOP/s", "% of peak", "ratio to torch"]
    table = [[str(tuple(r["size"])), r["contender"], r["mode"], report.fmt_ms(r["ms"]), f"{r['gflops']:.1f}",
              f"{r['percent_of_peak']:.1f}", report.fmt_ratio(r["ratio_to_torch"])] for r in rows]
    for line in report.markdown_table(header, table, right_from=3):
        print(line)
    print()
    target = [r for r in rows if tuple(r["size"]) == TARGET_SIZE and r["mode"] == "forward+backward"
              and r["contender"] == "xseq"]
    if not target:
        print(f"target: none of the sizes timed is {TARGET_SIZE}, the size of the target")
        return
    share = target[0]["percent_of_peak"] / 100
    ok = share >= TARGET_SHARE
    print(f"target: xseq forward+backward at {TARGET_SIZE} >= {TARGET_SHARE:.0%} of the probe's all-core peak: "
          f"{'met' if ok else 'NOT met'} ({share:.1%})")
    print(report.targets_verdict(ok, checked))


if __name__ == "__main__":
    sys.exit(main())
