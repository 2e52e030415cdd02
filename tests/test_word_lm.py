"""Word-level (stream) language models: the vocabulary, the stream and its windows, the carried state,
the model's gradients, exact resumption, checkpoints, and the command line (issue 13, parts 2, 3 and 5)."""

import json
from pathlib import Path

import numpy as np
import pytest

import xseq
from xseq.lm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xseq.lm.cli import main
from xseq.lm.model import CharLM
from xseq.lm.stream_model import StreamLM
from xseq.lm.stream_train import (
    StreamConfig,
    StreamTrainer,
    batchify,
    build_vocabulary,
    evaluate_stream,
    num_windows,
    split_lines,
    stream_ids,
    window,
)
from xseq.lm.vocab import EOS_ID, PAD_ID, UNK_ID, Vocabulary

# A small word corpus: a blank line, PTB's own <unk>, words of different frequencies.
LINES = ["the cat sat on the mat", "a dog ate the <unk> cat", "", "the mat sat", "big red dog ran fast",
         "the cat ran on the big mat"] * 6
SMALL = dict(hidden_size=8, batch_size=3, bptt=4, epochs=2)


def vocab_of(words):
    return Vocabulary(["<pad>", "<unk>", "<eos>", *words], level="word", tokenizer="whitespace")


def stream_trainer(lines=LINES, **config):
    if "steps" in config:
        config["epochs"] = None
    return StreamTrainer(lines, StreamConfig(**{**SMALL, **config}), backend="numpy", source="test words")


# ---------------------------------------------------------------------- vocabulary


def test_vocab_size_counts_the_specials_and_every_other_word_is_unk():
    lines = ["b a c a b a d", "a b e"]  # a 4, b 3, then c d e once each
    vocab = Vocabulary.from_text(lines, level="word", tokenizer="whitespace", max_size=5)
    assert vocab.tokens == ("<pad>", "<unk>", "<eos>", "a", "b")
    assert vocab.encode("a b c d e zebra", add_eos=True) == [3, 4, UNK_ID, UNK_ID, UNK_ID, UNK_ID, EOS_ID]
    assert len(Vocabulary.from_text(lines, level="word", tokenizer="whitespace")) == 3 + 5  # default: every word
    assert Vocabulary.from_text(lines, level="word", tokenizer="whitespace", min_count=3).tokens[3:] == ("a", "b")
    with pytest.raises(ValueError, match="max_size = 2 is smaller than the 3 special tokens"):
        Vocabulary.from_text(lines, level="word", tokenizer="whitespace", max_size=2)


def test_a_corpus_unk_is_the_unknown_token_and_eos_the_end_of_sequence():
    vocab = Vocabulary.from_text(["x <unk> y <unk> <unk>", "y <eos> x"], level="word", tokenizer="whitespace")
    assert vocab.tokens == ("<pad>", "<unk>", "<eos>", "x", "y")  # no second <unk> or <eos> entry
    assert vocab.encode("x <unk> zebra <eos>") == [3, UNK_ID, UNK_ID, EOS_ID]
    assert vocab.decode([3, UNK_ID, 4]) == "x <unk> y"
    # A max_size that keeps only the specials still maps the text's <unk> to the unknown id.
    assert Vocabulary.from_text(["<unk> a"], level="word", tokenizer="whitespace", max_size=3).encode("<unk> a") == [
        UNK_ID, UNK_ID]


def test_pad_in_a_corpus_is_refused():
    with pytest.raises(ValueError, match=r"text_or_lines\[1\] holds the token '<pad>'"):
        Vocabulary.from_text(["a b", "c <pad> d"], level="word", tokenizer="whitespace")
    with pytest.raises(ValueError, match="holds the token '<pad>'"):
        vocab_of(["a"]).encode("a <pad>")


def test_whitespace_and_regex_tokenizers_and_their_json():
    text = "Don't stop! <unk>"
    regex = Vocabulary.from_text(text, level="word")
    white = Vocabulary.from_text(text, level="word", tokenizer="whitespace")
    assert regex.tokenizer == "regex" and regex.tokenize(text) == xseq.word_tokenize(text)
    assert white.tokenize(text) == ["Don't", "stop!", "<unk>"]
    assert regex != white
    # The regex and char vocabularies are written as before (version 1, no tokenizer key);
    # the whitespace one as version 2, which an older reader refuses.
    assert regex.to_json()["format_version"] == 1 and "tokenizer" not in regex.to_json()
    assert "tokenizer" not in Vocabulary.from_text("abc").to_json()
    data = json.loads(json.dumps(white.to_json()))
    assert data["format_version"] == 2 and data["tokenizer"] == "whitespace"
    assert Vocabulary.from_json(data) == white
    with pytest.raises(ValueError, match="missing the key 'tokenizer'"):
        Vocabulary.from_json({k: v for k, v in data.items() if k != "tokenizer"})
    with pytest.raises(ValueError, match="tokenizer applies to level='word'"):
        Vocabulary.from_text("abc", tokenizer="whitespace")


# ---------------------------------------------------------------------- the stream and its windows


def test_the_stream_joins_every_line_with_eos_blank_lines_included():
    vocab = vocab_of(["a", "b"])
    assert stream_ids(vocab, ["a b", "", "  ", "b zebra"]).tolist() == [3, 4, 2, 2, 2, 4, UNK_ID, 2]


def test_batchify_and_windows_reproduce_the_stream_exactly():
    ids = np.arange(23)
    data = batchify(ids, 3)  # 7 tokens per column, the last 2 dropped
    np.testing.assert_array_equal(data, ids[:21].reshape(3, 7))
    for bptt in (1, 3, 4, 6, 50):
        count = num_windows(data, bptt)
        assert count == -(-6 // bptt)
        pieces = [window(data, k, bptt) for k in range(count)]
        assert all(x.shape == y.shape and x.shape[1] <= bptt for x, y in pieces)
        # Inputs, concatenated, are every step but the last; targets every step but the first.
        np.testing.assert_array_equal(np.concatenate([x for x, _ in pieces], axis=1), data[:, :-1])
        np.testing.assert_array_equal(np.concatenate([y for _, y in pieces], axis=1), data[:, 1:])
    assert [x.shape[1] for x, _ in (window(data, k, 4) for k in range(2))] == [4, 2]  # the last one shorter
    with pytest.raises(IndexError):
        window(data, 2, 4)
    with pytest.raises(ValueError, match="too short for 3 columns"):
        batchify(np.arange(5), 3)


def test_the_validation_split_is_the_end_of_the_corpus_and_the_vocabulary_comes_from_training():
    lines = ["a a", "b", "c", "d", "e", "f", "g", "h", "i", "zebra"]
    train, val = split_lines(lines, None, 0.2)
    assert (train, val) == (lines[:8], lines[8:])
    assert split_lines(lines, ["v"], 0.2) == (lines, ["v"])
    vocab = build_vocabulary(train, StreamConfig())
    assert "zebra" not in vocab and "a" in vocab and vocab.tokenizer == "whitespace"


# ---------------------------------------------------------------------- the model


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_window_by_window_with_carried_state_equals_one_forward_over_the_stream(cell):
    vocab = vocab_of([f"w{i}" for i in range(9)])
    model = StreamLM(vocab, 7, cell=cell, num_layers=2, dtype="float64", seed=2)
    data = batchify(np.random.default_rng(0).integers(1, len(vocab), 3 * 23), 3)
    whole, whole_state = model.nll(data[:, :-1], data[:, 1:])
    state, total = None, 0.0
    for k in range(num_windows(data, 5)):
        x, y = window(data, k, 5)
        nll, state = model.nll(x, y, state)
        total += nll
    assert total == pytest.approx(whole, rel=1e-12)
    for a, b in zip(*(s if isinstance(s, tuple) else (s,) for s in (state, whole_state))):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert evaluate_stream(model, data, 5) == pytest.approx(whole / data[:, 1:].size, rel=1e-12)
    # Without the carried state (a zero state in every window) the sum is another number.
    reset = sum(model.nll(*window(data, k, 5))[0] for k in range(num_windows(data, 5)))
    assert abs(reset - whole) > 1e-6 * whole


def test_every_backend_computes_the_numpy_window(xp):
    """Loss, gradients (tied, with dropout) and the carried state of two windows equal NumPy's."""
    vocab = vocab_of(["a", "b", "c"])
    x, y = np.array([[1, 3, 4, 2], [5, 4, 3, 0]]), np.array([[3, 4, 2, 5], [4, 3, 1, 2]])
    models = [StreamLM(vocab, 6, num_layers=2, tie_weights=True, dropout=0.3, dtype="float64", backend=backend)
              for backend in ("numpy", xp)]
    results = []
    for model in models:
        first, state = model.loss_and_backward(x, y)
        grads = {k: xseq.to_numpy(g).copy() for k, g in model.grads().items()}
        second, state = model.loss_and_backward(y, np.array([[2, 2, 3, 1], [5, 5, 4, 3]]), state)
        results.append((first, second, grads, [xseq.to_numpy(s) for s in state]))
    (f0, s0, g0, st0), (f1, s1, g1, st1) = results
    assert f1 == pytest.approx(f0, rel=1e-12) and s1 == pytest.approx(s0, rel=1e-12)
    for name in g0:
        np.testing.assert_allclose(g1[name], g0[name], rtol=1e-10, atol=1e-13, err_msg=name)
    for a, b in zip(st1, st0):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_the_projection_covers_every_id_but_pad():
    vocab = vocab_of(["a", "b", "c"])
    model = StreamLM(vocab, 4)
    assert model.parameters()["Wy"].shape == (len(vocab) - 1, 4) and model.parameters()["by"].shape == (5,)
    tied = StreamLM(vocab, 4, tie_weights=True)
    assert "Wy" not in tied.parameters() and tied.num_parameters() == model.num_parameters() - 5 * 4
    with pytest.raises(ValueError, match=r"targets\[0\]\[1\] = 0 is <pad> \(id 0\), which an embedding model never"):
        model.nll(np.array([[1, 2]]), np.array([[2, PAD_ID]]))
    with pytest.raises(ValueError, match="tie_weights needs embed_size equal to hidden_size"):
        StreamLM(vocab, 4, embed_size=3, tie_weights=True)


def test_init_scale_draws_every_parameter_in_range():
    model = StreamLM(vocab_of(["a", "b"]), 6, num_layers=2, init_scale=0.05, seed=1)
    for name, p in model.state_dict().items():
        assert np.abs(p).max() <= 0.05 and np.abs(p).max() > 0.03, name


@pytest.mark.parametrize("cell, tie, dropout", [("lstm", False, 0.0), ("lstm", True, 0.4), ("gru", True, 0.0),
                                                ("rnn", False, 0.4)])
def test_gradients_match_finite_differences(cell, tie, dropout):
    """The loss is the sum over steps averaged over the columns; tied weights add the output gradient to the
    embedding; the dropout masks (embedding, between layers, before the projection) are applied both ways."""
    vocab = vocab_of([f"w{i}" for i in range(5)])
    model = StreamLM(vocab, 5, cell=cell, num_layers=2, tie_weights=tie, dropout=dropout, init_scale=0.5,
                     dtype="float64", seed=3)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, len(vocab), (3, 4)), rng.integers(1, len(vocab), (3, 4))
    state = model.initial_state(3)
    state = tuple(s + 0.3 for s in state) if cell == "lstm" else state + 0.3
    masks = model.dropout_rng.bit_generator.state

    def loss():
        model.dropout_rng.bit_generator.state = masks  # the same masks at every evaluation
        return model.loss_and_backward(x, y, state)[0] / 3

    loss()
    grads = {k: np.array(g) for k, g in model.grads().items()}
    assert set(grads) == set(model.parameters())
    for name, p in model.parameters().items():
        for index in [tuple(rng.integers(0, s) for s in p.shape) for _ in range(4)]:
            old = p[index]
            p[index] = old + 1e-6
            up = loss()
            p[index] = old - 1e-6
            down = loss()
            p[index] = old
            np.testing.assert_allclose(grads[name][index], (up - down) / 2e-6, rtol=1e-4, atol=1e-8,
                                       err_msg=f"{name}{index}")


def test_dropout_is_reproducible_from_the_seed_and_off_in_evaluation():
    vocab = vocab_of(["a", "b", "c"])
    x, y = np.array([[1, 3, 4, 2]]), np.array([[3, 4, 2, 5]])
    runs = [StreamLM(vocab, 6, num_layers=2, dropout=0.5, seed=4).loss_and_backward(x, y)[0] for _ in range(2)]
    other = StreamLM(vocab, 6, num_layers=2, dropout=0.5, seed=5)
    assert runs[0] == runs[1]
    model = StreamLM(vocab, 6, num_layers=2, dropout=0.5, seed=4)
    assert model.loss_and_backward(x, y, training=False)[0] == pytest.approx(model.nll(x, y)[0], rel=1e-6)
    assert model.loss_and_backward(x, y)[0] != model.nll(x, y)[0]
    assert other.dropout_rng.random() != StreamLM(vocab, 6, seed=4).dropout_rng.random()


def test_sampling_writes_words_and_stops_at_eos():
    trainer = stream_trainer(epochs=3, optimizer="adam", lr=0.03)
    trainer.run()
    samples = trainer.model.sample(6, prefix="the zebra", max_len=12, seed=1)
    words = set(trainer.model.vocab.tokens)
    for text in samples:
        tokens = text.split(" ")
        assert tokens[:2] == ["the", "<unk>"] and len(tokens) <= 12
        assert all(t in words for t in tokens) and "<eos>" not in tokens and "<pad>" not in tokens
    assert trainer.model.sample(6, prefix="the zebra", max_len=12, seed=1) == samples


# ---------------------------------------------------------------------- training


def test_learning_rate_schedule():
    config = StreamConfig(optimizer="sgd", lr=1.0, lr_decay=0.5, decay_after=4)
    assert [config.learning_rate(done) for done in range(7)] == [1, 1, 1, 1, 0.5, 0.25, 0.125]
    trainer = stream_trainer(optimizer="sgd", lr=0.8, lr_decay=0.5, decay_after=1, epochs=3)
    seen = []
    original = trainer.learn

    def learn(batch):
        seen.append((trainer.epoch, trainer.optimizer.lr))
        return original(batch)

    trainer.learn = learn
    trainer.run()
    assert sorted(set(seen)) == [(0, 0.8), (1, 0.4), (2, 0.2)]
    assert trainer.config.momentum == 0 and StreamConfig(optimizer="sgd").lr == 1.0


def test_the_state_is_carried_within_an_epoch_and_reset_at_each_epoch():
    trainer = stream_trainer(epochs=2)
    calls = []
    original = trainer.model.loss_and_backward

    def record(x, y, state=None, **kwargs):
        calls.append((trainer.epoch, trainer.batch_in_epoch, state))
        nll, final = original(x, y, state, **kwargs)
        calls[-1] += (final,)
        return nll, final

    trainer.model.loss_and_backward = record
    trainer.run()
    assert len(calls) == 2 * trainer.steps_per_epoch
    for (epoch, k, state, _), previous in zip(calls, [None, *calls[:-1]]):
        if k == 0:
            assert state is None, f"epoch {epoch} starts from a carried state"
        else:
            assert all(a is b for a, b in zip(state, previous[3])), f"window {k} of epoch {epoch}"


def test_a_short_run_learns_and_reports_nats_per_token():
    trainer = stream_trainer(epochs=6, optimizer="adam", lr=0.02)
    before = trainer.validation_loss()
    assert before == pytest.approx(np.log(len(trainer.model.vocab) - 1), rel=0.1)  # about uniform over V - 1
    assert trainer.run() is True
    assert trainer.step == 6 * trainer.steps_per_epoch == len(trainer.losses)
    assert trainer.chars_seen == 6 * trainer.train_data.shape[0] * (trainer.train_data.shape[1] - 1)
    assert trainer.history[-1]["val_loss"] < before - 0.5


@pytest.mark.parametrize("config", [
    dict(cell="lstm", num_layers=2, dropout=0.3, optimizer="sgd", lr=1.0, lr_decay=0.5, decay_after=1),
    dict(cell="gru", tie_weights=True, optimizer="adam", clip_mode="value", clip=0.5),
])
def test_resuming_in_the_middle_of_an_epoch_gives_exactly_the_uninterrupted_run(tmp_path, config):
    straight = stream_trainer(epochs=3, **config)
    per_epoch = straight.steps_per_epoch
    straight.run()
    stop = per_epoch + per_epoch // 2  # mid-epoch 2: a carried state, a decayed rate, a dropout stream
    first = stream_trainer(steps=stop, **config)
    first.run(out=tmp_path / "run.npz")
    assert first.batch_in_epoch > 0 and first.state is not None
    arrays, _ = load_checkpoint(tmp_path / "run.npz")
    assert "stream/h" in arrays
    resumed = StreamTrainer.resume(tmp_path / "run.npz", LINES, backend="numpy", epochs=3)
    assert (resumed.step, resumed.batch_in_epoch) == (stop, first.batch_in_epoch)
    resumed.run()
    assert resumed.losses == straight.losses  # bit-identical floats
    assert [h["val_loss"] for h in resumed.history if h["epoch"] == int(h["epoch"])] == \
           [h["val_loss"] for h in straight.history]
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value)


def test_resume_refuses_another_corpus_or_validation_file(tmp_path):
    trainer = stream_trainer(steps=3)
    trainer.run(out=tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match="was trained on another corpus"):
        StreamTrainer.resume(tmp_path / "m.npz", LINES[:-1], backend="numpy")
    with pytest.raises(CheckpointError, match="was validated on the end of the training corpus"):
        StreamTrainer.resume(tmp_path / "m.npz", LINES, val_lines=["the cat"], backend="numpy", val_source="v.txt")


def _tampered(tmp_path, edit_arrays=None, edit_meta=None):
    arrays, meta = load_checkpoint(tmp_path / "m.npz")
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    save_checkpoint(tmp_path / "bad.npz", arrays=arrays, meta=meta)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("edit_arrays, edit_meta, message", [
    (None, lambda m: m["model"].update(hidden_size=10**9), "does not fit|has shape"),
    (None, lambda m: m["model"].update(tie_weights=True), "missing|unexpected"),
    (None, lambda m: m["model"].update(tie_weights="yes"), "tie_weights must be true or false"),
    (lambda a: a.update({"stream/h": a["stream/h"][:, :, :2]}), None, "array 'stream/h'"),
    (lambda a: a.pop("stream/c"), None, "the carried state"),
    (lambda a: a.update({"stream/c": np.full_like(a["stream/c"], np.nan)}), None, "NaN or infinite"),
    (None, lambda m: m["trainer"].update(batch_in_epoch=0), "step 4 is not epoch"),
    (None, lambda m: m["trainer"]["config"].update(bptt=0), "bptt must be >= 1"),
    (None, lambda m: m["trainer"]["config"].pop("lr_decay"), "lacks \\['lr_decay'\\]"),
    (None, lambda m: m["trainer"].update(kind="line"), "kind 'line'"),
])
def test_a_tampered_stream_checkpoint_is_refused_with_a_checkpoint_error(tmp_path, edit_arrays, edit_meta, message):
    trainer = stream_trainer(steps=4)  # mid-epoch: the file holds a carried state
    assert 4 < trainer.steps_per_epoch
    trainer.run(out=tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match=message):
        StreamTrainer.resume(_tampered(tmp_path, edit_arrays, edit_meta), LINES, backend="numpy")


# ---------------------------------------------------------------------- the command line


@pytest.fixture
def words(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


TINY = ["--level", "word", "--hidden", "8", "--batch", "3", "--bptt", "4"]


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_cli_round_trip_train_evaluate_sample_info(tmp_path, words, capsys):
    out = tmp_path / "w.npz"
    assert main(["train", str(words), *TINY, "--epochs", "2", "--layers", "2", "--dropout", "0.1",
                 "--tie-weights", "--optimizer", "sgd", "--lr", "1", "--init-scale", "0.1", "--lr-decay", "0.5",
                 "--decay-after", "1", "--samples", "2", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "word level" in stdout and "epoch 2" in stdout and "lr 0.5" in stdout
    assert "nats per token" in stdout and "samples:" in stdout
    model = StreamLM.load(out)
    assert model.tie_weights and model.vocab.level == "word" and len(model.vocab) == 3 + 12  # 12 words; <unk> is the special

    assert main(["evaluate", str(out), str(words)]) == 0
    stdout = capsys.readouterr().out
    nats = float(stdout.split("cross-entropy: ")[1].split()[0])
    assert "nats per token" in stdout and float(stdout.split("perplexity: ")[1]) == pytest.approx(np.exp(nats), 1e-3)
    ids = stream_ids(model.vocab, LINES)
    assert nats == pytest.approx(evaluate_stream(model, ids[None, :], 512), abs=1e-4)  # batch 1, the whole file
    assert f"{len(ids):,} tokens" in stdout and f"{len(ids) - 1:,} predicted" in stdout

    assert main(["sample", str(out), "-n", "3", "--prefix", "the zebra", "--max-len", "6", "--seed", "2"]) == 0
    captured = capsys.readouterr()
    samples = captured.out.splitlines()
    assert len(samples) == 3 and all(s.startswith("the <unk>") and len(s.split()) <= 6 for s in samples)
    assert "warning: --prefix holds 1 word the model's vocabulary lacks, read as <unk>: zebra" in captured.err

    assert main(["info", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "embedding 8 tied to the output" in stdout and "stream model" in stdout
    assert "whitespace tokenizer" in stdout and "bptt 4" in stdout and "x0.5 per epoch after epoch 1" in stdout


def test_cli_resume_in_the_middle_of_an_epoch(tmp_path, words, capsys):
    for name, steps in (("straight.npz", 12), ("cut.npz", 5)):
        assert main(["train", str(words), *TINY, "--steps", str(steps), "--dropout", "0.2", "--layers", "2",
                     "--samples", "0", "--out", str(tmp_path / name)]) == 0
    assert main(["train", str(words), "--resume", str(tmp_path / "cut.npz"), "--steps", "12", "--samples", "0",
                 "--out", str(tmp_path / "cut.npz")]) == 0
    assert "resuming at step 5" in capsys.readouterr().out
    a, b = (load_checkpoint(tmp_path / name)[0] for name in ("straight.npz", "cut.npz"))
    np.testing.assert_array_equal(a["train/losses"], b["train/losses"])
    assert main(["train", str(words), "--resume", str(tmp_path / "cut.npz"), "--bptt", "5"]) == 2
    one_line_error(capsys, "--bptt 5 differs from the resumed run's 4")


def test_cli_validation_file_and_char_level_streams(tmp_path, words, capsys):
    valid = tmp_path / "valid.txt"
    valid.write_text("the cat sat\nthe dog ran on the mat\n", encoding="utf-8")
    assert main(["train", str(words), *TINY, "--steps", "3", "--val-corpus", str(valid), "--samples", "0",
                 "--out", str(tmp_path / "v.npz")]) == 0
    assert f"validation on {valid}" in capsys.readouterr().out
    assert main(["train", str(words), "--bptt", "8", "--hidden", "8", "--batch", "2", "--steps", "3",
                 "--samples", "1", "--out", str(tmp_path / "c.npz")]) == 0
    assert "char level" in capsys.readouterr().out
    model = StreamLM.load(tmp_path / "c.npz")
    assert model.vocab.level == "char" and model.vocab.tokenizer is None


def test_the_default_train_is_still_the_line_model(tmp_path, words, capsys):
    assert main(["train", str(words), "--level", "char", "--steps", "1", "--hidden", "8", "--samples", "0",
                 "--out", str(tmp_path / "m.npz")]) == 0
    _, meta = load_checkpoint(tmp_path / "m.npz")
    assert meta["model"]["input"] == "one_hot" and meta["trainer"]["kind"] == "line"
    assert "level" not in meta["trainer"]["config"]
    assert meta["vocab"]["format_version"] == 1 and "tokenizer" not in meta["vocab"]
    assert isinstance(CharLM.load(tmp_path / "m.npz"), CharLM)


@pytest.mark.parametrize("args, fragments", [
    (["--level", "word", "--vocab-size", "2"], ["--vocab-size", "an integer >= 3"]),
    (["--level", "word", "--bptt", "0"], ["--bptt", "positive integer"]),
    (["--bptt", "0"], ["--bptt", "positive integer"]),
    (["--level", "word", "--tie-weights", "--embed", "6", "--hidden", "8"],
     ["--tie-weights needs --embed equal to --hidden", "--embed 6 and --hidden 8"]),
    (["--level", "word", "--tie-weights", "--embed", "6"], ["--embed 6 and --hidden 128"]),
    (["--level", "word", "--lr-decay", "0"], ["--lr-decay", "in (0, 1]"]),
    (["--level", "word", "--lr-decay", "1.5"], ["--lr-decay", "in (0, 1]"]),
    (["--level", "word", "--decay-after", "-1"], ["--decay-after", "integer >= 0"]),
    (["--level", "word", "--init-scale", "0"], ["--init-scale", "> 0"]),
    (["--level", "word", "--val-corpus", "/no/such/file.txt"], ["--val-corpus", "does not exist"]),
    (["--level", "word", "--max-seq-len", "9"], ["--max-seq-len applies to line models"]),
    (["--embed", "8"], ["--embed applies to stream models"]),
    (["--level", "word", "--batch", "500"], ["--batch 500", "too few", "lower --batch"]),
    (["--level", "word", "--hidden", "1000000000"], ["--hidden 1000000000", "would need about"]),
])
def test_bad_stream_options_exit_2_with_one_line(tmp_path, words, capsys, args, fragments):
    assert main(["train", str(words), *args, "--out", str(tmp_path / "m.npz")]) == 2
    one_line_error(capsys, *fragments)


def test_bad_stream_corpora_exit_2_with_one_line(tmp_path, words, capsys, monkeypatch):
    # the first two runs write the default model.npz: in tmp_path, not beside a model.npz that the README's main
    # command left in the directory the tests run from (xseq train refuses to replace it, before reading the corpus)
    monkeypatch.chdir(tmp_path)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n", encoding="utf-8")
    assert main(["train", str(blank), "--level", "word"]) == 2
    one_line_error(capsys, "blank.txt", "holds no words")
    assert main(["train", str(words), "--level", "word", "--val-corpus", str(blank)]) == 2
    one_line_error(capsys, "--val-corpus", "holds no words")
    padded = tmp_path / "padded.txt"
    padded.write_text("a b\nc <pad> d\n" * 20, encoding="utf-8")
    assert main(["train", str(padded), "--level", "word", "--out", str(tmp_path / "m.npz")]) == 2
    one_line_error(capsys, "holds the token '<pad>'")


def test_a_stream_recipe_has_no_max_seq_len_and_old_checkpoints_that_record_one_resume():
    """Issue 21: StreamConfig no longer inherits the line models' max_seq_len (windows have bptt steps); xseq
    0.1.0's stream checkpoints recorded it, and they still resume (tests/data/v010_word.npz holds one)."""
    import dataclasses

    from xseq.lm.recipe import RunConfig, TrainConfig

    assert "max_seq_len" not in {f.name for f in dataclasses.fields(StreamConfig)}
    assert issubclass(StreamConfig, RunConfig) and not issubclass(StreamConfig, TrainConfig)
    with pytest.raises(TypeError, match="max_seq_len"):
        StreamConfig(max_seq_len=10)
    data = Path(__file__).resolve().parent / "data"
    arrays, meta = load_checkpoint(data / "v010_word.npz")
    assert "max_seq_len" in meta["trainer"]["config"]
    lines = (data / "v010_words.txt").read_text(encoding="utf-8").split("\n")[:-1]
    trainer = StreamTrainer.from_checkpoint(arrays, meta, lines, backend="numpy")
    assert trainer.step == meta["trainer"]["step"] and not hasattr(trainer.config, "max_seq_len")
