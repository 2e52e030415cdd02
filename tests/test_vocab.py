"""Vocabulary (char and word level), its JSON form, and one_hot / pad_ids on every backend."""

import json
import os

import array_api_compat
import numpy as np
import pytest

import xseq
from xseq.lm.batches import one_hot, pad_ids
from xseq.lm.vocab import (
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Vocabulary,
    word_tokenize,
)

# ---------------------------------------------------------------------- building


def test_specials_have_fixed_ids():
    v = Vocabulary.from_text("abc")
    assert v.tokens[:3] == ("<pad>", "<unk>", "<eos>")
    assert (v.pad_id, v.unk_id, v.eos_id) == (PAD_ID, UNK_ID, EOS_ID) == (0, 1, 2)
    assert [v.token_to_id(t) for t in ("<pad>", "<unk>", "<eos>")] == [0, 1, 2]


def test_order_is_frequency_then_token():
    v = Vocabulary.from_text(["banana", "cab"])
    # counts: a 4, b 2, n 2, c 1 -> ties broken by the token itself
    assert v.tokens[3:] == ("a", "b", "n", "c")


def test_order_is_deterministic_whatever_the_line_order():
    lines = ["zoe", "amy", "bob", "eve", "ann"]
    a = Vocabulary.from_text(lines)
    b = Vocabulary.from_text(list(reversed(lines)))
    assert a == b and a.tokens == b.tokens


def test_char_round_trip():
    names = ["james", "mary", "zoe"]
    v = Vocabulary.from_text(names)
    for name in names:
        ids = v.encode(name)
        assert all(isinstance(i, int) for i in ids)
        assert v.decode(ids) == name
        assert v.decode(v.encode(name, add_eos=True)) == name


def test_word_round_trip_normalises_spacing():
    text = "The cat sat. The dog, the cat!"
    v = Vocabulary.from_text(text, level="word")
    ids = v.encode("The cat sat.")
    assert v.decode(ids) == "The cat sat ."
    assert v.decode(v.encode(text)) == " ".join(word_tokenize(text))
    # "The" and "cat" are seen twice; ties go by code point, upper case first.
    assert v.tokens[3:5] == ("The", "cat")
    assert v.token_to_id("cat") < v.token_to_id("dog")


def test_unknown_tokens_map_to_unk():
    v = Vocabulary.from_text("abc")
    assert v.encode("abxc") == [v.token_to_id("a"), v.token_to_id("b"), UNK_ID, v.token_to_id("c")]
    assert v.token_to_id("x") == UNK_ID
    assert "x" not in v and "a" in v
    assert v.decode(v.encode("abx")) == "ab<unk>"
    w = Vocabulary.from_text("hello world", level="word")
    assert w.encode("hello there world") == [w.token_to_id("hello"), UNK_ID, w.token_to_id("world")]


def test_decode_eos_and_padding():
    v = Vocabulary.from_text("ab")
    a, b = v.token_to_id("a"), v.token_to_id("b")
    assert v.encode("ab", add_eos=True) == [a, b, EOS_ID]
    assert v.decode([a, EOS_ID, b]) == "a"
    assert v.decode([a, EOS_ID, b], stop_at_eos=False) == "ab"
    assert v.decode([a, PAD_ID, b, PAD_ID]) == "ab"
    assert v.decode(np.asarray([a, b], dtype=np.int32)) == "ab"
    assert v.decode([np.int64(a)]) == "a"


def test_decode_rejects_bad_ids():
    v = Vocabulary.from_text("ab")
    with pytest.raises(ValueError, match=r"ids\[1\] = 99 is out of range; expected 0 <= id < V = 5"):
        v.decode([3, 99])
    with pytest.raises(ValueError, match="ids\\[0\\] = -1"):
        v.decode([-1])
    with pytest.raises(TypeError, match="must be an int; got float"):
        v.decode([3.0])
    with pytest.raises(TypeError, match="must be an int; got bool"):
        v.decode([True])
    with pytest.raises(TypeError, match="1-D integer array"):
        v.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        v.decode("ab")
    with pytest.raises(ValueError, match="out of range"):
        v.id_to_token(5)
    assert v.id_to_token(0) == "<pad>"


def test_lower_max_size_min_count():
    v = Vocabulary.from_text("AaaBbC", lower=True)
    assert v.tokens[3:] == ("a", "b", "c")
    assert v.encode("ABC") == v.encode("abc")
    assert Vocabulary.from_text("aaabbc", max_size=5).tokens == ("<pad>", "<unk>", "<eos>", "a", "b")
    assert Vocabulary.from_text("aaabbc", max_size=3).tokens == ("<pad>", "<unk>", "<eos>")
    assert Vocabulary.from_text("aaabbc", min_count=2).tokens[3:] == ("a", "b")
    assert Vocabulary.from_text("aaabbc", min_count=2).encode("c") == [UNK_ID]


def test_char_level_counts_newlines_of_a_str_not_of_lines():
    assert "\n" in Vocabulary.from_text("ab\ncd")
    assert "\n" not in Vocabulary.from_text(["ab", "cd"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"level": "byte"}, ValueError, r"level must be one of \('char', 'word'\); got 'byte'"),
        ({"max_size": 2}, ValueError, "max_size = 2 is smaller than the 3 special tokens"),
        ({"max_size": 4.5}, TypeError, "max_size must be an int"),
        ({"min_count": 0}, ValueError, "min_count must be >= 1; got 0"),
        ({"min_count": 10}, ValueError, "min_count = 10 removes every token"),
        ({"lower": "yes"}, TypeError, "lower must be a bool"),
    ],
)
def test_from_text_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        Vocabulary.from_text("abc", **kwargs)


def test_from_text_rejects_empty_and_non_text():
    with pytest.raises(ValueError, match="no tokens"):
        Vocabulary.from_text("")
    with pytest.raises(ValueError, match="no tokens"):
        Vocabulary.from_text(" \n ", level="word")
    with pytest.raises(TypeError, match="bytes"):
        Vocabulary.from_text(b"abc")
    with pytest.raises(TypeError, match=r"text_or_lines\[1\] must be a str; got int"):
        Vocabulary.from_text(["ab", 3])
    with pytest.raises(TypeError, match="got int"):
        Vocabulary.from_text(3)


def test_word_tokenizer():
    assert word_tokenize("Don't stop!") == ["Don", "'", "t", "stop", "!"]
    assert word_tokenize("  naïve café,\tdéjà-vu\n") == ["naïve", "café", ",", "déjà", "-", "vu"]
    assert word_tokenize("日本語 と English 🙂") == ["日本語", "と", "English", "🙂"]
    assert word_tokenize("x_1 = 42") == ["x_1", "=", "42"]
    # Specials cannot be produced by the tokenizer.
    assert word_tokenize("<pad>") == ["<", "pad", ">"]


def test_unicode_char_level():
    text = ["Zoë", "Ελένη", "日本", "José 🙂"]
    v = Vocabulary.from_text(text)
    for line in text:
        assert v.decode(v.encode(line)) == line
    assert "ë" in v and "🙂" in v


# ---------------------------------------------------------------------- JSON


@pytest.mark.parametrize("level", ["char", "word"])
def test_json_round_trip(tmp_path, level):
    v = Vocabulary.from_text(["Zoë likes 日本", "Ελένη, José 🙂"], level=level, lower=True)
    assert Vocabulary.from_json(json.loads(json.dumps(v.to_json()))) == v
    path = tmp_path / "vocab.json"
    v.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == v and loaded.tokens == v.tokens and loaded.level == level and loaded.lower
    assert loaded.encode("ZOË") == v.encode("zoë")
    # Human-readable UTF-8, not \u escapes; and nothing left behind.
    saved = path.read_text(encoding="utf-8")
    assert "λ" in saved and "\\u" not in saved
    assert os.listdir(tmp_path) == ["vocab.json"]


def test_save_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "vocab.json"
    Vocabulary.from_text("abc").save(path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        Vocabulary.from_text("xyz").save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["vocab.json"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not json", "is not a vocabulary file"),
        (b"\xff\xfe", "is not a vocabulary file"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"format": "other"}', "has format 'other'"),
        (b'{"format": "xseq.Vocabulary", "format_version": 9}', "format_version 9"),
        (
            b'{"format": "xseq.Vocabulary", "format_version": 1, "level": "char", "lower": false}',
            "missing the key 'tokens'",
        ),
        (
            b'{"format": "xseq.Vocabulary", "format_version": 1, "level": "char", "lower": false, "tokens": ["a"]}',
            "must start with the specials",
        ),
        (
            b'{"format": "xseq.Vocabulary", "format_version": 1, "level": "char", "lower": false,'
            b' "tokens": ["<pad>", "<unk>", "<eos>", "a", "a"]}',
            r"tokens\[4\] = 'a' repeats tokens\[3\]",
        ),
        (
            b'{"format": "xseq.Vocabulary", "format_version": 1, "level": "char", "lower": false,'
            b' "tokens": ["<pad>", "<unk>", "<eos>", "ab"]}',
            "single characters",
        ),
        (
            b'{"format": "xseq.Vocabulary", "format_version": 1, "level": "bpe", "lower": false,'
            b' "tokens": ["<pad>", "<unk>", "<eos>"]}',
            "level must be one of",
        ),
        (
            b'{"format": "xseq.Vocabulary", "format_version": 1, "level": "char", "lower": 1,'
            b' "tokens": ["<pad>", "<unk>", "<eos>"]}',
            "lower must be a bool",
        ),
    ],
)
def test_load_malformed_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Vocabulary.load(tmp_path / "nope.json")


# ---------------------------------------------------------------------- one_hot / pad_ids


def test_one_hot_layout_and_mask(xp):
    ids = [[3, 1, 4], [1], [5, 0]]
    X, mask = one_hot(ids, 6, backend=xp)
    assert array_api_compat.array_namespace(X) is xp
    assert array_api_compat.array_namespace(mask) is xp
    assert tuple(X.shape) == (6, 3, 3) and X.dtype == xp.float32
    assert tuple(mask.shape) == (3, 3) and mask.dtype == xp.bool
    Xn, maskn = xseq.to_numpy(X), xseq.to_numpy(mask)
    np.testing.assert_array_equal(maskn, [[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    # Every valid column holds exactly one 1 at its id; padding columns are all zero.
    np.testing.assert_array_equal(Xn.sum(axis=0), maskn.astype(np.float32))
    for i, seq in enumerate(ids):
        for t, v in enumerate(seq):
            assert Xn[v, i, t] == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_hot_dtype(xp, dtype):
    X, _ = one_hot([[1, 2]], 3, backend=xp, dtype=dtype)
    assert X.dtype == getattr(xp, dtype)


def test_one_hot_accepts_a_2d_integer_array(xp):
    ids = xp.asarray([[0, 2], [1, 1]], dtype=xp.int32)
    X, mask = one_hot(ids, 3, backend=xp)
    assert bool(xp.all(mask))
    np.testing.assert_array_equal(xseq.to_numpy(X)[:, 0, 0], [1, 0, 0])  # id 0 is a real id here
    np.testing.assert_array_equal(xseq.to_numpy(X)[:, 1, 1], [0, 1, 0])


def test_one_hot_with_a_vocabulary(xp):
    v = Vocabulary.from_text(["amy", "bo"])
    X, mask = one_hot([v.encode(n, add_eos=True) for n in ["amy", "bo"]], len(v), backend=xp)
    assert tuple(X.shape) == (len(v), 2, 4)
    np.testing.assert_array_equal(xseq.to_numpy(mask), [[1, 1, 1, 1], [1, 1, 1, 0]])


@pytest.mark.parametrize(
    "ids, error, message",
    [
        ([[1, 6]], ValueError, r"ids\[0\]\[1\] = 6 is out of range; expected 0 <= id < vocab_size = 6"),
        ([[1], [2, -1]], ValueError, r"ids\[1\]\[1\] = -1 is negative"),
        ([], ValueError, "ids is empty"),
        ([[1], []], ValueError, r"ids\[1\] is empty"),
        ([[1.0, 2.0]], TypeError, r"ids\[0\]\[0\] must be an int; got float"),
        ([[True]], TypeError, "got bool"),
        (["abc"], TypeError, r"ids\[0\] must be a sequence of int; got str"),
        (5, TypeError, "got int"),
        (np.zeros((2, 3)), TypeError, "ids has dtype float64; expected an integer dtype"),
        (np.zeros((2, 3, 1), dtype=np.int64), ValueError, r"ids has 3 dimensions, shape \(2, 3, 1\)"),
        (np.zeros((0, 3), dtype=np.int64), ValueError, "m = 0"),
        (np.zeros((2, 0), dtype=np.int64), ValueError, "T_x = 0"),
        (np.array([[1, 7]]), ValueError, r"ids\[0\]\[1\] = 7 is out of range"),
    ],
)
def test_one_hot_errors(ids, error, message):
    with pytest.raises(error, match=message):
        one_hot(ids, 6)


def test_one_hot_rejects_bad_vocab_size_and_dtype():
    with pytest.raises(ValueError, match="vocab_size must be >= 1; got 0"):
        one_hot([[0]], 0)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        one_hot([[0]], 3.0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        one_hot([[0]], 3, dtype="int8")


def test_pad_ids(xp):
    ids, mask = pad_ids([[3, 4, 5], [6]], backend=xp)
    assert array_api_compat.array_namespace(ids) is xp
    assert ids.dtype == xp.int64 and mask.dtype == xp.bool
    np.testing.assert_array_equal(xseq.to_numpy(ids), [[3, 4, 5], [6, 0, 0]])
    np.testing.assert_array_equal(xseq.to_numpy(mask), [[1, 1, 1], [1, 0, 0]])
    ids, _ = pad_ids([[3, 4], [6]], backend=xp, pad_id=2)
    np.testing.assert_array_equal(xseq.to_numpy(ids), [[3, 4], [6, 2]])
