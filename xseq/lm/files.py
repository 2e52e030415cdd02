"""Files as the command line meets them: reading only regular files, writing atomically, knowing which are the same.

Every file xseq reads (a corpus, a validation file, a checkpoint) is opened by
:func:`open_regular_file`: a FIFO would block the open until a writer comes,
a device such as ``/dev/zero`` never ends, a directory or a socket cannot be
read; each is refused at once, by name. :func:`file_identity` tells whether two
paths name one file (after links, and hard links alike), so that an output
never replaces an input. Every file xseq writes (a checkpoint, a vocabulary, a
plot) is written by :func:`atomic_write`: a temporary file beside it, fsync-ed,
renamed over it, with the checks of :func:`resolve_destination` first; a
:class:`Destination` replaces only the file its run wrote.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time

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
    :func:`~xseq.lm.checkpoint.save_checkpoint`, :func:`atomic_write`). With ``may_replace=False``
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
