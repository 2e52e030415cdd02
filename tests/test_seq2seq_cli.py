"""``xseq train --task seq2seq``, ``evaluate``, ``translate``, ``sample`` and ``info`` on a sequence-to-sequence model.

Tiny models trained for a few steps: these tests prove the plumbing (files, options, messages, checkpoints,
resume); the benchmark (``benchmarks/bench_seq2seq.py``) proves what the defaults learn.
"""

import numpy as np
import pytest

from xseq.lm.checkpoint import load_checkpoint
from xseq.lm.cli import main
from xseq.lm.pairs_data import BUILTIN_DATES, PairData, builtin_pairs, read_pairs
from xseq.lm.recipe import Seq2SeqConfig
from xseq.lm.trainer import Trainer
from xseq.seq2seq.dates import date_pairs

from .test_cli import NAMES, TINY, assert_bad_input, xseq_cli

SMALL = ["--hidden", "8", "--decoder-hidden", "8", "--embed", "4", "--attention", "4", "--batch", "8"]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "dates.tsv"
    path.write_text("".join(f"{s}\t{t}\n" for s, t in date_pairs(60, seed=3)), encoding="utf-8")
    return path


@pytest.fixture
def model(tmp_path, pairs_file):
    out = tmp_path / "s2s.npz"
    done = xseq_cli("train", pairs_file, "--task", "seq2seq", *SMALL, "--steps", 6, "--samples", 2, "--out", out,
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return out, done


def test_train_prints_the_exact_match_and_translations_and_saves_a_seq2seq_run(model):
    out, done = model
    assert "training seq2seq: lstm encoder (hidden 8 x 2 directions" in done.stdout
    assert "exact match: " in done.stdout and "% of 6 held-out pairs (greedy)" in done.stdout
    translations = done.stdout.split("translations:\n")[1].splitlines()[:2]
    assert len(translations) == 2 and all(" -> " in line for line in translations)
    arrays, meta = load_checkpoint(out)
    assert meta["format"] == "xseq.Seq2Seq" and meta["trainer"]["kind"] == "seq2seq"
    assert meta["trainer"]["config"]["decoder_size"] == 8 and meta["trainer"]["step"] == 6
    assert len(arrays["train/losses"]) == 6


def test_evaluate_translate_info_and_sample(tmp_path, model, pairs_file):
    out, _ = model
    done = xseq_cli("evaluate", out, pairs_file, "--beam", 2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith("60 pairs, " + lines[0].split("60 pairs, ")[1]) and "target tokens" in lines[0]
    assert lines[1].startswith("cross-entropy: ") and lines[1].endswith(" nats per token")
    assert lines[2].startswith("exact match: ") and lines[2].endswith("% (beam 2)")

    done = xseq_cli("translate", out, "3 May 1979", "5/3/79", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2

    done = xseq_cli("info", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for fragment in ("model: sequence to sequence with attention", "source vocabulary: ", "target vocabulary: ",
                     "parameters: ", "recipe: adam", "trained: 6 steps"):
        assert fragment in done.stdout, done.stdout

    done = xseq_cli("sample", out, "--prefix", "3 May 1979", "-n", 3, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
    assert_bad_input(xseq_cli("sample", out, cwd=tmp_path), "give --prefix TEXT")


def test_translate_draws_the_attention_map_and_never_over_its_model(tmp_path, model):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (xseq[plot]); the attention map needs it")
    out, _ = model
    png = tmp_path / "attention.png"
    done = xseq_cli("translate", out, "Tuesday 3 May 1979", "--plot-attention", png, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = out.read_bytes()
    assert_bad_input(xseq_cli("translate", out, "3 May 1979", "--plot-attention", out, cwd=tmp_path),
                     "is the same file as MODEL")
    assert out.read_bytes() == before


def test_resume_gives_the_losses_of_the_uninterrupted_run(tmp_path, pairs_file):
    straight, half = tmp_path / "straight.npz", tmp_path / "half.npz"
    for out, steps in ((straight, 9), (half, 4)):
        done = xseq_cli("train", pairs_file, "--task", "seq2seq", *SMALL, "--steps", steps, "--samples", 0,
                        "--dtype", "float64", "--out", out, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    done = xseq_cli("train", pairs_file, "--resume", half, "--steps", 9, "--samples", 0, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resuming at step 4" in done.stdout
    a, _ = load_checkpoint(straight)
    b, _ = load_checkpoint(half)
    np.testing.assert_array_equal(a["train/losses"], b["train/losses"])
    for key in a:
        if key.startswith("param/"):
            np.testing.assert_array_equal(a[key], b[key])


def test_bad_input_is_one_line(tmp_path, pairs_file, model):
    out, _ = model
    bad = tmp_path / "bad.tsv"
    bad.write_text("3 May 1979\t1979-05-03\nno tab on this line\n", encoding="utf-8")
    assert_bad_input(xseq_cli("train", bad, "--task", "seq2seq", cwd=tmp_path), "line 2", "one TAB")
    bad.write_text("a\tb\tc\n", encoding="utf-8")
    assert_bad_input(xseq_cli("train", bad, "--task", "seq2seq", cwd=tmp_path), "line 1", "has 2")
    names = tmp_path / "names.txt"
    names.write_text(NAMES, encoding="utf-8")
    assert_bad_input(xseq_cli("train", names, "--beam", 2, cwd=tmp_path), "--beam applies to sequence-to-sequence")
    assert_bad_input(xseq_cli("train", pairs_file, "--task", "seq2seq", "--bptt", 5, cwd=tmp_path),
                     "--bptt applies to stream models")
    lm = tmp_path / "lm.npz"
    assert xseq_cli("train", names, *TINY, "--steps", 1, "--out", lm, cwd=tmp_path).returncode == 0
    assert_bad_input(xseq_cli("train", names, "--resume", lm, "--task", "seq2seq", cwd=tmp_path),
                     "--task seq2seq trains a seq2seq model", "holds a line model")
    assert_bad_input(xseq_cli("translate", lm, "3 May 1979", cwd=tmp_path), "translate needs a sequence-to-sequence")
    assert_bad_input(xseq_cli("train", pairs_file, "--resume", out, "--decoder-hidden", 16, cwd=tmp_path),
                     "--decoder-hidden 16 differs from the resumed run's 8")
    assert_bad_input(xseq_cli("evaluate", out, tmp_path / "missing.tsv", cwd=tmp_path), "missing.tsv")


def test_read_pairs_and_the_builtin_dates(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("a b\tc\n\n  \nd\te f\n", encoding="utf-8")
    assert read_pairs(path) == [("a b", "c"), ("d", "e f")]
    train, held_out = builtin_pairs(50, 0.2, seed=1)
    assert len(train) == 40 and len(held_out) == 10
    assert not {t for _, t in train} & {t for _, t in held_out}  # a held-out date is named by no training pair


def test_the_builtin_dates_train_in_process(capsys):
    """No file: the built-in generator (``--pairs``), and the data plan's own split."""
    config = Seq2SeqConfig(hidden_size=8, decoder_size=8, embed_size=4, attention_size=4, batch_size=16, steps=3,
                           pairs=80)
    trainer = Trainer(PairData(None, config), backend="numpy")
    assert trainer.source == BUILTIN_DATES and len(trainer.data.val_ids) == 8
    assert trainer.run()
    assert main(["train", "--task", "seq2seq", *SMALL, "--pairs", "40", "--steps", "2", "--samples", "0",
                 "--out", "/dev/null/x.npz"]) == 2  # an unwritable --out is refused before training
    assert "cannot write --out" in capsys.readouterr().err
