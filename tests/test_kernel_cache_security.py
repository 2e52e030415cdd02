"""The compiled-kernel cache (``xseq/ops/kernel_cache.py``, put to use by ``xseq/ops/native_library.py``) loads only
what this user alone could have put there.

Any local user can compute the cached library's name. Each attack below plants a small library whose
constructor writes a marker file: the marker must stay absent, the kernels must still come (built for
this process in a private temporary directory) and ``status()`` must say why the cache was passed over.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys

import pytest

from xseq.ops import host as host_kernels
from xseq.ops import kernel_cache, native_build

COMPILER = host_kernels.find_compiler()
BUILT = host_kernels.library()
needs_build = pytest.mark.skipif(
    COMPILER is None or BUILT.lib is None, reason=f"no host build on this machine: {BUILT.reason}"
)
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give a file to another uid"
)
OTHER_UID = 12345  # no need for such a user to exist: chown takes any number

# Carries "_ZGV" like a real build (vectorized math). Loading a library runs its constructor before any feature
# is checked, so only the cache's own checks, made before the load, can stop it.
PLANTED_SOURCE = r"""
#include <cstdio>
extern "C" const char looks_vectorized[] = "_ZGV";
__attribute__((constructor)) static void planted_code_ran() {
    if (std::FILE* f = std::fopen(XSEQ_MARKER, "w")) std::fclose(f);
}
"""


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A cache directory of this test's own (not yet created); ``library()`` starts over for it."""
    monkeypatch.setenv("XSEQ_CACHE_DIR", str(tmp_path / "cache"))
    host_kernels.library.cache_clear()
    yield tmp_path / "cache"
    host_kernels.library.cache_clear()


@pytest.fixture
def planted(tmp_path):
    """``(library, marker)``: a library that creates ``marker`` when it is loaded."""
    marker = tmp_path / "planted_code_ran"
    src, lib = tmp_path / "planted.cpp", tmp_path / "planted.so"
    src.write_text(PLANTED_SOURCE)
    proc = subprocess.run(
        [COMPILER, "-shared", "-fPIC", f'-DXSEQ_MARKER="{marker}"', str(src), "-o", str(lib)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return lib, marker


def cached_name():
    return host_kernels.cached_path(COMPILER, host_kernels.host_source()).name


def resolve():
    """``library()`` as a new process would see it."""
    host_kernels.library.cache_clear()
    return host_kernels.library()


def assert_passed_over(built, marker, *why):
    """The planted code did not run, the kernels were built for this process, and status() says why."""
    assert not marker.exists(), "the planted library was loaded and ran"
    assert built.lib is not None, built.reason
    assert built.path.name == "kernels.so" and not built.path.exists()  # a private build, already removed
    said = host_kernels.status()
    assert "built for this process only" in said
    for words in why:
        assert words in said, said


# ---------------------------------------------------------------- what is planted under the library's name

@needs_build
def test_a_symlink_under_the_library_name_is_not_followed(cache, planted):
    lib, marker = planted
    cache.mkdir(mode=0o700)
    (cache / cached_name()).symlink_to(lib)
    assert_passed_over(resolve(), marker, f"{cache / cached_name()} is a symbolic link", "remove it")
    assert (cache / cached_name()).is_symlink()  # left for the user to see


@needs_build
def test_a_library_others_can_write_is_not_loaded(cache, planted):
    lib, marker = planted
    cache.mkdir(mode=0o700)
    target = cache / cached_name()
    target.write_bytes(lib.read_bytes())
    target.chmod(0o666)
    assert_passed_over(resolve(), marker, f"{target} is writable by others (mode 0666)")


@needs_build
def test_a_library_with_a_second_name_is_not_loaded(cache, planted):
    """A hard link to another of the user's files, made while the directory was open to others."""
    lib, marker = planted
    cache.mkdir(mode=0o700)
    os.link(lib, cache / cached_name())
    assert_passed_over(resolve(), marker, "has 2 names (hard links)")


@needs_build
@needs_root
@pytest.mark.parametrize("mode", [0o700, 0o777, 0o1777])
def test_a_library_of_another_user_is_not_loaded(cache, planted, mode):
    lib, marker = planted
    cache.mkdir()
    cache.chmod(mode)
    target = cache / cached_name()
    target.write_bytes(lib.read_bytes())
    target.chmod(0o644)
    os.chown(target, OTHER_UID, -1)
    assert_passed_over(resolve(), marker, f"{target} belongs to uid {OTHER_UID}, not to this user (uid 0)")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


@needs_build
def test_a_fifo_under_the_library_name_neither_blocks_nor_loads(cache):
    """Opened without O_NONBLOCK, a FIFO with no writer would wait forever: run in a child process."""
    cache.mkdir(mode=0o700)
    os.mkfifo(cache / cached_name())
    code = "from xseq.ops import host; print(host.status())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XSEQ_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert "is not a regular file" in proc.stdout and "built for this process only" in proc.stdout


# ---------------------------------------------------------------- the directory itself

@needs_build
def test_a_symlinked_cache_directory_is_not_followed(cache, planted, tmp_path):
    lib, marker = planted
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / cached_name()).write_bytes(lib.read_bytes())
    cache.symlink_to(elsewhere)
    assert_passed_over(resolve(), marker, f"the cache directory {cache} is a symbolic link")


@needs_build
@needs_root
def test_a_directory_of_another_user_is_not_used(cache, planted):
    lib, marker = planted
    cache.mkdir(mode=0o755)
    (cache / cached_name()).write_bytes(lib.read_bytes())
    os.chown(cache, OTHER_UID, -1)
    assert_passed_over(resolve(), marker, f"the cache directory {cache} belongs to uid {OTHER_UID}")


@needs_build
@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_an_own_directory_others_can_write_is_made_private(cache, mode):
    cache.mkdir()
    cache.chmod(mode)
    built = resolve()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert built.lib is not None and built.path == cache / cached_name()
    assert f"was writable by others (mode {mode:04o}); made it 0700" in host_kernels.status()


# ---------------------------------------------------------------- checked, then loaded: the same file

@needs_build
@pytest.mark.parametrize("swap", ["library", "directory"])
@pytest.mark.parametrize("loader", ["proc-fd", "private-copy"])
def test_a_swap_after_the_checks_changes_nothing(cache, planted, monkeypatch, tmp_path, swap, loader):
    """Another user swaps the file or the whole directory between the checks and the load."""
    lib, marker = planted
    # a good cache, filled without loading it: glibc would hand back a library already loaded from that path
    build = tmp_path / "build"
    build.mkdir()
    good, error = native_build.build(COMPILER, host_kernels.host_source(), build)
    assert good is not None, error
    cache.mkdir(mode=0o700)
    (cache / cached_name()).write_bytes(good.read_bytes())
    (cache / cached_name()).chmod(0o600)
    if loader == "private-copy":  # what runs where there is no /proc/self/fd
        monkeypatch.setattr(kernel_cache, "PROC_FD", str(tmp_path / "no-proc-fd"))
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o700)
    (decoy / cached_name()).write_bytes(lib.read_bytes())
    real_cdll = ctypes.CDLL

    def swap_then_load(name, *args, **kwargs):
        if swap == "library":
            os.replace(decoy / cached_name(), cache / cached_name())
        else:
            cache.rename(tmp_path / "moved_away")
            decoy.rename(cache)
        return real_cdll(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", swap_then_load)
    built = resolve()
    assert not marker.exists(), "the swapped-in library was loaded and ran"
    assert built.lib is not None and built.path == cache / cached_name()
    assert hasattr(built.lib, "xseq_rnn_forward_float")


# ---------------------------------------------------------------- what xseq writes

@needs_build
def test_written_private_whatever_the_umask(monkeypatch, tmp_path):
    nested = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("XSEQ_CACHE_DIR", str(nested))
    old = os.umask(0)
    try:
        built = resolve()
    finally:
        os.umask(old)
        host_kernels.library.cache_clear()
    assert built.lib is not None and built.path == nested / cached_name()
    for directory in (tmp_path / "a", tmp_path / "a" / "b", nested):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(built.path.stat().st_mode) == 0o600
    assert [p.name for p in nested.iterdir()] == [built.path.name]  # no temporary file left
