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
The archive is written to a temporary file in the destination directory,
flushed and fsync-ed, then moved over the destination with ``os.replace``.
A crash or an exception part-way leaves the previous checkpoint intact and
removes the temporary file; one left by a killed process is removed by the
next save of the same file (see :func:`atomic_write`, which also says how
symbolic links, file modes and non-regular files are treated).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import secrets
import stat
import struct
import time
import zipfile
import zlib

import numpy as np
from array_api_compat import is_array_api_obj

from ..backends.arrays import to_numpy
from .files import NotReadable, file_kind, open_regular_file

FORMAT = "xseq.checkpoint"
FORMAT_VERSION = 1
_META_KEY = "__meta__"
_ARRAY_PREFIX = "array/"


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, corrupt or of another format."""


class DestinationError(OSError):
    """A file cannot be written by replacing ``path``: see :func:`resolve_destination`.

    Attributes
    ----------
    path : str
        The path as given.
    reason : str
        Why it cannot be replaced, as a clause ("it is a FIFO (named pipe), ...").
    """

    def __init__(self, path, reason):
        super().__init__(f"cannot replace {path!r}: {reason}")
        self.path = path
        self.reason = reason


# Writers hold their temporary file for seconds; one older than this is left over even if its
# process number has since been given to another process.
STALE_TEMPORARY_AGE_S = 24 * 3600
_TEMPORARY_MARK = ".xseq-tmp."
_MAX_SYMLINKS = 40  # Linux's limit before ELOOP


def _effective_uid():
    """The effective user id, or None where the OS has none (Windows): the ownership rules then do not apply."""
    return os.geteuid() if hasattr(os, "geteuid") else None


def _link_not_followed(dir_stat, link_stat, euid):
    """Whether Linux's ``fs.protected_symlinks`` rule forbids ``euid`` to follow this link.

    A link in a sticky, world-writable directory (``/tmp``) is followed only by
    its owner, or when the directory's owner also owns the link: otherwise anyone
    could point a name in ``/tmp`` at another user's file (root's included). xseq
    applies the rule whatever the ``sysctl`` says.

    Parameters
    ----------
    dir_stat, link_stat : os.stat_result
        ``os.stat`` of the directory and ``os.lstat`` of the link.
    euid : int or None
        The writer's effective user id; None (no user ids) never refuses.
    """
    shared = dir_stat.st_mode & stat.S_ISVTX and dir_stat.st_mode & stat.S_IWOTH
    return bool(shared) and euid is not None and link_stat.st_uid not in (euid, dir_stat.st_uid)


def _sticky_forbids_replacing(dir_stat, file_stat, euid):
    """Whether the sticky bit of the directory forbids ``euid`` to replace this file.

    In a sticky directory a file may be renamed over or removed only by its
    owner, the directory's owner or root (``rename(2)``, ``EPERM``).

    Parameters
    ----------
    dir_stat, file_stat : os.stat_result
        ``os.stat`` of the directory and ``os.lstat`` of the file.
    euid : int or None
        The writer's effective user id; None (no user ids) never refuses.
    """
    if not dir_stat.st_mode & stat.S_ISVTX or euid is None:
        return False
    return euid not in (0, file_stat.st_uid, dir_stat.st_uid)


def _resolve(path):
    """(target, lstat of target or None): the checked file that replacing ``path`` replaces."""
    target, euid = path, _effective_uid()
    try:
        for _ in range(_MAX_SYMLINKS):
            directory = os.path.dirname(target) or os.curdir
            if not os.path.basename(target):
                raise DestinationError(path, "it names a directory, not a file")
            try:
                found = os.lstat(target)
            except FileNotFoundError:
                found = None
            if found is None or not stat.S_ISLNK(found.st_mode):
                break
            if _link_not_followed(os.stat(directory), found, euid):
                raise DestinationError(
                    path, f"{target!r} is a symbolic link owned by uid {found.st_uid} in the shared sticky "
                    f"directory {directory!r}; xseq does not follow such links (another user may have planted it)")
            target = os.path.join(directory, os.readlink(target))
        else:
            raise DestinationError(path, f"more than {_MAX_SYMLINKS} symbolic links to follow")
        it = "it" if target == path else f"it is a symbolic link to {target!r}, which"
        if found is not None and not stat.S_ISREG(found.st_mode):
            raise DestinationError(
                path, f"{it} is a {file_kind(found.st_mode)}, not a regular file; xseq writes a file by replacing "
                "it and leaves directories, devices, FIFOs and sockets alone")
        try:
            dir_stat = os.stat(directory)
        except FileNotFoundError:
            raise DestinationError(path, f"directory {directory!r} does not exist") from None
        writable = os.access(directory, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)
        if not writable:
            raise DestinationError(path, f"this user cannot create files in directory {directory!r} "
                                         "(no write or search permission, or a read-only file system)")
        if found is not None and _sticky_forbids_replacing(dir_stat, found, euid):
            raise DestinationError(
                path, f"{it} belongs to uid {found.st_uid} in the sticky directory {directory!r}, where only "
                "the file's owner, the directory's owner or root may replace it")
    except DestinationError:
        raise
    except OSError as exc:
        where = f" ({exc.filename!r})" if exc.filename else ""
        raise DestinationError(path, f"{exc.strerror or exc}{where}") from None
    return target, found


def resolve_destination(path):
    """The file that :func:`atomic_write` replaces for ``path``, checked to be replaceable.

    A symbolic link is followed, hop by hop, to the file it names, which is then
    replaced in its own directory: the link stays a link. A link in a shared
    sticky directory (``/tmp``) is followed only if this user or the
    directory's owner owns it (Linux's ``protected_symlinks`` rule). What it
    names must be a regular file or not exist; its directory must exist and let
    this process create files; in a sticky directory an existing file must
    belong to this user or the directory's owner, unless this process is root.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        The path of the file to replace (``path`` itself unless it is a link).

    Raises
    ------
    DestinationError
        Naming ``path`` and why it cannot be replaced.
    """
    path = os.fspath(path)
    return _resolve(path)[0]


class Destination(os.PathLike):
    """A file a run writes again and again, which it replaces only while it holds what the run wrote there.

    Pass it wherever a path goes (``Trainer.run(out=...)``,
    :func:`save_checkpoint`, :func:`atomic_write`). With ``may_replace=False``
    (a file the user did not name: ``xseq train``'s default ``model.npz``) the
    first write creates the file and fails if a file is there, whoever made
    it; every later write replaces the file only if it is still the one this
    run wrote last. With ``may_replace=True`` (a file the user named) the first
    write replaces what is there, and the later ones again only this run's file.
    """

    def __init__(self, path, *, may_replace):
        self.path = os.fspath(path)
        self.may_replace = may_replace
        self.written = None  # (st_dev, st_ino) of what this run wrote last

    def __fspath__(self):
        return self.path

    __str__ = __fspath__

    def __repr__(self):
        return f"Destination({self.path!r}, may_replace={self.may_replace})"

    def _install(self, tmp, target):
        """Move the written temporary file ``tmp`` to ``target``, or DestinationError if it is not ours to replace."""
        try:
            found = os.stat(target)
        except FileNotFoundError:
            found = None
        if found is not None and (found.st_dev, found.st_ino) != self.written and (
                self.written is not None or not self.may_replace):
            whose = "was replaced by another program" if self.written is not None else "already exists"
            raise DestinationError(self.path, f"{whose}, and xseq replaces no file it was not told to write "
                                              "(name it with --out to replace it)")
        if found is None:
            try:  # a link fails if the name was taken meanwhile, where a rename would replace it
                os.link(tmp, target)
                os.unlink(tmp)
            except FileExistsError:
                raise DestinationError(self.path, "was created by another program while xseq wrote it") from None
            except OSError:  # a file system without hard links
                os.replace(tmp, target)
        else:
            os.replace(tmp, target)
        written = os.stat(target)
        self.written = (written.st_dev, written.st_ino)


def atomic_write(path, write):
    """Replace ``path`` with what ``write(f)`` writes to a binary file object, atomically.

    The data goes to a temporary file next to the file it replaces (same
    directory, so ``os.replace`` is a rename within one file system), is
    flushed and fsync-ed, and only then replaces it. On any exception the
    temporary file is removed and the old file is left as it was.

    The destination is checked first (:func:`resolve_destination`): a symbolic
    link is followed and the file it names replaced; a device, FIFO, socket or
    directory is never replaced. A replaced file keeps its permission bits (not
    set-user-ID, set-group-ID or sticky), and its owner and group where this
    process may set them; a new file gets ``0o666`` less the umask.

    The temporary file is named ``.<name>.xseq-tmp.<pid>.<12 hex digits>``.
    Before writing, those of ``<name>`` in that directory that a killed save
    left behind are deleted: regular files (not links) of this user whose
    process is not running, or which are older than ``STALE_TEMPORARY_AGE_S``.

    ``path`` may be a :class:`Destination`, which replaces only the file it wrote last.

    Raises
    ------
    DestinationError
        ``path`` cannot be replaced; nothing was written.
    OSError
        The write failed; the old file is intact.
    """
    target, existing = _resolve(os.fspath(path))
    directory = os.path.dirname(target) or os.curdir
    base = os.path.basename(target)
    _remove_stale_temporaries(directory, base)
    # The data must never be more readable than the file it replaces: a reader who
    # opens the temporary file early keeps access after a later chmod.
    create_mode = 0o666 if existing is None else 0o600
    while True:
        tmp = os.path.join(directory, f".{base}{_TEMPORARY_MARK}{os.getpid()}.{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), create_mode)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            if existing is not None:
                _keep_owner_and_mode(f.fileno(), existing)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if isinstance(path, Destination):
            path._install(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _keep_owner_and_mode(fd, existing):
    """Give the new file the replaced file's owner, group and permission bits, as far as allowed."""
    if hasattr(os, "fchown"):
        own = os.fstat(fd)
        if (own.st_uid, own.st_gid) != (existing.st_uid, existing.st_gid):
            try:
                os.fchown(fd, existing.st_uid, existing.st_gid)
            except PermissionError:
                # Only root gives a file away; a member of the old group may still keep the group.
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, -1, existing.st_gid)
    if hasattr(os, "fchmod"):
        # After fchown, which may clear mode bits. Set-id and sticky bits are left off: they were
        # given to the old content, not to what xseq writes.
        os.fchmod(fd, existing.st_mode & 0o777)


def _is_stale_temporary(file_stat, pid, euid, now):
    """Whether a temporary file of :func:`atomic_write` was left behind by a save that cannot finish.

    Parameters
    ----------
    file_stat : os.stat_result
        ``os.lstat`` of the file.
    pid : int
        The process number in its name.
    euid : int or None
        This process's effective user id; None (no user ids) skips the owner test.
    now : float
        The current time, seconds since the epoch.

    Returns
    -------
    bool
        True for a regular file (not a link) owned by ``euid`` whose process
        is not running, or which is older than ``STALE_TEMPORARY_AGE_S``.
    """
    if not stat.S_ISREG(file_stat.st_mode) or (euid is not None and file_stat.st_uid != euid):
        return False
    return now - file_stat.st_mtime > STALE_TEMPORARY_AGE_S or not _process_exists(pid)


def _process_exists(pid):
    # On Windows os.kill(pid, 0) terminates the process: never ask there.
    if os.name == "nt" or pid == 0:
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: beyond any process number
        return False
    except OSError:
        return True  # e.g. another user's process: it exists
    return True


def _remove_stale_temporaries(directory, base):
    """Delete what :func:`_is_stale_temporary` finds among ``base``'s temporary files; best effort."""
    pattern = re.compile(re.escape(f".{base}{_TEMPORARY_MARK}") + r"([0-9]+)\.[0-9a-f]{12}")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    euid, now = _effective_uid(), time.time()
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        tmp = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if _is_stale_temporary(os.lstat(tmp), int(match[1]), euid, now):
                os.unlink(tmp)


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
