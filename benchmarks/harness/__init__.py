"""What the benchmark scripts share: the method, the report and the checks; the contenders.

* ``method``: how a time is taken -- worker processes (forked from a server that
  has imported one library, or new interpreters), interleaved turns, rounds,
  medians and ratios computed within a round, waiting for idle CPUs.
* ``report``: what is printed -- the machine and its libraries, tables, number
  formats, the closing line on the targets.
* ``checks``: every output and gradient of a contender compared with a
  reference under a named tolerance; a failed check stops the script before it
  times anything.
* ``contenders``: what is timed, one module per benchmark (``naive`` is the
  course-style NumPy version ``bench_cpu.py`` times against).

The scripts (``bench_cpu.py``, ``bench_gpu.py``, ``lm_vs_torch.py``) are the
drivers: their command line, which contenders and cases, and the targets.
They import this package from their own directory, so they run as
``python benchmarks/<script>.py`` from the repository root or as
``python <script>.py`` from ``benchmarks/``.
"""
