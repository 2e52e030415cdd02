"""Two Python threads, each training its own layer, against one thread training both in turn (issue 22, section 3).

What is timed
-------------
Two float32 LSTM layers (``xseq.LSTM(n_x, n_a)``, different weights and inputs), each one step of
training: ``forward(x)``, ``zero_grad()``, ``backward(da)`` at ``(n_x, n_a, m, T_x)`` (``--size``, default
``64x256x64x100``). One iteration is both layers' steps:

* ``one thread``: the main thread runs layer A's step, then layer B's;
* ``two threads``: two long-lived Python threads, one per layer, released together at each iteration (a
  barrier) and waited for;
* ``new threads``: two new Python threads per iteration, one per layer, started and joined.

Two threads are "not slower" where their time is at most the one thread's (ratio <= 1.0x): the cores
are shared, not lost. Each contender runs under each policy of :func:`xseq.cpu_runtime`'s
``contention`` (``share``, the default; ``wait``), and, with ``--before DIR``, under the xseq found in
``DIR`` (e.g. the last commit's: ``git archive HEAD xseq | tar -x -C DIR``), which is put first on the
worker's ``PYTHONPATH`` and left with its own defaults.

Method (``harness/method.py``)
------------------------------
For every round a fresh worker process per contender and policy (a new interpreter each: ``before``
needs another ``PYTHONPATH``), all alive at once; each builds both layers (and its threads), runs one
warm-up iteration, and is timed in interleaved turns (A B C A B C ...; the order rotated from round to
round; a turn runs two iterations and keeps the second; ``--gap`` seconds before each turn) until each
has ``--iters`` timed iterations. The table shows, per policy, the median over ``--rounds`` rounds of
each contender's per-round median, and the median [range] over rounds of the ratio of the two-thread
time to the one-thread time of the same policy in the same round. Thread counts are NumPy's defaults;
the workers run without ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE``. ``--wait-idle SECONDS`` waits
before each turn until the CPUs are idle (other processes on the machine skew every number).

Check
-----
Before timing, a check process per policy runs the two-thread contender and then both layers' steps
again in its main thread alone, and compares every output and gradient; a difference above
``checks.SAME_FORMULAS`` stops the script with exit status 1 before anything is timed. The check's
loop counts (:meth:`xseq.CPURuntime.counts`) and ``lanes_status()`` are printed with the table.

Usage::

    python benchmarks/bench_threads.py                              # 5 rounds, about two minutes on 2 cores
    python benchmarks/bench_threads.py --before /tmp/xseq-head --rounds 7 --wait-idle 20
    python benchmarks/bench_threads.py --check share 64x256x64x100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import checks, method, report  # noqa: E402

CONTENDERS = ("one-thread", "two-threads", "new-threads")
POLICIES = ("share", "wait")
DEFAULT_SIZE = (64, 256, 64, 100)


def parse_size(text):
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 4 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"a size is n_x x n_a x m x T_x, four positive ints; got {text!r}")
    return size


# ---------------------------------------------------------------- worker


def _layers(size):
    import numpy as np

    import xseq

    n_x, n_a, m, T = size
    jobs = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        layer = xseq.LSTM(n_x, n_a, backend="numpy", dtype="float32", seed=seed)
        x = rng.standard_normal((n_x, m, T)).astype(np.float32)
        da = rng.standard_normal((n_a, m, T)).astype(np.float32)
        jobs.append((layer, x, da))
    return jobs


def _train_step(job, kept=None):
    layer, x, da = job
    outputs, _ = layer.forward(x)
    layer.zero_grad()
    dx = layer.backward(da)
    if kept is not None:
        kept.update(outputs=outputs.copy(), dx=dx.copy(), **{k: g.copy() for k, g in layer.grads.items()})


class _Pair:
    """Two long-lived threads, one per job, each running its job's step once per :meth:`run`."""

    def __init__(self, jobs):
        self._go, self._done = threading.Barrier(3), threading.Barrier(3)
        self._stop, self._kept, self.errors = False, [None, None], []
        self._threads = [threading.Thread(target=self._loop, args=(k, job), daemon=True) for k, job in enumerate(jobs)]
        for thread in self._threads:
            thread.start()

    def _loop(self, k, job):
        while True:
            self._go.wait()
            if self._stop:
                return
            try:
                _train_step(job, self._kept[k])
            except BaseException as exc:  # reported by run()
                self.errors.append(exc)
            self._done.wait()

    def run(self, keep=False):
        self._kept = [{}, {}] if keep else [None, None]
        self._go.wait()
        self._done.wait()
        if self.errors:
            raise self.errors[0]
        return self._kept

    def close(self):
        self._stop = True
        self._go.wait()
        for thread in self._threads:
            thread.join()


def _agreement(jobs, kept):
    """The largest relative difference between each job's results in ``kept`` and the same step on this thread."""
    worst = 0.0
    for job, got in zip(jobs, kept):
        want = {}
        _train_step(job, want)
        for name, value in want.items():
            worst = max(worst, checks.relative_error(got[name], value)[0])
    return worst


def build(name, size_text):
    """The step function of contender ``name`` (``POLICY/CONTENDER``) at ``size_text``, in this process."""
    import xseq

    policy, contender = name.split("/")
    if policy != "before":
        xseq.cpu_runtime(contention=policy)
    jobs = _layers(parse_size(size_text))
    if contender == "two-threads":
        return _Pair(jobs).run

    def one_thread():
        for job in jobs:
            _train_step(job)

    def new_threads():
        threads = [threading.Thread(target=_train_step, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return {"one-thread": one_thread, "new-threads": new_threads}[contender]


def check(policy, size):
    """The two-thread contender's results against the same steps on one thread: the largest relative
    difference, the runtime's loop counts and the lanes' status line."""
    import xseq
    from xseq.ops import host

    if policy != "before":
        xseq.cpu_runtime(contention=policy)
    jobs = _layers(size)
    pair = _Pair(jobs)
    try:
        pair.run()
        kept = pair.run(keep=True)
    finally:
        pair.close()
    agreement = _agreement(jobs, kept)
    counts = xseq.cpu_runtime().counts() if hasattr(xseq, "cpu_runtime") else None
    return {"agreement": agreement, "counts": counts, "lanes": host.lanes_status()}


# ---------------------------------------------------------------- parent


def environment(policy, before):
    extra = {}
    if policy == "before":
        extra["PYTHONPATH"] = os.pathsep.join(p for p in (str(before), os.environ.get("PYTHONPATH", "")) if p)
    return method.environment(strip_openblas=True, **extra)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="n_x x n_a x m x T_x")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=7, help="timed iterations per contender and round")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds before each turn")
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--before", type=Path, help="a folder holding an older xseq/ to time as 'before'")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="wait up to this long before each turn for idle CPUs")
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--connect", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--check", nargs=2, metavar=("POLICY", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return method.serve_case(build, args.worker[0], [args.worker[1]], args.connect)
    if args.check:
        print(json.dumps(check(args.check[0], parse_size(args.check[1]))))
        return 0
    if args.before is not None and not (args.before / "xseq" / "__init__.py").is_file():
        parser.error(f"--before {args.before}: expected a folder holding xseq/__init__.py")
    policies = list(args.policies) + (["before"] if args.before is not None else [])
    size_text = "x".join(map(str, args.size))
    script = Path(__file__).resolve()

    checked = {}
    for policy in policies:
        out = method.run_json(script, ["--check", policy, size_text], env=environment(policy, args.before), cwd=ROOT)
        if out["agreement"] > checks.SAME_FORMULAS.bound:
            print(f"MISMATCH under {policy}: two threads' results differ from one thread's by "
                  f"{out['agreement']:.2e} (> {checks.SAME_FORMULAS}); nothing timed")
            return 1
        checked[policy] = out

    names = [f"{policy}/{contender}" for policy in policies for contender in CONTENDERS]
    runner = method.Runner(script, lambda name: name.split("/")[0],
                           lambda name: environment(name.split("/")[0], args.before), spawn_each=True, cwd=ROOT)
    waiter = method.IdleWaiter(args.wait_idle) if args.wait_idle > 0 else None
    rounds = method.Rounds([(f"{p}/{c}", f"{p}/one-thread") for p in policies for c in CONTENDERS[1:]])
    loads = []
    try:
        for round_ in range(args.rounds):
            loads.append(method.load_average())
            medians = method.interleaved_round(runner, [size_text], method.rotated(names, round_), args.iters,
                                               args.gap, before_turn=waiter.wait if waiter else None)
            rounds.add(size_text, medians)
    finally:
        runner.close()

    n_x, n_a, m, T = args.size
    print(f"Two LSTM layers (n_x={n_x}, n_a={n_a}, m={m}, T_x={T}, float32), forward+backward each; "
          f"{args.rounds} rounds x {args.iters} interleaved turns")
    for line in report.machine_lines():
        print(line)
    known = [v for v in loads if v is not None]
    if known:
        print(f"load average (1 min) at the start of the rounds: {min(known):.2f}-{max(known):.2f}")
    if waiter is not None:
        print(f"waited {waiter.waited:.0f} s for idle CPUs; {waiter.busy} of {waiter.turns} turns "
              "started on a busy machine")
    header = ["policy", "one thread ms", "two threads ms", "two / one", "new threads ms", "new / one"]
    rows = []
    for policy in policies:
        row = [policy if policy != "before" else f"before ({args.before})",
               report.fmt_ms(rounds.median(f"{policy}/one-thread", size_text))]
        for contender in CONTENDERS[1:]:
            name, one = f"{policy}/{contender}", f"{policy}/one-thread"
            low, high = rounds.ratio_range(size_text, name, one)
            row += [report.fmt_ms(rounds.median(name, size_text)),
                    f"{rounds.ratio(size_text, name, one):.2f}x [{low:.2f}-{high:.2f}]"]
        rows.append(row)
    print()
    for line in report.markdown_table(header, rows, right_from=1):
        print(line)
    print()
    for policy in policies:
        print(f"{policy}: check: two threads against one within {checked[policy]['agreement']:.1e}; "
              f"loops {checked[policy]['counts']}")
        print(f"  time loops: {checked[policy]['lanes']}")
    if "share" in policies:
        met = all(rounds.ratio(size_text, f"share/{c}", "share/one-thread") <= 1.0 for c in CONTENDERS[1:])
        print(f"target (two threads not slower than one, default policy 'share'): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    status = main()
    if "--worker" not in sys.argv and "--check" not in sys.argv:
        print(f"({time.perf_counter() - t0:.0f} s)")
    sys.exit(status)
