"""Inference benchmark: an LSTM layer's forward pass, xseq with and without inference mode against PyTorch's no_grad.

What is timed
-------------
One forward pass of a one-layer float32 LSTM over ``x`` of ``(n_x, m, T_x)``
(issue 22, section 4), each contender loaded with the same weights
(``harness/contenders/cpu.py``'s ``lstm-layer`` model, forward mode):

* ``xseq``: ``xseq.LSTM(n_x, n_a).forward(x)`` as training calls it, keeping
  its trace for a backward pass;
* ``xseq-inference``: the same call under ``xseq.inference_mode()``, which
  keeps nothing for a backward pass;
* ``torch``: ``torch.nn.LSTM(n_x, n_a)`` under ``torch.set_grad_enabled(False)``
  (what ``torch.no_grad()`` sets), oneDNN's fused LSTM where the wheel has it.

Sizes ``(n_x, n_a, m, T_x)`` (``--sizes``): ``64x256x64x100`` (the course-sized
batch), ``64x256x1x100`` (online use: one sequence at a time, a
matrix-vector product a step), ``1024x1024x64x25`` (DeepBench's size class) and
``64x1024x64x50``. Targets: ``xseq-inference`` at most 0.8x torch's time at the
two ``n_a = 256`` sizes and at most 0.9x at ``n_a = 1024``.

Check
-----
Before timing, a check process builds every contender of every size exactly
as a worker does, runs it twice and compares its outputs (``outputs``, ``h_n``,
``c_n``) with xseq's array-API reference (the same call under
``XSEQ_FUSED=0``): xseq within ``checks.SAME_FORMULAS``, torch within
``checks.OTHER_IMPLEMENTATION``; and ``xseq-inference``'s outputs must equal
``xseq``'s bit for bit. A difference stops the script with exit status 1
before anything is timed; ``--no-check`` skips it and then no target is claimed.

Method (``harness/method.py``, as ``bench_cpu.py``)
---------------------------------------------------
For every round of every size, a fresh worker process per contender, forked
from a server that has imported xseq (xseq, xseq-inference) or torch; each
builds its inputs, runs one warm-up iteration and is timed in interleaved
turns (order rotated from round to round; two iterations a turn, the second
timed). The table shows, over ``--repeats`` rounds, the median of each
contender's per-round median and the median of the ratios computed within
each round. Thread counts are the libraries' defaults; the xseq workers run
without ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE``. ``--threads N`` runs every
worker with N threads, as ``bench_cpu.py --threads N`` does
(``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` = N, ``torch.set_num_threads(N)``
and ``set_num_interop_threads(N)``; each worker checks and reports its counts).

Usage::

    python benchmarks/bench_inference.py                    # every size, 7 rounds, ~2 min on 2 cores
    python benchmarks/bench_inference.py --repeats 3 --sizes 64x256x1x100
    python benchmarks/bench_inference.py --threads 1 --sizes 64x256x64x100   # one thread per library
    python benchmarks/bench_inference.py --worker xseq-inference 64x256x1x100 --profile
"""

from __future__ import annotations

import argparse
import json
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

MODEL = "lstm-layer"
MODE = "forward"
INFERENCE = "xseq-inference"
CONTENDERS = ("xseq", INFERENCE, "torch")
GROUPS = {"xseq": "numpy", INFERENCE: "numpy", "torch": "torch"}
#: The sizes of issue 22 and the most ``xseq-inference / torch`` may be at each.
TARGETS = {(64, 256, 64, 100): 0.8, (64, 256, 1, 100): 0.8, (1024, 1024, 64, 25): 0.9, (64, 1024, 64, 50): 0.9}
QUICK_SIZE = (10, 16, 4, 6)
SCRIPT = Path(__file__).resolve()


def parse_size(text):
    parts = text.replace(",", "x").split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: expected n_x x n_a x m x T_x, e.g. 64x256x64x100")
    return tuple(int(p) for p in parts)


def build(contender, size_text):
    """The :class:`~harness.contenders.cpu.Step` of ``contender`` for one size (the forward of an LSTM layer)."""
    if contender == INFERENCE:
        import xseq

        step = cpu.build("xseq", MODEL, size_text, MODE)

        def run(kept):
            with xseq.inference_mode():
                step.run(kept)

        return cpu.Step(run, step.collect)
    if contender not in CONTENDERS:
        raise ValueError(f"contender must be one of {CONTENDERS}; got {contender!r}")
    return cpu.build(contender, MODEL, size_text, MODE)


def worker_env(contender, threads=None):
    """A worker's environment: the xseq ones without OpenBLAS's overrides (as bench_cpu.py's); ``threads``
    (None: the libraries' defaults) per :func:`harness.method.thread_environment`."""
    return method.environment(strip_openblas=contender != "torch", BENCH_TORCH_MKLDNN="1",
                              **method.thread_environment(threads, GROUPS[contender]))


def parse_threads(text):
    """``--threads``: an int from 1 to the cores this process may use."""
    cores = report.usable_cores()
    if not text.isdigit() or not 1 <= int(text) <= cores:
        raise argparse.ArgumentTypeError(f"threads {text!r}: expected an int from 1 to {cores} (the usable cores)")
    return int(text)


def preload(group):
    """What a fork server imports before it forks workers: xseq (and NumPy), or torch."""
    def load():
        if group == "torch":
            import torch  # noqa: F401
        else:
            import xseq  # noqa: F401
    return load


def check(sizes, out=print):
    """Every contender at every size against xseq's reference; ``xseq-inference`` bit for bit against ``xseq``.

    Returns
    -------
    checks.Check
    """
    import numpy as np

    result = checks.Check()
    required = cpu.REQUIRED_OUTPUTS[MODEL]
    for size in sizes:
        text = cpu.size_name(size)
        with cpu.reference_path():
            want = build("xseq", text).results()
        got = {}
        for contender in CONTENDERS:
            step = build(contender, text)
            step()  # the warm-up, then an iteration like a timed one
            got[contender] = step.results()
            tolerance = checks.OTHER_IMPLEMENTATION if contender == "torch" else checks.SAME_FORMULAS
            result.compare(f"{text}: {contender}", got[contender], want, tolerance, required)
        for name, a in got["xseq"].items():
            b = got[INFERENCE].get(name)
            if b is None or not np.array_equal(a, b):
                result.failures.append(f"{text}: {INFERENCE}'s {name} is not bit for bit xseq's")
        out(f"check {text}: " + ", ".join(f"{c} {result.worst[f'{text}: {c}']:.1e}" for c in CONTENDERS)
            + f" (largest difference from the reference, relative to its largest value); {INFERENCE} "
            + ("equals xseq bit for bit" if not result.failures else "differs"))
    return result


def run_worker(args):
    """``--worker``: one contender of one size, serving the parent (``--connect``) or timed here (by hand)."""
    contender, size_text = args.worker
    return method.run_worker(build, contender, [cpu.size_name(parse_size(size_text))], args.connect, args.iters,
                             args.profile)


def machine_info(threads=None):
    lines = report.machine_lines()
    info = method.run_json(SCRIPT, ["--info"], env=worker_env("xseq", threads), cwd=ROOT)
    lines.append(f"numpy {info['numpy']}; BLAS: {info['blas']}")
    lines.append(f"torch {info['torch']}; {info['torch_threads']} intra-op threads; {info['torch_blas']}")
    lines.append(f"xseq's NumPy steps: {info['xseq_steps']}")
    return lines


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                    help="n_x x n_a x m x T_x; default the four of issue 22: " + " ".join(map(cpu.size_name, TARGETS)))
    ap.add_argument("--repeats", type=int, default=None, help="rounds per size (default 7; 1 with --quick)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per turn (default 3; 1 with --quick)")
    ap.add_argument("--gap", type=float, default=0.2, metavar="SECONDS",
                    help="pause before each turn, so that the previous contender's idle threads stop spinning")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: size {cpu.size_name(QUICK_SIZE)}, 1 round")
    ap.add_argument("--no-check", action="store_true", help="skip the check (the targets are then not claimed)")
    ap.add_argument("--spawn", action="store_true", help="start every worker as a new interpreter instead of forking")
    ap.add_argument("--json", metavar="PATH", help="also write every measurement (all rounds) to PATH")
    ap.add_argument("--threads", type=parse_threads, default=None, metavar="N",
                    help="N threads per worker: OPENBLAS_NUM_THREADS and OMP_NUM_THREADS = N, torch.set_num_threads(N) "
                         "and set_num_interop_threads(N); each worker checks and reports its counts. Default: each "
                         "library's default (every core)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each turn, wait up to SECONDS for the CPUs to be idle (a shared machine)")
    ap.add_argument("--worker", nargs=2, metavar=("CONTENDER", "SIZE"), help=argparse.SUPPRESS)
    ap.add_argument("--connect", metavar="ADDRESS", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="with --worker: run under cProfile")
    ap.add_argument("--info", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iters is None:
        args.iters = 1 if args.quick else 3
    if args.repeats is None:
        args.repeats = 1 if args.quick else 7
    if args.iters < 1 or args.repeats < 1:
        ap.error(f"--iters and --repeats must be >= 1; got --iters {args.iters}, --repeats {args.repeats}")
    args.sizes = [QUICK_SIZE] if args.quick else (args.sizes or list(TARGETS))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.info:
        print(json.dumps(report.library_info()))
        return 0
    if args.check:
        result = check(args.sizes)
        result.exit_if_failed()
        return 0
    if args.server:
        return method.run_fork_server(lambda contender, size_text: build(contender, size_text), preload(args.server))

    print("Machine")
    for line in machine_info(args.threads):
        print("  " + line)
    load_before = method.load_average()
    idle = method.cpu_idle(1.0)
    if idle is not None and idle < 0.85:
        print(f"warning: the CPUs were only {idle:.0%} idle before the run: other processes are busy and the "
              "timings will be noisy; see --wait-idle")
    checked = not args.no_check
    if checked:
        done = subprocess.run([sys.executable, str(SCRIPT), "--check", "--sizes", *map(cpu.size_name, args.sizes)],
                              env=worker_env("xseq", args.threads), cwd=ROOT)
        if done.returncode != 0:
            print("the check failed (see above): nothing is timed", file=sys.stderr)
            return 1
    else:
        print("check: skipped (--no-check); no target is claimed")

    rounds = method.Rounds([(INFERENCE, "torch"), ("xseq", "torch"), (INFERENCE, "xseq")])
    print(f"{len(args.sizes)} sizes x {args.repeats} rounds; a fresh worker process per contender and round "
          f"({'new interpreters' if args.spawn else 'forked from per-library servers'}), {args.iters} timed "
          f"iterations each in interleaved turns, {args.gap:g} s apart; {method.thread_setting(args.threads)}",
          flush=True)
    t_start = time.perf_counter()
    waiter = method.IdleWaiter(args.wait_idle) if args.wait_idle > 0 else None
    runner = method.Runner(SCRIPT, GROUPS.get, lambda c: worker_env(c, args.threads), spawn_each=args.spawn, cwd=ROOT)
    try:
        for r in range(args.repeats):
            for size in args.sizes:
                medians = method.interleaved_round(runner, [cpu.size_name(size)], method.rotated(CONTENDERS, r),
                                                   args.iters, args.gap, waiter.wait if waiter else None)
                rounds.add(size, medians)
            print(f"  round {r + 1}/{args.repeats} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr,
                  flush=True)
    finally:
        runner.close()
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"contender": c, "size": list(size), "threads": args.threads, "ms": v}
             for (c, size), v in rounds.times.items()], indent=1))
    print_report(args, rounds, checked)
    print("threads, as each contender's workers reported them after their warm-up:")
    for line in runner.thread_lines():
        print("  " + line)
    if waiter is not None:
        print(f"waited {waiter.waited:.0f} s in all for idle CPUs; {waiter.busy} of {waiter.turns} turns started "
              "on a busy machine")
    if load_before is not None:
        print(f"load average (1 min) before {load_before:.2f}, after {method.load_average():.2f} "
              "(the run itself adds about 1-2)")
    print(f"timing took {time.perf_counter() - t_start:.0f} s")
    return 0


def print_report(args, rounds, checked):
    """The table of times and ratios, then the targets."""
    print()
    print(f"LSTM layer forward, float32. Times: median over {args.repeats} rounds of each contender's median of "
          f"{args.iters} interleaved iterations, ms. Ratios: median over the rounds of the ratio within the round.")
    print(method.thread_setting(args.threads))
    print()
    pairs = [(INFERENCE, "torch"), ("xseq", "torch"), (INFERENCE, "xseq")]
    header = ["size (n_x, n_a, m, T_x)", *(f"{c} ms" for c in CONTENDERS), *(f"{a}/{b}" for a, b in pairs),
              "target"]
    rows = [[str(size), *(report.fmt_ms(rounds.median(c, size)) for c in CONTENDERS),
             *(report.fmt_ratio(rounds.ratio(size, a, b)) for a, b in pairs),
             f"<= {TARGETS[size]}x" if size in TARGETS else "—"] for size in args.sizes]
    for line in report.markdown_table(header, rows, right_from=1):
        print(line)
    print()
    print(f"Targets ({INFERENCE} / torch; median per-round ratio, and the range over the rounds)")
    if args.threads is not None:
        print(f"  (set for the libraries' default thread counts; this run had {args.threads} per worker)")
    all_met = True
    if not any(size in TARGETS for size in args.sizes):
        print("  none of the sizes timed has a target")
        return
    for size in args.sizes:
        if size not in TARGETS:
            continue
        v = rounds.ratio(size, INFERENCE, "torch")
        lo, hi = rounds.ratio_range(size, INFERENCE, "torch")
        ok = v <= TARGETS[size]
        all_met &= ok
        print(f"  {size}: <= {TARGETS[size]}x: {'met' if ok else 'NOT MET'} ({v:.2f}x; rounds {lo:.2f}x-{hi:.2f}x)")
    print(report.targets_verdict(all_met, checked))
    if args.repeats > 1:
        spread, (c, size) = rounds.widest_spread()
        print(f"noise: widest spread of one contender's times over the rounds is {spread:.0%} of its median "
              f"({c} {size})")


if __name__ == "__main__":
    sys.exit(main())
