"""The ``xseq`` command line, end to end in subprocesses: train, sample, evaluate, info, bad input, Ctrl-C."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xseq
from xseq.lm.cli import main
from xseq.lm.model import CharLM

ROOT = Path(__file__).resolve().parents[1]
NAMES = "anna\nbob\ncarla\ndan\nebba\nfrida\ngus\nhanna\nida\njon\nkai\nlena\n"
TINY = ["--hidden", "8", "--batch", "4"]


def env(**extra):
    variables = dict(os.environ)
    variables["PYTHONPATH"] = os.pathsep.join([str(ROOT), variables.get("PYTHONPATH", "")])
    variables["OPENBLAS_NUM_THREADS"] = "1"  # tiny matrices: threads only cost time
    variables.update(extra)
    return variables


def xseq_cli(*args, cwd, **extra_env):
    """Run ``python -m xseq ARGS``; returns the completed process (text output)."""
    return subprocess.run([sys.executable, "-m", "xseq", *map(str, args)], cwd=cwd, env=env(**extra_env),
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text(NAMES, encoding="utf-8")
    return path


@pytest.fixture
def trained(tmp_path, corpus):
    """A model trained for 3 steps by the CLI."""
    out = tmp_path / "model.npz"
    done = xseq_cli("train", corpus, "--steps", 3, *TINY, "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return out


def assert_bad_input(done, *fragments):
    """Exit status 2 and one clear line on stderr that holds every fragment, no traceback."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------------- the happy path


def test_train_sample_evaluate_info_end_to_end(tmp_path, corpus):
    out, plot = tmp_path / "model.npz", tmp_path / "loss.png"
    done = xseq_cli("train", corpus, "--steps", 3, *TINY, "--out", out, "--plot", plot, "--samples", 2,
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "epoch 1  step 3" in done.stdout  # 11 training names in batches of 4: 3 steps per epoch
    assert "validation loss:" in done.stdout and "samples:" in done.stdout
    assert out.exists() and plot.read_bytes().startswith(b"\x89PNG")

    done = xseq_cli("sample", out, "-n", 4, "--prefix", "a", "--max-len", 6, "--top-k", 5, "--seed", 1,
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    samples = done.stdout.splitlines()
    assert len(samples) == 4 and all(s.startswith("a") and 1 <= len(s) <= 6 for s in samples)
    assert xseq_cli("sample", out, "-n", 4, "--prefix", "a", "--max-len", 6, "--top-k", 5, "--seed", 1,
                    cwd=tmp_path).stdout.splitlines() == samples

    done = xseq_cli("evaluate", out, corpus, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    nats = float(done.stdout.split("cross-entropy: ")[1].split()[0])
    perplexity = float(done.stdout.split("perplexity: ")[1].split()[0])
    assert 0 < nats < 4 and perplexity == pytest.approx(np.exp(nats), rel=1e-3)

    done = xseq_cli("info", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "model: lstm, hidden size 8, 1 layer" in done.stdout
    assert "parameters: " in done.stdout and "trained: 3 steps (1 whole epoch)" in done.stdout
    assert f"vocabulary: {len(set(NAMES) - {chr(10)}) + 3} tokens" in done.stdout
    assert f"parameters: {CharLM.load(out).num_parameters():,}" in done.stdout


def test_resume_continues_the_run(tmp_path, corpus, trained):
    done = xseq_cli("train", corpus, "--steps", 5, "--resume", trained, "--out", trained, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resuming at step 3" in done.stdout and "step 5" in done.stdout
    done = xseq_cli("train", corpus, "--steps", 6, "--resume", trained, "--hidden", 16, cwd=tmp_path)
    assert_bad_input(done, "--hidden 16 differs from the resumed run's 8")


def test_the_installed_console_script_runs(tmp_path):
    script = Path(sys.executable).with_name("xseq.exe" if sys.platform == "win32" else "xseq")
    if not script.exists():
        pytest.skip("xseq is not installed in this environment (pip install -e .)")
    done = subprocess.run([str(script), "sample", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "--temperature" in done.stdout


def test_in_process_main_returns_the_status(tmp_path, corpus, capsys):
    assert main(["train", str(corpus), "--steps", "1", *TINY, "--samples", "0",
                 "--out", str(tmp_path / "m.npz")]) == 0
    assert main(["info", str(tmp_path / "nothing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--help"]) == 0


# ---------------------------------------------------------------------- bad input: exit 2, one line


def test_bad_corpus(tmp_path):
    assert_bad_input(xseq_cli("train", tmp_path / "missing.txt", cwd=tmp_path), "missing.txt", "does not exist")
    (tmp_path / "empty.txt").write_text("\n  \n")
    assert_bad_input(xseq_cli("train", tmp_path / "empty.txt", cwd=tmp_path), "empty.txt", "is empty")
    (tmp_path / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x00\x00abc")
    assert_bad_input(xseq_cli("train", tmp_path / "binary.txt", cwd=tmp_path), "binary.txt", "binary")
    (tmp_path / "one.txt").write_text("solo\n")
    assert_bad_input(xseq_cli("train", tmp_path / "one.txt", cwd=tmp_path), "needs at least 2")


def test_unwritable_output(tmp_path, corpus):
    assert_bad_input(xseq_cli("train", corpus, "--out", tmp_path / "no" / "such" / "m.npz", cwd=tmp_path),
                     "cannot write --out", "does not exist")
    assert_bad_input(xseq_cli("train", corpus, "--out", tmp_path, cwd=tmp_path), "--out", "is a directory")
    assert_bad_input(xseq_cli("train", corpus, "--plot", tmp_path / "no" / "p.png", cwd=tmp_path),
                     "cannot write --plot")


def test_corrupt_model(tmp_path, corpus, trained):
    data = trained.read_bytes()
    broken = tmp_path / "broken.npz"
    broken.write_bytes(data[: len(data) // 3])
    for args in (["sample", broken], ["evaluate", broken, corpus], ["info", broken],
                 ["train", corpus, "--resume", broken]):
        assert_bad_input(xseq_cli(*args, cwd=tmp_path), "broken.npz", "truncated or corrupt")
    text = tmp_path / "text.npz"
    text.write_text("not a model")
    assert_bad_input(xseq_cli("sample", text, cwd=tmp_path), "text.npz", "cannot be read")
    assert_bad_input(xseq_cli("sample", tmp_path / "missing.npz", cwd=tmp_path), "missing.npz", "does not exist")


def test_unknown_and_unusable_backends(tmp_path, corpus):
    assert_bad_input(xseq_cli("train", corpus, "--backend", "jax", cwd=tmp_path),
                     "argument --backend: invalid choice: 'jax'")
    try:
        xseq.backend("cupy")
    except xseq.BackendUnavailableError:
        pass
    else:
        pytest.skip("CuPy runs on this machine")
    assert_bad_input(xseq_cli("train", corpus, "--backend", "cupy", cwd=tmp_path), 'backend "cupy" cannot run')


def test_bad_options(tmp_path, corpus, trained):
    assert_bad_input(xseq_cli("train", corpus, "--hidden", 0, cwd=tmp_path), "--hidden", "positive integer")
    assert_bad_input(xseq_cli("train", corpus, "--epochs", 2, "--steps", 3, cwd=tmp_path), "not allowed with")
    # model.npz (the fixture's) is in tmp_path: without --out the run would be refused for that first
    assert_bad_input(xseq_cli("train", corpus, "--dropout", 1.5, "--out", tmp_path / "d.npz", cwd=tmp_path),
                     "dropout must be in [0, 1)")
    assert_bad_input(xseq_cli("sample", trained, "--prefix", "xyz", cwd=tmp_path), "not in the model's vocabulary")
    assert_bad_input(xseq_cli("sample", trained, "--temperature", 0, cwd=tmp_path), "temperature must be > 0")
    assert_bad_input(xseq_cli(cwd=tmp_path), "required")


def test_plot_without_matplotlib(tmp_path, corpus):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    done = xseq_cli("train", corpus, "--plot", tmp_path / "p.png", cwd=tmp_path,
                    PYTHONPATH=os.pathsep.join([str(fake), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    assert_bad_input(done, "--plot needs matplotlib", "pip install 'xseq[plot]'")


# ---------------------------------------------------------------------- Ctrl-C


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_saves_a_checkpoint_first(tmp_path, corpus):
    out = tmp_path / "model.npz"
    process = subprocess.Popen([sys.executable, "-m", "xseq", "train", str(corpus), "--steps", "1000000", *TINY,
                                "--out", str(out)], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("training lstm")  # the handler is installed by now
        process.stdout.readline()  # one epoch done
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted at step" in stderr and f"--resume {out}" in stderr and "Traceback" not in stderr
    step = int(stderr.split("interrupted at step ")[1].split(";")[0])
    assert step >= 3
    done = xseq_cli("train", corpus, "--resume", out, "--steps", step + 1, "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"resuming at step {step}" in done.stdout
