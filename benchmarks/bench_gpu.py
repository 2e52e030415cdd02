"""GPU benchmark: xseq's fused CuPy kernels against its array-API path and cuDNN's LSTM.

What is timed
-------------
A one-layer LSTM in float32, time-major, over a whole sequence, four ways:

* ``fused``: ``xseq._engine.sequence_forward`` / ``sequence_backward`` on CuPy
  arrays as dispatched by default: the direct loop (``_kernels.DirectSteps``
  on ``CupyDevice``), per step one cuBLAS gemm and one launch of the fused
  kernel, by address;
* ``fused-steps``: the same with ``XSEQ_DIRECT=0``: the engine's own loop over
  the fused step methods (one ``ElementwiseKernel`` and one ``cupy.matmul``
  per step on array views; the default before the direct loop);
* ``array-api``: the same calls with ``XSEQ_FUSED=0``, so the pointwise work
  is the array-API reference (``xseq._pointwise.ArrayAPIOps``);
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

Method
------
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

Before timing, a check process (``--no-check`` skips it) verifies on a small
size that xseq (all three ways) and cuDNN compute the same outputs and
gradients from the same weights, and that the direct loop is in use (not
fallen back to the step methods after a failed self-check).

Usage::

    python benchmarks/bench_gpu.py                      # both sizes, all four contenders
    python benchmarks/bench_gpu.py --sizes small --rounds 5
    python benchmarks/bench_gpu.py --contenders fused array-api   # without PyTorch
    python benchmarks/bench_gpu.py --worker fused deepbench       # one worker, prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {"small": (123, 320, 64, 100), "deepbench": (1024, 1024, 128, 25)}
CONTENDERS = ("fused", "fused-steps", "array-api", "cudnn")
XSEQ_ENV = {  # the switches each xseq contender runs under
    "fused": {"XSEQ_FUSED": "1", "XSEQ_DIRECT": "1"},
    "fused-steps": {"XSEQ_FUSED": "1", "XSEQ_DIRECT": "0"},
    "array-api": {"XSEQ_FUSED": "0", "XSEQ_DIRECT": "1"},
}
MODES = ("forward", "forward+backward")
CHECK_SIZE = (13, 24, 5, 9)


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


# ---------------------------------------------------------------- workers

def lstm_weights(size, seed=0):
    """NumPy float32 weights shaped like torch.nn.LSTM's, uniform in +-1/sqrt(H) like its default."""
    import numpy as np

    I, H, N, T = size
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(np.float32)

    return dict(
        W_ih=u(4 * H, I), W_hh=u(4 * H, H), b_ih=u(4 * H), b_hh=u(4 * H),
        x=rng.standard_normal((T, N, I)).astype(np.float32),
        h0=np.zeros((N, H), np.float32), c0=np.zeros((N, H), np.float32),
        dY=rng.standard_normal((T, N, H)).astype(np.float32),
    )


def xseq_runner(size):
    """(forward, forward_backward, sync, which ops run) for xseq on CuPy; XSEQ_FUSED/XSEQ_DIRECT are set by the caller."""
    import array_api_compat
    import cupy

    from xseq import _engine
    from xseq._pointwise import ops_for

    a = {k: cupy.asarray(v) for k, v in lstm_weights(size).items()}
    xp = array_api_compat.array_namespace(a["x"])

    def forward():
        return _engine.sequence_forward("lstm", a["x"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"])

    def forward_backward():
        *_, trace = forward()
        return _engine.sequence_backward(trace, dY=a["dY"])

    def sync():
        cupy.cuda.Device().synchronize()

    def describe():  # after a first run: whether the direct loop passed its self-check
        from xseq._kernels import direct_status

        ops = type(ops_for(xp)).__name__
        return f"{ops}, {direct_status()}" if ops == "FusedCupyOps" else ops

    return forward, forward_backward, sync, describe


def torch_lstm(size, tf32):
    """torch.nn.LSTM on CUDA with xseq's weights; input and initial states require gradients, like xseq's."""
    import torch

    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    w = lstm_weights(size)
    I, H, N, T = size
    lstm = torch.nn.LSTM(I, H).cuda()
    with torch.no_grad():
        for name, key in (("weight_ih_l0", "W_ih"), ("weight_hh_l0", "W_hh"), ("bias_ih_l0", "b_ih"), ("bias_hh_l0", "b_hh")):
            getattr(lstm, name).copy_(torch.from_numpy(w[key]))

    def cuda(key, requires_grad=False):
        return torch.from_numpy(w[key]).cuda().requires_grad_(requires_grad)

    x, dY = cuda("x", True), cuda("dY")
    h0, c0 = (torch.from_numpy(w[k]).cuda()[None].requires_grad_(True) for k in ("h0", "c0"))
    return lstm, x, h0, c0, dY


def cudnn_runner(size, tf32=False):
    import torch

    lstm, x, h0, c0, dY = torch_lstm(size, tf32)

    def forward():
        return lstm(x, (h0, c0))

    def forward_backward():
        lstm.zero_grad(set_to_none=True)
        x.grad = h0.grad = c0.grad = None
        y, _ = lstm(x, (h0, c0))
        y.backward(dY)

    return forward, forward_backward, torch.cuda.synchronize, lambda: "torch.nn.LSTM (cuDNN)"


def worker(contender, size, warmup, iters, tf32):
    """Times every mode for one contender; prints one JSON line: {mode: [ms, ...], "ops": ...}."""
    if contender == "cudnn":
        forward, forward_backward, sync, ops = cudnn_runner(size, tf32)
    else:
        forward, forward_backward, sync, ops = xseq_runner(size)
    result = {}
    for mode, fn in (("forward", forward), ("forward+backward", forward_backward)):
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(iters):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
        result[mode] = times
    result["ops"] = ops()
    print(json.dumps(result))


def check(tf32):
    """xseq's three ways and cuDNN agree on a small problem (outputs and every gradient); the direct loop is in use."""
    import cupy
    import numpy as np

    from xseq import _engine

    size = CHECK_SIZE
    results = {}
    for contender, env in XSEQ_ENV.items():
        os.environ.update(env)
        forward, _, _, ops = xseq_runner(size)
        Y, _, _, trace = forward()
        g = _engine.sequence_backward(trace, dY=cupy.asarray(lstm_weights(size)["dY"]))
        got = dict(Y=Y, dX=g["dX"], dW_ih=g["dW_ih"], dW_hh=g["dW_hh"], db=g["db_ih"], dh0=g["dh0"], dc0=g["dc0"])
        results[contender] = {k: cupy.asnumpy(v) for k, v in got.items()}
        status = ops()
        print(f"check: {contender} runs {status}")
        if contender == "fused" and ": direct launches" not in status:
            sys.exit("check failed: the direct loop is not in use (see the reason above)")
    lstm, x, h0, c0, dY = torch_lstm(size, tf32)
    y, _ = lstm(x, (h0, c0))
    y.backward(dY)
    got = dict(Y=y, dX=x.grad, dW_ih=lstm.weight_ih_l0.grad, dW_hh=lstm.weight_hh_l0.grad,
               db=lstm.bias_ih_l0.grad, dh0=h0.grad[0], dc0=c0.grad[0])
    results["cudnn"] = {k: v.detach().cpu().numpy() for k, v in got.items()}
    worst = 0.0
    for other in ("fused-steps", "array-api", "cudnn"):
        for key, want in results[other].items():
            diff = np.max(np.abs(results["fused"][key] - want)) / max(float(np.max(np.abs(want))), 1e-30)
            worst = max(worst, float(diff))
            if diff > 1e-4:
                sys.exit(f"check failed: fused and {other} differ in {key} by {diff:.2e} of its largest value")
    print(f"check: fused, fused-steps, array-API and cuDNN agree (largest difference {worst:.1e} of a result's largest value)")


# ---------------------------------------------------------------- parent

def run_worker(contender, size, args):
    env = {**os.environ, **XSEQ_ENV.get(contender, {})}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", contender, "x".join(map(str, size)),
           "--warmup", str(args.warmup), "--iters", str(args.iters)] + (["--tf32"] if args.tf32 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"worker failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--rounds", type=int, default=3, help="processes per contender and size (default 3)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per process and mode (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per process and mode (default 3)")
    parser.add_argument("--tf32", action="store_true", help="let torch/cuDNN use TF32 (CuPy keeps float32)")
    parser.add_argument("--no-check", action="store_true", help="skip the agreement check before timing")
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--rounds and --iters must be >= 1, --warmup >= 0")

    if args.check_only:
        check(args.tf32)
        return
    if args.worker:
        contender, size = args.worker
        if contender not in CONTENDERS:
            parser.error(f"unknown contender {contender!r}")
        worker(contender, parse_size(size), args.warmup, args.iters, args.tf32)
        return

    info = gpu_or_exit(need_torch="cudnn" in args.contenders)
    print(" | ".join(info))
    print(f"float32, TF32 {'on' if args.tf32 else 'off'} for torch; {args.rounds} rounds x {args.iters} timed "
          f"iterations after {args.warmup} warm-up, median; one process per contender, order rotated per round")
    if not args.no_check and "cudnn" in args.contenders:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--check-only"]
                              + (["--tf32"] if args.tf32 else []), cwd=ROOT)
        if proc.returncode != 0:
            sys.exit("the agreement check failed; not timing")

    times = {}  # (size, contender, mode) -> [ms]
    for r in range(args.rounds):
        for size in args.sizes:
            k = r % len(args.contenders)
            for contender in args.contenders[k:] + args.contenders[:k]:
                result = run_worker(contender, size, args)
                for mode in MODES:
                    times.setdefault((size, contender, mode), []).extend(result[mode])
                if r == 0:
                    print(f"  {size_label(size)}: {contender} runs {result['ops']}", flush=True)

    med = {key: statistics.median(v) for key, v in times.items()}
    header = ["size", "mode", "fused ms", "fused-steps ms", "array-API ms", "cuDNN ms", "fused/cuDNN",
              "fused-steps/fused", "array-API/fused"]
    rows = []
    for size in args.sizes:
        for mode in MODES:
            f, s, a, c = (med.get((size, k, mode)) for k in CONTENDERS)
            rows.append([size_label(size), mode, fmt(f), fmt(s), fmt(a), fmt(c), ratio(f, c), ratio(s, f), ratio(a, f)])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print()
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths))))
    print("\nratios: time of the first over time of the second (fused/cuDNN < 1 means fused is faster)")


if __name__ == "__main__":
    main()
