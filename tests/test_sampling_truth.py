"""Sampling and printing tell the truth: nothing to draw is an error, <eos> is no prefix, controls are escaped."""

import numpy as np
import pytest

from xseq.lm.checkpoint import CheckpointError, save_checkpoint
from xseq.lm.cli import main
from xseq.lm.usage import printable
from xseq.lm.sampling import SamplingError, choose_next
from xseq.lm.model import CharLM
from xseq.lm.stream_model import StreamLM
from xseq.lm.vocab import SPECIALS, Vocabulary

WORDS = Vocabulary.from_text(["the cat sat", "a dog ran"], level="word", tokenizer="whitespace")
SPECIALS_ONLY = {"char": Vocabulary.from_text("aab", max_size=3),
                 "word": Vocabulary.from_text(["the cat"], level="word", tokenizer="whitespace", max_size=3)}


def with_parameters(model, **arrays):
    state = model.state_dict()
    state.update({name: np.asarray(value, dtype=state[name].dtype) for name, value in arrays.items()})
    model.load_state_dict(state)
    return model


def one_line_error(capsys, *fragments):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Warning" not in captured.err, captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------------- nothing to draw is an error, never NaN


@pytest.mark.parametrize("kind, level, prefix", [(CharLM, "char", ""), (StreamLM, "char", ""),
                                                 (StreamLM, "word", ""), (StreamLM, "word", "the")])
def test_a_vocabulary_of_the_specials_alone_is_an_error_not_nan_draws(kind, level, prefix):
    # "the" is not in the vocabulary: a stream model reads it as <unk>, and drew NaN <unk>s after it.
    with pytest.raises(SamplingError, match=r"no token to draw: it holds only <pad> <unk> <eos> \(V = 3\)"):
        kind(SPECIALS_ONLY[level], 4).sample(3, prefix=prefix)


@pytest.mark.parametrize("kind", [CharLM, StreamLM])
def test_scores_that_overflow_are_an_error_not_nan_draws(kind):
    # Finite weights, as a checkpoint must hold, that overflow float32: the hidden state saturates at 1 and the
    # row of token 3 sums four 1e38s to +inf (a stream model's output rows start at id 1).
    model = kind(Vocabulary.from_text("ab"), 4, cell="rnn")
    Wy = np.zeros(model.state_dict()["Wy"].shape)
    Wy[3 if kind is CharLM else 2] = 1e38
    with_parameters(model, bias_ih_l0=np.full(4, 1e30), Wy=Wy)
    with pytest.raises(SamplingError, match=r"scores hold NaN or \+inf"):
        model.sample(2)


def test_choose_next_refuses_a_column_with_nothing_to_draw_or_not_a_number():
    rng = np.random.default_rng(0)
    with pytest.raises(SamplingError, match="no token is left to draw"):
        choose_next(np.array([[0.0, -np.inf], [1.0, -np.inf]]), top_k=None, temperature=1.0, rng=rng)
    for bad in (np.nan, np.inf):
        with pytest.raises(SamplingError, match=r"scores hold NaN or \+inf"):
            choose_next(np.array([[0.0], [bad]]), top_k=1, temperature=1.0, rng=rng)


@pytest.mark.parametrize("kind", [CharLM, StreamLM])
def test_extreme_temperatures_draw_without_warnings(kind):
    # Already so (the scores are shifted before dividing); a guard for both models. 1e308 flattens the scores
    # to within a few ulps of 0, where nothing underflows to an all-zero distribution.
    model = kind(Vocabulary.from_text(["anna", "bob"]), 4, seed=1)
    greedy = model.sample(4, top_k=1, max_len=8)
    assert model.sample(4, temperature=5e-324, max_len=8) == greedy and all(greedy)
    assert all(model.sample(4, temperature=1e308, max_len=8))


# ---------------------------------------------------------------------- <eos> in a prefix


@pytest.mark.parametrize("kind", [CharLM, StreamLM])
@pytest.mark.parametrize("prefix, position", [("the <eos> cat", "2 of 3"), ("the cat <eos>", "3 of 3"),
                                              ("<eos>", "1 of 1")])
def test_a_prefix_holding_eos_is_refused(kind, prefix, position):
    # It printed "the" alone for every sample: decoding stops at the prefix's <eos>.
    with pytest.raises(ValueError, match=f"prefix {prefix!r} holds <eos> \\(its token {position}\\): <eos> ends"):
        kind(WORDS, 4).sample(2, prefix=prefix)


def test_eos_is_ordinary_text_at_character_level_and_with_the_regex_tokenizer():
    chars = CharLM(Vocabulary.from_text(["<eos> ab"]), 4)
    assert all(text.startswith("a <eos>") for text in chars.sample(3, prefix="a <eos>", max_len=12))
    regex = StreamLM(Vocabulary.from_text(["<eos> ab"], level="word"), 4)
    assert all(text.startswith("ab < eos >") for text in regex.sample(3, prefix="ab <eos>", max_len=12))


# ---------------------------------------------------------------------- control characters


@pytest.mark.parametrize("token", ["a b", "\n", "a\nb", "ab\x1b[2J", "\x1b[2J"])
def test_a_regex_word_vocabulary_refuses_tokens_its_tokenizer_never_gives(token):
    with pytest.raises(ValueError, match=r"tokens\[3\] = .* is not a token of the regex word tokenizer"):
        Vocabulary(SPECIALS + (token,), level="word")


def test_a_checkpoint_with_such_a_token_is_refused(tmp_path):
    arrays, meta = CharLM(Vocabulary.from_text(["ab c"], level="word"), 4).checkpoint_contents()
    meta["vocab"]["tokens"][3] = "ab\x1b[2J"
    save_checkpoint(tmp_path / "crafted.npz", arrays=arrays, meta=meta)
    with pytest.raises(CheckpointError, match=r"crafted.npz' has an invalid model: tokens\[3\] = 'ab\\x1b\[2J'"):
        CharLM.load(tmp_path / "crafted.npz")


def test_controls_that_text_can_hold_still_load():
    # What xseq itself writes keeps loading: they are escaped when printed instead.
    for vocab in (Vocabulary.from_text(["a\tb\x1bc\u202e\x85"]),
                  Vocabulary.from_text(["go \x1b[2J now"], level="word"),  # "\x1b" is a token by itself
                  Vocabulary.from_text(["go \x1b[2J now"], level="word", tokenizer="whitespace")):
        assert any(not token.isprintable() for token in vocab.tokens)
        assert Vocabulary.from_json(vocab.to_json()) == vocab


@pytest.mark.parametrize("text, shown", [
    ("a\x1b[2Jb", "a\\x1b[2Jb"), ("one\ntwo\r", "one\\ntwo\\r"), ("\x7f\x85\x00\x0b", "\\x7f\\x85\\x00\\x0b"),
    ("\u202eevil\u2066", "\\u202eevil\\u2066"), ("line\u2028break", "line\\u2028break"), ("\ud800", "\\ud800"),
    ("tab\tkept", "tab\tkept"), ("é 日本\u3000語 👨\u200d👩", "é 日本\u3000語 👨\u200d👩"),
])
def test_printable_escapes_what_a_terminal_acts_on_and_keeps_text(text, shown):
    assert printable(text) == shown


def test_cli_sample_escapes_control_tokens(tmp_path, capsys):
    tokens = ("\x1b", "\n", "\u202e", "\x85")
    model = CharLM(Vocabulary(SPECIALS + tokens + ("a",), level="char"), 4)
    by = np.zeros((len(model.vocab), 1))
    by[[2, 7]] = -50.0  # neither <eos> nor "a": every sample is 6 control characters
    with_parameters(model, by=by).save(tmp_path / "controls.npz")
    assert main(["sample", str(tmp_path / "controls.npz"), "-n", "3", "--max-len", "6", "--backend", "numpy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line.isprintable() and line.count("\\") == 6, ascii(line)


# ---------------------------------------------------------------------- the command line


def test_cli_sample_of_a_specials_only_model_is_one_line_and_status_2(tmp_path, capsys):
    StreamLM(SPECIALS_ONLY["word"], 4).save(tmp_path / "v3.npz")
    assert main(["sample", str(tmp_path / "v3.npz"), "--backend", "numpy"]) == 2
    one_line_error(capsys, "xseq sample: error: the model's vocabulary has no token to draw", "--vocab-size")


def test_cli_sample_refuses_eos_in_the_prefix(tmp_path, capsys):
    StreamLM(WORDS, 4).save(tmp_path / "w.npz")
    assert main(["sample", str(tmp_path / "w.npz"), "--prefix", "the <eos> cat", "--backend", "numpy"]) == 2
    one_line_error(capsys, "xseq sample: error: prefix 'the <eos> cat' holds <eos>", "a prefix cannot hold it")


def test_cli_train_with_vocab_size_3_says_why_it_prints_no_samples(tmp_path, capsys):
    corpus = tmp_path / "words.txt"
    corpus.write_text("the cat sat\na dog ran\nthe dog sat\n")
    assert main(["train", str(corpus), "--level", "word", "--vocab-size", "3", "--hidden", "4", "--batch", "1",
                 "--bptt", "2", "--steps", "1", "--backend", "numpy", "--out", str(tmp_path / "v3.npz")]) == 0
    captured = capsys.readouterr()
    assert "samples: none: the model's vocabulary has no token to draw" in captured.out
    assert "Warning" not in captured.err


def test_cli_train_and_info_escape_what_the_corpus_and_checkpoint_hold(tmp_path, capsys):
    corpus = tmp_path / "colours\x1b]0;title\x07.txt"  # a file name is text too, and info prints it
    corpus.write_text("\x1b[31mred \x1b[0m\n\x1b[32mgreen \x1b[0m\n" * 3)
    out = tmp_path / "esc.npz"
    assert main(["train", str(corpus), "--level", "word", "--hidden", "4", "--batch", "1", "--bptt", "2",
                 "--steps", "1", "--samples", "2", "--backend", "numpy", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    samples = printed.split("samples:\n")[1].splitlines()[:2]
    assert all(line.startswith("  \\x1b[") for line in samples), samples  # every word starts with an escape
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out.splitlines()
    assert all(line.isprintable() for line in info), info
    assert any(line.startswith("corpus: ") and "colours\\x1b]0;title\\x07.txt" in line for line in info), info
