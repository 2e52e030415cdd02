"""tools/gpu_check.py, the GPU check in one command, where there is no GPU.

The command runs to the end and writes its report with every step listed, the
GPU steps skipped; a step that fails or runs out of time is reported so and the
next step still runs; carried wheels install with no index. The logic of the
GPU steps runs here on stand-ins: the direct loop's self-check on the host
build of the raw kernels (``tests/test_kernels_exec.py``'s ``HostDevice``),
the NCCL path on NCCL and CUDA stand-ins (``tests/distributed_fakes.py``) with
NumPy training runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from xseq.distributed import NCCLCommunicator, SingleProcess
from xseq.engine import sequence as engine

from .distributed_fakes import FakeCuda, FakeNCCL
from .gpu import cuda_verdict, driver_gpu_count
from .test_kernels_exec import CXX, DTYPES, XP, HostDevice, host_lib, launches, raw_libs  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(gpu_check)

GPU_STEPS = ["selfcheck", "nccl-single", "nccl", "pytest", "bench"]


def run_check(tmp_path, *args, timeout=60):
    """The command as a session runs it, its report in ``tmp_path``; returns (the finished process, the report)."""
    report = tmp_path / "gpu_report.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--report", str(report), "--site", str(tmp_path / "site"),
                           "--wheels", str(tmp_path / "no-wheels"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert report.exists(), f"no report written:\n{done.stdout}\n{done.stderr}"
    return done, report.read_text()


def rows(report):
    """step name -> (status, summary) from the report's table."""
    table = {}
    for line in report.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 6 and cells[0] not in ("step", "---"):
            table[cells[0]] = (cells[2], cells[5])
    return table


def running(pid):
    """Whether process ``pid`` exists and is not a zombie (killed, waiting for whoever adopted it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: a zombie counts as running
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def default_step_names():
    class Args:
        wheels = site = Path("x")
        bench_args = pytest_args = ""

    return [s.name for s in gpu_check.default_steps(Args)]


# ---------------------------------------------------------------------- the whole command


def test_without_a_gpu_every_step_is_listed_and_the_gpu_steps_skip(tmp_path):
    start = time.monotonic()
    done, report = run_check(tmp_path, "--no-gpu")
    elapsed = time.monotonic() - start
    assert elapsed < 45, f"without a GPU the check must take seconds (a loaded machine: tens); took {elapsed:.0f} s"
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(report)
    assert list(table) == default_step_names()
    assert set(GPU_STEPS) < set(table)
    for name in GPU_STEPS + ["probe"]:
        assert table[name][0] == "skipped: no GPU (--no-gpu)", table[name]
    assert table["machine"][0] == "passed" and table["machine"][1].startswith("machine: Python")
    assert table["wheels"][0] == "passed", report
    assert "## machine: the machine and its software" in report and f"numpy: {np.__version__}" in report
    assert (tmp_path / "gpu_check.log").read_text().count("===== ") == 2  # the two steps that ran


def test_a_failing_step_is_reported_and_the_next_one_runs(tmp_path):
    pid_file = tmp_path / "slow.pid"
    start = time.monotonic()
    done, report = run_check(
        tmp_path, "--no-gpu", "--skip", "machine",
        "--add-step", "planted", "20", "echo planted output; exit 3",
        "--add-step", "slow", "1", f"sleep 60 & echo $! > {pid_file}; wait",
        "--add-step", "after", "20", "echo the step after ran")
    elapsed = time.monotonic() - start
    assert elapsed < 45, f"the slow step (60 s) must be killed at its limit (1 s); the check took {elapsed:.0f} s"
    assert done.returncode == 1, "a failed step fails the command"
    table = rows(report)
    assert list(table)[-3:] == ["planted", "slow", "after"]
    assert table["machine"][0] == "skipped: --skip"
    assert table["planted"] == ("failed: exit status 3", "planted output")
    assert table["slow"][0] == "timed out: killed after 1 s"
    assert table["after"] == ("passed", "the step after ran")
    assert "## planted: added with --add-step" in report and "planted output" in report
    assert not running(int(pid_file.read_text())), "the step's child must be killed with its process group"


def test_the_budget_bounds_the_whole_run(tmp_path):
    done, report = run_check(tmp_path, "--no-gpu", "--skip", "machine", "wheels", "--budget", "9",
                             "--add-step", "long", "300", "exec sleep 60",
                             "--add-step", "late", "20", "echo too late")
    table = rows(report)
    # 9 s less the 3 kept for the report, less what the steps before took
    assert re.fullmatch(r"timed out: killed after [456] s", table["long"][0]), table["long"]
    assert table["late"][0] == "skipped: no time left in the 9 s budget"
    assert done.returncode == 1


def test_require_gpu_fails_the_gpu_steps_where_there_is_none(tmp_path):
    done, report = run_check(tmp_path, "--no-gpu", "--require-gpu", "--skip", "machine", "wheels")
    assert done.returncode == 1
    table = rows(report)
    for name in GPU_STEPS:
        assert table[name][0] == "failed: no GPU (--no-gpu), and --require-gpu asks for one", table[name]


def test_bad_arguments_are_refused_with_the_reason(tmp_path):
    for args, message in [(["--skip", "nope"], "--skip: unknown step(s) nope; steps: machine, wheels"),
                          (["--add-step", "x", "soon", "true"], "--add-step x: SECONDS must be a number > 0"),
                          (["--add-step", "bench", "5", "true"], "--add-step: a step named 'bench' exists already")]:
        done = subprocess.run([sys.executable, str(SCRIPT), "--report", str(tmp_path / "r.md"), *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)


# ---------------------------------------------------------------------- the steps that run without a GPU


def make_wheel(folder, name, version, body):
    """A minimal pure-Python wheel of one module ``name`` whose ``__init__.py`` is ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name}/__init__.py", body)
        whl.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")
    return path


def test_carried_wheels_install_with_no_index(tmp_path):
    make_wheel(tmp_path / "wheels", "gpucheck_demo", "1.0", "VALUE = 42\n")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, str(SCRIPT), "--step", "wheels", "--wheels", str(tmp_path / "wheels"),
                           "--site", str(site)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "gpucheck_demo" / "__init__.py").read_text() == "VALUE = 42\n"
    assert "every required module imports" in done.stdout


def test_a_broken_wheel_fails_the_wheels_step(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    done = subprocess.run([sys.executable, str(SCRIPT), "--step", "wheels", "--wheels", str(tmp_path / "wheels"),
                           "--site", str(tmp_path / "site")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "wheels: pip failed" in done.stdout, done.stdout + done.stderr


def test_the_probe_gives_the_test_suites_verdict():
    done = subprocess.run([sys.executable, str(SCRIPT), "--step", "probe"], capture_output=True, text=True,
                          timeout=120)
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    want, _ = cuda_verdict(driver_gpu_count())
    assert verdict["verdict"] == want
    assert done.returncode == (1 if want == "fail" else 0)


# ---------------------------------------------------------------------- the GPU steps' logic, on stand-ins


class WrongScale(HostDevice):
    ALPHA = 0.5


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or c++) found on PATH")
def test_the_self_check_step_passes_a_right_device_and_catches_wrong_ones(raw_libs, launches):
    def make(cls, dtype):
        return cls(raw_libs, dtype, [])

    assert gpu_check.direct_self_check(HostDevice, make, engine.check_direct, DTYPES, xp=XP) == []
    problems = gpu_check.direct_self_check(WrongScale, make, engine.check_direct, DTYPES[:1], xp=XP)
    assert len(problems) == 1 and "float32: WrongScale fails the self-check" in problems[0]
    blind = gpu_check.direct_self_check(HostDevice, make, lambda device, xp: None, DTYPES[:1], xp=XP)
    assert blind == [f"float32: a device with {w} passes the self-check: it cannot catch that fault"
                     for w in ("BetaIgnored", "LostLaunches")]


def stand_in_nccl(carrier=None):
    comm = NCCLCommunicator(carrier or SingleProcess(), nccl=FakeNCCL, cuda=FakeCuda(1))
    comm.comm = gpu_check.CountingNCCL(comm.comm)
    return comm


def test_the_nccl_step_logic_passes_on_a_faithful_communicator():
    comm = stand_in_nccl()
    assert gpu_check.nccl_collectives(comm, np, np.asarray, on_device=False) == []
    assert gpu_check.nccl_model_arrays(comm, "numpy", on_device=False) == []
    assert comm.comm.calls == {}, "host arrays go through the carrier"


def test_the_nccl_step_logic_catches_sums_that_skip_nccl_or_change_values():
    problems = gpu_check.nccl_collectives(stand_in_nccl(), np, np.asarray, on_device=True)
    assert "allreduce_sum float32: 0 NCCL allReduce call(s), expected 1" in problems
    assert "broadcast: 0 NCCL bcast call(s), expected 1" in problems
    assert "allreduce_sum of a non-contiguous device array: not refused" in problems

    class Doubling(SingleProcess):
        def allreduce_sum(self, array):
            return array * 2

    problems = gpu_check.nccl_collectives(stand_in_nccl(Doubling()), np, np.asarray, on_device=False)
    assert any(p.startswith("allreduce_sum float64: one rank's sum differs from the input") for p in problems)
    problems = gpu_check.nccl_model_arrays(stand_in_nccl(Doubling()), "numpy", on_device=False)
    assert "lines LSTM x2, Adam: gradient weight_hh_l0 changed in a one-rank sum" in problems, problems
    problems = gpu_check.nccl_model_arrays(stand_in_nccl(), "numpy", on_device=True)
    assert "stream GRU, embedding, SGD: 0 NCCL all-reduces for 1 bucket(s)" in problems, problems
