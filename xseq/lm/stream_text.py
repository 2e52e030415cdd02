"""A corpus read once as a stream of token ids, in bounded memory: what a stream model trains on.

A stream model's corpus is every line's tokens followed by ``<eos>``, blank
lines included (:mod:`xseq.lm.stream_train`). Files of WikiText-103's size
(hundreds of megabytes) are read here without ever holding their lines:

1. the file is read in pieces (:func:`~xseq.lm.corpus.text_pieces`), and each
   piece's tokens become numbers as they come, in the order the distinct
   tokens first appear (:class:`TokenTable`): 4 bytes a token, no strings;
2. their counts in the training lines give the vocabulary
   (:meth:`StreamCorpus.vocabulary`), exactly the one
   :meth:`Vocabulary.from_text <xseq.lm.vocab.Vocabulary.from_text>` builds
   from the lines;
3. one table lookup turns the numbers into the vocabulary's ids
   (:meth:`StreamCorpus.ids`), piece by piece.

The SHA-256 fingerprints that checkpoints record (of the lines joined by
``"\\n"``, :func:`~xseq.lm.train.corpus_fingerprint`) are computed on the way,
so a resumed run is checked against the same corpus as before.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import itertools
import multiprocessing
import os
import signal

import numpy as np

from . import corpus
from .corpus import CorpusError, count_lines, open_corpus, text_pieces
from .vocab import EOS, EOS_ID, PAD, UNK_ID, Vocabulary, _pad_in_text

LEVELS = ("word", "char")
BYTES_PER_DISTINCT_TOKEN = 160  # a dict entry and its str object, measured about 100 for short words; rounded up
LINES_PER_PIECE = 65536  # lines joined into one piece when the text comes as a list of lines
NUMBER_BYTES = 4  # a token's number, and its id: int32
PIECES_FOR_WORKERS = 4  # a file of fewer pieces is read by one process


def held_out_lines(lines, val_fraction):
    """Lines held out for validation at the end of a corpus of ``lines`` lines: ``round(val_fraction * lines)``,
    at least 1 and at most ``lines - 1``."""
    if lines < 2:
        raise ValueError(f"the corpus has {lines} line; training needs at least 2 (the last is held out for "
                         "validation), or a validation file")
    return min(max(1, round(val_fraction * lines)), lines - 1)


def tokens_of(piece, level):
    """``(distinct tokens, numbers)`` of one piece alone: its distinct tokens in order of first appearance, and its
    tokens as their positions in that list (int32), a line end (``"\\n"``) being ``<eos>`` (at word level the
    text's own ``<eos>`` too)."""
    if level == "word":
        numbering = collections.defaultdict(itertools.count().__next__)  # a new token takes the next number
        numbers = _words(piece, numbering)
        return list(numbering), numbers
    distinct, numbers = np.unique(np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32), return_inverse=True)
    return [chr(c) for c in distinct.tolist()], numbers.reshape(-1).astype(np.int32)


def _words(piece, numbering):
    """The numbers in ``numbering`` (a defaultdict that numbers a new word) of the words of ``piece``."""
    tokens = piece.replace("\n", f" {EOS} ").split()
    return np.fromiter(map(numbering.__getitem__, tokens), dtype=np.int32, count=len(tokens))


# Why: see docs/decisions/017-stream-corpus-worker-processes.md
def _numbering_process(link):
    """A worker of :meth:`TokenTable.encode_all`: numbers the words of the pieces it is sent, its numbering kept
    from piece to piece, and sends back each piece's numbers with the words it had not seen before."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the reading process's to handle
    numbering = collections.defaultdict(itertools.count().__next__)
    while (piece := link.recv()) is not None:
        known = len(numbering)
        numbers = _words(piece, numbering)
        link.send((list(itertools.islice(numbering, known, None)), numbers))


class TokenTable:
    """The distinct tokens of a text, numbered in the order they first appear; number 0 is ``<eos>``.

    Parameters
    ----------
    level : {"word", "char"}
        Whitespace-separated words (``str.split()``, where the text's own
        ``<eos>`` is the end of a line too), or characters.
    """

    def __init__(self, level):
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
        self.level = level
        self._index = {EOS if level == "word" else "\n": 0}

    def __len__(self):
        return len(self._index)

    @property
    def tokens(self):
        """Every token by its number (the first, ``<eos>``, as the key it is read under)."""
        return list(self._index)

    def encode(self, piece):
        """The numbers of the tokens of ``piece``, a line end (``"\\n"``) giving ``<eos>``: an int32 array."""
        return self.number(*tokens_of(piece, self.level))

    def number(self, distinct, numbers):
        """The numbers in this table of a piece's tokens numbered by :func:`tokens_of`, new tokens added."""
        index = self._index
        add = index.setdefault
        return np.array([add(token, len(index)) for token in distinct], dtype=np.int32)[numbers]

    def encode_all(self, pieces, workers=1):
        """``(key, numbers)`` of every ``(key, piece)`` of ``pieces``, in order.

        With ``workers > 1`` (word level), that many processes number the
        words, the part that costs (a dict look-up a word), each its own
        numbering of the pieces it gets in turn; this process turns their new
        words into the table's numbers, one look-up a distinct word, and their
        numbers into the table's by an array look-up. Each worker holds at
        most one piece at a time.
        """
        if workers <= 1 or self.level != "word":
            for key, piece in pieces:
                yield key, self.encode(piece)
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        links, processes, pending = [], [], collections.deque()
        lookups = [np.zeros(0, dtype=np.int32) for _ in range(workers)]  # a worker's numbers -> the table's
        try:
            for _ in range(workers):
                link, theirs = context.Pipe()
                processes.append(context.Process(target=_numbering_process, args=(theirs,), daemon=True))
                processes[-1].start()
                theirs.close()
                links.append(link)
            for i, (key, piece) in enumerate(pieces):
                if len(pending) == workers:  # the worker that gets this piece is done with its last
                    yield self._received(*pending.popleft(), links, lookups)
                links[i % workers].send(piece)
                pending.append((key, i % workers))
            while pending:
                yield self._received(*pending.popleft(), links, lookups)
        finally:
            for link in links:
                with contextlib.suppress(OSError):
                    link.send(None)
                link.close()
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()

    def _received(self, key, worker, links, lookups):
        try:
            new, numbers = links[worker].recv()
        except EOFError:
            raise RuntimeError("a process numbering the corpus's words ended early") from None
        lookups[worker] = np.concatenate([lookups[worker], self.number(new, np.arange(len(new)))])
        return key, lookups[worker][numbers]

    def memory(self):
        """Bytes the table takes, about (:data:`BYTES_PER_DISTINCT_TOKEN` a token)."""
        return len(self._index) * BYTES_PER_DISTINCT_TOKEN


@dataclasses.dataclass
class Stretch:
    """Consecutive lines of a text as token numbers of a :class:`TokenTable`, in pieces.

    Attributes
    ----------
    pieces : list of int32 arrays
        The numbers, piece by piece (one array when the ids are made).
    lines : int
    tokens : int
        Tokens, ``<eos>`` included.
    sha256 : str
        The fingerprint of the lines (:func:`~xseq.lm.train.corpus_fingerprint`).
    """

    pieces: list
    lines: int
    tokens: int
    sha256: str


class _Fingerprint:
    """SHA-256 of lines joined by "\\n", fed with pieces in which every line is followed by "\\n"."""

    def __init__(self):
        self._hash, self._owed = hashlib.sha256(), False

    def update(self, piece):
        if self._owed:
            self._hash.update(b"\n")
        self._owed = piece.endswith("\n")
        self._hash.update((piece[:-1] if self._owed else piece).encode("utf-8"))

    def hexdigest(self):
        return self._hash.hexdigest()


def read_stretches(pieces, table, where, split_after=None, memory=None, held=0, workers=1):
    """Read a text into :class:`Stretch` es: ``(whole text's sha256, [stretch])``.

    ``pieces`` as :func:`~xseq.lm.corpus.text_pieces` gives them; with
    ``split_after`` the first stretch holds that many lines, the second the
    rest, else one stretch holds all. With ``memory`` (bytes), reading stops
    with a CorpusError as soon as the token numbers (4 bytes a token, ``held``
    of them read before) and the table would take more. ``workers``: as
    :meth:`TokenTable.encode_all`.
    """
    whole = _Fingerprint()
    parts = [_Part() for _ in range(1 if split_after is None else 2)]

    def segments():
        """``(part, text)``: the pieces, the one holding the split cut there; fingerprints and lines counted."""
        lines = 0  # before the text at hand
        for piece in pieces:
            whole.update(piece)
            cut = len(piece)
            if split_after is not None and lines < split_after <= lines + piece.count("\n"):
                cut = _after_line(piece, split_after - lines)
            for key, text in ((0 if split_after is None or lines < split_after else 1, piece[:cut]), (1, piece[cut:])):
                if text:
                    if table.level == "word" and PAD in text:
                        _refuse_pad(text, where, lines)
                    parts[key].fingerprint.update(text)
                    ends = text.count("\n")
                    parts[key].lines += ends
                    lines += ends
                    yield key, text

    read = held
    for key, numbers in table.encode_all(segments(), workers):
        parts[key].numbers.append(numbers)
        read += len(numbers)
        if memory is not None:
            _check_memory(memory, table, read, where)
    return whole.hexdigest(), [Stretch(pieces=part.numbers, lines=part.lines, tokens=sum(map(len, part.numbers)),
                                       sha256=part.fingerprint.hexdigest()) for part in parts]


@dataclasses.dataclass
class _Part:
    """A stretch being read."""

    numbers: list = dataclasses.field(default_factory=list)
    fingerprint: _Fingerprint = dataclasses.field(default_factory=_Fingerprint)
    lines: int = 0


def _refuse_pad(text, where, lines_before):
    for i, line in enumerate(text.split("\n")):
        if PAD in line.split():
            raise CorpusError(_pad_in_text(f"{where}, line {lines_before + i + 1},"))


def _check_memory(memory, table, tokens, where):
    need = NUMBER_BYTES * tokens + table.memory() + 8 * corpus.READ_BYTES  # and a piece's text, numbers and tokens
    if need > memory:
        raise CorpusError(f"reading {where} needs more than the {memory / 2**30:.2f} GiB of memory available "
                          f"({tokens:,} {table.level}s read so far, {len(table):,} distinct); a stream of this "
                          "corpus does not fit this machine")


def _after_line(piece, k):
    """The index just after the ``k``-th line end of ``piece`` (0 for k = 0)."""
    end = 0
    for _ in range(k):
        end = piece.index("\n", end) + 1
    return end


def _pieces_of_lines(lines, what):
    """Pieces, as :func:`~xseq.lm.corpus.text_pieces` gives, of a list of lines."""
    for start in range(0, len(lines), LINES_PER_PIECE):
        chunk = lines[start:start + LINES_PER_PIECE]
        for i, line in enumerate(chunk):
            if not isinstance(line, str):
                raise TypeError(f"{what}[{start + i}] must be a str; got {type(line).__name__}")
            if "\n" in line:
                raise ValueError(f"{what}[{start + i}] holds a line end ('\\n'); give one entry per line")
        yield "".join(line + "\n" for line in chunk)


@dataclasses.dataclass
class StreamCorpus:
    """The training and validation text of a stream run, read once (see the module docstring).

    Build one with :meth:`from_files` (bounded memory) or :meth:`from_lines`.

    Attributes
    ----------
    level : {"word", "char"}
    table : TokenTable
    train, validation : Stretch
    corpus : dict
        ``{"sha256", "sequences"}`` of the whole training file (held-out lines included), as checkpoints record it.
    val_fraction : float or None
        The share of the lines held out for validation; None for a validation file.
    """

    level: str
    table: TokenTable
    train: Stretch
    validation: Stretch
    corpus: dict
    val_fraction: float | None

    @classmethod
    def from_files(cls, path, val_path=None, *, level="word", val_fraction=0.1, memory=None, workers=1):
        """Read the training file ``path`` and the validation file ``val_path`` (None: the last ``val_fraction``
        of the lines), each in pieces; ``memory`` (bytes) bounds what reading may take, at most ``workers``
        processes number the words (:meth:`TokenTable.encode_all`; one, this one, for a file of fewer than
        :data:`PIECES_FOR_WORKERS` pieces, whose reading would not pay for starting them).

        Raises
        ------
        CorpusError
            A file that is not a readable regular UTF-8 text file, holds no word
            (blank lines only), or needs more than ``memory``; ValidationCorpusError
            for the validation file.
        ValueError
            Fewer than 2 lines to split (without ``val_path``).
        """
        table = TokenTable(level)
        where = f"corpus file {str(path)!r}"
        with open_corpus(path) as f:
            if os.fstat(f.fileno()).st_size < PIECES_FOR_WORKERS * corpus.READ_BYTES:
                workers = 1
            counted = None if val_path is not None else count_lines(f, where)
            split_after = None
            if counted is not None and counted >= 2:
                split_after = counted - held_out_lines(counted, val_fraction)
            whole, parts = read_stretches(text_pieces(f, where, words=level == "word"), table, where, split_after,
                                          memory, workers=workers)
        _check_words(table, parts, where)
        if counted is not None and counted < 2:
            held_out_lines(counted, val_fraction)  # says why
        if counted is not None and (len(parts) != 2 or parts[0].lines + parts[1].lines != counted):
            raise CorpusError(f"{where} changed while it was read ({counted} lines, then "
                              f"{sum(p.lines for p in parts)}); train on a file that stays as it is")
        if val_path is not None:
            try:
                parts += read_file(val_path, table, memory=memory, held=parts[0].tokens, workers=workers)
            except CorpusError as exc:
                raise ValidationCorpusError(str(exc)) from None
        lines = parts[0].lines + (parts[1].lines if val_path is None else 0)
        return cls(level, table, parts[0], parts[1], {"sha256": whole, "sequences": lines},
                   None if val_path is not None else val_fraction)

    @classmethod
    def from_lines(cls, lines, val_lines=None, *, level="word", val_fraction=0.1):
        """:meth:`from_files` of lists of lines (as :func:`~xseq.lm.corpus.read_corpus` gives with
        ``keep_blank=True``)."""
        table = TokenTable(level)
        lines = list(lines)
        split_after = None if val_lines is not None else len(lines) - held_out_lines(len(lines), val_fraction)
        whole, parts = read_stretches(_pieces_of_lines(lines, "lines"), table, "lines", split_after)
        if val_lines is not None:
            parts += read_stretches(_pieces_of_lines(list(val_lines), "val_lines"), table, "val_lines")[1]
        return cls(level, table, parts[0], parts[1], {"sha256": whole, "sequences": len(lines)},
                   None if val_lines is not None else val_fraction)

    def vocabulary(self, max_size=None, min_count=1):
        """The vocabulary of the training lines, exactly as :func:`~xseq.lm.stream_train.build_vocabulary`."""
        counts = self.counts(self.train)
        tokens = self.table.tokens
        if self.level == "word":  # number 0 is every line's end and the text's own <eos>: one a line is the end
            counts[0] -= self.train.lines
        return Vocabulary.from_counts({tokens[i]: int(c) for i, c in enumerate(counts) if c and (i or
                                                                                              self.level == "word")},
                                      level=self.level, max_size=max_size, min_count=min_count,
                                      tokenizer="whitespace" if self.level == "word" else None)

    def counts(self, stretch):
        """How often each token of the table occurs in ``stretch``: an int64 array by token number."""
        total = np.zeros(len(self.table), dtype=np.int64)
        for piece in stretch.pieces:
            total += np.bincount(piece, minlength=len(self.table))
        return total

    def ids(self, vocab):
        """``(training ids, validation ids)``: int32 arrays of ``vocab``'s ids, ``<eos>`` after every line.

        Turns the stretches' numbers into ids, piece by piece (their memory is
        released as it goes), so it can be called once.
        """
        lookup = id_lookup(self.table, vocab)
        return tuple(ids_of(stretch, lookup) for stretch in (self.train, self.validation))


class ValidationCorpusError(CorpusError):
    """The validation file of :meth:`StreamCorpus.from_files` cannot be used (the training file can)."""


def read_file(path, table, *, memory=None, held=0, workers=1):
    """``[stretch]``: a whole file read in pieces, its tokens numbered by ``table``; CorpusError as
    :meth:`StreamCorpus.from_files`."""
    where = f"corpus file {str(path)!r}"
    with open_corpus(path) as f:
        if os.fstat(f.fileno()).st_size < PIECES_FOR_WORKERS * corpus.READ_BYTES:
            workers = 1
        _, parts = read_stretches(text_pieces(f, where, words=table.level == "word"), table, where, memory=memory,
                                  held=held, workers=workers)
    _check_words(table, parts, where)
    return parts


def unknown_tokens(stretch, table, vocab):
    """Tokens of ``stretch`` that ``vocab`` lacks, which count as ``<unk>``."""
    missing = np.array([i > 0 and token not in vocab for i, token in enumerate(table.tokens)])
    return int(sum(np.count_nonzero(missing[piece]) for piece in stretch.pieces))


def id_lookup(table, vocab):
    """The id in ``vocab`` of every token of ``table``, by its number: an int32 array."""
    index = {token: i for i, token in enumerate(vocab.tokens)}
    return np.array([EOS_ID] + [index.get(token, UNK_ID) for token in table.tokens[1:]], dtype=np.int32)


def ids_of(stretch, lookup):
    """The int32 ids of the tokens of ``stretch``, ``<eos>`` after every line, through ``lookup``
    (:func:`id_lookup`); the stretch's numbers are released as it goes, so it is done once."""
    if stretch.pieces is None:
        raise RuntimeError("the ids of this stretch were made before: its token numbers are gone")
    ids = np.empty(stretch.tokens, dtype=np.int32)
    start = 0
    pieces, stretch.pieces = stretch.pieces, None
    while pieces:
        piece = pieces.pop(0)
        ids[start:start + len(piece)] = lookup[piece]
        start += len(piece)
    return ids


def _check_words(table, stretches, where):
    """CorpusError when the stretches hold no token but ``<eos>`` and whitespace (a file of blank lines)."""
    text = np.array([i > 0 and not token.isspace() for i, token in enumerate(table.tokens)])
    own_eos = table.level == "word" and sum(np.count_nonzero(p == 0) for s in stretches for p in s.pieces) > sum(
        s.lines for s in stretches)  # the text's own <eos>, a word of the line it is in
    if not own_eos and not any(text[piece].any() for s in stretches for piece in s.pieces):
        lines = sum(s.lines for s in stretches)
        if lines:
            raise CorpusError(f"{where} holds no words: its {lines} lines are all blank")
        raise CorpusError(f"{where} is empty: it has no non-empty line")
