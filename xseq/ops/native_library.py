"""The host library, built (or found in the cache) and loaded once per process, with each feature's gate.

Built on the first NumPy sequence call that wants it (never at import), with
``$CXX``, ``g++``, ``c++`` or ``clang++`` (:mod:`xseq.ops.native_build`),
from the sources of :mod:`xseq.ops.native_source`; kept in the cache and
loaded from it only as far as :mod:`xseq.ops.kernel_cache` trusts it; anything
else is built in a private temporary directory for this process. Once
loaded, each feature gets its own gate (:mod:`xseq.ops.native_features`).
``XSEQ_HOST_KERNELS=0`` (read once, at the first call) turns the build off;
``XSEQ_HOST_MARCH`` (read then too) builds for another target than this CPU
(:func:`xseq.ops.native_build.host_march`).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

from .kernel_cache import install, load_descriptor, open_cache_dir, open_cached
from .native_build import build, cached_path, find_compiler, host_march
from .native_features import STEP_KERNELS, check_features, vector_math
from .native_source import host_source


class _Library:
    """The loaded shared library, or why there is none; with a library, what happened to the cache, if anything.

    ``features`` maps each feature's name to its
    :class:`~xseq.ops.native_features.Feature` (empty without a library).
    ``reason`` also says why the step kernels are off where the library
    loaded without them: it is what a user reads when NumPy's own steps run.
    """

    def __init__(self, lib=None, path=None, reason="", features=None):
        self.lib, self.path, self.reason = lib, path, reason
        self.features = features or {}

    def on(self, feature):
        """Whether ``feature`` (a name of :data:`xseq.ops.native_features.SPECS`) may be used."""
        found = self.features.get(feature)
        return self.lib is not None and found is not None and found.on


def _join(*notes):
    return "; ".join(note for note in notes if note)


def _load(fd, path, note=""):
    """Load the library open as ``fd``, which this function takes over; ``path`` names it in messages."""
    try:
        lib, data = load_descriptor(fd, path.name)
    except OSError as exc:  # not a library this process can load
        return _Library(reason=_join(f"{path} could not be loaded: {exc}", note))
    features = check_features(lib, vector_math(lib, data))
    steps = features[STEP_KERNELS]
    if not steps.on:
        note = _join(f"{path}: {steps.reason}", note)
    return _Library(lib, path, note, features)


def _build_and_load(compiler, source, march, cached, dir_fd, note):
    """Build for ``march`` in a private temporary directory; install into the cache open as ``dir_fd`` (None:
    none) and load."""
    with tempfile.TemporaryDirectory(prefix="xseq_build_") as tmp:
        built, error = build(compiler, source, Path(tmp), march)
        if built is None:
            target = "" if march == "native" else f" for -march={march}"
            return _Library(reason=_join(f"the host build with {compiler}{target} failed: {error}", note))
        if dir_fd is not None and cached_path(compiler, source, march) != cached:
            # the native files changed while they were compiled: the cache key no longer names this build
            note = _join(note, "the native sources changed during the build")
            dir_fd = None
        if dir_fd is not None:
            try:
                fd = install(built, dir_fd, cached.name)
            except OSError as exc:
                note = _join(note, f"{cached} could not be written: {exc.strerror}")
            else:
                return _load(fd, cached, note)
        # loaded before the temporary directory goes: the mapping outlives the file
        return _load(os.open(built, os.O_RDONLY), built, f"built for this process only: {note}")


@functools.cache
def library():
    """Build (or find in the cache) and load the host library, once per process."""
    if os.environ.get("XSEQ_HOST_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return _Library(reason="turned off by XSEQ_HOST_KERNELS")
    compiler = find_compiler()
    if compiler is None:
        return _Library(reason="no C++ compiler ($CXX, g++, c++ or clang++) on PATH")
    march = host_march()
    source = host_source()
    cached = cached_path(compiler, source, march)
    dir_fd, note = open_cache_dir(cached.parent)
    if dir_fd is None:
        return _build_and_load(compiler, source, march, cached, None, note)
    try:
        fd, problem = open_cached(dir_fd, cached.name)
        if fd is not None:
            return _load(fd, cached, note)
        if problem:
            refused = f"{cached} {problem}, so it is not loaded (remove it to let xseq build it again)"
            return _build_and_load(compiler, source, march, cached, None, _join(note, refused))
        return _build_and_load(compiler, source, march, cached, dir_fd, note)
    finally:
        os.close(dir_fd)
