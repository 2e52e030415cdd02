"""CPU benchmark: xseq (NumPy float32) against a naive course-style NumPy version, PyTorch and JAX.

What is timed (``harness/contenders/cpu.py``)
---------------------------------------------
Models (``--models``): ``lstm`` and ``rnn`` through the course's functional
API (xseq's ``lstm_forward``/``lstm_backward``, ``rnn_forward``/``rnn_backward``)
against ``naive`` (what a reader of the course writes, ``harness/contenders/naive.py``)
and ``torch`` (``nn.LSTM``/``nn.RNN`` + ``nn.Linear`` + softmax, autograd);
``lstm-layer``, ``gru`` and ``lstm-2layer-bidirectional`` through xseq's layer API
(``xseq.LSTM``, ``xseq.GRU``, ``xseq.LSTM(num_layers=2, bidirectional=True)``) against the
``torch.nn`` module with the same options and weights. Every model also runs
as ``jax`` where JAX is installed (``harness/contenders/jaxscan.py``: a jitted
``lax.scan`` with stacked gates and a hoisted input projection,
``value_and_grad`` for the gradients); where it is not, the script says so
and skips it (``pip install jax==0.10.2 jaxlib==0.10.2``). Modes (``--modes``):
``forward`` (torch in inference, JAX computing the outputs only) and ``forward+backward`` (the gradient of
``sum(a * da)`` for a fixed random ``da``: every contender computes ``dx``,
the initial state's gradient and every weight gradient).

Check
-----
Before timing, a check process builds every contender of every case exactly
as a worker will, at the timed size, runs it twice and compares every output
and every gradient (every layer, every direction) with xseq's array-API
reference (the same xseq call under ``XSEQ_FUSED=0``): xseq within
``checks.SAME_FORMULAS``, naive, torch and jax within ``checks.OTHER_IMPLEMENTATION``
(``harness/checks.py``). A difference stops the script with exit status 1
before anything is timed. ``--no-check`` skips it; the targets are then not
claimed.

Method (``harness/method.py``)
------------------------------
For every round of every (model, size, mode) the parent starts a fresh worker
process per contender, forked from a server that has imported NumPy and xseq
(naive, xseq), torch, or JAX (``--spawn``: a new interpreter each). A worker builds
its inputs, runs one warm-up iteration and connects back to the parent; the
parent times the contenders in interleaved turns (A B C A B C ...; order
rotated from round to round) until each has ``--iters`` timed iterations (a
turn runs two iterations and times the second; ``--gap`` seconds before each
turn). The table shows, over the ``--repeats`` rounds, the median of each
contender's per-round median and the median of the ratios computed within each
round. Thread counts are the libraries' defaults (every core); the naive and
xseq workers are started without ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE``.
``--wait-idle SECONDS`` waits before each turn until the CPUs are idle.

``--threads N`` (issue 22: one thread, as in a container limited to one CPU)
starts every worker with ``OPENBLAS_NUM_THREADS=N`` and ``OMP_NUM_THREADS=N``;
torch's workers also call ``torch.set_num_threads(N)`` and
``set_num_interop_threads(N)``; JAX's get ``XLA_FLAGS`` with
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` where
N is 1 and are skipped, with a note, otherwise (``method.thread_environment``).
Each worker checks after its warm-up that every library it loaded has N
threads (a worker that has not is an error, nothing is timed with it) and
reports its counts, which the script prints under the table; the table's
header states the setting.

torch's CPU LSTM runs oneDNN's fused LSTM kernels when oneDNN is available, as
in the default wheels; ``--torch-no-mkldnn`` turns oneDNN off to time torch's
own per-step cells. torch has no such path for the GRU and the plain RNN.

Usage::

    python benchmarks/bench_cpu.py                      # everything, ~5-7 min on 2 cores
    python benchmarks/bench_cpu.py --wait-idle 30       # the same on a machine others are using
    python benchmarks/bench_cpu.py --models lstm rnn --sizes small
    python benchmarks/bench_cpu.py --quick              # tiny sizes, 1 round: smoke run
    python benchmarks/bench_cpu.py --threads 1 --models lstm-layer gru   # one thread per library
    python benchmarks/bench_cpu.py --worker xseq lstm 64x256x64x100 forward+backward --profile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# benchmarks/ is on sys.path as this script's directory, wherever it is run from
from harness import method, report  # noqa: E402
from harness.contenders import cpu  # noqa: E402

SIZES = {"small": (64, 256, 64, 100), "large": (123, 320, 64, 100)}
QUICK_SIZE = (10, 16, 4, 6)
TARGET = 1.5  # xseq fwd+bwd <= 1.5x torch; naive fwd+bwd >= 1.5x xseq
SCRIPT = Path(__file__).resolve()


def parse_size(text):
    if text in SIZES:
        return SIZES[text]
    parts = text.replace(",", "x").split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: expected small, large or n_x x n_a x m x T_x, e.g. 64x256x64x100")
    return tuple(int(p) for p in parts)


def worker_env(contender, torch_no_mkldnn, threads=None):
    """A worker's environment: naive and xseq without OpenBLAS's overrides; torch told whether to use oneDNN;
    ``threads`` (None: the libraries' defaults) per :func:`harness.method.thread_environment`."""
    return method.environment(strip_openblas=contender in ("naive", "xseq", cpu.ONEDNN),
                              BENCH_TORCH_MKLDNN="0" if torch_no_mkldnn else "1",
                              **method.thread_environment(threads, cpu.GROUPS[contender]))


def preload(group):
    """What a fork server imports before it forks workers: NumPy and xseq, torch, or JAX.

    JAX is imported but not started: its CPU client (and the threads that make
    forking unsafe) comes up in each worker at its first computation.
    """
    def load():
        if group == "torch":
            import torch  # noqa: F401
        elif group == "jax":
            import jax  # noqa: F401
        else:
            import xseq  # noqa: F401
    return load


def run_worker(args):
    """``--worker``: one contender of one case, serving the parent (``--connect``) or timed here (by hand)."""
    contender, model, size_text, mode = args.worker
    case = [model, cpu.size_name(parse_size(size_text)), mode]
    return method.run_worker(cpu.build, contender, case, args.connect, args.iters, args.profile)


def run_check(models, sizes, modes, onednn):
    """``--check``: every contender of every case against xseq's reference; exits 1 on a difference."""
    result = cpu.check(models, sizes, modes, onednn=onednn)
    result.exit_if_failed()
    print(f"check: {result.arrays} arrays, every output and gradient of every contender and case, agree with "
          f"xseq's array-API reference (xseq's NumPy steps: {report.xseq_steps()})", flush=True)
    return 0


def parse_threads(text):
    """``--threads``: an int from 1 to the cores this process may use."""
    cores = report.usable_cores()
    if not text.isdigit() or not 1 <= int(text) <= cores:
        raise argparse.ArgumentTypeError(f"threads {text!r}: expected an int from 1 to {cores} (the usable cores)")
    return int(text)


def machine_info(torch_no_mkldnn, threads=None):
    lines = report.machine_lines()
    info = method.run_json(SCRIPT, ["--info"], env=worker_env("xseq", torch_no_mkldnn, threads), cwd=ROOT)
    lines.append(f"numpy {info['numpy']}; BLAS: {info['blas']}")
    lines.append(f"torch {info['torch']}; {info['torch_threads']} intra-op threads; {info['torch_blas']}")
    lines.append(f"jax {info['jax']}")
    lines.append(f"xseq's NumPy steps: {info['xseq_steps']}")
    lines.append(f"xseq's float32 matrix products: {info['xseq_products']}")
    env_set = {v: os.environ[v] for v in method.OPENBLAS_VARS if v in os.environ}
    if env_set:
        lines.append(f"environment: {env_set} -- removed for the naive and xseq workers")
    else:
        lines.append("environment: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE not set")
    return lines


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=cpu.MODELS, default=list(cpu.MODELS))
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                    help="small (64x256x64x100), large (123x320x64x100) or n_x x n_a x m x T_x; default both")
    ap.add_argument("--modes", nargs="+", choices=cpu.MODES, default=list(cpu.MODES))
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds: turns per contender and case (default 7; 1 with --quick)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per turn (default 3; 1 with --quick)")
    ap.add_argument("--gap", type=float, default=0.2, metavar="SECONDS",
                    help="pause before each turn, so that the previous contender's idle BLAS/OpenMP threads stop "
                         "spinning (default 0.2)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: size {cpu.size_name(QUICK_SIZE)}, 1 round, 1 iteration")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the check of every contender's outputs and gradients against xseq's reference "
                         "(the targets are then not claimed)")
    ap.add_argument("--spawn", action="store_true",
                    help="start every measurement as a new interpreter (bench_cpu.py --worker ...) instead of "
                         "forking it from a server that has imported the library; ~2 s more per torch measurement")
    ap.add_argument("--torch-no-mkldnn", action="store_true",
                    help="turn oneDNN off in the torch workers (torch.backends.mkldnn.enabled = False): torch's "
                         "LSTM then runs its own per-step cells instead of oneDNN's fused LSTM kernels")
    ap.add_argument("--onednn", action="store_true",
                    help=f"also time {cpu.ONEDNN}: xseq with its oneDNN matrix products turned on (XSEQ_ONEDNN=1; "
                         "pip install onednn-cpu-gomp)")
    ap.add_argument("--json", metavar="PATH", help="also write every measurement (all rounds) to PATH")
    ap.add_argument("--threads", type=parse_threads, default=None, metavar="N",
                    help="N threads per worker: OPENBLAS_NUM_THREADS and OMP_NUM_THREADS = N, torch.set_num_threads(N) "
                         "and set_num_interop_threads(N), JAX one-threaded by XLA_FLAGS (N = 1; skipped otherwise); "
                         "each worker checks and reports its counts. Default: each library's default (every core)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each measurement, wait up to SECONDS for the CPUs to be idle (>= 85%% over 0.25 s): "
                         "for a machine shared with other work; 0 (default) never waits")
    ap.add_argument("--worker", nargs=4, metavar=("CONTENDER", "MODEL", "SIZE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--connect", metavar="ADDRESS", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="with --worker: run under cProfile and print the top functions")
    ap.add_argument("--info", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", choices=("numpy", "torch", "jax"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iters is None:
        args.iters = 1 if args.quick else 3
    if args.repeats is None:
        args.repeats = 1 if args.quick else 7
    if args.iters < 1 or args.repeats < 1:
        ap.error(f"--iters and --repeats must be >= 1; got --iters {args.iters}, --repeats {args.repeats}")
    args.sizes = [QUICK_SIZE] if args.quick else (args.sizes or [SIZES["small"], SIZES["large"]])
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.info:
        print(json.dumps(report.library_info()))
        return 0
    if args.check:
        return run_check(args.models, args.sizes, args.modes, args.onednn)
    if args.server:
        return method.run_fork_server(cpu.build, preload(args.server))

    repeats = args.repeats
    if repeats < 5 and not args.quick:
        print(f"note: {repeats} repeats; the method asks for at least 5")
    print("Machine")
    for line in machine_info(args.torch_no_mkldnn, args.threads):
        print("  " + line)
    load_before = method.load_average()
    idle = method.cpu_idle(1.0)
    if idle is not None and idle < 0.85:
        print(f"warning: the CPUs were only {idle:.0%} idle before the run: other processes are busy and the "
              "timings will be noisy (each library uses every core); see --wait-idle")

    jax = cpu.jax_available()
    if not jax:
        print(f"note: JAX is not installed, so its contender is skipped ({cpu.JAX_INSTALL} adds it)")
    elif method.jax_threads_problem(args.threads):
        jax = False
        print(f"note: the JAX contender is skipped: {method.jax_threads_problem(args.threads)}")
    checked = not args.no_check
    if checked:
        sizes = [cpu.size_name(size) for size in args.sizes]
        done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--models", *args.models, "--sizes", *sizes,
                               "--modes", *args.modes, *(["--onednn"] if args.onednn else [])],
                              env=worker_env("xseq", args.torch_no_mkldnn, args.threads), cwd=ROOT)
        if done.returncode != 0:
            print("the check failed (see above): nothing is timed", file=sys.stderr)
            return 1
    else:
        print("check: skipped (--no-check); the results are not compared with the reference and no target is claimed")

    cases = [(model, size, mode) for model in args.models for size in args.sizes for mode in args.modes]
    rounds = method.Rounds([("xseq", "torch"), ("xseq", "jax"), ("naive", "xseq"), (cpu.ONEDNN, "torch"),
                            (cpu.ONEDNN, "xseq")])
    how = "new interpreters" if args.spawn else "forked from per-library servers"
    if args.torch_no_mkldnn:
        how += "; torch with oneDNN turned off"
    print(f"{len(cases)} cases x {repeats} rounds; each round of a case starts a fresh worker process per "
          f"contender ({how}), then times {args.iters} iterations of each in interleaved turns "
          f"(two iterations a turn, the second timed), {args.gap:g} s apart; "
          f"{method.thread_setting(args.threads, jax)}", flush=True)
    t_start = time.perf_counter()
    waiter = method.IdleWaiter(args.wait_idle) if args.wait_idle > 0 else None
    runner = method.Runner(SCRIPT, cpu.GROUPS.get, lambda c: worker_env(c, args.torch_no_mkldnn, args.threads),
                           spawn_each=args.spawn, cwd=ROOT)
    try:
        for r in range(repeats):
            for case in cases:
                model, size, mode = case
                order = method.rotated(cpu.contenders_for(model, jax=jax, onednn=args.onednn), r)
                medians = method.interleaved_round(runner, [model, cpu.size_name(size), mode], order, args.iters,
                                                   args.gap, waiter.wait if waiter else None)
                rounds.add(case, medians)
            print(f"  round {r + 1}/{repeats} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    finally:
        runner.close()
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"contender": c, "model": m, "size": list(sz), "mode": md, "threads": args.threads, "ms": v}
             for (c, (m, sz, md)), v in rounds.times.items()], indent=1))
    print_report(args, cases, rounds, checked)
    print("threads, as each contender's workers reported them after their warm-up:")
    for line in runner.thread_lines():
        print("  " + line)
    if waiter is not None:
        print(f"waited {waiter.waited:.0f} s in all for idle CPUs; {waiter.busy} of {waiter.turns} turns started "
              "on a busy machine")
    load_after = method.load_average()
    if load_before is not None:
        print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f} (the run itself adds about 1-2)")
    print(f"timing took {time.perf_counter() - t_start:.0f} s")
    return 0


def print_report(args, cases, rounds, checked):
    """The table of times and ratios, the targets, the noise."""
    print()
    print(f"Times: median over {args.repeats} rounds of each contender's median of {args.iters} interleaved "
          "iterations, milliseconds.")
    print("Ratios: median over the rounds of the ratio within the round (the two contenders timed seconds apart).")
    print(method.thread_setting(args.threads, jax=any(c == "jax" for c, _ in rounds.times)))
    print()
    timed = ["naive", "xseq", *([cpu.ONEDNN] if args.onednn else []), "torch", "jax"]
    pairs = [("xseq", "torch"), ("xseq", "jax"), ("naive", "xseq")]
    pairs += [(cpu.ONEDNN, "torch"), (cpu.ONEDNN, "xseq")] if args.onednn else []
    rows = []
    for case in cases:
        model, size, mode = case
        rows.append([model, size, mode, *(report.fmt_ms(rounds.median(c, case)) for c in timed),
                     *(report.fmt_ratio(rounds.ratio(case, a, b)) for a, b in pairs)])
    header = ["model", "size (n_x, n_a, m, T_x)", "mode", *(f"{c} ms" for c in timed),
              *(f"{a}/{b}" for a, b in pairs)]
    for line in report.markdown_table(header, rows, right_from=3):
        print(line)

    print()
    print("Targets (forward+backward; median per-round ratio, and the range over the rounds)")
    if args.threads is not None:
        print(f"  (set for the libraries' default thread counts; this run had {args.threads} per worker)")
    all_met = True
    for case in cases:
        model, size, mode = case
        if mode != "forward+backward":
            continue
        for (a, b), text, ok_if in ((("xseq", "torch"), f"xseq <= {TARGET}x torch", lambda v: v <= TARGET),
                                    (("naive", "xseq"), f"naive >= {TARGET}x xseq", lambda v: v >= TARGET)):
            v = rounds.ratio(case, a, b)
            if v is None:
                continue
            ok = ok_if(v)
            all_met &= ok
            lo, hi = rounds.ratio_range(case, a, b)
            print(f"  {model} {size}: {text}: {'met' if ok else 'NOT MET'} ({v:.2f}x; rounds {lo:.2f}x-{hi:.2f}x)")
    print(report.targets_verdict(all_met, checked))
    if args.repeats > 1:
        spread, (c, (m, sz, md)) = rounds.widest_spread()
        print(f"noise: widest spread of one contender's times over the rounds is {spread:.0%} of its median "
              f"({c} {m} {sz} {md})")


if __name__ == "__main__":
    sys.exit(main())
