"""xseq's GPU check in one command: every GPU path run once, one report written.

For a session that has a GPU lent to it for a few minutes (issue 22, section 5).
Run from anywhere, with the GPU machine's own Python (it has CuPy, PyTorch,
mpi4py and NCCL, and no network)::

    python3 tools/gpu_check.py --require-gpu --report "$OUT/gpu_report.md"

Steps, in this order, each in its own process with its own time limit, all of
them within ``--budget`` seconds (default 470: the whole run stays under 8
minutes); a step that fails or runs out of time is reported and the next one
runs:

``machine``
    Python, the platform, the versions of CuPy, PyTorch, mpi4py, NCCL's wheel,
    NumPy and the rest, ``nvidia-smi``, the compiler, the commit.
``wheels``
    Installs the wheels carried in ``--wheels`` (default ``.whl/gpu_check``,
    made here by ``--prepare-wheels``) into ``--site`` with
    ``pip install --no-index --no-deps --target``, puts that folder and the
    repository first on every later step's ``PYTHONPATH`` (xseq runs from its
    source tree, nothing is installed into the machine's environment), and
    checks that xseq's runtime and test dependencies import.
``probe``
    ``tests/gpu.py``'s ``cuda_verdict``, the one decision the test suite
    makes: run, skip (no GPU) or fail (a GPU CUDA does not start on); then the
    device, CUDA, NCCL, PyTorch and cuDNN. Where it says skip, every GPU step
    below is skipped with that reason (a failure with ``--require-gpu``).
``selfcheck`` (GPU)
    The direct loop's self-check (``xseq.engine.sequence.check_direct``) on
    ``xseq.ops.cuda.CupyDevice`` in float32 and float64; the same check must
    reject two devices made wrong on purpose (the gemm's beta ignored, every
    other launch lost); then the production path: ``cupy_direct_device`` gives
    a device and ``FusedCupyOps.direct_steps`` the direct loop.
``nccl-single`` (GPU)
    The NCCL path at world size 1: ``NCCLCommunicator`` as
    ``xseq.distributed.gpu_communicator`` builds it for several ranks, its
    control messages carried by a single-process stand-in for MPI. Sums and
    broadcasts of CuPy arrays of five dtypes (counted through NCCL), a
    non-contiguous array refused, bucketed sums; then two short training runs
    on CuPy (line LSTM with Adam; stream GRU with an embedding) send their
    arrays as a run of several ranks does (every parameter broadcast, the last
    step's gradients summed in buckets): each must come back unchanged, with
    one NCCL call per parameter and per bucket. (A run of one process never
    calls its communicator, so the training itself cannot go through NCCL at
    world size 1.)
``nccl`` (GPU)
    The same over MPI, as in a real job (``MPICommunicator`` on ``mpi4py``'s
    ``COMM_WORLD``, one process, no launcher): a failure here and not in
    ``nccl-single`` is MPI's.
``pytest`` (GPU)
    The CuPy tests: ``pytest tests -k "cupy or cuda or gpu"`` (the GPU-only
    modules ``tests/test_fused_gpu.py`` and ``tests/test_gpu_gate.py`` whole,
    and every test run on the ``cupy`` backend), ``-ra``, a per-test timeout
    of 120 s where ``pytest-timeout`` is installed (the GPU machine has it).
``bench`` (GPU)
    ``benchmarks/bench_gpu.py`` at both sizes (``small`` and ``deepbench``),
    its check first; ``--bench-args`` passes other arguments.

The cheap steps run first, so that a slow test run or benchmark cannot take
their time. The report (``--report``, markdown) has a table of every step
(status, seconds, limit, one line of summary) and each step's command and the
tail of its output; it is rewritten after every step, so a run cut short still
leaves one. The whole output of every step goes to ``--log`` (default
``gpu_check.log`` beside the report). Exit status: 0 when every step passed or
was skipped (with ``--require-gpu``, a skip for want of a GPU counts as a
failure), 1 otherwise.

On a machine without a GPU the command runs to the end in seconds: the GPU steps
say ``skipped: no GPU`` (``tests/test_gpu_check.py`` runs it so, with
``--no-gpu``). ``--add-step NAME SECONDS COMMAND`` appends a step of your own
(a shell command; ``$PYTHON`` is this check's interpreter); ``--skip NAME ...`` leaves steps out (for a second run in
what is left of a lease, say).

Here, before the session, ``python tools/gpu_check.py --prepare-wheels``
downloads the wheels the GPU machine lacks (``array-api-compat`` and
``array-api-strict``, at the versions installed here, for CPython 3.12 on
x86-64 Linux) into ``.whl/gpu_check``, which ``.gitignore`` keeps out of git and
the device tool's ``carry`` takes along. ``benchmarks/README.md``, "GPU check in
one command", has the exact call.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
DEFAULT_WHEELS = ROOT / ".whl" / "gpu_check"
DEFAULT_SITE = Path("/tmp/xseq_gpu_check_site")
DEFAULT_BUDGET_S = 470

#: Distributions the GPU machine lacks (the device tool's KINDS.md lists what it has), carried as wheels at the
#: versions installed where ``--prepare-wheels`` runs: xseq's runtime needs array-api-compat, its tests
#: array-api-strict.
CARRIED = ("array-api-compat", "array-api-strict")
#: Modules every later step needs: xseq's runtime dependencies and the test runner.
REQUIRED_MODULES = ("numpy", "array_api_compat", "tqdm", "pytest", "array_api_strict")
#: The GPU machine's Python and platform (the device tool's KINDS.md: Python 3.12 on x86-64).
GPU_PYTHON = "3.12"
GPU_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                 "manylinux1_x86_64")
#: Distributions whose versions the ``machine`` step records (those present are shown).
RECORDED = ("numpy", "cupy", "cupy-cuda12x", "cupy-cuda13x", "torch", "mpi4py", "nvidia-nccl-cu12",
            "nvidia-nccl-cu13", "array-api-compat", "array-api-strict", "tqdm", "pytest", "pytest-timeout",
            "hypothesis", "matplotlib", "xseq")
#: The fast paths' switches: unset for every step, so that each runs as dispatched by default
#: (bench_gpu.py sets them per contender itself).
SWITCHES = ("XSEQ_FUSED", "XSEQ_DIRECT")
#: Lines of each step's output kept in the report (the whole output is in the log).
TAIL_LINES = 60


# ====================================================================== the steps, as run by the parent


@dataclass
class Step:
    """One step: a command run in its own process (its own process group), with a time limit.

    ``gpu``: skipped where the probe finds no GPU. ``summary``: a regular
    expression; the report's one-line summary is the last output line matching
    it (else the last non-empty line).
    """

    name: str
    title: str
    command: list | str  # argv, or a shell command (--add-step)
    limit_s: float
    gpu: bool = False
    summary: str | None = None
    tail: int = TAIL_LINES


@dataclass
class Outcome:
    """What a step did: ``status`` is passed, failed, timed out or skipped; ``detail`` says why."""

    status: str
    detail: str = ""
    seconds: float = 0.0
    limit_s: float | None = None
    output: list = field(default_factory=list)
    summary: str = ""


def own_step(name, *args):
    """The command that runs this script's in-process step ``name`` (see :data:`STEP_FUNCTIONS`)."""
    return [sys.executable, str(SCRIPT), "--step", name, *args]


def default_steps(args):
    """The steps of a check, in the order they run."""
    pytest = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests",
              "-k", "cupy or cuda or gpu", "--ignore=tests/test_gpu_check.py"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        pytest.append("--timeout=120")  # one hung test fails alone instead of taking the step's whole time
    pytest += shlex.split(args.pytest_args)
    return [
        Step("machine", "the machine and its software", own_step("machine"), 30, summary=r"^machine:", tail=200),
        Step("wheels", "carried wheels installed, dependencies importable",
             own_step("wheels", "--wheels", str(args.wheels), "--site", str(args.site)), 60),
        Step("probe", "a GPU CUDA starts on (tests/gpu.py's verdict)", own_step("probe"), 60,
             summary=r"^verdict:"),
        Step("selfcheck", "the direct loop's self-check on CupyDevice", own_step("selfcheck"), 90,
             gpu=True, summary=r"^selfcheck:"),
        Step("nccl-single", "NCCL path at world size 1, single-process carrier",
             own_step("nccl", "--carrier", "single"), 60, gpu=True, summary=r"^nccl:"),
        Step("nccl", "NCCL path at world size 1, over MPI", own_step("nccl", "--carrier", "mpi"), 60,
             gpu=True, summary=r"^nccl:"),
        Step("pytest", "the CuPy tests", pytest, 180, gpu=True,
             summary=r"\d+ (passed|failed|skipped|errors?|deselected)", tail=100),
        Step("bench", "benchmarks/bench_gpu.py at both sizes",
             [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), *shlex.split(args.bench_args)], 240,
             gpu=True, summary=r"^\s*(small|DeepBench|deepbench|I=).*forward\+backward", tail=40),
    ]


def step_environment(site):
    """The environment of every step: the carried packages and the repository first on the path, switches unset."""
    env = dict(os.environ)
    for name in SWITCHES:
        env.pop(name, None)
    paths = [str(site), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHON"] = sys.executable  # for --add-step's commands: the interpreter of this check
    # Open MPI refuses root (the GPU machine's user) unless told; MPICH ignores these.
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def run_command(command, limit_s, env, log):
    """Run ``command`` in a new process group for at most ``limit_s`` seconds.

    Its output (stdout and stderr together) is copied line by line to ``log``
    as it comes. At the limit the whole group (the command and every process
    it started, such as bench_gpu.py's workers) is killed.

    Returns
    -------
    (returncode or None if it was killed at the limit, seconds, list of output lines)
    """
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=ROOT, env=env, start_new_session=True, text=True, errors="replace")
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log.write(line)
            log.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(limit_s, 0.1))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started (start_new_session)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # stuck in the kernel (a hung driver call): leave it, say so
            lines.append(f"[gpu_check: process {proc.pid} still alive 30 s after SIGKILL; left behind]")
        code = None
    reader.join(timeout=5)  # a process that left the group may still hold the pipe: do not wait for it
    return code, time.monotonic() - start, list(lines)


def summarize(lines, pattern):
    """The last output line matching ``pattern`` (else the last non-empty line), shortened to 160 characters."""
    text = [line.strip() for line in lines if line.strip()]
    if pattern is not None:
        matching = [line for line in text if re.search(pattern, line)]
        if matching:
            text = matching
    line = text[-1] if text else ""
    return line if len(line) <= 160 else line[:157] + "..."


# ---------------------------------------------------------------------- the report


def fence(lines):
    """``lines`` in a fenced block that no line of them can close."""
    longest = max([len(m) for line in lines for m in re.findall(r"`{3,}", line)] + [2])
    marks = "`" * (longest + 1)
    return [marks + "text", *lines, marks]


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(path, run, steps, outcomes):
    """The markdown report: what ran where, one table row per step, then each step's command and output tail."""
    done = [outcomes[s.name] for s in steps if s.name in outcomes]
    counts = collections.Counter(o.status.split(":")[0] for o in done)
    lines = [
        "# xseq GPU check (tools/gpu_check.py)",
        "",
        f"- started: {run['started']} (UTC); {run['elapsed']:.0f} s so far, budget {run['budget']:.0f} s",
        f"- host: {run['host']}; Python {platform.python_version()} at {sys.executable}",
        f"- command: `{run['command']}`",
        f"- GPU: {run['gpu']}",
        f"- result: " + (", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing run yet")
        + ("" if len(done) == len(steps) else f"; {len(steps) - len(done)} step(s) not reached yet"),
        f"- full output of every step: {run['log']}",
        "",
        "| step | what | status | seconds | limit s | summary |",
        "|---|---|---|---:|---:|---|",
    ]
    for s in steps:
        o = outcomes.get(s.name)
        if o is None:
            lines.append(f"| {s.name} | {cell(s.title)} | not reached | | | |")
            continue
        status = o.status + (f": {o.detail}" if o.detail else "")
        limit = "" if o.limit_s is None else f"{o.limit_s:.0f}"
        lines.append(f"| {s.name} | {cell(s.title)} | {cell(status)} | {o.seconds:.1f} | {limit} | {cell(o.summary)} |")
    for s in steps:
        o = outcomes.get(s.name)
        if o is None or o.limit_s is None:  # never started: the table says why
            continue
        shown = o.output if len(o.output) <= s.tail else [f"[... {len(o.output) - s.tail} lines above ...]",
                                                          *o.output[-s.tail:]]
        lines += ["", f"## {s.name}: {s.title}", "",
                  f"`{shlex.join(s.command) if isinstance(s.command, list) else s.command}`", "",
                  f"{o.status}{': ' + o.detail if o.detail else ''} after {o.seconds:.1f} s"
                  + ("" if o.limit_s is None else f" (limit {o.limit_s:.0f} s)"), "",
                  *fence(shown or ["(no output)"])]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the parent


def tests_gpu():
    """``tests/gpu.py``: the test suite's one decision whether the GPU tests run, skip or fail."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import gpu

    return gpu


def gpu_decision(args, outcome):
    """``(run the GPU steps?, why)`` from the probe's outcome."""
    if args.no_gpu:
        return False, "no GPU (--no-gpu)"
    verdict = None
    for line in reversed(outcome.output if outcome else []):
        if line.startswith("{"):
            try:
                verdict = json.loads(line)
            except ValueError:
                continue
            break
    if verdict is not None:
        if verdict["verdict"] == "skip":
            return False, "no GPU: " + verdict["detail"].removeprefix(tests_gpu().GPU_ONLY)
        return True, verdict["detail"]
    # The probe crashed or hung before deciding: run the GPU steps only where the driver lists a GPU.
    gpus = tests_gpu().driver_gpu_count()
    if gpus:
        return True, f"the probe gave no verdict, but the NVIDIA driver lists {gpus} GPU(s)"
    return False, "no GPU: the probe gave no verdict and no NVIDIA driver lists a GPU"


def check(args):
    """Run every step and write the report; returns the exit status."""
    steps = default_steps(args)
    known = {s.name for s in steps}
    for name, seconds, command in args.add_step:
        try:
            limit = float(seconds)
        except ValueError:
            limit = -1.0
        if not limit > 0:
            sys.exit(f"--add-step {name}: SECONDS must be a number > 0; got {seconds!r}")
        if name in known:
            sys.exit(f"--add-step: a step named {name!r} exists already; steps: {', '.join(sorted(known))}")
        known.add(name)
        steps.append(Step(name, "added with --add-step", command, limit))
    unknown = [n for n in args.skip if n not in known]
    if unknown:
        sys.exit(f"--skip: unknown step(s) {', '.join(unknown)}; steps: {', '.join(s.name for s in steps)}")

    report = Path(args.report).resolve()
    log_path = Path(args.log).resolve() if args.log else report.with_name("gpu_check.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = step_environment(args.site)
    start = time.monotonic()
    deadline = start + args.budget
    run = dict(started=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
               host=platform.node(), command=shlex.join([Path(sys.executable).name, *sys.argv]),
               budget=args.budget, log=log_path.name, gpu="not probed yet", elapsed=0.0)
    outcomes = {}
    gpu_ok, gpu_why = None, ""
    failed = False
    with open(log_path, "w", encoding="utf-8") as log:
        for s in steps:
            if s.name in args.skip:
                outcome = Outcome("skipped", "--skip")
            elif s.name == "probe" and args.no_gpu:
                outcome = Outcome("skipped", "no GPU (--no-gpu)")
            elif s.gpu and not gpu_ok:
                if gpu_ok is None:
                    gpu_ok, gpu_why = gpu_decision(args, outcomes.get("probe"))
                    run["gpu"] = gpu_why
                short = gpu_why.split(":")[0]  # the whole reason is in the report's "GPU:" line
                outcome = None if gpu_ok else Outcome("skipped", short)
                if outcome is not None and args.require_gpu:
                    outcome = Outcome("failed", f"{short}, and --require-gpu asks for one")
            else:
                outcome = None
            if outcome is None:
                remaining = deadline - time.monotonic() - 3  # 3 s kept for the report
                limit = min(s.limit_s, remaining)
                if remaining < 5:
                    outcome = Outcome("skipped", f"no time left in the {args.budget:.0f} s budget")
                else:
                    command = s.command if isinstance(s.command, list) else ["bash", "-c", s.command]
                    log.write(f"\n===== {s.name}: {shlex.join(command)} (limit {limit:.0f} s)\n")
                    log.flush()
                    print(f"[gpu_check] {s.name}: running (limit {limit:.0f} s)", flush=True)
                    try:
                        code, seconds, output = run_command(command, limit, env, log)
                    except OSError as exc:  # the command cannot be started
                        code, seconds, output = -1, 0.0, [f"cannot start {command[0]}: {exc}"]
                    if code is None:
                        outcome = Outcome("timed out", f"killed after {limit:.0f} s", seconds, limit, output)
                    elif code == 0:
                        outcome = Outcome("passed", "", seconds, limit, output)
                    else:
                        outcome = Outcome("failed", f"exit status {code}", seconds, limit, output)
                    outcome.summary = summarize(output, s.summary)
            outcomes[s.name] = outcome
            if s.name == "probe" and outcome.output:
                gpu_ok, gpu_why = gpu_decision(args, outcome)
                run["gpu"] = gpu_why
            failed |= outcome.status in ("failed", "timed out")
            print(f"[gpu_check] {s.name}: {outcome.status}" + (f" ({outcome.detail})" if outcome.detail else "")
                  + (f" in {outcome.seconds:.1f} s" if outcome.limit_s else "")
                  + (f": {outcome.summary}" if outcome.summary else ""), flush=True)
            run["elapsed"] = time.monotonic() - start
            write_report(report, run, steps, outcomes)
    print(f"[gpu_check] report: {report}; log: {log_path}; {run['elapsed']:.0f} s", flush=True)
    return 1 if failed else 0


# ====================================================================== the in-process steps (``--step NAME``)


def step_machine(_args):
    """Print what the machine is and what it has."""
    import importlib.metadata as metadata

    print(f"python: {sys.version.split()[0]} at {sys.executable}")
    print(f"platform: {platform.platform()}; machine {platform.machine()}; {os.cpu_count()} CPUs")
    try:
        with open("/proc/meminfo") as f:
            print(f"memory: {f.readline().split(':')[1].strip()}")
    except OSError:
        pass
    for name in RECORDED:
        try:
            print(f"{name}: {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    version = (ROOT / "xseq" / "_version.py").read_text().strip().splitlines()[-1]
    print(f"xseq source: {ROOT} ({version})")
    gpus = "none listed (no nvidia-smi)"
    for command in (["git", "-C", str(ROOT), "log", "-1", "--format=commit %H %cd", "--date=iso"],
                    ["git", "-C", str(ROOT), "status", "--short", "--untracked-files=no"],
                    [os.environ.get("CXX", "g++"), "--version"], ["nvcc", "--version"],
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                     "--format=csv"], ["nvidia-smi"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"$ {shlex.join(command)}: not run ({type(exc).__name__}: {exc})")
            continue
        out = (done.stdout + done.stderr).rstrip().splitlines()
        print(f"$ {shlex.join(command)} (exit {done.returncode})")
        shown = out if command[0] == "nvidia-smi" else out[:20]
        for line in shown:
            print(f"  {line}")
        if len(shown) < len(out):
            print(f"  [... {len(out) - len(shown)} more lines]")
        if "--query-gpu" in command[1] and done.returncode == 0:
            gpus = "; ".join(out[1:]) or "none listed"
    print(f"machine: Python {platform.python_version()}, {os.cpu_count()} CPUs, GPU: {gpus}")
    return 0


def step_wheels(args):
    """Install the carried wheels into ``--site``; check that every module of :data:`REQUIRED_MODULES` imports."""
    wheels = sorted(Path(args.wheels).glob("*.whl")) if Path(args.wheels).is_dir() else []
    if wheels:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(args.site),
                   *map(str, wheels)]
        print("$ " + shlex.join(command), flush=True)
        done = subprocess.run(command)
        if done.returncode != 0:
            print(f"wheels: pip failed (exit {done.returncode})")
            return 1
        print(f"wheels: installed {', '.join(w.name for w in wheels)} into {args.site}")
    else:
        print(f"wheels: none in {args.wheels}; using what the machine has (make them here with "
              f"`python tools/gpu_check.py --prepare-wheels` and carry the folder)")
    # A fresh interpreter with the steps' path, as every later step will see it.
    probe = ("import importlib, importlib.metadata as md\n"
             f"for name in {REQUIRED_MODULES!r}:\n"
             "    try:\n"
             "        m = importlib.import_module(name)\n"
             "    except ImportError as exc:\n"
             "        print(f'MISSING {name}: {exc}')\n"
             "        continue\n"
             "    print(f'{name} {getattr(m, \"__version__\", \"?\")} from {m.__file__}')\n")
    done = subprocess.run([sys.executable, "-c", probe], env=step_environment(args.site), capture_output=True,
                          text=True)
    print(done.stdout + done.stderr, end="")
    missing = [line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line.startswith("MISSING")]
    if done.returncode != 0 or missing:
        print(f"wheels: missing {', '.join(missing) or '(the check failed)'}: carry wheels for them "
              f"(`python tools/gpu_check.py --prepare-wheels` here)")
        return 1
    print(f"wheels: every required module imports ({', '.join(REQUIRED_MODULES)})")
    return 0


def step_probe(_args):
    """tests/gpu.py's verdict, then the device and its software; the last line is the verdict as JSON."""
    gpu = tests_gpu()
    gpus = gpu.driver_gpu_count()
    verdict, detail = gpu.cuda_verdict(gpus)
    detail = detail if isinstance(detail, str) else "CUDA starts on the GPU"
    print(f"verdict: {verdict} ({detail}); the NVIDIA driver lists {gpus} GPU(s)")
    info = {}
    if verdict == "run":
        import cupy

        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info = dict(device=name, compute_capability=dev.compute_capability,
                    memory_gib=round(props["totalGlobalMem"] / 2**30, 1), sms=props["multiProcessorCount"],
                    devices=cupy.cuda.runtime.getDeviceCount(), cupy=cupy.__version__,
                    cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
                    cuda_driver=cupy.cuda.runtime.driverGetVersion())
        detail = f"{name}, {info['memory_gib']} GiB, CuPy {cupy.__version__}"
        try:
            from cupy.cuda import nccl

            info["nccl"] = nccl.get_version() if nccl.available else "not available to CuPy"
        except Exception as exc:  # CuPy raises its own types where libnccl is missing
            info["nccl"] = f"{type(exc).__name__}: {exc}"
        try:
            import torch

            info["torch"] = torch.__version__
            info["torch_cuda"] = torch.cuda.is_available()
            info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        except Exception as exc:
            info["torch"] = f"{type(exc).__name__}: {exc}"
        for key, value in info.items():
            print(f"{key}: {value}")
    print(json.dumps({"verdict": verdict, "detail": detail, **info}, default=str))
    return 1 if verdict == "fail" else 0


# ---------------------------------------------------------------------- the direct loop's self-check


def wrong_devices(base):
    """Subclasses of the direct-loop device class ``base``, each wrong in a way the self-check must catch.

    The ways a change in CuPy's low-level bindings could make ``CupyDevice``
    wrong (as ``tests/test_kernels_exec.py`` plants them in its host device):
    the gemm's ``beta`` ignored, and launches lost (as to the wrong stream).
    """

    class BetaIgnored(base):
        def gemm(self, m, n, k, a, lda, b, ldb, beta, c, ldc):
            super().gemm(m, n, k, a, lda, b, ldb, 0, c, ldc)

    class LostLaunches(base):
        def launch(self, name, n, args):
            self.lost_count = getattr(self, "lost_count", 0) + 1
            if self.lost_count % 2:
                super().launch(name, n, args)

    return BetaIgnored, LostLaunches


def direct_self_check(device_class, make, check, dtypes, xp=None):
    """Run the self-check ``check`` on a device of ``device_class`` per dtype, and on the wrong ones.

    Parameters
    ----------
    device_class : type
        ``xseq.ops.cuda.CupyDevice`` on a GPU (a host stand-in in the tests).
    make : callable
        ``make(cls, dtype)`` builds a device of class ``cls`` (``device_class``
        or a subclass) for ``dtype``.
    check : callable
        ``check(device, xp=xp)`` raises where the device's results differ from
        the step methods' (``xseq.engine.sequence.check_direct``).
    dtypes : sequence of numpy dtypes
    xp : namespace, optional
        Passed to ``check`` (None: its default, CuPy's).

    Returns
    -------
    list of str
        The problems found; empty when every right device passes and every
        wrong one is rejected. Each outcome is printed as it comes.
    """
    problems = []
    for dtype in dtypes:
        name = getattr(dtype, "__name__", str(dtype))
        start = time.perf_counter()
        try:
            check(make(device_class, dtype), xp=xp)
            print(f"selfcheck {name}: {device_class.__name__} agrees with the step methods "
                  f"({time.perf_counter() - start:.2f} s, compilation included)", flush=True)
        except Exception as exc:
            traceback.print_exc()
            problems.append(f"{name}: {device_class.__name__} fails the self-check ({type(exc).__name__}: {exc})")
        for wrong in wrong_devices(device_class):
            try:
                check(make(wrong, dtype), xp=xp)
            except RuntimeError as exc:
                if "differs from the step methods" in str(exc):
                    print(f"selfcheck {name}: a device with {wrong.__name__} is rejected ({exc})", flush=True)
                    continue
                problems.append(f"{name}: a device with {wrong.__name__} raised another error: {exc}")
            except Exception as exc:
                problems.append(f"{name}: a device with {wrong.__name__} raised {type(exc).__name__}: {exc}")
            else:
                problems.append(f"{name}: a device with {wrong.__name__} passes the self-check: it cannot "
                                "catch that fault")
    return problems


def step_selfcheck(_args):
    """The self-check on CupyDevice, its power to reject wrong devices, and the production path."""
    import array_api_compat
    import cupy
    import numpy as np

    from xseq.engine import sequence as engine
    from xseq.ops import cuda, fused

    dtypes = (np.float32, np.float64)
    problems = direct_self_check(cuda.CupyDevice, lambda cls, dtype: cls(dtype), engine.check_direct, dtypes)
    xp = array_api_compat.array_namespace(cupy.empty(0))
    for dtype in dtypes:
        device = cuda.cupy_direct_device(dtype, engine.check_direct)
        loop = cuda.FusedCupyOps(xp).direct_steps(dtype, check=engine.check_direct)
        if device is None or not isinstance(loop, fused.DirectSteps):
            problems.append(f"{dtype.__name__}: the engine does not get the direct loop ({cuda.direct_status()})")
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"selfcheck: {'passed' if not problems else f'{len(problems)} problem(s)'}; the engine's CuPy time "
          f"loops: {cuda.direct_status()}")
    return 1 if problems else 0


# ---------------------------------------------------------------------- the NCCL path at world size 1


class CountingNCCL:
    """Wraps a ``cupy.cuda.nccl.NcclCommunicator``, counting its ``allReduce`` and ``bcast`` calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, collections.Counter()

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("allReduce", "bcast"):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def nccl_collectives(comm, xp, to_host, on_device):
    """Sums and broadcasts through ``comm`` (an ``NCCLCommunicator`` of one rank): each must leave its input as is.

    Parameters
    ----------
    comm : xseq.distributed.NCCLCommunicator
        With ``comm.comm`` a :class:`CountingNCCL`.
    xp : module
        Makes the arrays: CuPy on a GPU (NumPy in the tests).
    to_host : callable
        A NumPy copy of one of ``xp``'s arrays (waits for the GPU).
    on_device : bool
        Whether ``xp``'s arrays are device arrays, which must go through NCCL
        (one ``allReduce`` or ``bcast`` each), be summed in place, and be refused
        when not C-contiguous.

    Returns
    -------
    list of str
        The problems found.
    """
    import numpy as np

    from xseq.distributed import allreduce_arrays, plan_buckets

    problems, calls = [], comm.comm.calls

    def expect_calls(what, name, before, count):
        want = before + (count if on_device else 0)
        if calls[name] != want:
            problems.append(f"{what}: {calls[name] - before} NCCL {name} call(s), expected {want - before}")

    for dtype in ("float32", "float64", "int32", "int64", "uint8"):
        a = xp.reshape(xp.arange(12, dtype=getattr(xp, dtype)), (3, 4))
        want, before = to_host(a).copy(), calls["allReduce"]
        got = comm.allreduce_sum(a)
        if on_device and got is not a:
            problems.append(f"allreduce_sum {dtype}: returned a new array, not its input summed in place")
        if not np.array_equal(to_host(got), want):
            problems.append(f"allreduce_sum {dtype}: one rank's sum differs from the input: {to_host(got)}")
        expect_calls(f"allreduce_sum {dtype}", "allReduce", before, 1)
    v = xp.arange(5, dtype=xp.float64)
    before = calls["bcast"]
    sent = comm.broadcast(v, root=0)
    if not np.array_equal(to_host(sent), np.arange(5.0)):
        problems.append(f"broadcast: root 0's own array changed: {to_host(sent)}")
    expect_calls("broadcast", "bcast", before, 1)
    if on_device:
        try:
            comm.allreduce_sum(xp.reshape(xp.arange(12, dtype=xp.float64), (3, 4))[:, ::2])
            problems.append("allreduce_sum of a non-contiguous device array: not refused")
        except ValueError as exc:
            if "C-contiguous" not in str(exc):
                problems.append(f"allreduce_sum of a non-contiguous device array: {exc}")
    host = np.arange(3.0)
    before = calls["allReduce"]
    if not np.array_equal(np.asarray(comm.allreduce_sum(host)), np.arange(3.0)):
        problems.append("allreduce_sum of a host array: the sum differs from the input")
    if calls["allReduce"] != before:
        problems.append("allreduce_sum of a host array went through NCCL, not the carrier")
    arrays = {"W": xp.reshape(xp.arange(6, dtype=xp.float64), (2, 3)), "b": xp.ones(3, dtype=xp.float64),
              "n": xp.arange(4, dtype=xp.int64)}
    wants = {k: to_host(a).copy() for k, a in arrays.items()}
    buckets = plan_buckets(arrays, 16)
    before = calls["allReduce"]
    summed = allreduce_arrays(comm, arrays, bucket_bytes=16)
    for k, want in wants.items():
        if not np.array_equal(to_host(summed[k]), want):
            problems.append(f"allreduce_arrays[{k!r}]: the sum differs from the input")
    expect_calls(f"allreduce_arrays in {len(buckets)} buckets", "allReduce", before, len(buckets))
    print(f"nccl collectives: 5 dtypes summed, a broadcast, a bucketed sum ({len(buckets)} buckets); "
          f"NCCL calls so far {dict(calls)}", flush=True)
    return problems


#: Sequences for the training runs (as tests/distributed_jobs.py's): 18 names; short word lines for the streams.
NAMES = ["anna", "bob", "carla", "dmitri", "eve", "fatima", "gus", "hana", "ivo", "jun", "kofi", "lena", "mo",
         "nadia", "oskar", "pia", "quinn", "rui"]
WORDS = ("the cat sat on the mat", "a dog ran in the park", "the dog sat on a log", "cats and dogs ran",
         "the park is green", "a log in the park", "on the mat sat the cat", "dogs sat", "the end") * 3


def training_runs(backend):
    """name -> a function of ``comm`` that builds a short trainer on ``backend``: lines and streams, LSTM and GRU."""
    from xseq.lm.stream_train import StreamConfig, StreamTrainer
    from xseq.lm.train import TrainConfig, Trainer

    lines = TrainConfig(cell="lstm", hidden_size=8, num_layers=2, batch_size=5, optimizer="adam", clip=0.5,
                        dtype="float64", steps=6, seed=3)
    stream = StreamConfig(cell="gru", hidden_size=6, embed_size=5, level="word", bptt=3, batch_size=3,
                          optimizer="sgd", lr=0.5, dtype="float64", steps=6, seed=4, val_fraction=0.2)
    return {
        "lines LSTM x2, Adam": lambda comm: Trainer(NAMES, lines, backend=backend, source="names", comm=comm),
        "stream GRU, embedding, SGD": lambda comm: StreamTrainer(list(WORDS), stream, backend=backend,
                                                                 source="words", comm=comm),
    }


def nccl_model_arrays(comm, backend, on_device):
    """What a run of several ranks sends through ``comm``, for each of :func:`training_runs`: each must come back as is.

    A run of one process never calls its communicator (the trainers skip the
    collectives at size 1), so each run trains alone for a few steps and then
    its arrays go through ``comm`` as a run of several ranks sends them: every
    parameter broadcast from rank 0 (at the start of a run), the gradients of
    its last step summed in buckets (every step,
    ``xseq.distributed.allreduce_arrays``).

    Returns
    -------
    list of str
        The problems found: an array that differs from what was sent; on the
        device, a count of NCCL calls other than one per parameter and one per
        bucket.
    """
    import numpy as np

    from xseq import to_numpy
    from xseq.distributed import allreduce_arrays, plan_buckets

    problems, calls = [], comm.comm.calls
    for name, make in training_runs(backend).items():
        start, found = time.perf_counter(), len(problems)
        trainer = make(None)
        trainer.run()
        params, grads = trainer.model.parameters(), trainer.model.grads()
        before = calls["bcast"]
        for key, value in params.items():
            want = np.array(to_numpy(value), copy=True)
            sent = comm.broadcast(value, root=0)  # in place, as a run of several ranks starts
            if not np.array_equal(np.asarray(to_numpy(sent)), want):
                problems.append(f"{name}: parameter {key} changed in a broadcast from rank 0")
        if on_device and calls["bcast"] - before != len(params):
            problems.append(f"{name}: {calls['bcast'] - before} NCCL broadcasts for {len(params)} parameters")
        wants = {key: np.array(to_numpy(g), copy=True) for key, g in grads.items()}
        buckets = plan_buckets(grads)
        before = calls["allReduce"]
        summed = allreduce_arrays(comm, grads)
        for key, want in wants.items():
            if not np.array_equal(np.asarray(to_numpy(summed[key])), want):
                problems.append(f"{name}: gradient {key} changed in a one-rank sum")
        if on_device and calls["allReduce"] - before != len(buckets):
            problems.append(f"{name}: {calls['allReduce'] - before} NCCL all-reduces for {len(buckets)} bucket(s)")
        print(f"nccl {name}: {trainer.step} steps trained; {len(params)} parameters broadcast and "
              f"{len(grads)} gradients summed in {len(buckets)} bucket(s): "
              f"{'unchanged' if len(problems) == found else f'{len(problems) - found} problem(s)'} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    return problems


def step_nccl(args):
    """NCCLCommunicator at world size 1 over ``--carrier`` (MPI or a single process), on CuPy arrays."""
    import cupy
    from cupy.cuda import nccl

    from xseq.distributed import MPICommunicator, NCCLCommunicator, SingleProcess, use_local_gpu

    if not nccl.available:
        print("nccl: not available to CuPy (libnccl not found)")
        return 1
    print(f"NCCL {nccl.get_version()} through CuPy {cupy.__version__}")
    if args.carrier == "mpi":
        from mpi4py import MPI

        print(f"MPI: {MPI.Get_library_version().strip().splitlines()[0]} (mpi4py {MPI.Get_version()})")
        carrier = MPICommunicator()
    else:
        carrier = SingleProcess()
    if carrier.size != 1:
        print(f"nccl: run this step as one process; the carrier has {carrier.size}")
        return 1
    device = use_local_gpu(carrier)
    comm = NCCLCommunicator(carrier)
    comm.comm = CountingNCCL(comm.comm)
    print(f"{comm!r} over {carrier!r} on GPU {device}", flush=True)
    problems = nccl_collectives(comm, cupy, cupy.asnumpy, on_device=True)
    problems += nccl_model_arrays(comm, "cupy", on_device=True)
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"nccl: {'passed' if not problems else f'{len(problems)} problem(s)'} ({args.carrier} carrier, "
          f"NCCL calls {dict(comm.comm.calls)})")
    return 1 if problems else 0


STEP_FUNCTIONS = {"machine": step_machine, "wheels": step_wheels, "probe": step_probe, "selfcheck": step_selfcheck,
                  "nccl": step_nccl}


# ====================================================================== preparing the wheels (here, with a network)


def prepare_wheels(wheels):
    """Download :data:`CARRIED` at this environment's versions for the GPU machine's Python into ``wheels``."""
    import importlib.metadata as metadata

    wheels = Path(wheels)
    wheels.mkdir(parents=True, exist_ok=True)
    pins = []
    for name in CARRIED:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            sys.exit(f"--prepare-wheels: {name} is not installed in {sys.executable}; install xseq's test extra "
                     f"(pip install -e '.[test]') so that the versions carried are the ones tested here")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               GPU_PYTHON, "--implementation", "cp", "--disable-pip-version-check", "-d", str(wheels)]
    for tag in GPU_PLATFORMS:
        command += ["--platform", tag]
    print("$ " + shlex.join(command + pins), flush=True)
    done = subprocess.run(command + pins)
    if done.returncode != 0:
        return done.returncode
    # One version of each: pip refuses to install two versions of a distribution at once.
    wanted = {re.sub(r"[-_.]+", "_", p.split("==")[0]).lower(): p.split("==")[1] for p in pins}
    for wheel in wheels.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        key = re.sub(r"[-_.]+", "_", name).lower()
        if key in wanted and version != wanted[key]:
            wheel.unlink()
            print(f"removed {wheel.name} (another version than {wanted[key]})")
    total = sum(w.stat().st_size for w in wheels.glob("*.whl"))
    print(f"{wheels}: {', '.join(sorted(w.name for w in wheels.glob('*.whl')))} ({total / 2**20:.2f} MiB); "
          f"carry it: {os.path.relpath(wheels, ROOT)}")
    return 0


# ====================================================================== command line


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="xseq's GPU check: the machine, the carried wheels, the direct loop's self-check, the NCCL path "
                    "at world size 1, the CuPy tests and bench_gpu.py at both sizes, in one run with one report.",
        epilog="Without a GPU every GPU step is skipped and the report still written (use --require-gpu on the GPU "
               "machine). benchmarks/README.md, 'GPU check in one command', has the device tool's call.",
    )
    out = os.environ.get("OUT")
    parser.add_argument("--report", default=str(Path(out) / "gpu_report.md") if out else "gpu_report.md",
                        help="the markdown report (default $OUT/gpu_report.md, or ./gpu_report.md where OUT is unset)")
    parser.add_argument("--log", help="every step's whole output (default gpu_check.log beside the report)")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS,
                        help=f"folder of carried wheels (default {os.path.relpath(DEFAULT_WHEELS, ROOT)})")
    parser.add_argument("--site", type=Path, default=DEFAULT_SITE,
                        help=f"where the wheels are installed (default {DEFAULT_SITE})")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole run; no step starts past it (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--no-gpu", action="store_true", help="skip every GPU step, as on a machine without one")
    parser.add_argument("--require-gpu", action="store_true",
                        help="a GPU step skipped for want of a GPU counts as a failure (for the GPU machine)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="STEP", help="steps to leave out")
    parser.add_argument("--add-step", nargs=3, action="append", default=[], metavar=("NAME", "SECONDS", "COMMAND"),
                        help="append a step: a shell command run from the repository root, $PYTHON being this "
                             "check's interpreter (repeatable)")
    parser.add_argument("--bench-args", default="", help="more arguments for bench_gpu.py, e.g. '--rounds 2'")
    parser.add_argument("--pytest-args", default="", help="more arguments for the pytest step")
    parser.add_argument("--prepare-wheels", action="store_true",
                        help="download the wheels the GPU machine lacks into --wheels (here, with a network) and stop")
    parser.add_argument("--step", choices=sorted(STEP_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--carrier", choices=("mpi", "single"), default="mpi", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.budget > 0:
        parser.error(f"--budget must be a number of seconds > 0; got {args.budget}")
    if args.step:
        return STEP_FUNCTIONS[args.step](args)
    if args.prepare_wheels:
        return prepare_wheels(args.wheels)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
