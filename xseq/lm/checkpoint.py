"""Saving and loading training state: one ``.npz`` file, written atomically.

File layout
-----------
A checkpoint is a NumPy ``.npz`` archive (uncompressed) holding

* ``array/<name>`` for every array passed to :func:`save_checkpoint`;
* ``__meta__``: a ``uint8`` array of the UTF-8 bytes of a JSON object
  ``{"format": "xseq.checkpoint", "format_version": 1, "arrays": [names],
  "meta": {...}}`` -- the caller's ``meta`` plus the list of array names, so a
  lost member is noticed on load.

Nothing in the file needs pickle, and object arrays are refused on load:
loading a checkpoint cannot run code. :func:`load_checkpoint` checks what
the file declares (member sizes, array shapes, the JSON's nesting and
numbers) against the file before reading or allocating anything, so a
crafted file costs about its own size, never what it claims to hold.

Atomicity
---------
The archive is written by :func:`~xseq.lm.files.atomic_write`: to a
temporary file in the destination directory, flushed and fsync-ed, then moved
over the destination with ``os.replace``. A crash or an exception part-way
leaves the previous checkpoint intact and removes the temporary file; one left
by a killed process is removed by the next save of the same file
(:func:`~xseq.lm.files.atomic_write` also says how symbolic links, file modes
and non-regular files are treated).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import struct
import zipfile
import zlib

import numpy as np
from array_api_compat import is_array_api_obj

from ..backends.arrays import to_numpy
from .files import NotReadable, atomic_write, open_regular_file

FORMAT = "xseq.checkpoint"
FORMAT_VERSION = 1
_META_KEY = "__meta__"
_ARRAY_PREFIX = "array/"


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, corrupt or of another format."""


def _host_array(name, value):
    try:
        arr = np.asarray(to_numpy(value) if is_array_api_obj(value) else value)
    except Exception as exc:
        raise TypeError(f"arrays[{name!r}] cannot be converted to a NumPy array: {exc}") from None
    if arr.dtype.hasobject:
        raise TypeError(
            f"arrays[{name!r}] has dtype object, which needs pickle to store; "
            "checkpoints hold numeric, bool or str arrays only"
        )
    return arr


def save_checkpoint(path, *, arrays, meta):
    """Write arrays and JSON metadata to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Used as given (no ``.npz`` is appended).
    arrays : dict[str, array-like]
        Arrays of any backend (moved to the host), NumPy arrays, Python
        scalars or strings. Object arrays are refused (they need pickle).
    meta : dict
        JSON-serialisable metadata (tuples come back as lists).

    Raises
    ------
    TypeError
        ``arrays`` or ``meta`` of the wrong type, an array that cannot be
        stored without pickle, or ``meta`` not JSON-serialisable.
    OSError
        The write failed; the previous file at ``path`` is intact.
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of name -> array; got {type(arrays).__name__}")
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (JSON object); got {type(meta).__name__}")
    entries = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"array names must be non-empty str; got {name!r}")
        entries[_ARRAY_PREFIX + name] = _host_array(name, value)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "arrays": list(arrays), "meta": meta}
    try:
        text = json.dumps(header, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"meta must be JSON-serialisable: {exc}") from None
    entries[_META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    # Looked up on the module at call time, so a test can make it fail half-way.
    atomic_write(path, lambda f: np.savez(f, **entries))


# The errors a damaged archive raises from zipfile, zlib, struct and numpy's .npy reader.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, OverflowError, RecursionError, NotImplementedError,
                zipfile.BadZipFile, zlib.error, struct.error)

# Nothing a file declares is used before it is checked against these bounds or the file itself.
# json.loads recurses once per nesting level and Python refuses integers of more than 4300
# digits; xseq's own metadata nests 5 levels deep and its longest integer (a 128-bit random
# generator state) has 39 digits.
_MAX_JSON_DEPTH = 64
_MAX_JSON_DIGITS = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_BRACKETS = re.compile(r"[\[\]{}]")
_JSON_LONG_NUMBER = re.compile(r"\d{%d,}" % (_MAX_JSON_DIGITS + 1))
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a first member's local header; an empty archive's end record
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_ZIP_ENCRYPTED = 0x1  # general purpose flag bit 0
_READ_CHUNK = 1 << 20


def _describe(exc):
    return f"it is truncated or corrupt ({type(exc).__name__}: {exc})"


def load_checkpoint(path):
    """Read a file written by :func:`save_checkpoint`.

    Nothing the file declares is trusted before it is checked against the
    file itself: every member's size against the file's size, every array's
    shape and dtype against its member's size, and the metadata's nesting and
    numbers against fixed bounds, each before the data it describes is read.
    A damaged or crafted file therefore costs about its own size in memory,
    never what it claims to hold.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    arrays : dict[str, numpy.ndarray]
        Host arrays; move them with :func:`xseq.asarray`.
    meta : dict
        The ``meta`` that was saved.

    Raises
    ------
    CheckpointError
        The path is missing or not a regular file (a directory, FIFO or
        device); the file is not a zip archive, is truncated or corrupt,
        declares more data than it holds, holds compressed, pickled or
        unlisted members, lacks the metadata, or has another format or
        ``format_version``. The message names the path.
    """
    path = os.fspath(path)
    with _open_regular_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        _check_magic(path, f.read(len(_ZIP_MAGICS[0])))
        f.seek(0)
        try:
            archive = zipfile.ZipFile(f)
        except _READ_ERRORS as exc:
            raise CheckpointError(f"checkpoint {path!r} cannot be read: {_describe(exc)}") from None
        with archive:
            members = _members(path, archive, size)
            if _META_KEY not in members:
                raise CheckpointError(f"checkpoint {path!r} has no {_META_KEY!r} entry; it was not written by xseq")
            header = _parse_header(path, _read_array(path, archive, members.pop(_META_KEY)))
            listed = {_ARRAY_PREFIX + name: name for name in header["arrays"]}
            for key, name in listed.items():
                if key not in members:
                    raise CheckpointError(f"checkpoint {path!r} lists array {name!r} but does not contain it")
            unlisted = sorted(set(members) - set(listed))
            if unlisted:
                raise CheckpointError(f"checkpoint {path!r} holds entries its metadata does not list: {unlisted}")
            arrays = {name: _read_array(path, archive, members[key]) for key, name in listed.items()}
    return arrays, header["meta"]


def _open_regular_file(path):
    """``path`` opened for binary reading (:func:`~xseq.lm.files.open_regular_file`); CheckpointError unless it is
    a regular file."""
    try:
        return open_regular_file(path)
    except NotReadable as exc:
        raise CheckpointError(f"checkpoint {path!r} {exc.reason}") from None


def _check_magic(path, head):
    """Refuse, by its first bytes, a file that is not a zip archive."""
    if head in _ZIP_MAGICS:
        return
    if head.startswith(b"\x93NUM"):
        raise CheckpointError(f"checkpoint {path!r} is a single .npy array, not an .npz checkpoint archive")
    if not head:
        reason = "it is empty"
    elif head[0] == 0x80:  # the PROTO opcode that starts every pickle of protocol 2 and later
        reason = "it holds pickled data, which xseq never writes and refuses to load"
    else:
        reason = "it is not a zip archive, so not an xseq checkpoint"
    raise CheckpointError(f"checkpoint {path!r} cannot be read: {reason}")


def _members(path, archive, size):
    """The archive's members by key (the name without ``.npy``), once their declared sizes fit the file.

    :func:`numpy.savez` stores members uncompressed, so each member's data is
    as long as its stored bytes and all of them together fit in the file; a
    member that declares more is refused before any data is read.
    """
    members, declared = {}, 0
    for info in archive.infolist():
        name = info.filename
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"checkpoint {path!r}: member {name!r} is compressed; xseq writes and reads "
                                  "uncompressed archives only")
        if info.flag_bits & _ZIP_ENCRYPTED:
            raise CheckpointError(f"checkpoint {path!r}: member {name!r} is encrypted; xseq never encrypts")
        declared += info.compress_size
        if info.file_size != info.compress_size or info.header_offset + info.compress_size > size or declared > size:
            raise CheckpointError(
                f"checkpoint {path!r} cannot be read: it is truncated or corrupt (member {name!r} declares "
                f"{info.file_size:,} bytes, {info.compress_size:,} stored at offset {info.header_offset:,}, "
                f"which the file's {size:,} bytes cannot hold)")
        key = name[:-len(".npy")] if name.endswith(".npy") else name
        if key in members:
            raise CheckpointError(f"checkpoint {path!r} holds the member {name!r} twice")
        members[key] = info
    return members


def _read_array(path, archive, info):
    """One ``.npy`` member as a writable array; its header is checked against its size before data is read."""
    name = info.filename
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f"member {name!r} has .npy format version {version}; xseq writes 1.0 and 2.0")
            shape, fortran_order, dtype = _NPY_HEADER_READERS[version](member)
            if dtype.hasobject:
                raise CheckpointError(f"checkpoint {path!r} cannot be read: member {name!r} holds pickled (object) "
                                      "data, which xseq never writes and refuses to load")
            count = math.prod(shape)
            nbytes, stored = count * dtype.itemsize, info.file_size - member.tell()
            if nbytes != stored:
                raise ValueError(f"member {name!r} declares shape {shape} of {dtype} ({nbytes:,} bytes) "
                                 f"but holds {stored:,} bytes of data")
            data = bytearray(nbytes)
            view = memoryview(data)
            done = 0
            while done < nbytes:
                got = member.readinto(view[done:done + _READ_CHUNK])
                if not got:
                    raise EOFError(f"member {name!r} ends after {done:,} of its {nbytes:,} bytes of data")
                done += got
        array = np.frombuffer(data, dtype=dtype, count=count)
    except _READ_ERRORS as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {_describe(exc)}") from None
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def _check_json_bounds(path, text):
    """Refuse JSON nested deeper than json.loads should recurse, or with numbers Python will not convert."""
    structure = _JSON_STRING.sub('""', text)
    steps = (1 if bracket in "[{" else -1 for bracket in _JSON_BRACKETS.findall(structure))
    depth = max(itertools.accumulate(steps), default=0)
    if depth > _MAX_JSON_DEPTH:
        raise CheckpointError(f"checkpoint {path!r}: {_META_KEY!r} nests {depth} levels deep; "
                              f"xseq metadata nests at most {_MAX_JSON_DEPTH}")
    if _JSON_LONG_NUMBER.search(structure):
        raise CheckpointError(f"checkpoint {path!r}: {_META_KEY!r} holds a number of more than "
                              f"{_MAX_JSON_DIGITS} digits; xseq metadata has none")


def _parse_header(path, raw):
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(
            f"checkpoint {path!r}: {_META_KEY!r} has dtype {raw.dtype}, shape {raw.shape}; "
            "expected the 1-D uint8 bytes of a JSON object"
        )
    try:
        text = raw.tobytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"checkpoint {path!r}: {_META_KEY!r} is not UTF-8 JSON ({exc})") from None
    _check_json_bounds(path, text)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"checkpoint {path!r}: {_META_KEY!r} is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise CheckpointError(f"checkpoint {path!r} has format {got!r}; expected {FORMAT!r}")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has format_version {version!r}; this version of xseq reads "
            f"format_version {FORMAT_VERSION}"
        )
    names = header.get("arrays")
    names_ok = isinstance(names, list) and all(isinstance(n, str) for n in names)
    if not names_ok or not isinstance(header.get("meta"), dict):
        raise CheckpointError(f"checkpoint {path!r}: {_META_KEY!r} lacks its 'arrays' list or 'meta' object")
    return header


def checked_state_dict(params, state, model):
    """Host copies of the arrays of ``state`` that replace ``params`` of ``model``, once each fits: the same names,
    shapes, float32 or float64, finite values (ValueError or TypeError naming the entry otherwise)."""
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"state dict does not fit this {model!r}: missing {missing}, unexpected {unexpected}")
    host = {k: np.asarray(to_numpy(v)) for k, v in state.items()}
    for k, p in params.items():
        a = host[k]
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
            raise TypeError(f"state dict entry {k!r} has dtype {a.dtype}; expected float32 or float64")
        if a.shape != tuple(p.shape):
            raise ValueError(f"state dict entry {k!r} has shape {a.shape}; expected {tuple(p.shape)}")
        finite = np.isfinite(a)
        if not finite.all():
            raise ValueError(f"state dict entry {k!r} holds {a.size - np.count_nonzero(finite)} NaN or "
                             f"infinite values (of {a.size}); a model with them computes nothing but NaN")
    return host
