"""The built-in names corpus, read_corpus and its errors, and the extraction script."""

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

from xseq.lm.corpus import CorpusError, builtin_corpus, read_corpus
from xseq.lm.vocab import Vocabulary

ROOT = Path(__file__).resolve().parent.parent


def test_builtin_corpus():
    names = builtin_corpus()
    assert len(names) == 5163
    assert names == sorted(set(names))
    assert all(name.isascii() and name.isalpha() and name.islower() for name in names)
    assert {"james", "mary", "aaron", "zoe"} <= set(names)


def test_builtin_corpus_makes_a_26_letter_vocabulary():
    vocab = Vocabulary.from_text(builtin_corpus())
    assert len(vocab) == 3 + 26
    assert vocab.decode(vocab.encode("mary", add_eos=True)) == "mary"


def test_read_corpus_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffZoë\r\n\n  \nJosé Luis\n日本\t語\nlast".encode("utf-8"))
    assert read_corpus(path) == ["Zoë", "José Luis", "日本\t語", "last"]
    assert read_corpus(str(path)) == read_corpus(path)


def test_only_newline_splits_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a\x0cb\u2028c\nd\n", encoding="utf-8")
    assert read_corpus(path) == ["a\x0cb\u2028c", "d"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"\n \n\r\n\t\n", "is empty"),
        (b"abc\x00def\n", "contains a NUL byte at offset 3; it looks like a binary file"),
        (b"caf\xe9\n", r"is not valid UTF-8 \(byte 0xe9 at offset 3\)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "NUL byte"),
    ],
)
def test_read_corpus_errors(tmp_path, content, message):
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message) as info:
        read_corpus(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="is a directory"):
        read_corpus(tmp_path)


def test_corpus_error_is_a_value_error():
    assert issubclass(CorpusError, ValueError)


# ---------------------------------------------------------------------- scripts/extract_names.py


@pytest.fixture
def extract_names():
    spec = importlib.util.spec_from_file_location("extract_names", ROOT / "scripts" / "extract_names.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extract_names_members():
    return ("names-0.3.0/names/dist.male.first", "names-0.3.0/names/dist.female.first")


def fake_sdist(path, male, female):
    with tarfile.open(path, "w:gz") as tar:
        for member, text in zip(extract_names_members(), (male, female)):
            data = text.encode("ascii")
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extract_names_reads_both_files(tmp_path, extract_names):
    sdist = tmp_path / "names-0.3.0.tar.gz"
    fake_sdist(
        sdist,
        "JAMES          3.318  3.318      1\nJEAN           0.010 90.000    500\n",
        "MARY           2.629  2.629      1\nJEAN           0.100 50.000    200\n\n",
    )
    assert extract_names.read_names(sdist) == ["james", "jean", "mary"]
    fake_sdist(sdist, "JAMES 3.318 3.318 1\nNOT A CENSUS LINE\n", "")
    with pytest.raises(SystemExit, match="line 2 is not a census line"):
        extract_names.read_names(sdist)


def test_extract_names_checks_the_sdist_hash(tmp_path, extract_names):
    sdist = tmp_path / "names-0.3.0.tar.gz"
    fake_sdist(sdist, "JAMES 3.318 3.318 1\n", "MARY 2.629 2.629 1\n")
    with pytest.raises(SystemExit, match="SHA-256"):
        extract_names.main(["--sdist", str(sdist), "--output", str(tmp_path / "out.txt")])
    assert not (tmp_path / "out.txt").exists()


def test_committed_corpus_matches_the_script_format():
    text = (ROOT / "xseq" / "lm" / "data" / "names.txt").read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text
    assert text.splitlines() == builtin_corpus()
