"""Text corpora for the language model: one line of a file is one training sequence.

The built-in corpus is the 5,163 distinct first names of the 1990 US Census
(US Census Bureau, public domain), lower-case, one per line, sorted. It was
taken from the ``names`` package by Trey Hunner (PyPI ``names==0.3.0``,
files ``dist.male.first`` and ``dist.female.first``) by
``scripts/extract_names.py``, which documents how to reproduce it.
"""

from __future__ import annotations

import os
from importlib import resources


class CorpusError(ValueError):
    """A corpus file is missing, unreadable, binary, not UTF-8, or holds no sequence."""


def _lines(text, keep_blank=False):
    # Only "\n" (and a "\r" before it) ends a line: str.splitlines would also
    # split at form feeds and Unicode separators that may be part of the text.
    # Lines of only whitespace are skipped with the empty ones, unless kept.
    lines = [raw.rstrip("\r") for raw in text.split("\n")]
    if keep_blank:
        # A final "\n" ends the last line; it does not start an empty one (as iterating over a file).
        return lines[:-1] if lines[-1] == "" else lines
    return [line for line in lines if line.strip()]


def _decode(data, where):
    if b"\x00" in data:
        offset = data.index(b"\x00")
        raise CorpusError(f"{where} contains a NUL byte at offset {offset}; it looks like a binary file, not text")
    try:
        # utf-8-sig drops a byte-order mark some editors put at the start.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{where} is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
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
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CorpusError(f"corpus file {path!r} does not exist") from None
    except IsADirectoryError:
        raise CorpusError(f"corpus file {path!r} is a directory, not a text file") from None
    except OSError as exc:
        raise CorpusError(f"corpus file {path!r} cannot be read: {exc}") from None
    lines = _lines(_decode(data, f"corpus file {path!r}"), keep_blank)
    if not any(line.strip() for line in lines):
        if lines:
            raise CorpusError(f"corpus file {path!r} holds no words: its {len(lines)} lines are all blank")
        raise CorpusError(f"corpus file {path!r} is empty: it has no non-empty line")
    return lines


def builtin_corpus():
    """The built-in corpus: 1990 US Census first names, lower-case, one per entry.

    Returns
    -------
    list of str
        5,163 names such as ``"aaron"``, sorted, unique, letters ``a``-``z`` only.
    """
    data = (resources.files("xseq.lm") / "data" / "names.txt").read_bytes()
    return _lines(_decode(data, "the built-in corpus xseq/lm/data/names.txt"))
