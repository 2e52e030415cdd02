"""GPU benchmark: xseq's fused CuPy kernels against its array-API path and cuDNN's LSTM.

What is timed (``harness/contenders/gpu.py``)
---------------------------------------------
A one-layer LSTM in float32, time-major, over a whole sequence, four ways:

* ``fused``: ``xseq.engine.sequence.sequence_forward`` / ``sequence_backward`` on CuPy
  arrays as dispatched by default: the direct loop (``xseq.ops.fused.DirectSteps``
  on ``CupyDevice``), per step one cuBLAS gemm and one launch of the fused
  kernel, by address;
* ``fused-steps``: the same with ``XSEQ_DIRECT=0``: the engine's own loop over
  the fused step methods (one ``ElementwiseKernel`` and one ``cupy.matmul``
  per step on array views; the default before the direct loop);
* ``array-api``: the same calls with ``XSEQ_FUSED=0``, so the pointwise work
  is the array-API reference (``xseq.ops.reference.ArrayAPIOps``);
* ``cudnn``: ``torch.nn.LSTM`` on CUDA, which PyTorch runs with cuDNN.

The engine is called directly, with the gate matrices stacked as
``torch.nn.LSTM`` stacks them (``W_ih`` (4H, I), ``W_hh`` (4H, H), gate order
i f g o) and time-major ``(T, N, I)`` input, because that is exactly what
``nn.LSTM`` computes; the public ``xseq.lstm_forward`` / ``xseq.LSTM`` add
the course's layout (transposes) and, for ``lstm_forward``, a softmax
output layer, which ``nn.LSTM`` does not have.

Modes: ``forward`` (a training forward pass: xseq keeps its trace, torch
runs with autograd on) and ``forward+backward`` (gradients of the input,
the weights, the biases and the initial state for an upstream gradient
``dY`` of every output; torch: ``y.backward(dY)`` with ``x.requires_grad``).

TF32 is off for torch (``--tf32`` turns it on), so that all four do
float32 GEMMs; CuPy does not use TF32 unless ``CUPY_TF32=1``.

Sizes (``--sizes``): ``small`` I=123, H=320, N=64, T=100 and ``deepbench``
I=H=1024, N=128, T=25 (the DeepBench LSTM training shape), or ``IxHxNxT``.

Method (``harness/method.py``)
------------------------------
Every contender runs in its own process: the script re-invokes itself as
``bench_gpu.py --worker CONTENDER SIZE``. A worker builds its inputs on the
GPU, runs ``--warmup`` untimed iterations of each mode (CuPy compiles its
kernels on first use, cuDNN picks its algorithms), then times ``--iters``
iterations, each between two device synchronisations
(``cupy.cuda.Device().synchronize()`` / ``torch.cuda.synchronize()``) with
``time.perf_counter``. The parent runs ``--rounds`` rounds; each round runs
every contender once per size, rotating their order from round to round.
The table shows the median of all timed iterations of all rounds (at least
5 per cell by default: 3 rounds of 5).

Before timing, a check process (``--no-check`` skips it) builds every chosen
contender at every timed size as its worker does, runs each mode twice and
compares every output (``Y``, ``h_T``, ``c_T``) and every gradient (``dX``,
``dW_ih``, ``dW_hh``, ``db_ih``, ``db_hh``, ``dh0``, ``dc0``) with the
array-API path's (``harness/contenders/gpu.py``, ``harness/checks.py``); it
also requires the ``fused`` contender to run the direct loop (not the step
methods it falls back to after a failed self-check). A difference stops the
script with exit status 1 before anything is timed.

Usage::

    python benchmarks/bench_gpu.py                      # both sizes, all four contenders
    python benchmarks/bench_gpu.py --sizes small --rounds 5
    python benchmarks/bench_gpu.py --contenders fused array-api   # without PyTorch
    python benchmarks/bench_gpu.py --worker fused deepbench       # one worker, prints JSON
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
from harness import method, report  # noqa: E402
from harness.contenders import gpu  # noqa: E402

SIZES = {"small": (123, 320, 64, 100), "deepbench": (1024, 1024, 128, 25)}
SCRIPT = Path(__file__).resolve()


def parse_size(text):
    if text in SIZES:
        return SIZES[text]
    parts = text.split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: expected small, deepbench or IxHxNxT, e.g. 123x320x64x100")
    return tuple(int(p) for p in parts)


def size_label(size):
    name = next((k for k, v in SIZES.items() if v == size), None)
    I, H, N, T = size
    dims = f"I={I} H={H} N={N} T={T}"
    return f"{name} ({dims})" if name else dims


# ---------------------------------------------------------------- the GPU, or a clear reason why not

def gpu_or_exit(need_torch):
    """Name and software of the GPU; exits with a message where the contenders cannot run."""
    try:
        import cupy
    except ImportError as exc:
        sys.exit(f"bench_gpu.py needs CuPy with a CUDA GPU: CuPy is not installed ({exc}); pip install cupy-cuda12x")
    try:
        available = cupy.is_available()
    except Exception as exc:  # a broken driver raises from deep inside CuPy
        sys.exit(f"bench_gpu.py needs a CUDA GPU: CuPy failed to initialise CUDA ({exc})")
    if not available:
        sys.exit("bench_gpu.py needs a CUDA GPU: CuPy is installed but finds no usable CUDA device")
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    info = [f"GPU: {name}", f"CuPy {cupy.__version__} (CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()})"]
    if need_torch:
        try:
            import torch
        except ImportError as exc:
            sys.exit(f"the cudnn contender needs PyTorch with CUDA ({exc}); or pass --contenders fused array-api")
        if not torch.cuda.is_available() or not torch.backends.cudnn.is_available():
            sys.exit("the cudnn contender needs PyTorch built with CUDA and cuDNN and a visible GPU; "
                     "or pass --contenders fused array-api")
        info.append(f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    return info


# ---------------------------------------------------------------- worker and check processes

def worker(contender, size, warmup, iters, tf32):
    """Times every mode for one contender; prints one JSON line: {mode: [ms, ...], "ops": ...}."""
    c = gpu.contender(contender, size, tf32)  # the parent set this contender's XSEQ_* switches
    result = {}
    for mode, fn in (("forward", c.forward), ("forward+backward", c.forward_backward)):
        for _ in range(warmup):
            fn()
        c.sync()
        times = []
        for _ in range(iters):
            c.sync()
            t0 = time.perf_counter()
            fn()
            c.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        result[mode] = times
    result["ops"] = c.describe()
    print(json.dumps(result))


def check_only(args):
    """``--check-only``: every chosen contender at every size against the array-API path; exits 1 on a difference."""
    result = gpu.check(args.sizes, args.contenders, args.tf32)
    result.exit_if_failed()
    print(f"check: {result.arrays} arrays, every output and gradient of {', '.join(args.contenders)}, agree with "
          f"the array-API path", flush=True)


def run_worker(contender, size, args):
    argv = ["--worker", contender, "x".join(map(str, size)), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    try:
        return method.run_json(SCRIPT, argv + (["--tf32"] if args.tf32 else []),
                               env=method.environment(**gpu.XSEQ_ENV.get(contender, {})), cwd=ROOT)
    except method.WorkerFailed as exc:
        sys.exit(f"worker failed: {exc}")


# ---------------------------------------------------------------- parent

def fmt(v):
    return "-" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.1f}")


def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Time xseq's fused CuPy LSTM (direct loop; step methods with XSEQ_DIRECT=0) against its "
                    "array-API path (XSEQ_FUSED=0) and torch.nn.LSTM (cuDNN).",
        epilog="Needs a CUDA GPU, CuPy and (for the cudnn contender) PyTorch with CUDA.",
    )
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=list(SIZES.values()),
                        metavar="SIZE", help="small, deepbench or IxHxNxT (default: small deepbench)")
    parser.add_argument("--contenders", nargs="+", choices=gpu.CONTENDERS, default=list(gpu.CONTENDERS))
    parser.add_argument("--rounds", type=int, default=3, help="processes per contender and size (default 3)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per process and mode (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per process and mode (default 3)")
    parser.add_argument("--tf32", action="store_true", help="let torch/cuDNN use TF32 (CuPy keeps float32)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the check of every contender's outputs and gradients against the array-API path")
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--rounds and --iters must be >= 1, --warmup >= 0")

    if args.check_only:
        check_only(args)
        return 0
    if args.worker:
        contender, size = args.worker
        if contender not in gpu.CONTENDERS:
            parser.error(f"unknown contender {contender!r}")
        worker(contender, parse_size(size), args.warmup, args.iters, args.tf32)
        return 0

    info = gpu_or_exit(need_torch="cudnn" in args.contenders)
    print(" | ".join(info))
    print(f"float32, TF32 {'on' if args.tf32 else 'off'} for torch; {args.rounds} rounds x {args.iters} timed "
          f"iterations after {args.warmup} warm-up, median; one process per contender, order rotated per round")
    if args.no_check:
        print("check: skipped (--no-check); the results are not compared with the array-API path")
    else:
        sizes = ["x".join(map(str, size)) for size in args.sizes]
        done = subprocess.run([sys.executable, str(SCRIPT), "--check-only", "--sizes", *sizes,
                               "--contenders", *args.contenders] + (["--tf32"] if args.tf32 else []), cwd=ROOT)
        if done.returncode != 0:
            print("the check failed (see above): nothing is timed", file=sys.stderr)
            return 1

    times = {}  # (size, contender, mode) -> [ms]
    for r in range(args.rounds):
        for size in args.sizes:
            for contender in method.rotated(args.contenders, r):
                result = run_worker(contender, size, args)
                for mode in gpu.MODES:
                    times.setdefault((size, contender, mode), []).extend(result[mode])
                if r == 0:
                    print(f"  {size_label(size)}: {contender} runs {result['ops']}", flush=True)

    med = {key: statistics.median(v) for key, v in times.items()}
    header = ["size", "mode", "fused ms", "fused-steps ms", "array-API ms", "cuDNN ms", "fused/cuDNN",
              "fused-steps/fused", "array-API/fused"]
    rows = []
    for size in args.sizes:
        for mode in gpu.MODES:
            f, s, a, c = (med.get((size, k, mode)) for k in gpu.CONTENDERS)
            rows.append([size_label(size), mode, fmt(f), fmt(s), fmt(a), fmt(c), ratio(f, c), ratio(s, f), ratio(a, f)])
    print()
    for line in report.aligned_table(header, rows, left=2):
        print(line)
    print("\nratios: time of the first over time of the second (fused/cuDNN < 1 means fused is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
