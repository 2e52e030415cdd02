"""Where `--out` and `atomic_write` write: devices and FIFOs, symbolic links, modes, sticky directories, temp files."""

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest

from xseq.lm.checkpoint import load_checkpoint
from xseq.lm.files import (
    STALE_TEMPORARY_AGE_S,
    DestinationError,
    _is_stale_temporary,
    _link_not_followed,
    _sticky_forbids_replacing,
    atomic_write,
    resolve_destination,
)
from xseq.lm.cli import main

from .test_cli import NAMES, TINY, assert_bad_input, env, xseq_cli

NOBODY = 65534  # the conventional unprivileged user and group
OTHER = 65533  # a third user: owns files that neither root nor NOBODY owns
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: files of other users are made with chown")


def write_bytes(data):
    return lambda f: f.write(data)


def make_node(kind, path):
    """Create a FIFO, socket or character device (a copy of /dev/null) at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        # AF_UNIX addresses are short (108 bytes): bind a name relative to its directory.
        cwd = os.getcwd()
        os.chdir(os.path.dirname(path))
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(os.path.basename(path))
        finally:
            os.chdir(cwd)
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device node needs root (CAP_MKNOD)")
    return stat.S_IFMT(os.lstat(path).st_mode)


KINDS = {"fifo": "FIFO (named pipe)", "socket": "socket", "device": "character device"}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text(NAMES, encoding="utf-8")
    return path


@pytest.fixture
def shared_dir():
    """A directory like /tmp (sticky, writable by everyone) that other users can reach."""
    path = Path(tempfile.mkdtemp(prefix="xseq-sticky-"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path)


# ---------------------------------------------------------------------- devices, FIFOs, sockets


@pytest.mark.parametrize("kind", KINDS)
def test_atomic_write_leaves_devices_fifos_and_sockets_alone(tmp_path, kind):
    node = tmp_path / "out.npz"
    node_type = make_node(kind, node)
    link = tmp_path / "link.npz"
    link.symlink_to(node.name)
    for path in (node, link):
        with pytest.raises(DestinationError, match=re.escape(f"is a {KINDS[kind]}, not a regular file")) as info:
            atomic_write(path, write_bytes(b"data"))
        assert repr(str(path)) in str(info.value)
        assert isinstance(info.value, OSError)
    assert stat.S_IFMT(os.lstat(node).st_mode) == node_type
    assert os.path.islink(link)
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "out.npz"]


@pytest.mark.parametrize("kind", KINDS)
def test_cli_refuses_a_non_regular_out_before_training(tmp_path, corpus, kind):
    node = tmp_path / "out.npz"
    node_type = make_node(kind, node)
    done = xseq_cli("train", corpus, "--steps", 3, *TINY, "--out", node, cwd=tmp_path)
    assert_bad_input(done, "--out", repr(str(node)), f"is a {KINDS[kind]}, not a regular file")
    assert done.stdout == ""  # refused before the training plan is printed
    assert stat.S_IFMT(os.lstat(node).st_mode) == node_type


# ---------------------------------------------------------------------- symbolic links


def test_a_link_is_followed_and_kept(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.npz"
    target.write_bytes(b"old")
    first = tmp_path / "first.npz"
    first.symlink_to(Path("real") / "model.npz")
    second = tmp_path / "second.npz"
    second.symlink_to(first)
    for link, data in ((first, b"one"), (second, b"two")):
        assert resolve_destination(link) == str(target)
        atomic_write(link, write_bytes(data))
        assert target.read_bytes() == data
    assert os.readlink(first) == str(Path("real") / "model.npz") and os.readlink(second) == str(first)
    assert sorted(os.listdir(tmp_path / "real")) == ["model.npz"]


def test_a_dangling_link_creates_its_target(tmp_path):
    link = tmp_path / "model.npz"
    link.symlink_to("made.npz")
    atomic_write(link, write_bytes(b"new"))
    assert link.is_symlink() and (tmp_path / "made.npz").read_bytes() == b"new"


def test_cli_out_through_a_link_writes_the_linked_file(tmp_path, corpus):
    (tmp_path / "runs").mkdir()
    link = tmp_path / "latest.npz"
    link.symlink_to(tmp_path / "runs" / "model.npz")
    done = xseq_cli("train", corpus, "--steps", 3, *TINY, "--out", link, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink()
    assert load_checkpoint(tmp_path / "runs" / "model.npz")[1]["trainer"]["step"] == 3


@needs_root
def test_a_link_planted_in_a_shared_sticky_directory_is_not_followed(shared_dir):
    victim = shared_dir / "victim"
    victim.write_bytes(b"precious")
    planted = shared_dir / "model.npz"
    planted.symlink_to(victim)
    os.lchown(planted, NOBODY, NOBODY)
    with pytest.raises(DestinationError, match="does not follow such links"):
        atomic_write(planted, write_bytes(b"overwritten"))
    assert victim.read_bytes() == b"precious" and planted.is_symlink()
    os.lchown(planted, 0, 0)  # a link of the directory's owner is followed
    atomic_write(planted, write_bytes(b"mine"))
    assert victim.read_bytes() == b"mine"


def st(mode, uid):
    return SimpleNamespace(st_mode=mode, st_uid=uid)


def test_which_links_are_followed():
    tmp = st(stat.S_IFDIR | 0o1777, 0)  # /tmp: sticky, world-writable, root's
    link = stat.S_IFLNK | 0o777
    assert _link_not_followed(tmp, st(link, 1000), euid=0)  # root does not follow a user's link...
    assert _link_not_followed(tmp, st(link, 1000), euid=1001)  # ...nor does another user
    assert not _link_not_followed(tmp, st(link, 1000), euid=1000)  # its owner does
    assert not _link_not_followed(tmp, st(link, 0), euid=1000)  # the directory owner's link is trusted
    assert not _link_not_followed(st(stat.S_IFDIR | 0o1775, 0), st(link, 1000), euid=0)  # not world-writable
    assert not _link_not_followed(st(stat.S_IFDIR | 0o777, 0), st(link, 1000), euid=0)  # not sticky
    assert not _link_not_followed(tmp, st(link, 1000), euid=None)  # no user ids (Windows)


# ---------------------------------------------------------------------- modes and owners


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_a_replaced_file_keeps_its_mode(tmp_path, mode):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    path.chmod(mode)
    seen = []

    def write(f):
        seen.append(os.fstat(f.fileno()).st_mode & 0o777)
        f.write(b"new")

    umask = os.umask(0o022)
    try:
        atomic_write(path, write)
    finally:
        os.umask(umask)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o7777 == mode
    assert seen == [mode]  # the data never sat in a file more readable than the one it replaces


@needs_root
def test_a_replaced_file_keeps_its_owner_and_group(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    os.chown(path, NOBODY, OTHER)
    atomic_write(path, write_bytes(b"new"))
    assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY, OTHER)


def test_cli_resume_keeps_a_private_checkpoint_private(tmp_path, corpus):
    out = tmp_path / "model.npz"
    umask = os.umask(0o022)  # the child inherits it; a new file would be 0644
    try:
        assert xseq_cli("train", corpus, "--steps", 3, *TINY, "--out", out, cwd=tmp_path).returncode == 0
        assert out.stat().st_mode & 0o777 == 0o644
        out.chmod(0o600)
        done = xseq_cli("train", corpus, "--steps", 5, "--resume", out, "--out", out, cwd=tmp_path)
    finally:
        os.umask(umask)
    assert done.returncode == 0, done.stderr
    assert "resuming at step 3" in done.stdout
    assert out.stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------------- sticky directories


def test_who_may_replace_a_file_in_a_sticky_directory():
    sticky, plain = st(stat.S_IFDIR | 0o1777, 0), st(stat.S_IFDIR | 0o777, 0)
    theirs = st(stat.S_IFREG | 0o666, 1000)
    assert _sticky_forbids_replacing(sticky, theirs, euid=1001)
    assert not _sticky_forbids_replacing(sticky, theirs, euid=1000)  # the file's owner
    assert not _sticky_forbids_replacing(st(stat.S_IFDIR | 0o1777, 1001), theirs, euid=1001)  # the directory's
    assert not _sticky_forbids_replacing(sticky, theirs, euid=0)  # root
    assert not _sticky_forbids_replacing(plain, theirs, euid=1001)  # no sticky bit: directory write access rules
    assert not _sticky_forbids_replacing(sticky, theirs, euid=None)


def as_nobody(action):
    """Run ``action()`` in a forked child as user NOBODY; (its exit status, what it printed)."""
    with tempfile.TemporaryFile("w+") as printed:
        pid = os.fork()
        if pid == 0:  # the child must never return into pytest
            status = 70
            try:
                try:
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                    sys.stdout = sys.stderr = printed
                    status = action()
                except BaseException:
                    traceback.print_exc(file=printed)
                printed.flush()
            finally:
                os._exit(status)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        printed.seek(0)
        return status, printed.read()


@needs_root
def test_cli_refuses_another_users_file_in_a_sticky_directory_before_training(shared_dir):
    if not all(os.stat(parent).st_mode & stat.S_IXOTH for parent in shared_dir.parents):
        pytest.skip(f"other users cannot reach {shared_dir} (set TMPDIR to a directory like /tmp)")
    corpus = shared_dir / "names.txt"
    corpus.write_text(NAMES, encoding="utf-8")
    theirs = shared_dir / "model.npz"
    theirs.write_bytes(b"someone else's model")
    theirs.chmod(0o666)  # writable by everyone, still not replaceable by everyone
    os.chown(theirs, OTHER, OTHER)
    train = ["train", str(corpus), "--steps", "3", *TINY, "--out"]
    # NOBODY may not read the interpreter's own files (under /root here): import all a run needs first.
    assert main([*train, str(shared_dir / "warm-up.npz")]) == 0
    status, printed = as_nobody(lambda: main([*train, str(theirs)]))
    assert status == 2, printed
    # One line and no training plan: refused before training, not at the first save.
    assert printed.count("\n") == 1 and printed.startswith("xseq train: error: cannot write --out"), printed
    assert f"belongs to uid {OTHER} in the sticky directory" in printed
    assert theirs.read_bytes() == b"someone else's model"

    def write_own_file():
        atomic_write(shared_dir / "mine.npz", write_bytes(b"mine"))
        return 0

    assert as_nobody(write_own_file) == (0, "")  # a file of one's own in the same directory is fine
    assert (shared_dir / "mine.npz").stat().st_uid == NOBODY


# ---------------------------------------------------------------------- temporary files


def temporary_pattern(base):
    return re.compile(re.escape(f".{base}.xseq-tmp.") + r"([0-9]+)\.[0-9a-f]{12}")


def dead_pid():
    """The number of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_temporary_file_is_named_for_its_file_and_process(tmp_path):
    seen = []
    atomic_write(tmp_path / "model.npz", lambda f: seen.extend(os.listdir(tmp_path)))
    assert len(seen) == 1
    match = temporary_pattern("model.npz").fullmatch(seen[0])
    assert match is not None, seen
    assert int(match[1]) == os.getpid()


def test_the_next_save_removes_what_a_killed_save_left(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    script = ("import os, signal, sys\n"
              "from xseq.lm.files import atomic_write\n"
              "def write(f):\n"
              "    f.write(b'partial')\n"
              "    f.flush()\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "atomic_write(sys.argv[1], write)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(path)], env=env(), timeout=60, check=False)
    assert killed.returncode == -signal.SIGKILL
    left = sorted(set(os.listdir(tmp_path)) - {"model.npz"})
    assert len(left) == 1 and temporary_pattern("model.npz").fullmatch(left[0]), left
    assert path.read_bytes() == b"old"
    atomic_write(path, write_bytes(b"new"))
    assert os.listdir(tmp_path) == ["model.npz"] and path.read_bytes() == b"new"


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path):
    dead, live, hexa = dead_pid(), os.getpid(), "0123456789ab"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")

    def temp(pid, base="model.npz", suffix=hexa):
        return tmp_path / f".{base}.xseq-tmp.{pid}.{suffix}"

    stale, old_but_alive = temp(dead), temp(live, suffix="ba9876543210")
    kept = {
        "a live writer's": temp(live),
        "another file's": temp(dead, base="other.npz"),
        "not quite the pattern": temp(dead, suffix="0123456789xy"),
        "a link": temp(dead, suffix="aaaaaaaaaaaa"),
        "a directory": temp(dead, suffix="bbbbbbbbbbbb"),
    }
    for path in (stale, old_but_alive, *kept.values()):
        if path == kept["a link"]:
            path.symlink_to(victim)
        elif path == kept["a directory"]:
            path.mkdir()
        else:
            path.write_bytes(b"partial")
    a_day_ago = victim.stat().st_mtime - STALE_TEMPORARY_AGE_S - 60
    os.utime(old_but_alive, (a_day_ago, a_day_ago))  # its process number now belongs to another process
    if IS_ROOT:
        kept["another user's"] = temp(dead, suffix="cccccccccccc")
        kept["another user's"].write_bytes(b"partial")
        os.chown(kept["another user's"], NOBODY, NOBODY)

    atomic_write(tmp_path / "model.npz", write_bytes(b"new"))
    assert not stale.exists() and not old_but_alive.exists()
    for what, path in kept.items():
        assert os.path.lexists(path), what
    assert victim.read_bytes() == b"precious"


def test_which_temporary_files_are_stale():
    now, fresh = 1e9, 1e9 - 10
    old = now - STALE_TEMPORARY_AGE_S - 1
    mine = SimpleNamespace(st_mode=stat.S_IFREG | 0o600, st_uid=1000, st_mtime=fresh)
    dead, live = dead_pid(), os.getpid()
    assert _is_stale_temporary(mine, dead, 1000, now)
    assert not _is_stale_temporary(mine, live, 1000, now)
    assert _is_stale_temporary(SimpleNamespace(**{**vars(mine), "st_mtime": old}), live, 1000, now)
    assert not _is_stale_temporary(mine, dead, 1001, now)  # another user's
    assert _is_stale_temporary(mine, 10**30, 1000, now)  # a number no process can have
    assert not _is_stale_temporary(SimpleNamespace(**{**vars(mine), "st_mode": stat.S_IFLNK | 0o777}), dead,
                                   1000, now)
