"""Numbers and flags at their extremes: huge losses, tiny temperatures, flags beyond the machine, long
lines, a closed stdout; and arguments that would be cast silently (bool lengths, masked arrays)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import xseq
from xseq.lm import lines_data
from xseq.lm import resources as _resources
from xseq.lm.cli import main
from xseq.lm.usage import MAX_LAYERS, MAX_STEPS
from xseq.lm.model import CharLM
from xseq.lm.train import TrainConfig, Trainer, evaluate, split_sequences

from .test_cli import NAMES, TINY, assert_bad_input, env, xseq_cli

LONG = "abcdefghij" * 2_000  # one 20,000-character line


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text(NAMES, encoding="utf-8")
    return path


@pytest.fixture
def trained(tmp_path, corpus):
    out = tmp_path / "model.npz"
    assert main(["train", str(corpus), "--steps", "3", *TINY, "--out", str(out), "--samples", "0"]) == 0
    return out


def names_model(scale=1.0):
    """An untrained model over the names' characters, its output weights multiplied by ``scale``."""
    model = CharLM(xseq.Vocabulary.from_text(NAMES.split()), 8, seed=3)
    model.parameters()["Wy"] = model.parameters()["Wy"] * scale
    return model


# ---------------------------------------------------------------------- a huge loss


def test_the_perplexity_of_a_huge_loss_is_inf(tmp_path, corpus, capsys):
    """exp(3000) overflows a float: evaluate prints inf instead of raising OverflowError."""
    path = tmp_path / "huge.npz"
    names_model(scale=1e4).save(path)
    assert main(["evaluate", str(path), str(corpus)]) == 0
    out = capsys.readouterr().out
    loss = float(out.split("cross-entropy: ")[1].split()[0])
    assert loss > 710  # beyond math.exp
    assert "perplexity: inf" in out


def test_a_diverging_run_stops_with_one_line_and_writes_no_checkpoint(tmp_path, corpus):
    """A loss that overflows to inf/NaN ends the run (exit 2, one line) before the update; nothing is saved."""
    done = xseq_cli("train", corpus, "--steps", 40, *TINY, "--optimizer", "sgd", "--lr", "1e38", "--clip", 0,
                    "--out", tmp_path / "m.npz", cwd=tmp_path)
    assert_bad_input(done, "training diverged at step", "lower --lr")
    assert not (tmp_path / "m.npz").exists()


def test_the_trainer_raises_before_applying_a_non_finite_loss(corpus):
    trainer = Trainer(NAMES.split(), TrainConfig(steps=5, hidden_size=8, batch_size=4), backend="numpy")
    weights = {k: np.array(v) for k, v in trainer.model.parameters().items()}
    trainer.model.loss_and_backward = lambda *args, **kwargs: (float("nan"), None)
    with pytest.raises(xseq.lm.train.DivergedError, match="training diverged at step 1: the training loss is nan"):
        trainer.run()
    for name, value in trainer.model.parameters().items():
        np.testing.assert_array_equal(np.asarray(value), weights[name])


def test_training_with_a_huge_learning_rate_ends_with_an_inf_perplexity(tmp_path, corpus):
    done = xseq_cli("train", corpus, "--steps", 3, *TINY, "--lr", 1000, "--out", tmp_path / "m.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "(perplexity inf)" in done.stdout and "Traceback" not in done.stderr


# ---------------------------------------------------------------------- a tiny temperature


@pytest.mark.parametrize("temperature", [1e-320, 5e-324])
def test_a_tiny_temperature_is_greedy_sampling(temperature):
    model = names_model()
    greedy = model.sample(6, top_k=1, max_len=12, seed=0)
    assert all(greedy)
    for seed in (0, 1):
        assert model.sample(6, temperature=temperature, max_len=12, seed=seed) == greedy


def test_the_cli_samples_greedily_at_a_tiny_temperature(tmp_path, trained):
    tiny = xseq_cli("sample", trained, "-n", 4, "--temperature", "1e-320", cwd=tmp_path)
    greedy = xseq_cli("sample", trained, "-n", 4, "--top-k", 1, cwd=tmp_path)
    assert tiny.returncode == 0 and "Warning" not in tiny.stderr, tiny.stderr
    assert tiny.stdout == greedy.stdout and all(tiny.stdout.splitlines())


# ---------------------------------------------------------------------- flags beyond the machine

HUGE = 10**12


@pytest.mark.parametrize("flags, fragments", [
    (["--hidden", HUGE], [f"--hidden {HUGE}: the run would need about", "TiB of memory", "lower --hidden"]),
    (["--samples", HUGE], [f"--samples {HUGE}: the run would need about", "lower --samples"]),
    (["--layers", HUGE], [f"--layers {HUGE} is more than the {MAX_LAYERS} layers"]),
    (["--layers", MAX_LAYERS + 1], [f"--layers {MAX_LAYERS + 1} is more than"]),
    (["--steps", HUGE], [f"--steps {HUGE} is more than the {MAX_STEPS:,} optimizer steps"]),
    (["--epochs", HUGE], [f"--epochs {HUGE} (about 3,000,000,000,000 optimizer steps) is more than"]),
], ids=["hidden", "samples", "layers", "layers-cap", "steps", "epochs"])
def test_train_refuses_flags_beyond_the_machine_before_any_work(tmp_path, corpus, flags, fragments):
    out = tmp_path / "m.npz"
    done = xseq_cli("train", corpus, *TINY, *flags, "--out", out, cwd=tmp_path)
    assert_bad_input(done, *fragments)
    assert not out.exists() and "training lstm" not in done.stdout


@pytest.mark.parametrize("flags, option", [(["-n", HUGE], "-n"), (["--max-len", HUGE], "--max-len")])
def test_sample_refuses_flags_beyond_the_machine(tmp_path, trained, flags, option):
    assert_bad_input(xseq_cli("sample", trained, *flags, cwd=tmp_path),
                     f"{option} {HUGE}: sampling would need about", f"lower {option}")


def test_the_flag_named_is_the_one_that_makes_the_run_too_big(tmp_path, corpus, monkeypatch, capsys):
    """With 256 MiB free, a 20,000-character line fits in pieces of 256 but not whole."""
    long_corpus = tmp_path / "long.txt"
    long_corpus.write_text(NAMES + LONG + "\n", encoding="utf-8")
    monkeypatch.setattr(_resources, "available_memory", lambda xp: 256 * 2**20)
    args = ["train", str(long_corpus), "--steps", "1", "--samples", "0", "--out", str(tmp_path / "m.npz")]
    assert main([*args, "--max-seq-len", "20000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xseq train: error: --max-seq-len 20000: the run would need about")
    assert "lower --max-seq-len" in err
    assert main([*args, "--batch", "64", "--hidden", "64"]) == 0
    assert main([*args, "--hidden", "2000"]) == 2
    assert "--hidden 2000: the run would need" in capsys.readouterr().err


def test_evaluate_refuses_a_max_seq_len_beyond_the_machine(tmp_path, trained, monkeypatch, capsys):
    long_corpus = tmp_path / "long.txt"
    long_corpus.write_text(NAMES + LONG + "\n", encoding="utf-8")
    monkeypatch.setattr(_resources, "available_memory", lambda xp: 64 * 2**20)
    assert main(["evaluate", str(trained), str(long_corpus), "--max-seq-len", "20000"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("xseq evaluate: error: --max-seq-len 20000: evaluating would need about")
    assert main(["evaluate", str(trained), str(long_corpus)]) == 0
    assert "split into 91 of at most 256 characters" in capsys.readouterr().out


def test_estimates_bound_the_data_not_the_flags():
    """A --batch or --max-seq-len beyond the corpus costs nothing; the estimate follows the data."""
    shape = {"cell": "lstm", "hidden_size": 128, "num_layers": 1, "vocab_size": 30, "dtype": "float32",
             "train_sequences": 100, "val_sequences": 100, "longest": 20, "total_steps": 10, "samples": 5,
             "sample_len": 50}
    small = _resources.training_bytes(**shape, batch_size=32, max_seq_len=256)
    assert _resources.training_bytes(**shape, batch_size=10**12, max_seq_len=10**12) <= 4 * small
    assert small < 2**30


# ---------------------------------------------------------------------- long lines


def test_long_lines_are_split_so_a_batch_is_bounded_by_max_seq_len(monkeypatch):
    lines = NAMES.split() + [LONG]
    config = TrainConfig(hidden_size=8, batch_size=4, max_seq_len=100, steps=6)
    trainer = Trainer(lines, config)
    sequences = trainer.train_ids + trainer.val_ids
    assert max(len(s) for s in sequences) == 100
    assert len(sequences) == len(NAMES.split()) + len(LONG) // 100
    # the pieces are the line's characters, in order
    pieces = [s for s in sequences if len(s) == 100]
    assert sorted("".join(trainer.model.vocab.decode(p) for p in pieces)) == sorted(LONG)
    steps_seen = []
    batch = lines_data.line_batch
    monkeypatch.setattr(lines_data, "line_batch", lambda seqs, V: steps_seen.append(max(map(len, seqs)) + 1)
                        or batch(seqs, V))
    assert trainer.run()
    assert max(steps_seen) == 101


def test_split_sequences_keeps_every_token_in_order():
    assert split_sequences([[1, 2, 3, 4, 5], [6], []], 2) == [[1, 2], [3, 4], [5], [6], []]
    assert split_sequences([[1, 2]], 2) == [[1, 2]]
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        split_sequences([[1]], 0)


def test_evaluate_splits_long_sequences_as_training_does(monkeypatch):
    model = CharLM(xseq.Vocabulary.from_text([LONG]), 8)
    ids = model.vocab.encode(LONG)
    steps_seen = []
    batch = lines_data.line_batch
    monkeypatch.setattr(lines_data, "line_batch", lambda seqs, V: steps_seen.append(max(map(len, seqs)) + 1)
                        or batch(seqs, V))
    loss = evaluate(model, [ids], max_seq_len=300)
    assert max(steps_seen) == 301
    assert loss == pytest.approx(evaluate(model, split_sequences([ids], 300), max_seq_len=10**9), rel=1e-6)


def test_the_cli_trains_and_evaluates_a_corpus_with_a_long_line(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text(NAMES + LONG + "\n", encoding="utf-8")
    out = tmp_path / "m.npz"
    done = xseq_cli("train", path, "--steps", 2, *TINY, "--max-seq-len", 500, "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "(lines longer than 500 characters split into pieces)" in done.stdout
    done = xseq_cli("evaluate", out, path, "--max-seq-len", 500, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "13 sequences (split into 52 of at most 500 characters)" in done.stdout
    assert "+ 52 end-of-sequence tokens" in done.stdout


def test_resume_refuses_another_max_seq_len(tmp_path, corpus, trained):
    assert_bad_input(xseq_cli("train", corpus, "--resume", trained, "--max-seq-len", 9, cwd=tmp_path),
                     "--max-seq-len 9 differs from the resumed run's 256")


# ---------------------------------------------------------------------- a closed stdout


@pytest.mark.skipif(sys.platform == "win32", reason="a pipe whose reader is gone is POSIX behaviour")
@pytest.mark.parametrize("command", [["info"], ["sample", "-n", "3"], ["evaluate", "CORPUS"]])
def test_a_closed_stdout_ends_the_command_quietly(tmp_path, corpus, trained, command):
    """Like ``xseq info m.npz | head -1`` with head gone before xseq writes: no traceback, status 141."""
    args = [command[0], str(trained), *(str(corpus) if a == "CORPUS" else a for a in command[1:])]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "xseq", *args], stdout=write_end, stderr=subprocess.PIPE,
                              cwd=tmp_path, env=env(), text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell and head")
def test_sample_piped_into_head(tmp_path, trained):
    done = subprocess.run(f"'{sys.executable}' -m xseq sample '{trained}' -n 20000 | head -1", shell=True,
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert done.stderr == "", done.stderr


# ---------------------------------------------------------------------- arguments cast silently


def lstm_and_input():
    layer = xseq.LSTM(3, 4, dtype="float64")
    return layer, np.random.default_rng(0).standard_normal((3, 4, 5))


@pytest.mark.parametrize("lengths", [[True, True, 3, 2], [np.True_, 2, 3, 2]], ids=["python-bool", "numpy-bool"])
def test_bool_lengths_are_refused(lengths):
    layer, x = lstm_and_input()
    with pytest.raises(TypeError, match="lengths must be integers"):
        layer.forward(x, lengths=lengths)


def test_masked_arrays_are_refused_naming_the_argument():
    layer, x = lstm_and_input()
    masked_lengths = np.ma.masked_array([1, 2, 3, 4], mask=[0, 1, 0, 0])
    with pytest.raises(TypeError, match="lengths is a NumPy masked array"):
        layer.forward(x, lengths=masked_lengths)
    with pytest.raises(TypeError, match="x is a NumPy masked array"):
        layer.forward(np.ma.masked_array(x, mask=x > 1))
    parameters = xseq.init_rnn_parameters(3, 4, 2, dtype="float64")
    with pytest.raises(TypeError, match="x is a NumPy masked array"):
        xseq.rnn_forward(np.ma.masked_array(x), np.zeros((4, 4)), parameters)
    logits = np.zeros((5, 2, 3))
    with pytest.raises(TypeError, match="logits is a NumPy masked array"):
        xseq.softmax_cross_entropy(np.ma.masked_array(logits), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="obj is a NumPy masked array"):
        xseq.asarray(np.ma.masked_array(logits))
    with pytest.raises(TypeError, match="ids is a NumPy masked array"):
        xseq.one_hot(np.ma.masked_array([[1, 2]]), 5)
    model = names_model()
    with pytest.raises(TypeError, match=r"sequences\[0\] is a NumPy masked array"):
        model.batch([np.ma.masked_array([3, 4], mask=[0, 1])])


def test_model_batch_refuses_ids_that_are_not_integers():
    model = names_model()
    with pytest.raises(TypeError, match=r"sequences\[1\] has dtype float64; expected integer ids"):
        model.batch([[3, 4], [3.7]])
    assert math.isfinite(model.loss([[3, 4], []])[0])
