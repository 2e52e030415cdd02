"""The README's sequence-to-sequence command on the built-in dates: time to train, and exact match on held-out dates.

Runs ``xseq train --task seq2seq`` (the defaults, as the README gives it) once per seed, each in its own process,
and reads what it prints: the training time of its last validation record and the exact match of the held-out
pairs (dates no training pair names). The issue's target: at least 99.5% exact match after at most 2 minutes of
training on the 2-core benchmark machine.

Usage::

    python benchmarks/bench_dates.py                 # seeds 0 1 2
    python benchmarks/bench_dates.py --seeds 0 --beam 3
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MATCH, TARGET_SECONDS = 99.5, 120.0


def run(seed, beam, extra):
    """``(training seconds, wall seconds, exact match %)`` of one ``xseq train --task seq2seq`` run."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "xseq", "train", "--task", "seq2seq", "--seed", str(seed), "--samples", "0",
                   "--out", os.path.join(tmp, "dates.npz"), *(["--beam", str(beam)] if beam > 1 else []), *extra]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"seed {seed}: xseq train failed ({done.returncode}): {done.stderr.strip()}")
    seconds = [float(s) for s in re.findall(r"\(([0-9.]+) s\)", done.stdout)]
    match = re.search(r"exact match: ([0-9.]+)% of ([0-9]+) held-out pairs", done.stdout)
    return seconds[-1], wall, float(match.group(1)), int(match.group(2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="more options for xseq train (after --)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| seed | training s | wall s | exact match | held-out pairs |")
    print("| --- | --- | --- | --- | --- |")
    worst = (0.0, 100.0)
    for seed in args.seeds:
        seconds, wall, match, pairs = run(seed, args.beam, args.extra)
        worst = (max(worst[0], seconds), min(worst[1], match))
        print(f"| {seed} | {seconds:.1f} | {wall:.1f} | {match:.2f}% | {pairs} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    ok = worst[0] <= TARGET_SECONDS and worst[1] >= TARGET_MATCH
    print(f"target (>= {TARGET_MATCH}% in <= {TARGET_SECONDS:.0f} s of training): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
