"""Text corpora for the language model: one line of a file is one training sequence.

The built-in corpus is the 5,163 distinct first names of the 1990 US Census
(US Census Bureau, public domain), lower-case, one per line, sorted. It was
taken from the ``names`` package by Trey Hunner (PyPI ``names==0.3.0``,
files ``dist.male.first`` and ``dist.female.first``) by
``scripts/extract_names.py``, which documents how to reproduce it.
"""

from __future__ import annotations

import os
import re
from importlib import resources

from .files import NotReadable, open_regular_file

READ_BYTES = 1 << 23  # of a file read in pieces (:func:`text_pieces`): 8 MiB at a time
MAX_WORD_CHARS = 1 << 20  # a longer run without whitespace is no word: refused, never held whole
_BOM = b"\xef\xbb\xbf"
_CR_BEFORE_LF = re.compile(r"\r+\n")
_LAST_SPACE = re.compile(r"\s\S*\Z")


class CorpusError(ValueError):
    """A corpus file is missing, unreadable, binary, not UTF-8, or holds no sequence."""


def open_corpus(path, what="corpus file"):
    """``path`` opened for binary reading; CorpusError unless it is a regular file (a FIFO, a device such as
    ``/dev/zero``, a directory or a socket is refused at once, naming ``what`` and the path)."""
    try:
        return open_regular_file(path)
    except NotReadable as exc:
        raise CorpusError(f"{what} {os.fspath(path)!r} {exc.reason}") from None


def _lines(text, keep_blank=False):
    # Only "\n" (and a "\r" before it) ends a line: str.splitlines would also
    # split at form feeds and Unicode separators that may be part of the text.
    # Lines of only whitespace are skipped with the empty ones, unless kept.
    lines = [raw.rstrip("\r") for raw in text.split("\n")]
    if keep_blank:
        # A final "\n" ends the last line; it does not start an empty one (as iterating over a file).
        return lines[:-1] if lines[-1] == "" else lines
    return [line for line in lines if line.strip()]


def _decode(data, where, start=0):
    """``data`` (the file's bytes from offset ``start``) as text; CorpusError naming the offset of a NUL byte or of
    invalid UTF-8."""
    if b"\x00" in data:
        offset = start + data.index(b"\x00")
        raise CorpusError(f"{where} contains a NUL byte at offset {offset}; it looks like a binary file, not text")
    try:
        # utf-8-sig drops a byte-order mark some editors put at the start.
        return data.decode("utf-8-sig" if start == 0 else "utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + (len(_BOM) if start == 0 and data.startswith(_BOM) else 0)
        raise CorpusError(
            f"{where} is not valid UTF-8 (byte {data[at]:#04x} at offset {start + at}); "
            "save it as UTF-8 text"
        ) from None


def read_corpus(path, keep_blank=False):
    """Read a text file as a list of sequences, one per line.

    Parameters
    ----------
    path : str or os.PathLike
        A UTF-8 text file (a leading byte-order mark is allowed).
    keep_blank : bool, default False
        Keep empty and whitespace-only lines too: a stream model follows every
        line with ``<eos>``, blank ones included (the convention behind the
        published Penn Treebank and WikiText token counts).

    Returns
    -------
    list of str
        The lines in file order, without their line ending (``"\\n"`` or
        ``"\\r\\n"``); empty and whitespace-only lines are skipped unless
        ``keep_blank``, other lines are kept exactly (inner and leading spaces
        included). A final line ending does not start another line.

    Raises
    ------
    CorpusError
        The file is missing or unreadable, contains NUL bytes or invalid
        UTF-8, or has no non-empty line (no word at all). The message names
        the path.
    """
    path = os.fspath(path)
    with open_corpus(path) as f:
        try:
            data = f.read()
        except OSError as exc:
            raise CorpusError(f"corpus file {path!r} cannot be read: {exc.strerror or exc}") from None
    lines = _lines(_decode(data, f"corpus file {path!r}"), keep_blank)
    if not any(line.strip() for line in lines):
        if lines:
            raise CorpusError(f"corpus file {path!r} holds no words: its {len(lines)} lines are all blank")
        raise CorpusError(f"corpus file {path!r} is empty: it has no non-empty line")
    return lines


def _complete(data):
    """The length of ``data``'s longest prefix that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # the lead byte of a sequence of 2, 3 or 4 bytes
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if need <= back else len(data) - back
    return len(data)  # continuation bytes only: decoding says what is wrong


def _read(f, where):
    try:
        return f.read(READ_BYTES)
    except OSError as exc:
        raise CorpusError(f"{where} cannot be read: {exc.strerror or exc}") from None


def _chunks(f, where):
    """The text of the open file ``f`` in pieces of at most :data:`READ_BYTES` bytes, each cut between
    characters; NUL bytes and invalid UTF-8 are refused with their offset."""
    offset, pending = 0, b""
    while data := _read(f, where):
        data = pending + data
        end = _complete(data)
        yield _decode(data[:end], where, offset)
        offset += end
        pending = data[end:]
    if pending:  # the file ends inside a character
        _decode(pending, where, offset)


def count_lines(f, where):
    """Lines of the open corpus file ``f`` as :func:`read_corpus` (``keep_blank=True``) would give them, counted
    in bounded memory; ``f`` is left at its start."""
    lines, tail, start = 0, False, True
    while data := _read(f, where):
        if start and data.startswith(_BOM):
            data = data[len(_BOM):]
        start = False
        ends = data.count(b"\n")
        after = data[data.rfind(b"\n") + 1:].strip(b"\r")  # text after the last line end counts as a line
        tail = bool(after) if ends else tail or bool(after)
        lines += ends
    f.seek(0)
    return lines + tail


def text_pieces(f, where, *, words):
    """The text of the open corpus file ``f`` in pieces of about :data:`READ_BYTES`, in bounded memory.

    Joined, the pieces are the lines :func:`read_corpus` gives (``keep_blank=True``), each followed by ``"\n"``
    (the last one too): ``"\r"`` before a line end dropped, a byte-order mark dropped. A piece ends at a line end,
    or inside a line longer than a piece: after whitespace when ``words`` (no word is cut), else anywhere.

    Raises
    ------
    CorpusError
        A NUL byte or invalid UTF-8 (with its offset), or with ``words`` a run of more than
        :data:`MAX_WORD_CHARS` characters without whitespace.
    """
    carry, in_line = "", False  # in_line: the last piece ended inside a line
    for text in _chunks(f, where):
        text = carry + text
        end = text.rfind("\n") + 1
        if end == 0 and len(text) > READ_BYTES:  # a line longer than a piece
            end = _cut_long_line(text, where, words)
        piece, carry = text[:end], text[end:]
        if piece:
            in_line = not piece.endswith("\n")
            yield _CR_BEFORE_LF.sub("\n", piece) if "\r" in piece else piece
    carry = carry.rstrip("\r")
    if carry or in_line:
        yield carry + "\n"


def _cut_long_line(text, where, words):
    """Where to end a piece inside a long line: after its last whitespace (``words``) or at its end, never
    after a ``"\r"`` (a line end may follow it)."""
    end = len(text)
    if words:
        last = _LAST_SPACE.search(text)
        if last is None and len(text) <= MAX_WORD_CHARS:
            return 0  # the word goes on in the next piece
        if last is None:
            raise CorpusError(f"{where} holds {len(text):,} characters without whitespace; a word of more than "
                              f"{MAX_WORD_CHARS:,} characters is no word (is it a text file?)")
        end = last.start() + 1
    while end and text[end - 1] == "\r":
        end -= 1
    return end


def builtin_corpus_path():
    """The built-in corpus's file (``xseq/lm/data/names.txt``), or None where the package is not files on disk."""
    path = resources.files("xseq.lm") / "data" / "names.txt"
    return os.fspath(path) if isinstance(path, os.PathLike) else None


def builtin_corpus():
    """The built-in corpus: 1990 US Census first names, lower-case, one per entry.

    Returns
    -------
    list of str
        5,163 names such as ``"aaron"``, sorted, unique, letters ``a``-``z`` only.
    """
    data = (resources.files("xseq.lm") / "data" / "names.txt").read_bytes()
    return _lines(_decode(data, "the built-in corpus xseq/lm/data/names.txt"))
