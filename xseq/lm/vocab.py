"""Vocabularies for language models, and the course's one-hot input layout.

A :class:`Vocabulary` maps tokens (characters or words) to integer ids and
back. It is built from text with :meth:`Vocabulary.from_text`, saved as JSON
and placed inside checkpoints with :meth:`Vocabulary.to_json`.

Ids
---
Three special tokens come first and have fixed ids, whatever the text:

======  =========  ====================================================
id      token      meaning
======  =========  ====================================================
0       ``<pad>``  padding after the end of a shorter sequence
1       ``<unk>``  every token that is not in the vocabulary
2       ``<eos>``  end of sequence (the course's ``"\\n"`` after a name)
======  =========  ====================================================

The text's tokens follow from id 3, most frequent first, ties broken by the
token itself (Python string order, i.e. by code point), so the same text
always gives the same ids. With the default tokenizers a special can never
collide with a text token: at character level a token is one character, and
the regex word tokenizer splits ``"<pad>"`` into ``"<"``, ``"pad"``, ``">"``.

Word tokenizers
---------------
``tokenizer="regex"`` (the default at word level) is :func:`word_tokenize`:
words and punctuation of raw text. ``tokenizer="whitespace"`` is
``str.split()``, the convention of corpora that come pre-tokenized (Penn
Treebank, WikiText, PyTorch's ``word_language_model``): a token is a maximal
run of non-whitespace characters. Such corpora spell their own specials, so
with it a token written ``<unk>`` is the unknown token (id 1) and a token
written ``<eos>`` is the end of sequence (id 2), as in PyTorch's dictionary,
which gives the word and the line end one entry; a token written ``<pad>`` is
refused (ValueError): padding is not a word and a model never predicts it.

:func:`~xseq.lm.batches.one_hot` turns id sequences into the course's ``(V, m, T_x)`` input
with a ``(m, T_x)`` mask; :func:`~xseq.lm.batches.pad_ids` makes the matching integer targets.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import unicodedata
from collections import Counter

import numpy as np
from array_api_compat import is_array_api_obj

from ..backends.arrays import refuse_masked, to_numpy
from .files import atomic_write

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
LEVELS = ("char", "word")
TOKENIZERS = ("regex", "whitespace")

_FORMAT = "xseq.Vocabulary"
# Version 1 has no "tokenizer" key (character level, or the regex word tokenizer); version 2 adds it.
# A vocabulary is written in the oldest version that holds it, so the files of version 1 stay as they were
# and an older xseq refuses a whitespace vocabulary instead of tokenizing with the regex.
_FORMAT_VERSIONS = (1, 2)

# \w is Unicode-aware for str patterns: letters and digits of every script
# (and "_") make words; every other non-space character is a token by itself.
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def word_tokenize(text):
    """Split text into words and punctuation, the word-level tokenizer.

    A token is a maximal run of word characters (Unicode letters, digits and
    ``_``: regex ``\\w+``) or a single character that is neither a word
    character nor whitespace (punctuation, symbols, emoji). Whitespace only
    separates tokens and is dropped, so ``"Don't stop!"`` gives
    ``["Don", "'", "t", "stop", "!"]``. No Unicode normalisation is applied:
    a precomposed ``"é"`` and ``"e"`` followed by a combining accent are
    different text.

    Parameters
    ----------
    text : str

    Returns
    -------
    list of str
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    return _WORD_RE.findall(text)


def _check_level(level):
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")


def _check_tokenizer(level, tokenizer):
    """The tokenizer of a vocabulary: None at character level, "regex" (default) or "whitespace" at word level."""
    if level == "char":
        if tokenizer is not None:
            raise ValueError(f"tokenizer applies to level='word'; a char-level vocabulary takes None, got {tokenizer!r}")
        return None
    if tokenizer is None:
        return "regex"
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS} (or None for 'regex'); got {tokenizer!r}")
    return tokenizer


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")


def _check_sizes(max_size, min_count):
    if max_size is not None:
        _check_int("max_size", max_size, 0)
        if max_size < len(SPECIALS):
            raise ValueError(
                f"max_size = {max_size} is smaller than the {len(SPECIALS)} special tokens "
                f"{list(SPECIALS)}; it counts them, so use max_size >= {len(SPECIALS)}"
            )
    _check_int("min_count", min_count, 1)


def _as_lines(text_or_lines):
    """A str is one text; any other iterable is a sequence of texts (lines)."""
    if isinstance(text_or_lines, str):
        return [text_or_lines]
    if isinstance(text_or_lines, (bytes, bytearray)):
        raise TypeError("text_or_lines must be str or an iterable of str; got bytes (decode it first)")
    try:
        lines = list(text_or_lines)
    except TypeError:
        raise TypeError(
            f"text_or_lines must be str or an iterable of str; got {type(text_or_lines).__name__}"
        ) from None
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(f"text_or_lines[{i}] must be a str; got {type(line).__name__}")
    return lines


class Vocabulary:
    """Token <-> id mapping at character or word level.

    Build one with :meth:`from_text` (or :meth:`from_json` / :meth:`load`);
    the constructor takes the full token list, specials included.

    Parameters
    ----------
    tokens : sequence of str
        Every token in id order; must start with ``("<pad>", "<unk>", "<eos>")``
        and hold no duplicates, nor a token that the level and tokenizer never
        give (a character-level token of two characters, whitespace in a word).
        Control characters are allowed where text can hold them (a tab at
        character level, an escape character): the command line escapes them
        when it prints.
    level : {"char", "word"}
    lower : bool
        Whether :meth:`encode` lower-cases text first (as :meth:`from_text` did).
    tokenizer : {"regex", "whitespace"} or None
        Word level only (None there means "regex"); None at character level.
        See the module docstring.

    Attributes
    ----------
    pad_id, unk_id, eos_id : int
        0, 1 and 2.
    tokens : tuple of str
        Every token, index = id.
    tokenizer : str or None
        ``"regex"`` or ``"whitespace"`` at word level, None at character level.
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    eos_id = EOS_ID

    def __init__(self, tokens, level="char", lower=False, tokenizer=None):
        _check_level(level)
        tokenizer = _check_tokenizer(level, tokenizer)
        if not isinstance(lower, bool):
            raise TypeError(f"lower must be a bool; got {type(lower).__name__} {lower!r}")
        if isinstance(tokens, str) or not hasattr(tokens, "__iter__"):
            raise TypeError(f"tokens must be a list of str; got {type(tokens).__name__}")
        tokens = tuple(tokens)
        if tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"tokens must start with the specials {list(SPECIALS)}; got {list(tokens[:3])}")
        index = {}
        for i, token in enumerate(tokens):
            if not isinstance(token, str) or token == "":
                raise ValueError(f"tokens[{i}] must be a non-empty str; got {token!r}")
            if token in index:
                raise ValueError(f"tokens[{i}] = {token!r} repeats tokens[{index[token]}]")
            if i >= len(SPECIALS) and level == "char" and len(token) != 1:
                raise ValueError(f"tokens[{i}] = {token!r}: a char-level vocabulary holds single characters")
            if i >= len(SPECIALS) and tokenizer == "whitespace" and len(token.split()) != 1:
                raise ValueError(f"tokens[{i}] = {token!r} holds whitespace, which the whitespace tokenizer "
                                 "never puts in a token")
            if i >= len(SPECIALS) and tokenizer == "regex" and not _is_regex_token(token):
                raise ValueError(f"tokens[{i}] = {token!r} is not a token of the regex word tokenizer: it gives "
                                 "runs of word characters and single other characters, never whitespace, nor a "
                                 "control character inside a longer token")
            index[token] = i
        self._tokens = tokens
        self._index = index
        self.level = level
        self.lower = lower
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ building

    @classmethod
    def from_text(cls, text_or_lines, level="char", lower=False, max_size=None, min_count=1, tokenizer=None):
        """Build the vocabulary of a text.

        Parameters
        ----------
        text_or_lines : str or iterable of str
            One text, or one text per sequence (e.g. :func:`xseq.read_corpus`).
            At character level every character counts, a ``"\\n"`` inside a
            str included; the lines of a list contribute no newline.
        level : {"char", "word"}
            Characters (code points), or words (see ``tokenizer``).
        lower : bool
            Lower-case the text first; :meth:`encode` then does the same.
        max_size : int or None
            Largest vocabulary size, the three specials included (so >= 3);
            the most frequent tokens are kept. None keeps every token.
        min_count : int
            Drop tokens seen fewer times (they encode as ``<unk>``).
        tokenizer : {"regex", "whitespace"} or None
            Word level: :func:`word_tokenize` (None means "regex") or
            ``str.split()``; with "whitespace" the text's own ``<unk>`` and
            ``<eos>`` are the specials, not entries of their own (see the
            module docstring). None at character level.

        Raises
        ------
        ValueError
            ``level`` not "char"/"word", a tokenizer that does not fit it,
            ``max_size`` < 3, ``min_count`` < 1, a ``<pad>`` token in the text
            (whitespace tokenizer), or no token left to put in the vocabulary.
        """
        _check_level(level)
        tokenizer = _check_tokenizer(level, tokenizer)
        if not isinstance(lower, bool):
            raise TypeError(f"lower must be a bool; got {type(lower).__name__} {lower!r}")
        _check_sizes(max_size, min_count)  # before the text is read
        counts = Counter()
        for i, line in enumerate(_as_lines(text_or_lines)):
            tokens = _tokenize(line.lower() if lower else line, level, tokenizer)
            if tokenizer == "whitespace" and PAD in tokens:
                raise ValueError(_pad_in_text(f"text_or_lines[{i}]"))
            counts.update(tokens)
        return cls.from_counts(counts, level=level, lower=lower, max_size=max_size, min_count=min_count,
                               tokenizer=tokenizer)

    @classmethod
    def from_counts(cls, counts, level="char", lower=False, max_size=None, min_count=1, tokenizer=None):
        """The vocabulary :meth:`from_text` builds from a text whose tokens were counted already.

        Parameters
        ----------
        counts : mapping of str to int
            How often each token occurs (as tokenized at ``level`` with ``tokenizer``, lower-cased if
            ``lower``); the specials' counts are ignored. The others as :meth:`from_text`.
        """
        _check_level(level)
        tokenizer = _check_tokenizer(level, tokenizer)
        _check_sizes(max_size, min_count)
        counts = {t: c for t, c in counts.items() if c > 0}
        if not counts:
            raise ValueError("text_or_lines holds no tokens; cannot build a vocabulary from empty text")
        # A text's own <unk> and <eos> (whitespace tokenizer) already have their ids.
        # Most frequent first, ties broken by the token: sorted by the token, then (stably) by count.
        ranked = sorted(t for t, c in counts.items() if c >= min_count and t not in SPECIALS)
        ranked.sort(key=counts.__getitem__, reverse=True)
        if not ranked and any(t not in SPECIALS for t in counts):
            raise ValueError(
                f"min_count = {min_count} removes every token (the most frequent is seen "
                f"{max(c for t, c in counts.items() if t not in SPECIALS)} times)"
            )
        if max_size is not None:
            ranked = ranked[: max_size - len(SPECIALS)]
        return cls(SPECIALS + tuple(ranked), level=level, lower=lower, tokenizer=tokenizer)

    # ------------------------------------------------------------------ lookup

    @property
    def tokens(self):
        return self._tokens

    def __len__(self):
        return len(self._tokens)

    def __contains__(self, token):
        return token in self._index

    def __eq__(self, other):
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _key(self):
        return self._tokens, self.level, self.lower, self.tokenizer

    def __repr__(self):
        tokenizer = "" if self.tokenizer is None else f", tokenizer={self.tokenizer!r}"
        return f"Vocabulary(level={self.level!r}, lower={self.lower}{tokenizer}, size={len(self)})"

    def token_to_id(self, token):
        """The id of ``token``; ``unk_id`` (1) for a token not in the vocabulary.

        No lower-casing happens here (:meth:`encode` does it); use
        ``token in vocab`` to test membership.
        """
        if not isinstance(token, str):
            raise TypeError(f"token must be a str; got {type(token).__name__}")
        return self._index.get(token, UNK_ID)

    def id_to_token(self, id):
        """The token with id ``id`` (0 <= id < len(self))."""
        return self._tokens[self._check_id("id", id)]

    def _check_id(self, name, value):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
        if not 0 <= value < len(self._tokens):
            raise ValueError(f"{name} = {value} is out of range; expected 0 <= id < V = {len(self._tokens)}")
        return int(value)

    # ------------------------------------------------------------------ text <-> ids

    def tokenize(self, text):
        """Split ``text`` into tokens as :meth:`encode` does (lower-casing if ``lower``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        return _tokenize(text.lower() if self.lower else text, self.level, self.tokenizer)

    def encode(self, text, add_eos=False):
        """Ids of the tokens of ``text``; unknown tokens become ``unk_id``.

        Parameters
        ----------
        text : str
            One sequence (e.g. one name).
        add_eos : bool
            Append ``eos_id`` (2), the end-of-sequence the model learns to emit.

        Returns
        -------
        list of int

        Raises
        ------
        ValueError
            ``text`` holds the token ``<pad>`` (whitespace tokenizer).
        """
        tokens = self.tokenize(text)
        if self.tokenizer == "whitespace" and PAD in tokens:
            raise ValueError(_pad_in_text("text"))
        ids = [self._index.get(t, UNK_ID) for t in tokens]
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids, stop_at_eos=True):
        """The text of a sequence of ids.

        ``<pad>`` is omitted; ``<eos>`` ends the text (or, with
        ``stop_at_eos=False``, is omitted); ``<unk>`` is written as the text
        ``"<unk>"`` so that a reader sees where something was unknown. Tokens
        are joined with ``""`` at character level and ``" "`` at word level
        (so word-level decoding normalises the spacing around punctuation).

        Parameters
        ----------
        ids : sequence of int, or 1-D integer array of any backend

        Returns
        -------
        str
        """
        refuse_masked("ids", ids)
        if is_array_api_obj(ids) or isinstance(ids, np.ndarray):
            arr = to_numpy(ids)
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"ids must be a 1-D integer array; got shape {arr.shape}, dtype {arr.dtype}")
            ids = arr.tolist()
        elif isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"ids must be a sequence of int; got {type(ids).__name__}")
        out = []
        for i, value in enumerate(ids):
            value = self._check_id(f"ids[{i}]", value)
            if value == EOS_ID:
                if stop_at_eos:
                    break
                continue
            if value != PAD_ID:
                out.append(self._tokens[value])
        return ("" if self.level == "char" else " ").join(out)

    # ------------------------------------------------------------------ persistence

    def to_json(self):
        """A JSON-serialisable dict (what :meth:`save` writes and checkpoints embed).

        Format version 1 (no ``"tokenizer"`` key) for character-level and
        regex word vocabularies, version 2 with ``"tokenizer"`` otherwise.
        """
        data = {
            "format": _FORMAT,
            "format_version": 1,
            "level": self.level,
            "lower": self.lower,
            "tokens": list(self._tokens),
        }
        if self.tokenizer not in (None, "regex"):
            data["format_version"] = 2
            data["tokenizer"] = self.tokenizer
        return data

    @classmethod
    def from_json(cls, data):
        """Rebuild a vocabulary from :meth:`to_json`'s dict; ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"vocabulary data must be a JSON object (dict); got {type(data).__name__}")
        if data.get("format") != _FORMAT:
            raise ValueError(f"vocabulary data has format {data.get('format')!r}; expected {_FORMAT!r}")
        version = data.get("format_version")
        if isinstance(version, bool) or version not in _FORMAT_VERSIONS:
            raise ValueError(
                f"vocabulary data has format_version {version!r}; "
                f"this xseq reads versions {list(_FORMAT_VERSIONS)}"
            )
        keys = ("level", "lower", "tokens") + (("tokenizer",) if version == 2 else ())
        for key in keys:
            if key not in data:
                raise ValueError(f"vocabulary data is missing the key {key!r}")
        if version == 1 and "tokenizer" in data:
            raise ValueError("vocabulary data of format_version 1 has a 'tokenizer' key; version 2 holds one")
        if not isinstance(data["tokens"], list):
            raise ValueError(f"vocabulary data 'tokens' must be a list; got {type(data['tokens']).__name__}")
        if version == 2 and data["tokenizer"] in (None, "regex"):
            raise ValueError(f"vocabulary data of format_version 2 has tokenizer {data['tokenizer']!r}; "
                             "version 2 is written for the whitespace tokenizer only")
        try:
            return cls(data["tokens"], level=data["level"], lower=data["lower"], tokenizer=data.get("tokenizer"))
        except TypeError as exc:
            raise ValueError(f"vocabulary data is invalid: {exc}") from None

    def save(self, path):
        """Write the vocabulary as UTF-8 JSON, atomically (the old file stays intact on failure)."""

        payload = json.dumps(self.to_json(), ensure_ascii=False, indent=1).encode("utf-8")
        atomic_write(path, lambda f: f.write(payload))

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            The file is not UTF-8 JSON or not a vocabulary; the message names the path.
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a vocabulary file (UTF-8 JSON): {exc}") from None
        try:
            return cls.from_json(data)
        except ValueError as exc:
            raise ValueError(f"{path} is not a valid vocabulary file: {exc}") from None


def _tokenize(text, level, tokenizer):
    if level == "char":
        return list(text)
    return text.split() if tokenizer == "whitespace" else word_tokenize(text)


def _is_regex_token(token):
    """Whether :func:`word_tokenize` can give ``token``, by tests that hold in every Unicode version.

    Its tokens are ``\\w+`` runs or one other non-space character; which
    letters ``\\w`` matches grows with Unicode, but a space is never in a
    token and a control character (category Cc) is never a word character.
    """
    if token.split() != [token]:
        return False
    return len(token) == 1 or not any(unicodedata.category(c) == "Cc" for c in token)


def _pad_in_text(where):
    return (f"{where} holds the token {PAD!r}: padding is not a word, and a model never predicts it; "
            "remove or rename it in the text")
