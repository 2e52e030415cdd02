"""The benchmarks' checks: they compare every output and gradient, and a wrong one stops the script.

Nothing here times anything. The checks run at tiny sizes whose ``T_x`` is
past NumPy's projection chunk (8 steps), so xseq takes the chunked path the
timed sizes take; faults are planted in xseq's fast path only (the reference,
``XSEQ_FUSED=0``, stays right), the way a bug in a fast path would show.
"""

import io
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

import xseq.engine.sequence

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from harness import checks, method, report  # noqa: E402
from harness.contenders import cpu, gpu  # noqa: E402

# T_x = 11: past the 8-step projection chunk, and not a multiple of it (a partial last chunk).
TINY = (3, 5, 2, 11)


def plant_in_fast_path(monkeypatch, key, when=lambda trace: True):
    """Scale gradient ``key`` of xseq's sequence_backward by 1.001 on the fast path (not under XSEQ_FUSED=0)."""
    original = xseq.engine.sequence.sequence_backward

    def wrong(trace, *args, **kwargs):
        grads = original(trace, *args, **kwargs)
        if os.environ.get("XSEQ_FUSED") != "0" and when(trace):
            grads[key] = grads[key] * 1.001
        return grads

    monkeypatch.setattr(xseq.engine.sequence, "sequence_backward", wrong)


# ---------------------------------------------------------------- checks.Check, with NumPy arrays


def results(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"a": (4, 3, 5), "dx": (2, 3, 5), "dW_hh_l0": (4, 4)}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def test_check_passes_equal_results_and_reports_each_bad_array():
    want = results()
    good = checks.Check()
    good.compare("case: same", {k: v.copy() for k, v in want.items()}, want, checks.SAME_FORMULAS, ["a", "dx"])
    assert good.passed and good.arrays == 3

    bad = {k: v.copy() for k, v in want.items()}
    bad["dW_hh_l0"][1, 2] += 1e-3 * np.abs(want["dW_hh_l0"]).max()
    bad["dx"][0, 0, 0] = np.nan
    found = checks.Check()
    found.compare("case: bad", bad, want, checks.SAME_FORMULAS)
    assert len(found.failures) == 2
    assert any("dW_hh_l0" in f and "at (1, 2)" in f for f in found.failures)
    assert any("dx" in f for f in found.failures)


def test_check_fails_missing_extra_reshaped_and_recast_results():
    want = results()
    got = {"a": want["a"].astype(np.float64), "dx": want["dx"].reshape(2, 15), "extra": want["a"]}
    found = checks.Check()
    found.compare("case", got, want, checks.OTHER_IMPLEMENTATION, ["a", "dx", "dW_hh_l0"])
    text = "\n".join(found.failures)
    assert "dW_hh_l0 is missing" in text
    assert "extra has no counterpart" in text
    assert "a is float64" in text and "dx is float32 (2, 15)" in text
    with pytest.raises(SystemExit), redirect_stdout(io.StringIO()):
        found.exit_if_failed()


def test_targets_are_not_claimed_without_the_check():
    assert report.targets_verdict(True, checked=True) == "all targets met"
    unchecked = report.targets_verdict(True, checked=False)
    assert "not claimed" in unchecked and "all targets met" not in unchecked


# ---------------------------------------------------------------- bench_cpu.py


def test_cpu_check_covers_every_output_and_gradient(torch):
    result = cpu.check(cpu.MODELS, [TINY], cpu.MODES, out=lambda line: None, jax=False)
    assert result.passed, result.failures
    assert "jax" not in sys.modules  # JAX's threads would make every later fork in this test run unsafe
    # What the reference reports, every contender must report in forward+backward (the check requires
    # every gradient of the reference): every parameter of every layer and direction, dx, the initial states'.
    size = cpu.size_name(TINY)
    bidirectional = cpu.build("xseq", "lstm-2layer-bidirectional", size, "forward+backward").results()
    parameters = cpu.layer_shapes("lstm-2layer-bidirectional", TINY[0], TINY[1])
    assert len(parameters) == 16
    assert set(bidirectional) == {"outputs", "h_n", "c_n", "dx", "dh0", "dc0", *map(cpu.gradient_name, parameters)}
    course = cpu.build("xseq", "lstm", size, "forward+backward").results()
    assert set(course) == {"a", "y", "c", "dx", "da0", "dW_ih_l0", "dW_hh_l0", "db_ih_l0", "db_hh_l0"}
    assert set(checks.gradient_names(course)) == {"dx", "da0", "dW_ih_l0", "dW_hh_l0", "db_ih_l0", "db_hh_l0"}


def test_cpu_check_finds_a_wrong_gradient_of_the_second_layers_reverse_direction(torch, monkeypatch):
    plant_in_fast_path(monkeypatch, "db_hh", when=lambda trace: trace.reverse)
    result = cpu.check(["lstm", "lstm-2layer-bidirectional"], [TINY], ["forward+backward"], out=lambda line: None,
                       jax=False)
    assert not result.passed
    assert all(": xseq:" in f and "lstm-2layer-bidirectional" in f for f in result.failures)
    assert {f.split(": xseq: ")[1].split()[0] for f in result.failures} == {"db_hh_l0_reverse", "db_hh_l1_reverse"}


def test_bench_cpu_times_nothing_after_a_failed_check(monkeypatch, capsys):
    import bench_cpu

    calls = []

    def failed_check(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1)

    def no_timing(*args, **kwargs):
        raise AssertionError("timed after a failed check")

    monkeypatch.setattr(bench_cpu, "machine_info", lambda torch_no_mkldnn, threads=None: [])
    monkeypatch.setattr(bench_cpu.method, "cpu_idle", lambda seconds: None)
    monkeypatch.setattr(bench_cpu.subprocess, "run", failed_check)
    monkeypatch.setattr(bench_cpu.method, "Runner", no_timing)
    assert bench_cpu.main(["--models", "lstm", "--sizes", "3x5x2x11", "--repeats", "1"]) == 1
    (cmd,) = calls
    assert cmd[cmd.index("--sizes") + 1] == "3x5x2x11"  # the check runs at the timed size
    out = capsys.readouterr()
    assert "| model |" not in out.out and "targets" not in out.out
    assert "nothing is timed" in out.err


def test_bench_cpu_claims_no_target_under_no_check(monkeypatch, capsys):
    import bench_cpu

    class FakeRunner:
        def __init__(self, *args, **kwargs):
            pass

        def close(self):
            pass

        def thread_lines(self):
            return []

    monkeypatch.setattr(bench_cpu, "machine_info", lambda torch_no_mkldnn, threads=None: [])
    monkeypatch.setattr(bench_cpu.method, "cpu_idle", lambda seconds: None)
    monkeypatch.setattr(bench_cpu.method, "Runner", FakeRunner)
    monkeypatch.setattr(bench_cpu.method, "interleaved_round",
                        lambda runner, case, order, iters, gap, before: {"naive": 3.0, "xseq": 1.0, "torch": 2.0})
    assert bench_cpu.main(["--models", "lstm", "--sizes", "3x5x2x11", "--repeats", "1", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "check: skipped" in out
    assert "targets not claimed" in out and "all targets met" not in out


def test_cpu_check_covers_xseq_with_its_onednn_products(torch):
    from xseq.ops import blas

    result = cpu.check(["lstm", "gru"], [TINY], ["forward+backward"], out=lambda line: None, jax=False, onednn=True)
    with cpu.onednn_on():
        usable = blas.matmul_for(np.float32) is not None
    if usable:  # the xseq-onednn contender compared like xseq, every output and gradient
        assert result.passed, result.failures
        alone = cpu.check(["lstm", "gru"], [TINY], ["forward+backward"], out=lambda line: None, jax=False)
        assert result.arrays == alone.arrays + 9 + 8  # lstm: a y c dx da0 + 4 weights; gru: outputs h_n dx dh0 + 4
    else:  # timing it would time plain xseq under another name
        assert any("xseq would not use oneDNN" in f for f in result.failures)


def test_jax_contender_is_checked_in_a_process_of_its_own(torch):
    # JAX's threads make a later fork in this process unsafe, so the check that includes it runs as
    # bench_cpu.py's own check process. With JAX installed every output and gradient of the jax
    # contender must match the reference (the check requires each gradient the reference reports).
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_cpu.py"), "--check", "--models", *cpu.MODELS,
                           "--sizes", cpu.size_name(TINY)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("check ") and "largest difference" in line]
    assert len(lines) == len(cpu.MODELS)
    assert all((" jax " in line) == cpu.jax_available() for line in lines), lines
    assert "MISMATCH" not in done.stdout


def test_bench_cpu_skips_jax_with_a_note_where_it_is_not_installed(monkeypatch, capsys):
    import bench_cpu

    class FakeRunner:
        def __init__(self, *args, **kwargs):
            pass

        def close(self):
            pass

        def thread_lines(self):
            return []

    orders = []

    def timed(runner, case, order, iters, gap, before):
        orders.append(order)
        return {c: 1.0 for c in order}

    monkeypatch.setattr(cpu, "jax_available", lambda: False)
    monkeypatch.setattr(bench_cpu, "machine_info", lambda torch_no_mkldnn, threads=None: [])
    monkeypatch.setattr(bench_cpu.method, "cpu_idle", lambda seconds: None)
    monkeypatch.setattr(bench_cpu.method, "Runner", FakeRunner)
    monkeypatch.setattr(bench_cpu.method, "interleaved_round", timed)
    assert bench_cpu.main(["--models", "lstm", "gru", "--sizes", "3x5x2x11", "--repeats", "1", "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "JAX is not installed, so its contender is skipped" in out
    assert orders and all("jax" not in order for order in orders)
    assert all(row.split("|")[7].strip() == "—" for row in out.splitlines() if row.startswith("| lstm"))


# ---------------------------------------------------------------- --threads N (bench_cpu.py, bench_inference.py)

needs_two_cores = pytest.mark.skipif(report.usable_cores() < 2,
                                     reason="needs 2 usable cores: with one, every library's default is 1 thread "
                                            "already, so a count of 1 would not show that --threads set it")


def worker_thread_reports(script, contenders, case, env_of, spawn_each):
    """Start one worker per contender of ``script`` as its timing does (Runner), warm; what each reported."""
    runner = method.Runner(script, cpu.GROUPS.get, env_of, spawn_each=spawn_each, cwd=BENCHMARKS.parent)
    try:
        for contender in contenders:
            runner.start_worker(contender, case).close()  # closing the connection ends the worker
    finally:
        runner.close()
    return {contender: reports for contender, reports in runner.thread_reports.items()}


def clear_thread_variables(monkeypatch):
    for var in (*method.THREAD_VARIABLES, method.ASKED_VARIABLE):
        monkeypatch.delenv(var, raising=False)


@needs_two_cores
@pytest.mark.parametrize("spawn_each", [False, True], ids=["forked", "spawned"])
def test_threads_reach_every_bench_cpu_worker(torch, monkeypatch, spawn_each):
    import bench_cpu

    clear_thread_variables(monkeypatch)
    case = ["lstm", cpu.size_name(TINY), "forward+backward"]
    contenders = ["naive", "xseq", "torch"]
    one = worker_thread_reports(bench_cpu.SCRIPT, contenders, case, lambda c: bench_cpu.worker_env(c, False, 1),
                                spawn_each)
    default = worker_thread_reports(bench_cpu.SCRIPT, contenders, case, lambda c: bench_cpu.worker_env(c, False),
                                    spawn_each)
    assert set(one) == set(default) == set(contenders)
    for contender in contenders:
        (found,) = one[contender]  # every worker of a contender reported the same counts
        assert found["asked"] == 1 and found["openblas"] == 1, found
        (before,) = default[contender]
        assert before["asked"] is None and before["openblas"] > 1, before  # so the 1 above is --threads' doing
    assert one["xseq"][0]["xseq_lanes"] == 1 and default["xseq"][0]["xseq_lanes"] > 1
    assert (one["torch"][0]["torch_intra"], one["torch"][0]["torch_interop"]) == (1, 1)
    assert default["torch"][0]["torch_intra"] > 1 and default["torch"][0]["torch_interop"] > 1


@needs_two_cores
def test_a_worker_whose_library_has_another_thread_count_is_not_timed(monkeypatch):
    import ctypes

    import bench_cpu

    if report.numpy_openblas_call(np, "get_num_threads", ctypes.c_int) is None:
        pytest.skip("NumPy's OpenBLAS is not found among its libraries (NumPy 1.26's wheel): its thread count "
                    "cannot be read, so a worker refuses --threads with that reason instead")
    clear_thread_variables(monkeypatch)

    def env_of(contender):  # asked for 1, but NumPy's OpenBLAS is started with 2
        return {**bench_cpu.worker_env(contender, False, 1), "OPENBLAS_NUM_THREADS": "2"}

    with pytest.raises(method.WorkerFailed, match=r"asked for 1 thread\(s\) \(BENCH_THREADS\), but openblas is 2"):
        worker_thread_reports(bench_cpu.SCRIPT, ["xseq"], ["lstm-layer", cpu.size_name(TINY), "forward"], env_of,
                              spawn_each=False)


def test_thread_environment_sets_each_library_and_jax_only_to_one(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert method.thread_environment(None, "numpy") == {}
    env = method.thread_environment(2, "torch")
    assert env == {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2", method.ASKED_VARIABLE: "2"}
    jax_env = method.thread_environment(1, "jax")
    assert jax_env["OMP_NUM_THREADS"] == "1"
    assert jax_env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x " + method.XLA_ONE_THREAD  # the user's flags kept
    with pytest.raises(ValueError, match="--threads 2: XLA's CPU client takes no thread count"):
        method.thread_environment(2, "jax")
    for bad in (0, True, "1", 1.0):
        with pytest.raises(ValueError, match=f"threads must be an int >= 1 or None .*got {bad!r}"):
            method.thread_environment(bad, "numpy")
    with pytest.raises(ValueError, match="library must be one of .*got 'cupy'"):
        method.thread_environment(1, "cupy")


def test_thread_problems_name_each_count_that_differs():
    found = {"asked": 1, "openblas": 1, "xseq_lanes": 2, "torch_intra": 2, "torch_interop": 1,
             "xla_flags": "--xla_cpu_multi_thread_eigen=true", "os_threads": 4}
    problems = method.thread_problems(found)
    assert len(problems) == 3
    assert any("torch_intra is 2" in p for p in problems) and any("xseq_lanes is 2" in p for p in problems)
    assert any("XLA_FLAGS is '--xla_cpu_multi_thread_eigen=true'" in p for p in problems)
    assert method.thread_problems({**found, "asked": None}) == []  # nothing asked: the defaults, whatever they are
    assert method.thread_problems({"asked": 1, "openblas": 1, "xseq_lanes": 1, "os_threads": 3}) == []
    (unread,) = method.thread_problems({"asked": 1, "openblas": None})  # not found: cannot be verified, refused
    assert "the openblas thread count cannot be read here" in unread


@pytest.mark.parametrize("text", ["0", "x", str(report.usable_cores() + 1)])
def test_bench_cpu_refuses_a_thread_count_it_cannot_give(text, capsys):
    import bench_cpu

    with pytest.raises(SystemExit) as stopped:
        bench_cpu.parse_args(["--threads", text])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --threads: threads {text!r}: expected an int from 1 to {report.usable_cores()}" in err


@needs_two_cores
@pytest.mark.parametrize("threads", [1, 2])
def test_bench_cpu_gives_jax_one_thread_or_skips_it(monkeypatch, capsys, threads):
    import bench_cpu

    made = []

    class FakeRunner:
        def __init__(self, script, group_of, env_of, **kwargs):
            made.append(env_of)

        def close(self):
            pass

        def thread_lines(self):
            return ["xseq: (reported)"]

    orders = []

    def timed(runner, case, order, iters, gap, before):
        orders.append(order)
        return {c: 1.0 for c in order}

    monkeypatch.setattr(cpu, "jax_available", lambda: True)
    monkeypatch.setattr(bench_cpu, "machine_info", lambda torch_no_mkldnn, threads=None: [])
    monkeypatch.setattr(bench_cpu.method, "cpu_idle", lambda seconds: None)
    monkeypatch.setattr(bench_cpu.method, "Runner", FakeRunner)
    monkeypatch.setattr(bench_cpu.method, "interleaved_round", timed)
    argv = ["--models", "gru", "--sizes", "3x5x2x11", "--repeats", "1", "--no-check", "--threads", str(threads)]
    assert bench_cpu.main(argv) == 0
    out = capsys.readouterr().out
    (env_of,) = made
    assert env_of("torch")["OMP_NUM_THREADS"] == env_of("xseq")["OPENBLAS_NUM_THREADS"] == str(threads)
    assert "OPENBLAS_CORETYPE" not in env_of("xseq")
    table_header = out.split("| model |")[0].splitlines()[-2]  # the line above the table's blank line
    assert table_header.startswith(f"threads: {threads} per worker (--threads {threads})")
    assert "threads, as each contender's workers reported them after their warm-up:\n  xseq: (reported)" in out
    if threads == 1:
        assert all("jax" in order for order in orders)
        assert method.XLA_ONE_THREAD in env_of("jax")["XLA_FLAGS"] and "XLA_FLAGS" in table_header
    else:
        assert orders and all("jax" not in order for order in orders)
        assert "note: the JAX contender is skipped: --threads 2: XLA's CPU client takes no thread count" in out


def reported_threads(stdout):
    """``contender -> description`` from the lines a script prints under its table."""
    lines = stdout.split("threads, as each contender's workers reported them after their warm-up:\n")[1].splitlines()
    return dict(line.strip().split(": ", 1) for line in lines if line.startswith("  "))


@needs_two_cores
def test_bench_inference_runs_every_worker_on_one_thread(torch):
    env = {k: v for k, v in os.environ.items() if k not in (*method.THREAD_VARIABLES, method.ASKED_VARIABLE)}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_inference.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "threads: 1 per worker (--threads 1): OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1" in done.stdout
    assert "XLA_FLAGS" not in done.stdout  # no JAX contender here
    found = reported_threads(done.stdout)
    assert set(found) == {"xseq", "xseq-inference", "torch"}
    for contender in ("xseq", "xseq-inference"):
        assert found[contender].startswith("OpenBLAS 1, xseq lanes <= 1, OS threads "), found
    assert found["torch"].startswith("OpenBLAS 1, torch intra-op 1, inter-op 1, OS threads "), found
    assert "1 intra-op threads" in done.stdout  # the machine lines come from a process with the same setting


# ---------------------------------------------------------------- bench_gpu.py's check, on the CPU


def test_gpu_check_compares_every_contender_on_the_host():
    result = gpu.check([TINY], ["fused", "fused-steps", "array-api"], device="cpu", out=lambda line: None)
    assert result.passed, result.failures
    assert result.arrays == 3 * (3 + 3 + 7)


def test_gpu_check_compares_cudnn_stand_in(torch):
    result = gpu.check([TINY], ["cudnn"], device="cpu", out=lambda line: None)
    assert result.passed, result.failures
    assert result.arrays == 3 + 3 + 7


def test_gpu_check_finds_a_wrong_initial_cell_gradient(monkeypatch):
    plant_in_fast_path(monkeypatch, "dc0")
    result = gpu.check([TINY], ["fused", "array-api"], device="cpu", out=lambda line: None)
    assert [f.split(": fused: ")[1].split()[0] for f in result.failures] == ["dc0"]


def test_bench_gpu_checks_without_cudnn_among_the_contenders(monkeypatch, capsys):
    import bench_gpu

    calls = []

    def failed_check(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1)

    def no_timing(*args, **kwargs):
        raise AssertionError("timed after a failed check")

    monkeypatch.setattr(bench_gpu, "gpu_or_exit", lambda need_torch: ["GPU: none (test)"])
    monkeypatch.setattr(bench_gpu.subprocess, "run", failed_check)
    monkeypatch.setattr(bench_gpu, "run_worker", no_timing)
    assert bench_gpu.main(["--sizes", "3x5x2x11", "--contenders", "fused", "array-api"]) == 1
    (cmd,) = calls
    assert "--check-only" in cmd and cmd[cmd.index("--sizes") + 1] == "3x5x2x11"
    assert cmd[cmd.index("--contenders") + 1:][:2] == ["fused", "array-api"]
    assert "nothing is timed" in capsys.readouterr().err


# ---------------------------------------------------------------- lm_vs_torch.py


def lm_config():
    from xseq.lm.train import TrainConfig

    return TrainConfig(hidden_size=8, epochs=1)


def test_lm_first_step_check_passes_and_compares_every_gradient(torch):
    from harness.contenders import lm

    result, losses = lm.check_first_step(xseq.builtin_corpus(), lm_config(), out=lambda line: None)
    assert result.passed, result.failures
    assert result.arrays == 2 * 6  # 4 LSTM arrays + Wy + by, for xseq and torch
    assert lm.losses_agree(losses["torch"], losses["reference"])


def test_lm_first_step_check_finds_a_wrong_gradient(torch, monkeypatch):
    from harness.contenders import lm

    plant_in_fast_path(monkeypatch, "dW_hh")
    result, _ = lm.check_first_step(xseq.builtin_corpus(), lm_config(), out=lambda line: None)
    assert [f.split(": xseq: ")[1].split()[0] for f in result.failures] == ["dW_hh_l0"]


def test_lm_losses_agree_within_the_stated_tolerance():
    from harness.contenders import lm

    assert lm.losses_agree(3.377921, 3.377921 * (1 + 0.9 * lm.FIRST_LOSS_RTOL))
    assert not lm.losses_agree(3.377921, 3.377921 * (1 + 2 * lm.FIRST_LOSS_RTOL))


def test_lm_vs_torch_stops_when_a_runs_first_loss_differs(torch, monkeypatch, capsys):
    import lm_vs_torch

    def run_worker(side, args):
        return {"side": side, "seconds": 1.0, "val_loss": 2.0, "val_history": [2.0], "first_loss": 3.0,
                "steps": 1, "chars": 1}

    monkeypatch.setattr(lm_vs_torch, "run_worker", run_worker)
    with pytest.raises(SystemExit) as stopped:
        lm_vs_torch.main(["--hidden", "8", "--epochs", "1", "--repeats", "1"])
    assert stopped.value.code not in (0, None)
    assert "first-step loss 3.000000 differs" in str(stopped.value.code)
    assert "wall time" not in capsys.readouterr().out


# ---------------------------------------------------------------- ptb.py, on a tiny corpus written here


def write_tiny_ptb(directory):
    """Three PTB-like files (short lines over 30 words, a leading space, blank lines among them)."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    for split, n in (("train", 300), ("valid", 40), ("test", 40)):
        text = "".join(" " + " ".join(rng.choice(words, size=rng.integers(0, 9))) + " \n" for _ in range(n))
        (directory / f"ptb.{split}.txt").write_text(text)
    return directory


TINY_PTB = ["--hidden", "8", "--batch", "4", "--bptt", "5"]  # 2 layers, like the paper's model


def tiny_ptb(tmp_path):
    from harness.contenders import ptb

    lines, mikolov = ptb.read_ptb(write_tiny_ptb(tmp_path))
    assert not mikolov
    # clip 1: the tiny model's gradient norms are 1.06, 1.38, 1.18, so the first two updates are clipped
    return lines, ptb.small_recipe(epochs=1, hidden_size=8, batch_size=4, bptt=5, clip=1.0)


def test_ptb_check_compares_every_gradient_of_three_windows_with_clipped_updates(torch, tmp_path):
    from harness.contenders import ptb

    printed = []
    result, losses = ptb.check(*tiny_ptb(tmp_path), out=printed.append)
    assert result.passed, result.failures
    assert result.arrays == 2 * 3 * 11  # xseq and torch, 3 windows: embedding, 2 x 4 LSTM arrays, Wy, by
    assert all(ptb.losses_agree(a, b) for a, b in zip(losses["torch"], losses["reference"], strict=True))
    assert "the update of window(s) 1, 2 was clipped, so clipping is covered" in printed[0]


def test_ptb_check_finds_a_wrong_xseq_gradient_and_a_torch_model_that_drops_the_state(torch, tmp_path,
                                                                                      monkeypatch):
    from harness.contenders import ptb

    plant_in_fast_path(monkeypatch, "dW_hh")
    carried = ptb.TorchStreamModel.loss_and_backward
    monkeypatch.setattr(ptb.TorchStreamModel, "loss_and_backward",
                        lambda self, inputs, targets, state=None: carried(self, inputs, targets, None))
    result, _ = ptb.check(*tiny_ptb(tmp_path), out=lambda line: None)
    first = [f.split(": xseq: ")[1].split()[0] for f in result.failures if f.startswith("window 1: xseq")]
    assert first == ["dW_hh_l0", "dW_hh_l1"]
    assert not any(f.startswith("window 1: torch") for f in result.failures)  # no state to drop in window 1
    assert any(f.startswith("window 2: torch: loss") for f in result.failures)


def test_ptb_workers_train_the_same_epoch_to_the_same_perplexity(torch, tmp_path, capsys):
    import json

    import ptb as ptb_script

    results = {}
    for contender in ("xseq", "torch"):
        argv = ["--worker", contender, "--data", str(write_tiny_ptb(tmp_path)), *TINY_PTB]
        assert ptb_script.main(argv) == 0
        results[contender] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    x, t = results["xseq"], results["torch"]
    assert x["windows"] == t["windows"] == 77 and x["tokens"] == t["tokens"]
    assert x["val_loss"] == pytest.approx(t["val_loss"], rel=1e-5)
    assert x["train_loss"] == pytest.approx(t["train_loss"], rel=1e-5)


def test_ptb_times_nothing_after_a_failed_check_or_a_worker_that_started_elsewhere(tmp_path, monkeypatch, capsys):
    import ptb as ptb_script

    data = ["--data", str(write_tiny_ptb(tmp_path)), *TINY_PTB]
    monkeypatch.setattr(ptb_script.method, "cpu_idle", lambda seconds: None)
    started = []
    monkeypatch.setattr(ptb_script, "start", lambda args, argv, strip_openblas=False: started.append(argv))
    assert ptb_script.main(data) == 1
    assert started == [["--check"]]
    assert "nothing is timed" in capsys.readouterr().err

    def start(args, argv, strip_openblas=False):
        if argv == ["--check"]:
            return {"reference": [3.4, 3.3]}
        return {"first_loss": 3.4 * (1 + 2 * ptb_script.ptb.FIRST_LOSS_RTOL)}

    monkeypatch.setattr(ptb_script, "start", start)
    assert ptb_script.main(data) == 1
    out, err = capsys.readouterr()
    assert "first-window loss 3.400068 differs" in err and "target" not in out


def test_ptb_refuses_a_missing_data_directory_in_one_line(tmp_path, capsys):
    import ptb as ptb_script

    assert ptb_script.main(["--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ptb.py: error: the PTB data directory")
    assert "nowhere" in err and "ptb.train.txt" in err


def test_bench_corpus_checks_that_every_contender_read_the_same_tokens(tmp_path):
    """bench_corpus.py on a small generated corpus: every contender runs, the token counts are compared, the
    table and the line on the targets are printed."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_corpus.py"), "--mb", "0.3", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "check: every contender read the same" in done.stdout
    assert "| xseq-read |" in done.stdout and "targets: read >= 20 MB/s" in done.stdout


def test_bench_corpus_generates_what_it_says(tmp_path):
    import bench_corpus

    path = tmp_path / "c.txt"
    size = bench_corpus.generate(path, 0.5)
    text = path.read_text(encoding="utf-8")
    assert size >= 500_000 and text.endswith(" \n")
    lines = text.split("\n")[:-1]
    assert sum(not line.strip() for line in lines) > 0  # blank lines, as in WikiText
    assert all(word.startswith("w") for word in text.split())


# ---------------------------------------------------------------- bench_flops.py


def test_flops_count_backward_as_twice_the_forward_products():
    import bench_flops

    for size in [(64, 256, 64, 100), (3, 5, 2, 11)]:
        n_x, n_a, m, T = size
        forward = bench_flops.lstm_flops(size, "forward")
        assert forward == 2 * T * m * 4 * n_a * (n_x + n_a)  # the formula the docstring and the output state
        assert bench_flops.lstm_flops(size, "forward+backward") == 3 * forward
        # every product is made once per step, so the count is linear in T_x
        assert bench_flops.lstm_flops((n_x, n_a, m, 2 * T), "forward+backward") == 6 * forward
    with pytest.raises(ValueError, match="mode must be one of .*got 'backward'"):
        bench_flops.lstm_products((3, 5, 2, 11), "backward")


def cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "").split())


def test_bench_flops_quick_table_agrees_with_its_probe_and_its_times(torch, tmp_path):
    """bench_flops.py --quick: the probe's peak is positive and its vectors are the build's; every row's GFLOP/s
    and % of peak follow from its ms and the FLOPs counted (within the printed digits); torch is the ratios' 1."""
    import re

    import bench_flops

    from xseq.ops import native_build

    if native_build.find_compiler() is None:
        pytest.skip("no C++ compiler on PATH: bench_flops.py's peak probe is compiled at run time")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_flops.py"), "--quick"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    probe = re.search(r"(\d+) floats a vector, \d+ accumulators; .*: ([\d.]+) GFLOP/s on 1 core, ([\d.]+) GFLOP/s "
                      r"on (\d+) cores \(the peak below\)", out)
    assert probe, out
    width, one, peak, cores = int(probe[1]), float(probe[2]), float(probe[3]), int(probe[4])
    assert one > 0 and peak > 0 and cores == report.usable_cores()
    flags = cpu_flags()
    if not os.environ.get("XSEQ_HOST_MARCH") and flags:  # -march=native: the CPU's widest float vectors
        assert width == (16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4)
    assert re.search(r"reference: NumPy float32 \d+\^3 matrix product .*: [\d.]+ ms, [\d.]+ GFLOP/s", out)

    lines = out.splitlines()
    start = lines.index("| size (n_x, n_a, m, T_x) | contender | mode | median ms | GFLOP/s | % of peak | "
                        "ratio to torch |")
    assert lines[start + 1] == "|---|---|---|---:|---:|---:|---:|"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start + 2:start + 6]]
    assert lines[start + 6] == ""
    assert [(r[1], r[2]) for r in rows] == [(c, m) for m in bench_flops.MODES for c in bench_flops.CONTENDERS]
    ms_of = {}
    for size_text, contender, mode, ms_text, rate_text, percent_text, ratio_text in rows:
        assert size_text == str(bench_flops.QUICK_SIZE)
        ms, rate, percent = float(ms_text), float(rate_text), float(percent_text)
        ms_of[(contender, mode)] = ms
        half = 0.005 if ms < 10 else 0.05  # report.fmt_ms: two decimals below 10 ms, one above
        assert ms > half
        flops = bench_flops.lstm_flops(bench_flops.QUICK_SIZE, mode)
        assert flops / (ms + half) / 1e6 - 0.05 <= rate <= flops / (ms - half) / 1e6 + 0.05, (ms, rate)
        assert 100 * (rate - 0.05) / (peak + 0.05) - 0.05 <= percent <= 100 * (rate + 0.05) / (peak - 0.05) + 0.05
        if contender == "torch":
            assert ratio_text == "1.00x"
    for mode in bench_flops.MODES:  # one round: the ratio is that round's xseq / torch
        ratio = float(next(r[6] for r in rows if r[1] == "xseq" and r[2] == mode).rstrip("x"))
        x, t = ms_of[("xseq", mode)], ms_of[("torch", mode)]
        assert (x - 0.005) / (t + 0.005) - 0.005 <= ratio <= (x + 0.005) / (t - 0.005) + 0.005
    assert "target: none of the sizes timed is (64, 256, 64, 100)" in out
