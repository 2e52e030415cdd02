"""The cache of compiled host libraries, and how far it is trusted.

Why: see docs/decisions/006-kernel-cache-trust.md. The cache lives in
``$XSEQ_CACHE_DIR`` (default ``$XDG_CACHE_HOME/xseq`` or ``~/.cache/xseq``).
A library's name is no secret, so the cache is trusted only as far as it is
checked: the directory is opened once (not through a symbolic link) and must
belong to the user with no one else allowed to write it (one of the user's
own that others could write is made 0700); the library is opened once inside
it (not through a symbolic link) and must be a regular file of the user's,
with one name, that no one else can write; and the file loaded is that open
file (``/proc/self/fd``, or a private copy where there is none), so a path
swapped after the checks changes nothing. Builds are copied into the cache
atomically, the library 0600 and new directories 0700 whatever the umask.
:func:`xseq.ops.native_library.library` puts these steps together.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

# Opened as /proc/self/fd/N, a file is loaded through the descriptor that was checked.
PROC_FD = "/proc/self/fd"

# What the checks need (POSIX); without it the cache is not used.
CACHE_CHECKABLE = (
    hasattr(os, "geteuid") and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")
    and os.open in os.supports_dir_fd
)


def cache_dir():
    """The cache directory: ``$XSEQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/xseq``, else ``~/.cache/xseq``."""
    if os.environ.get("XSEQ_CACHE_DIR"):
        return Path(os.environ["XSEQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xseq"


def load_descriptor(fd, name):
    """The library open as ``fd`` (which this function takes over), loaded, and the bytes that were loaded.

    Returns ``(ctypes.CDLL, bytes)``; raises ``OSError`` where the file is no
    library this process can load. Loaded as ``/proc/self/fd/N`` where there
    is such a folder, else from a private copy of the bytes read (``name``
    is the copy's file name): either way, the file checked is the file loaded.
    """
    kept = False
    try:
        with open(fd, "rb", closefd=False) as f:
            f.seek(0)  # install hands over the descriptor it has just written
            data = f.read()
        if os.path.isdir(PROC_FD):
            lib = ctypes.CDLL(f"{PROC_FD}/{fd}")
            # glibc knows a loaded library by the name it was opened under and hands it back for
            # that name: the descriptor stays open so that its number never names another file here
            kept = True
        else:
            lib = _load_private_copy(data, name)
        return lib, data
    finally:
        if not kept:
            os.close(fd)


def _load_private_copy(data, name):
    """Load the bytes of a checked file from a copy in a directory only this user can reach."""
    with tempfile.TemporaryDirectory(prefix="xseq_load_") as private:
        copy = os.path.join(private, name)
        with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        return ctypes.CDLL(copy)  # the mapping outlives the file


def _make_directories(directory):
    """Create ``directory`` and its missing parents, each 0700 (the umask can only narrow that)."""
    missing = []
    while not os.path.lexists(directory) and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            os.mkdir(path, 0o700)


def _refusal(exc, name, dir_fd=None):
    """Why an ``os.open`` of ``name`` with ``O_NOFOLLOW`` failed, for a message (the open decided).

    A symbolic link fails with ELOOP, or with ENOTDIR where ``O_DIRECTORY`` is asked too.
    """
    try:
        is_link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        is_link = False
    return "is a symbolic link" if is_link else f"cannot be opened: {exc.strerror}"


# Why: see docs/decisions/006-kernel-cache-trust.md
def open_cache_dir(directory):
    """The cache directory, opened once, if it is this user's and no one else can write it.

    Returns
    -------
    (int or None, str)
        A descriptor of the directory and a note (what was changed), or None and
        why the directory is not used. Everything after this goes through the
        descriptor, so renaming or swapping a directory on the path afterwards
        changes nothing.
    """
    if not CACHE_CHECKABLE:
        return None, "this platform cannot check the cache directory (no O_NOFOLLOW, O_DIRECTORY or dir_fd)"
    try:
        _make_directories(directory)
    except OSError as exc:
        return None, f"the cache directory {directory} cannot be created: {exc.strerror}"
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        return None, f"the cache directory {directory} {_refusal(exc, directory)}"
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            problem = f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
        elif st.st_mode & 0o022:
            # no one else can add a file from now on; what others planted before is not the
            # user's (or has a second name) and is refused file by file
            os.fchmod(fd, 0o700)
            mode = stat.S_IMODE(st.st_mode)
            return fd, f"the cache directory {directory} was writable by others (mode {mode:04o}); made it 0700"
        else:
            return fd, ""
    except OSError as exc:
        problem = f"cannot be made private: {exc.strerror}"
    os.close(fd)
    return None, f"the cache directory {directory} {problem}"


def open_cached(dir_fd, name):
    """The cached library ``name`` in the open cache directory, opened once and checked as opened.

    Returns
    -------
    (int or None, str)
        A descriptor and ``""``; None and ``""`` where there is no such file;
        None and why not where there is one that must not be loaded.
    """
    try:
        # O_NONBLOCK: opening a FIFO planted under the name would otherwise wait for a writer
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, _refusal(exc, name, dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    elif st.st_nlink != 1:
        # xseq writes it with one name; a second may be a link to another of the user's files
        problem = f"has {st.st_nlink} names (hard links)"
    else:
        return fd, ""
    os.close(fd)
    return None, problem


def install(built, dir_fd, name):
    """Copy the library ``built`` into the open cache directory as ``name``, 0600, atomically.

    Returns a descriptor of the installed file, for :func:`load_descriptor`:
    what was written is what is loaded.
    """
    temporary = f".{name}.{secrets.token_hex(8)}"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with open(built, "rb") as src, open(fd, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst)
        os.fsync(fd)
        # atomic: another process sees the old state or the whole file
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    return fd
