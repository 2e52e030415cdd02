"""Files as the command line meets them: what kind a path is, opening only regular files, and which are the same.

Every file xseq reads (a corpus, a validation file, a checkpoint) is opened by
:func:`open_regular_file`: a FIFO would block the open until a writer comes,
a device such as ``/dev/zero`` never ends, a directory or a socket cannot be
read; each is refused at once, by name. :func:`file_identity` tells whether two
paths name one file (after links, and hard links alike), so that an output
never replaces an input.
"""

from __future__ import annotations

import os
import stat

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
)


class NotReadable(OSError):
    """``path`` cannot be read as a file; ``reason`` completes a sentence that starts with the path."""

    def __init__(self, path, reason):
        super().__init__(f"{path!r} {reason}")
        self.path = path
        self.reason = reason


def file_kind(mode):
    """What a ``st_mode`` is, in words: ``"directory"``, ``"FIFO (named pipe)"``, ... (``"special file"`` else)."""
    return next((name for test, name in _KINDS if test(mode)), "special file")


def open_regular_file(path):
    """``path`` opened for binary reading, or :class:`NotReadable` unless it is a regular file.

    O_NONBLOCK lets the open of a FIFO return at once instead of waiting for
    a writer, and the type is read from the open descriptor, so the file
    checked is the file read. Reasons: ``"does not exist"``, ``"is a
    directory, not a regular file"`` (any other kind likewise), ``"cannot be
    opened: <why>"``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise NotReadable(path, "does not exist") from None
    except OSError as exc:
        try:  # a socket cannot be opened (ENXIO), Windows refuses a directory: say what it is
            mode = os.stat(path).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise NotReadable(path, f"is a {file_kind(mode)}, not a regular file") from None
        raise NotReadable(path, f"cannot be opened: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotReadable(path, f"is a {file_kind(mode)}, not a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)  # a regular file ignores it; reads then behave as they always do
    return os.fdopen(fd, "rb")


def file_identity(path):
    """What names one file: ``("file", st_dev, st_ino)`` for an existing file (links followed), else the
    resolved path ``("path", realpath)`` of the file that writing ``path`` would create."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("file", st.st_dev, st.st_ino)
