"""Saving and loading training state: one ``.npz`` file, written atomically.

File layout
-----------
A checkpoint is a NumPy ``.npz`` archive (uncompressed) holding

* ``array/<name>`` for every array passed to :func:`save_checkpoint`;
* ``__meta__``: a ``uint8`` array of the UTF-8 bytes of a JSON object
  ``{"format": "xseq.checkpoint", "format_version": 1, "arrays": [names],
  "meta": {...}}`` -- the caller's ``meta`` plus the list of array names, so a
  lost member is noticed on load.

Nothing in the file needs pickle, and it is read with
``allow_pickle=False``: loading a checkpoint cannot run code.

Atomicity
---------
The archive is written to a temporary file in the destination directory,
flushed and fsync-ed, then moved over the destination with ``os.replace``.
A crash or an exception part-way leaves the previous checkpoint intact and
removes the temporary file.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
import zlib

import numpy as np
from array_api_compat import is_array_api_obj

from ._backend import to_numpy

FORMAT = "xseq.checkpoint"
FORMAT_VERSION = 1
_META_KEY = "__meta__"
_ARRAY_PREFIX = "array/"


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, corrupt or of another format."""


def atomic_write(path, write):
    """Replace ``path`` with what ``write(f)`` writes to a binary file object, atomically.

    The data goes to a temporary file next to ``path`` (same directory, so
    ``os.replace`` is a rename within one file system), is flushed and
    fsync-ed, and only then replaces ``path``. On any exception the temporary
    file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not base:
        raise ValueError(f"path {path!r} names a directory, not a file")
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 lets the umask decide the mode, as for an ordinary open();
            # tempfile.mkstemp would leave the final file readable by the owner only.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Make the rename itself durable where the OS allows it (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


# The errors a damaged archive raises from zipfile, zlib and numpy's .npy reader.
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _describe(exc):
    if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
        return "it holds pickled (object) data, which xseq never writes and refuses to load"
    return f"it is truncated or corrupt ({type(exc).__name__}: {exc})"


def load_checkpoint(path):
    """Read a file written by :func:`save_checkpoint`.

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
        The file is missing, not an ``.npz`` archive, truncated or corrupt,
        holds pickled data, lacks the metadata, or has another format or
        ``format_version``. The message names the path.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a file")
    # Opened here rather than by np.load so that the file is closed on every
    # error path (np.load leaves it open when the archive is damaged).
    with open(path, "rb") as f:
        try:
            archive = np.load(f, allow_pickle=False)
        except _READ_ERRORS as exc:
            raise CheckpointError(f"checkpoint {path!r} cannot be read: {_describe(exc)}") from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise CheckpointError(f"checkpoint {path!r} is a single .npy array, not an .npz checkpoint archive")
        with archive:
            names = set(archive.files)
            if _META_KEY not in names:
                raise CheckpointError(f"checkpoint {path!r} has no {_META_KEY!r} entry; it was not written by xseq")
            try:
                raw = archive[_META_KEY]
                contents = {key: archive[key] for key in names if key != _META_KEY}
            except _READ_ERRORS as exc:
                raise CheckpointError(f"checkpoint {path!r} cannot be read: {_describe(exc)}") from exc
    header = _parse_header(path, raw)
    arrays = {}
    for name in header["arrays"]:
        key = _ARRAY_PREFIX + name
        if key not in contents:
            raise CheckpointError(f"checkpoint {path!r} lists array {name!r} but does not contain it")
        arrays[name] = contents.pop(key)
    if contents:
        raise CheckpointError(f"checkpoint {path!r} holds entries its metadata does not list: {sorted(contents)}")
    return arrays, header["meta"]


def _parse_header(path, raw):
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(
            f"checkpoint {path!r}: {_META_KEY!r} has dtype {raw.dtype}, shape {raw.shape}; "
            "expected the 1-D uint8 bytes of a JSON object"
        )
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
