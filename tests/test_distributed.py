"""Data-parallel training in real MPI jobs, launched with ``mpiexec`` on this machine.

The jobs are in tests/distributed_jobs.py (the communicator) and are ``xseq train`` itself (the trainer).
They need mpi4py and an ``mpiexec`` (``pip install mpi4py mpich``); elsewhere they skip and say so. CI's
second run installs both, and there a skip fails the run.
"""

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xseq.lm import cli

from . import distributed_jobs

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 300  # seconds: a guard against a hanging job, far above what any of these take


def mpiexec():
    """The ``mpiexec`` beside this Python (a virtual environment's, from the mpich wheel), else on PATH."""
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def mpi_or_skip():
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed; the distributed tests need it and an MPI: pip install mpi4py mpich")
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("no mpiexec beside this Python or on PATH; the distributed tests need an MPI: pip install mpich")
    return launcher


def job_environment():
    # One BLAS thread per rank: the ranks of a job share this machine's cores.
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def launch(n, *command, timeout=JOB_TIMEOUT, cwd=ROOT):
    """``mpiexec -n N COMMAND``; returns the finished process."""
    launcher = mpi_or_skip()
    return subprocess.run([launcher, "-n", str(n), *command], cwd=cwd, env=job_environment(),
                          capture_output=True, text=True, timeout=timeout)


def run_job(n, job, *args, timeout=JOB_TIMEOUT):
    done = launch(n, sys.executable, "-m", "tests.distributed_jobs", job, *args, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- the communicator


def test_collectives_across_three_processes():
    out = run_job(3, "collectives")
    assert out["size"] == 3 and out["local"] == [0, 3]
    assert out["summed"] == [0.0, 6.0, 12.0, 18.0]  # arange(4) * (1 + 2 + 3)
    assert out["strict"] == [3.0, 3.0, 3.0]  # 0 + 1 + 2, through host copies
    assert out["sent"] == [0.0, 1.0, 2.0]  # rank 1's array
    assert out["obj"] == {"rank": 0, "text": "héllo"}
    assert out["reduced"] == {"W": [[6.0] * 3] * 2, "n": [3, 3], "h": [3.0] * 3}


def test_ranks_that_disagree_all_raise_and_none_hangs():
    messages = run_job(3, "disagree")["messages"]
    assert messages[1] == ["the corpus fingerprints differ between ranks: rank 0 has 'x', rank 1 has 'odd'",
                           "broadcast: rank 0 sends an array of shape (2,) and dtype float64; rank 1 passed "
                           "shape (3,), dtype float64"]
    assert messages[0] == messages[2] == ["rank 1 disagrees with the others; see their message"] * 2


def test_a_rank_that_raises_ends_the_job_within_seconds_with_its_message():
    done = launch(3, sys.executable, "-m", "tests.distributed_jobs", "raises", "0.5", timeout=30)
    assert done.returncode != 0
    assert "[rank 2/3] ValueError: cannot read the corpus on this node" in done.stderr
    assert "[rank 2/3] ending all 3 processes of the job" in done.stderr
    assert "completed without every rank" not in done.stdout


def test_nccl_ranks_share_rank_0s_unique_id_and_sum_device_buffers():
    ranks = run_job(2, "nccl", "0,1")["ranks"]
    assert [r["kind"] for r in ranks] == ["NCCLCommunicator"] * 2
    assert [r["device"] for r in ranks] == [[0], [1]]  # the local rank picks the GPU
    assert len(ranks[0]["ids"]) == 1 and ranks[0]["ids"] == ranks[1]["ids"]
    assert all(r["sum"] == [3.0] * 5 and r["broadcast"] == [1.0, 1.0] and r["warnings"] == [] for r in ranks)


def test_without_nccl_on_one_rank_every_rank_sums_through_the_host_and_says_why():
    ranks = run_job(2, "nccl", "0")["ranks"]
    assert [r["kind"] for r in ranks] == ["MPICommunicator"] * 2
    assert all(r["sum"] == [3.0] * 5 and r["broadcast"] == [1.0, 1.0] and r["ids"] == [] for r in ranks)
    assert ranks[1]["warnings"] == ["gradients are summed through host memory over MPI, not with NCCL: NCCL is "
                                    "not available to CuPy (pip install nvidia-nccl-cu12)"]
    assert ranks[0]["warnings"] == ["gradients are summed through host memory over MPI, not with NCCL: another "
                                    "rank of the job cannot use NCCL (see its warning)"]


# ---------------------------------------------------------------------- training: the same run on any number of ranks


def test_training_on_2_and_3_ranks_equals_one_process(tmp_path):
    """Every run of tests/distributed_jobs.py's RUNS (LSTM and GRU, Adam and SGD, clipping by norm and by value,
    dropout, lines, word streams and sequence-to-sequence pairs, float64, odd batches that leave some ranks without an example): the
    parameters, every step's loss and every validation loss of 2 and 3 ranks equal one process's to 1e-12."""
    for n in (1, 2, 3):
        (tmp_path / str(n)).mkdir()
        done = launch(n, sys.executable, "-m", "tests.distributed_jobs", "train-grid", str(tmp_path / str(n)), str(n))
        assert done.returncode == 0, done.stdout + done.stderr
    names = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert len(names) == len(distributed_jobs.RUNS) == 6
    for name in names:
        alone = saved(tmp_path / "1" / name)
        assert alone["losses"].size == 9 and alone["val"].size >= 1
        for n in (2, 3):
            shared = saved(tmp_path / str(n) / name)
            assert sorted(shared) == sorted(alone)
            for key in alone:
                if key != "shares":
                    np.testing.assert_allclose(shared[key], alone[key], rtol=0, atol=1e-12, err_msg=f"{name} {key}")
            # The ranks really shared the work: together what one process learned from, each a part of it
            # (with one column, rank 0 all of it and the others nothing).
            shares = shared["shares"]
            assert shares.size == n and shares.sum() == alone["shares"].sum()
            if distributed_jobs.RUNS[name.removesuffix(".npz")][1].get("batch_size") == 1:
                assert list(shares[1:]) == [0] * (n - 1)
            else:
                assert 0 < shares.min() and shares.max() < alone["shares"].sum()


def saved(path):
    """Every array of an ``.npz`` file, read and closed."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def xseq_train(n, *args, cwd):
    """``mpiexec -n N xseq train ARGS`` in ``cwd``; returns the finished process."""
    return launch(n, sys.executable, "-m", "xseq", "train", *args, cwd=cwd)


def trained(path):
    """The float arrays of a checkpoint: parameters, optimiser state, losses, carried state."""
    return {k: v for k, v in saved(path).items() if v.dtype.kind == "f"}


@pytest.mark.parametrize("kind", ["lines", "word-stream"])
def test_a_checkpoint_of_2_ranks_resumes_on_1_and_on_3_ranks_exactly(tmp_path, kind):
    """Stopped mid-epoch (the line order drawn again, the stream's carried state gathered from the ranks), with
    dropout: resumed on 1 and on 3 ranks it ends where the uninterrupted 2-rank run ends."""
    if kind == "lines":
        (tmp_path / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
        recipe = ["--batch", "5", "--hidden", "8", "--layers", "2", "--dropout", "0.3"]
    else:
        (tmp_path / "corpus.txt").write_text("\n".join(distributed_jobs.WORDS * 3) + "\n", encoding="utf-8")
        recipe = ["--level", "word", "--batch", "5", "--bptt", "3", "--hidden", "8", "--layers", "2",
                  "--dropout", "0.2"]
    common = ["corpus.txt", "--dtype", "float64", "--samples", "0"]
    runs = [(2, [*recipe, "--steps", "10", "--out", "full.npz"]), (2, [*recipe, "--steps", "6", "--out", "half.npz"]),
            (1, ["--resume", "half.npz", "--steps", "10", "--out", "on1.npz"]),
            (3, ["--resume", "half.npz", "--steps", "10", "--out", "on3.npz"])]
    for n, args in runs:
        done = xseq_train(n, *common, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        first = done.stdout.splitlines()[0]
        assert first == (f"data-parallel over {n} processes (MPI)" if n > 1 else first)
    full = trained(tmp_path / "full.npz")
    assert trained(tmp_path / "half.npz")["array/train/losses"].size == 6
    for resumed in ("on1.npz", "on3.npz"):
        again = trained(tmp_path / resumed)
        assert sorted(again) == sorted(full)
        for key in full:
            np.testing.assert_allclose(again[key], full[key], rtol=0, atol=1e-12, err_msg=f"{resumed} {key}")


def test_rank_0_alone_prints_and_writes_files(tmp_path):
    """Each rank runs in its own directory (mpiexec's MPMD form): only rank 0's receives the checkpoint and the
    plot, and the output appears once."""
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (in the test extra)")
    launcher = mpi_or_skip()
    args = ["corpus.txt", "--steps", "5", "--batch", "5", "--hidden", "8", "--out", "m.npz", "--plot", "loss.png",
            "--samples", "2"]
    for rank in (0, 1):
        (tmp_path / f"r{rank}").mkdir()
        (tmp_path / f"r{rank}" / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
    command = [launcher]
    for rank in (0, 1):
        command += [":"] * (rank > 0) + ["-n", "1", "-wdir", str(tmp_path / f"r{rank}"), sys.executable, "-m", "xseq",
                                         "train", *args]
    done = subprocess.run(command, env=job_environment(), capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "data-parallel over 2 processes (MPI)"
    assert done.stdout.count("model saved to m.npz") == 1 and done.stdout.count("samples:") == 1
    assert sorted(p.name for p in (tmp_path / "r0").iterdir()) == ["corpus.txt", "loss.png", "m.npz"]
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == ["corpus.txt"]


def test_a_bad_file_on_one_rank_ends_the_job_with_its_message(tmp_path):
    """The corpus is missing on rank 1 only: rank 1 says so, with its rank, and the job ends (rank 0 would
    otherwise wait for it forever)."""
    launcher = mpi_or_skip()
    for rank in (0, 1):
        (tmp_path / f"r{rank}").mkdir()
    (tmp_path / "r0" / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
    command = [launcher]
    for rank in (0, 1):
        command += [":"] * (rank > 0) + ["-n", "1", "-wdir", str(tmp_path / f"r{rank}"), sys.executable, "-m", "xseq",
                                         "train", "corpus.txt", "--steps", "3", "--out", "m.npz"]
    done = subprocess.run(command, env=job_environment(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "xseq train: error: [rank 1/2] corpus file 'corpus.txt' does not exist" in done.stderr
    assert not (tmp_path / "r0" / "m.npz").exists()


def planted(tmp_path, n, fault, rank, step, *extra):
    (tmp_path / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
    return launch(n, sys.executable, "-m", "tests.distributed_jobs", "cli", fault, str(rank), str(step), "train",
                  str(tmp_path / "corpus.txt"), "--steps", "8", "--batch", "5", "--hidden", "8", "--samples", "0",
                  "--out", str(tmp_path / "m.npz"), *extra, timeout=30)


def test_an_exception_in_training_on_one_rank_ends_the_job_within_seconds(tmp_path):
    done = planted(tmp_path, 3, "raise", 2, 3)
    assert done.returncode == 1
    assert "[rank 2/3] RuntimeError: planted failure at step 3" in done.stderr
    assert "[rank 2/3] ending all 3 processes of the job" in done.stderr


def test_a_stop_asked_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """As a Ctrl-C does (mpiexec forwards it to every rank, each of which then asks to stop): the ranks agree
    in the step's all-reduce, so all stop after it, rank 0 saves, and the job exits with 130."""
    done = planted(tmp_path, 3, "stop", 1, 3)
    assert done.returncode == 130, done.stdout + done.stderr
    assert "xseq train: interrupted at step 3; checkpoint saved to" in done.stderr
    assert saved(tmp_path / "m.npz")["array/train/losses"].size == 3


@pytest.mark.parametrize("kind", ["lines", "word-stream"])
def test_evaluate_under_mpiexec_gives_the_single_process_numbers(tmp_path, kind):
    """Line models: each rank scores a share of the file and the sums are reduced; stream models: the file is
    one stream, which rank 0 scores alone. Either way the printed numbers are one process's."""
    corpus = distributed_jobs.NAMES if kind == "lines" else distributed_jobs.WORDS * 3
    (tmp_path / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    level = [] if kind == "lines" else ["--level", "word", "--bptt", "3"]
    mpi_or_skip()
    with contextlib.redirect_stdout(io.StringIO()):  # the model, trained in this process
        assert cli.main(["train", str(tmp_path / "corpus.txt"), *level, "--steps", "3", "--batch", "5", "--hidden",
                         "8", "--samples", "0", "--out", str(tmp_path / "m.npz")]) == 0
    outputs = []
    for n in (1, 3):
        done = launch(n, sys.executable, "-m", "xseq", "evaluate", "m.npz", "corpus.txt", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append([line for line in done.stdout.splitlines() if not line.startswith("data-parallel")])
    assert outputs[0] == outputs[1] and any(line.startswith("cross-entropy: ") for line in outputs[0])


# ---------------------------------------------------------------------- ranks started differently, ranks that stop answering


def run_bounded(command, timeout, **kwargs):
    """Run ``command`` in a session of its own; whatever is left of it (a stopped rank) is killed at the end."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def mpmd(cwd, *ranks, timeout=60):
    """``mpiexec -n 1 [-env NAME VALUE ...] COMMAND : -n 1 ...``, one (environment, command) per rank."""
    command = [mpi_or_skip()]
    for i, (environment, argv) in enumerate(ranks):
        command += [":"] * (i > 0) + ["-n", "1"]
        for name, value in environment.items():
            command += ["-env", name, value]
        command += [sys.executable, "-m", "xseq", *argv]
    return run_bounded(command, timeout, cwd=cwd, env=job_environment())


def whole_lines(stderr):
    """The lines of a job's stderr, each checked to be one rank's message and not two glued together."""
    lines = stderr.splitlines()
    assert all(len(re.findall(r"xseq \w+: error: ", line)) <= 1 for line in lines), stderr
    return lines


def test_mpmd_ranks_with_different_options_stop_at_the_start_naming_the_option(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
    common = ["train", "corpus.txt", "--steps", "3", "--samples", "0", "--dropout", "0.1"]
    done = mpmd(tmp_path, ({}, [*common, "--hidden", "16"]), ({}, [*common, "--hidden", "24", "--cell", "gru"]))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = whole_lines(done.stderr)
    assert ("xseq train: error: [rank 1/2] the ranks' options differ from rank 0's: --cell 'gru' here, None on "
            "rank 0; --hidden 24 here, 16 on rank 0") in lines
    assert "xseq train: error: [rank 0/2] rank 1 disagrees with the others; see their message" in lines
    assert not (tmp_path / "model.npz").exists()


def test_train_beside_evaluate_stops_at_the_start_instead_of_hanging(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", str(tmp_path / "corpus.txt"), "--steps", "2", "--hidden", "8", "--samples", "0",
                         "--out", str(tmp_path / "m.npz")]) == 0
    done = mpmd(tmp_path, ({}, ["train", "corpus.txt", "--steps", "3", "--out", "other.npz"]),
                ({}, ["evaluate", "m.npz", "corpus.txt"]))
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("xseq evaluate: error: [rank 1/2] the ranks' commands differ from rank 0's: command 'xseq evaluate' "
            "here, 'xseq train' on rank 0") in whole_lines(done.stderr)


@pytest.mark.parametrize("environment, differs", [
    ({"XSEQ_FUSED": "0"}, "steps (float32) 'ArrayAPIOps' here, 'HostFusedOps' on rank 0"),
    ({"PATH": "NO-COMPILER", "CXX": ""}, "steps (float32) 'NumpyOps (no C++ compiler ($CXX, g++, c++ or clang++) "
                                         "on PATH)' here, 'HostFusedOps' on rank 0")])
def test_a_rank_on_another_fast_path_stops_at_the_start(tmp_path, environment, differs):
    """A rank whose steps would be computed by other code (XSEQ_FUSED=0, a node without a compiler) would drift
    apart from the others in the last bits; it is stopped before the first step, with what differs."""
    from xseq.ops import host

    if not host.library().on("step kernels"):
        pytest.skip(f"the host kernels cannot be built here ({host.library().reason}); this test compares a rank "
                    "that has them with one that has not")
    (tmp_path / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
    (tmp_path / "NO-COMPILER").mkdir()
    environment = {k: str(tmp_path / v) if v == "NO-COMPILER" else v for k, v in environment.items()}
    argv = ["train", "corpus.txt", "--steps", "3", "--samples", "0"]
    done = mpmd(tmp_path, ({}, argv), (environment, argv))
    assert done.returncode == 2, done.stdout + done.stderr
    message = next(line for line in whole_lines(done.stderr) if line.startswith("xseq train: error: [rank 1/2]"))
    assert message.startswith("xseq train: error: [rank 1/2] the ranks' fast paths differ from rank 0's: ")
    assert differs in message
    assert not (tmp_path / "model.npz").exists()


def test_a_stopped_rank_ends_the_job_after_comm_timeout_and_the_last_checkpoint_resumes(tmp_path):
    """Rank 1 stops itself (SIGSTOP) at step 6: rank 0 waits in that step's all-reduce until --comm-timeout,
    says so and ends the job (status 124). The checkpoint of epoch 1 (step 4) is intact, and resumed it ends
    where an uninterrupted run ends."""
    (tmp_path / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
    recipe = ["--steps", "8", "--batch", "5", "--hidden", "8", "--samples", "0", "--dtype", "float64"]
    command = [mpi_or_skip(), "-n", "2", sys.executable, "-m", "tests.distributed_jobs", "cli", "sigstop", "1", "6",
               "train", "corpus.txt", *recipe, "--out", "m.npz", "--comm-timeout", "10"]
    done = run_bounded(command, 120, cwd=tmp_path, env=job_environment())
    assert done.returncode == 124, done.stdout + done.stderr
    assert ("xseq train: error: [rank 0/2] no reply from the other ranks in a collective for 10 s (step 6); "
            "ending the job (--comm-timeout 10)") in whole_lines(done.stderr)
    assert saved(tmp_path / "m.npz")["array/train/losses"].size == 4
    for n, args in ((2, ["--resume", "m.npz", "--out", "resumed.npz"]), (1, [*recipe, "--out", "full.npz"])):
        again = xseq_train(n, "corpus.txt", *(args if n == 1 else [*args, "--steps", "8", "--samples", "0"]),
                           cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
    full, resumed = trained(tmp_path / "full.npz"), trained(tmp_path / "resumed.npz")
    assert sorted(resumed) == sorted(full)
    for key in full:
        np.testing.assert_allclose(resumed[key], full[key], rtol=0, atol=1e-12, err_msg=key)


# ---------------------------------------------------------------------- the benchmark's check


def bench_distributed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("bench_distributed")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_the_benchmark_checks_two_ranks_against_one_process_before_timing(capsys):
    mpi_or_skip()
    bench_distributed().check(["char"])
    assert "check char: 2 ranks against 1 process" in capsys.readouterr().out


def test_the_benchmarks_check_stops_on_a_difference(monkeypatch, capsys):
    """The comparison itself, on planted results: a parameter 1e-9 off on 2 ranks stops the script."""
    bench = bench_distributed()

    def job(ranks, *argv):
        params = {"W": np.ones((2, 3)), "b": np.zeros(3)}
        if ranks == 2:
            params["W"][1, 2] += 1e-9
        np.savez(argv[argv.index("--check-into") + 1], **params)
        return {"ranks": ranks}

    monkeypatch.setattr(bench, "job", job)
    with pytest.raises(SystemExit) as stopped:
        bench.check(["char"])
    assert stopped.value.code == 1
    out = capsys.readouterr().out
    assert "largest parameter difference 1.0e-09 (at most 1e-12): MISMATCH" in out and "nothing was timed" in out


def test_ranks_given_different_corpora_all_stop_with_a_message_that_says_so(tmp_path):
    launcher = mpi_or_skip()
    command = [launcher]
    for rank in (0, 1):
        (tmp_path / f"r{rank}").mkdir()
        names = distributed_jobs.NAMES if rank == 0 else distributed_jobs.NAMES[::-1]
        (tmp_path / f"r{rank}" / "corpus.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        command += [":"] * (rank > 0) + ["-n", "1", "-wdir", str(tmp_path / f"r{rank}"), sys.executable, "-m", "xseq",
                                         "train", "corpus.txt", "--steps", "3", "--out", "m.npz"]
    done = subprocess.run(command, env=job_environment(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "xseq train: error: [rank 1/2] the training corpora at the start differ between ranks: rank 0 has" \
        in done.stderr
    assert "xseq train: error: [rank 0/2] rank 1 disagrees with the others; see their message" in done.stderr
