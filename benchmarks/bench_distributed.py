"""Data-parallel training over MPI: step time and all-reduce time at 1 and 2 ranks.

Cases (``harness/contenders/distributed.py``)
---------------------------------------------
``char``: the default ``xseq train`` character model (LSTM 128, batches of 32 names, Adam); ``ptb-small``:
Zaremba et al.'s small word model (10,000 words, embedding 200, 2 x 200 LSTM, 20 columns x 20 steps, SGD), on a
synthetic Zipf stream. Both run xseq's own trainers (``Trainer``, ``StreamTrainer``) with a communicator from
``xseq.distributed.from_environment()``, NumPy float32, one BLAS thread per rank.

Check
-----
Before anything is timed, each case trains 3 steps in float64 on 1 process and on 2 ranks, at the timed size;
every parameter of the 2-rank run must equal the single process's within 1e-12 (the data-parallel trainer
computes the single-process run, up to the order of its sums). A difference stops the script with exit
status 1. ``--no-check`` skips it; the targets are then not claimed.

Method
------
For each case and rank count a job ``mpiexec -n R python bench_distributed.py --worker CASE`` trains
``--warmup`` steps, then times ``--steps`` steps one by one (all ranks start each step together, after a
barrier); rank 0 reports the median step, the median time spent in the step's all-reduces (the gradients, the
loss and the stop flag in one flat buffer: this includes waiting for the slower rank), and the median of an
isolated all-reduce of a buffer of what a step sends after a barrier (the transfer alone). A step sends every
gradient but the embedding's whole: of the embedding only the rows of the window's ids travel (the others are
zero on every rank), so "sent per step" is below "gradients" for PTB small. One process has
no all-reduce at all. Rounds (``--repeats``) alternate the rank counts; the table shows the median over rounds.

On a machine with as many cores as ranks, two ranks cannot be faster than one: each single-threaded GEMM
process runs about 2.2x slower next to another than alone (shared caches and memory bandwidth), so the
speed-up is not measured here; the all-reduce's share of a step is. Target: at most 5% for PTB small
(the isolated all-reduce against the 2-rank step). ``benchmarks/README.md`` works out the expected scaling
to 8 and 64 GPUs from the gradient size and NCCL's ring bandwidth.

Usage::

    python benchmarks/bench_distributed.py                 # both cases, ~2 min on 2 cores
    python benchmarks/bench_distributed.py --cases char --steps 20 --repeats 1
    mpiexec -n 2 python benchmarks/bench_distributed.py --worker ptb-small --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# benchmarks/ is on sys.path as this script's directory, wherever it is run from
from harness import report  # noqa: E402
from harness.contenders import distributed  # noqa: E402

RANKS = (1, 2)
CHECK_STEPS = 3
CHECK_ATOL = 1e-12
TARGET_SHARE = 0.05  # all-reduce time / step time at 2 ranks, PTB small


def mpiexec():
    """``mpiexec`` beside this Python (a virtual environment's, from the mpich wheel), else on PATH."""
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("bench_distributed.py needs an MPI: pip install mpi4py mpich (no mpiexec beside this Python or "
                 "on PATH)")
    return found


def job(ranks, *argv):
    """``mpiexec -n RANKS python bench_distributed.py ARGV``; returns the JSON object rank 0 printed last."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [mpiexec(), "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(args):
    """Under mpiexec: one case on this job's ranks; rank 0 prints one JSON line."""
    import numpy as np

    from xseq.distributed import from_environment

    comm = from_environment()
    if args.check_into:
        params = distributed.check_steps(args.worker, comm, CHECK_STEPS)
        if comm.rank == 0:
            np.savez(args.check_into, **params)
            print(json.dumps({"ranks": comm.size}))
        return
    result = distributed.time_steps(args.worker, comm, args.steps, args.warmup)
    if comm.rank == 0:
        print(json.dumps(result))


def check(cases):
    """Every case's parameters after :data:`CHECK_STEPS` float64 steps: 2 ranks against 1 process."""
    import numpy as np

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            for ranks in RANKS:
                job(ranks, "--worker", case, "--check-into", os.path.join(tmp, f"{case}-{ranks}.npz"))
            alone, shared = (dict(np.load(os.path.join(tmp, f"{case}-{ranks}.npz"))) for ranks in RANKS)
            worst = max(float(np.abs(shared[k] - alone[k]).max()) for k in alone)
            verdict = "ok" if worst <= CHECK_ATOL and sorted(alone) == sorted(shared) else "MISMATCH"
            print(f"check {case}: 2 ranks against 1 process after {CHECK_STEPS} float64 steps, largest parameter "
                  f"difference {worst:.1e} (at most {CHECK_ATOL:g}): {verdict}")
            if verdict != "ok":
                failures.append(case)
    if failures:
        print(f"the data-parallel runs of {failures} do not train what one process trains; nothing was timed")
        sys.exit(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=distributed.CASES, default=list(distributed.CASES))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per job (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the rank counts (default 3)")
    parser.add_argument("--no-check", action="store_true", help="time without checking 2 ranks against 1 first")
    parser.add_argument("--worker", choices=distributed.CASES, help=argparse.SUPPRESS)
    parser.add_argument("--check-into", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    for line in report.machine_lines():
        print(line)
    print(f"MPI: {mpiexec()}; one BLAS thread per rank; NumPy float32")
    if not args.no_check:
        check(args.cases)
    results = {}
    for round_ in range(args.repeats):
        for case in args.cases:
            for ranks in (RANKS if round_ % 2 == 0 else RANKS[::-1]):
                results.setdefault((case, ranks), []).append(
                    job(ranks, "--worker", case, "--steps", str(args.steps), "--warmup", str(args.warmup)))
    header = ["case", "ranks", "gradients", "sent per step", "step ms", "all-reduce ms (in step)", "share",
              "all-reduce ms (alone)", "share"]
    rows, shares = [], {}
    for (case, ranks), runs in results.items():
        step = statistics.median(r["step"] for r in runs)
        in_step = statistics.median(r["allreduce"] for r in runs)
        alone = statistics.median(r["isolated"] for r in runs)
        shares[(case, ranks)] = alone / step
        sent = statistics.median(r["sent"] for r in runs)
        rows.append([case, ranks, f"{runs[0]['bytes'] / 2**20:.1f} MiB", f"{sent / 2**20:.1f} MiB", report.fmt_ms(step),
                     report.fmt_ms(in_step), f"{in_step / step:.1%}", report.fmt_ms(alone), f"{alone / step:.1%}"])
    print()
    for line in report.markdown_table(header, rows, right_from=1):
        print(line)
    print()
    met = True
    if "ptb-small" in args.cases:
        share = shares[("ptb-small", 2)]
        met = share <= TARGET_SHARE
        print(f"PTB small, 2 ranks: the all-reduce takes {share:.1%} of a step (target at most {TARGET_SHARE:.0%}): "
              f"{'met' if met else 'NOT met'}")
    print(report.targets_verdict(met, not args.no_check))
    return 0


if __name__ == "__main__":
    sys.exit(main())
