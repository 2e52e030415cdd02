"""Each piece of the host library has its own gate (``xseq/ops/native_features.py``), and the native code is real
files shipped with the package (``xseq/ops/native/``, ``xseq/ops/native_source.py``).

A piece that is missing or cannot serve (its entry points absent, exp/tanh not vectorized, no vector registers
for the packed product) turns off that piece and what runs on it, never the rest, and ``xseq.ops.host.status()``
names it with its reason. The build's exp/tanh are vecmath.h's own (no libmvec) wherever the target has a fused
multiply-add; ``XSEQ_HOST_MARCH`` picks the target.
The sources: compiler messages name the files' own lines, the cache key covers every file, every header compiles
on its own, and a non-editable build of the package carries the files and builds from them where it is installed.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xseq
from xseq.engine import sequence as engine
from xseq.ops import host, native_build, native_features, native_layout, native_library, native_source
from xseq.ops.native_features import (
    FUSED_ADAM,
    LANES,
    PACKED_PRODUCTS,
    PACKED_VECTOR_BYTES,
    SOFTMAX_XENT,
    SPECS,
    STEP_KERNELS,
    check_features,
    gate,
)
from xseq.ops.native_layout import LaneJob
from xseq.ops.numpy_inplace import NumpyOps
from xseq.ops.select import ops_for

ROOT = Path(__file__).resolve().parent.parent
NP = xseq.backend("numpy")
BUILT = host.library()
COMPILER = native_build.find_compiler()
needs_build = pytest.mark.skipif(BUILT.lib is None, reason=f"no host build on this machine: {BUILT.reason}")
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler ($CXX, g++, c++ or clang++) on PATH")


class Changed:
    """The loaded library with entry points hidden or replaced, as another build would have them."""

    def __init__(self, lib, hidden=(), **replaced):
        self._lib, self._hidden, self._replaced = lib, set(hidden), replaced

    def __getattr__(self, name):
        if name in self._hidden:
            raise AttributeError(name)
        return self._replaced[name] if name in self._replaced else getattr(self._lib, name)


class Returns:
    """A stand-in C function returning ``value`` (ctypes' ``argtypes``/``restype`` may be set on it)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, *args):
        return self.value


def lanes_could_run():
    """Whether lanes would run here if the library allowed them (NumPy's OpenBLAS with 2 threads or more)."""
    blas, _ = host.numpy_openblas()
    return blas is not None and blas.threads() > 1 and os.environ.get("XSEQ_LANES", "1") != "0"


@pytest.fixture
def reloaded():
    """``library()`` loaded again (from the cache) for a test that changes how it is judged; again after."""
    host.library.cache_clear()
    yield
    host.library.cache_clear()


# ---------------------------------------------------------------- one missing piece turns off only itself

@needs_build
def test_every_piece_is_on_in_this_build():
    features = host.features()
    assert list(features) == list(SPECS)
    off = {name: f.reason for name, f in features.items() if not f.on and name != PACKED_PRODUCTS}
    assert off == {}
    assert features[PACKED_PRODUCTS].on == host.packed_products(BUILT.lib)


@needs_build
@pytest.mark.parametrize("hidden, off", [
    ("xseq_adam_float", {FUSED_ADAM: "the library lacks xseq_adam_float"}),
    ("xseq_softmax_xent_rows_double", {SOFTMAX_XENT: "the library lacks xseq_softmax_xent_rows_double"}),
    ("xseq_lane_double", {LANES: "the library lacks xseq_lane_double"}),
    ("xseq_pack_float", {PACKED_PRODUCTS: "the library lacks xseq_pack_float"}),
    # the lanes run the step kernels
    ("xseq_lstm_backward_double", {STEP_KERNELS: "the library lacks xseq_lstm_backward_double",
                                   LANES: "needs the step kernels (off)"}),
], ids=["adam", "softmax-xent", "lanes", "packed", "a-step-kernel"])
def test_a_missing_entry_point_turns_off_its_piece_and_what_runs_on_it(hidden, off):
    features = check_features(Changed(BUILT.lib, [hidden]), vectorized=True)
    if not BUILT.on(PACKED_PRODUCTS):  # off in this build already (no vectors for it), whatever is hidden
        off.setdefault(PACKED_PRODUCTS, BUILT.features[PACKED_PRODUCTS].reason)
    assert {name: f.reason for name, f in features.items() if not f.on} == off


@needs_build
def test_without_vector_math_only_the_pieces_that_call_exp_and_tanh_are_off():
    features = check_features(BUILT.lib, vectorized=False)
    assert features[STEP_KERNELS].reason == ("exp/tanh did not vectorize (no fused multiply-add for vecmath.h, "
                                             "no libmvec); NumPy's steps are faster")
    assert features[SOFTMAX_XENT].reason == ("exp did not vectorize (no fused multiply-add for vecmath.h, no libmvec); "
                                             "NumPy's passes are used")
    assert features[LANES].reason == "needs the step kernels (off)"
    assert features[FUSED_ADAM].on and features[PACKED_PRODUCTS].on == host.packed_products(BUILT.lib)


@needs_build
@pytest.mark.parametrize("width, reason", [
    (0, "the build has no vector registers with a fused multiply-add (AVX2, AVX-512, NEON) for it"),
    (8, "the build's vectors are 64-bit; the packed product is used with 512-bit, 256-bit, 128-bit vectors only"),
    (32, "the build's 256-bit vectors are narrower than this CPU's 512-bit ones (XSEQ_HOST_MARCH): OpenBLAS, "
         "whose kernels are chosen for the CPU it runs on, is faster"),
], ids=["no-vectors", "unmeasured-width", "narrower-than-the-cpu"])
def test_a_build_without_vectors_for_it_keeps_the_lanes_on_openblas_products(width, reason, monkeypatch):
    monkeypatch.setattr(native_features, "cpu_vector_bytes", lambda: 64)  # an AVX-512 CPU
    narrow = Changed(BUILT.lib, xseq_packed_vector_bytes=Returns(width))
    features = check_features(narrow, vectorized=True)
    assert not features[PACKED_PRODUCTS].on and features[PACKED_PRODUCTS].reason == reason
    assert all(f.on for name, f in features.items() if name != PACKED_PRODUCTS)
    assert not host.packed_products(narrow) and gate(narrow, LANES).on


@needs_build
@pytest.mark.parametrize("cpu", ["same", "unknown"])
@pytest.mark.parametrize("width", PACKED_VECTOR_BYTES)
def test_the_packed_products_serve_every_vector_width_they_were_kept_for(width, cpu, monkeypatch):
    """On a CPU whose widest vectors are the build's (an AVX2 build on an AVX2 CPU), or one /proc does not
    describe (macOS)."""
    monkeypatch.setattr(native_features, "cpu_vector_bytes", lambda: width if cpu == "same" else None)
    assert host.packed_products(Changed(BUILT.lib, xseq_packed_vector_bytes=Returns(width)))


def native_macros():
    """The names of the macros the compiler defines for ``-march=native`` (the build's target here)."""
    macros = subprocess.run([COMPILER, "-march=native", "-dM", "-E", "-x", "c++", os.devnull],
                            capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"#define (\w+)", macros))


@needs_compiler
def test_the_cpus_vector_width_is_what_the_compiler_finds_for_this_cpu():
    defined = native_macros()
    if "__AVX512F__" in defined:
        want = 64
    elif {"__AVX2__", "__FMA__"} <= defined:
        want = 32
    elif "__aarch64__" in defined:
        want = 16
    else:
        want = None
    if not Path("/proc/cpuinfo").is_file():
        want = None
    assert native_features.cpu_vector_bytes() == want


@needs_build
def test_the_packed_products_width_is_the_build_targets():
    """What packed.h reports is the compiler's target (``-march=native`` here, as the build)."""
    defined = native_macros()
    if "__AVX512F__" in defined:
        want = 64
    elif "__AVX__" in defined and "__FMA__" in defined:
        want = 32
    elif "__aarch64__" in defined:
        want = 16
    else:
        want = 0
    width = BUILT.lib.xseq_packed_vector_bytes
    width.restype = ctypes.c_int
    assert width() == want


# ---------------------------------------------------------------- the build's own vector math

class _Lib:
    """A stand-in library that has (or lacks) ``xseq_vecmath_vector``."""

    def __init__(self, own=None):
        if own is not None:
            self.xseq_vecmath_vector = Returns(own)


@pytest.mark.parametrize("own, data, vectorized", [
    (1, b"no vector names", True),  # vecmath.h's own code: no libmvec needed
    (0, b"calls _ZGVeN16v_expf", True),  # the C library's functions, vectorized through libmvec
    (0, b"no vector names", False),  # the C library's functions, scalar calls (clang on x86 without FMA)
    (None, b"calls _ZGVeN16v_expf", True),  # a library from before vecmath.h
    (None, b"no vector names", False),
], ids=["vecmath", "fallback-libmvec", "fallback-scalar", "older-libmvec", "older-scalar"])
def test_vector_math_is_vecmath_or_libmvec(own, data, vectorized):
    assert native_features.vector_math(_Lib(own), data) is vectorized


@needs_build
def test_this_build_needs_no_libmvec_where_the_target_has_a_fused_multiply_add():
    """The step kernels' exp/tanh are vecmath.h's (``XSEQ_VECMATH_VECTOR``): no glibc vector function is called."""
    defined = native_macros()
    fma = {"__FMA__", "__SSE4_1__"} <= defined or "__aarch64__" in defined
    own = BUILT.lib.xseq_vecmath_vector
    own.restype = ctypes.c_int
    assert own() == int(fma)
    if fma:
        assert b"_ZGV" not in BUILT.path.read_bytes()
        assert BUILT.on(STEP_KERNELS) and BUILT.on(SOFTMAX_XENT)


# ---------------------------------------------------------------- the target: XSEQ_HOST_MARCH

def test_the_target_is_this_cpu_unless_xseq_host_march_names_another(monkeypatch):
    monkeypatch.delenv("XSEQ_HOST_MARCH", raising=False)
    assert native_build.host_march() == "native"
    assert native_build.flag_sets() == native_build.FLAG_SETS
    monkeypatch.setenv("XSEQ_HOST_MARCH", " haswell ")
    assert native_build.host_march() == "haswell"
    sets = native_build.flag_sets()
    assert all("-march=haswell" in flags and "-march=native" not in flags for flags in sets)
    assert len(sets) == len(native_build.FLAG_SETS) - 1  # not the -mcpu=native set: it would target this CPU
    assert [flags for flags in sets if "-mno-recip" in flags] == [sets[0]]  # g++'s IEEE division first


@pytest.mark.parametrize("value", ["-O0", "haswell -O0", "x86-64;v3", "$(id)"])
def test_a_target_that_is_no_name_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("XSEQ_HOST_MARCH", value)
    with pytest.raises(ValueError, match=r"XSEQ_HOST_MARCH is .*; expected a target name for -march="):
        native_build.host_march()


def test_the_target_is_part_of_the_cache_key(monkeypatch):
    compiler = COMPILER or "c++"
    monkeypatch.delenv("XSEQ_HOST_MARCH", raising=False)
    native = native_build.cached_path(compiler, "the same unit")
    assert native_build.cached_path(compiler, "the same unit", "native") == native
    monkeypatch.setenv("XSEQ_HOST_MARCH", "haswell")
    haswell = native_build.cached_path(compiler, "the same unit")
    assert haswell != native and haswell == native_build.cached_path(compiler, "the same unit", "haswell")
    assert native_build.cached_path(compiler, "the same unit", "x86-64-v4") not in (native, haswell)


def test_a_target_the_compiler_does_not_know_is_a_failed_build_with_its_reason(monkeypatch, reloaded, tmp_path):
    if COMPILER is None:
        pytest.skip("no C++ compiler ($CXX, g++, c++ or clang++) on PATH")
    monkeypatch.setenv("XSEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XSEQ_HOST_MARCH", "no-such-cpu")
    lib = host.library()
    assert lib.lib is None
    assert lib.reason.startswith(f"the host build with {COMPILER} for -march=no-such-cpu failed: ")
    assert "no-such-cpu" in lib.reason.split("failed: ")[1]


@needs_build
def test_a_library_whose_exp_did_not_vectorize_still_serves_adam(monkeypatch, reloaded):
    """What a clang build without libmvec was refused entirely for: now NumPy's steps, and the fused Adam step."""
    monkeypatch.setattr(native_library, "vector_math", lambda lib, data: False)
    lib = host.library()
    assert lib.lib is not None and not lib.on(STEP_KERNELS) and lib.on(FUSED_ADAM)
    assert "exp/tanh did not vectorize" in lib.reason  # what `xseq train` prints beside NumpyOps
    assert host.host_ops(NP, np.float32) is None and type(ops_for(NP, np.dtype(np.float32))) is NumpyOps
    said = host.status()
    assert said.startswith(f"NumPy in-place steps; host kernels unavailable: {lib.path}: exp/tanh did not vectorize")
    assert "on from the same library: " in said and "fused Adam" in said.split("on from the same library: ")[1]
    assert "lanes off: needs the step kernels (off)" in said and "softmax cross-entropy off: exp did not" in said
    if lanes_could_run():
        assert host.lanes_status() == "engine's loop (the host library's lanes are off: needs the step kernels (off))"

    rng = np.random.default_rng(0)
    p, g, m, v = (rng.standard_normal(7) for _ in range(4))
    v = np.abs(v)
    new_p, new_m, new_v = host.adam_step(p, g, m, v, 0.01, 0.9, 0.999, 1e-8, 3)
    want_m = 0.9 * m + 0.1 * g
    want_v = 0.999 * v + 0.001 * g * g
    np.testing.assert_allclose(new_m, want_m, rtol=1e-14)
    np.testing.assert_allclose(new_p, p - 0.01 * (want_m / (1 - 0.9**3)) / (np.sqrt(want_v / (1 - 0.999**3)) + 1e-8),
                               rtol=1e-13)
    z = rng.standard_normal((3, 5))
    assert host.softmax_xent_rows(z, np.zeros(5), np.array([0, 1, 2]), 1.0, None) is None  # NumPy's passes


@needs_build
def test_status_names_every_piece_that_is_off(monkeypatch, reloaded):
    """A library whose lane_job is not Python's: the steps run, the lanes do not, and status() says why."""
    planted = type("Planted", (ctypes.Structure,), {"_fields_": LaneJob._fields_[:-1]})
    monkeypatch.setitem(native_layout.SHARED_STRUCTS, "lane_job", planted)
    host._lanes_gate.cache_clear()
    try:
        said = host.status()
        assert said.startswith(f"host kernels (fused C++ steps) from {host.library().path} (")
        assert "lanes off: lane_job's field 37 is i1 at offset 296 (8 bytes) in C++ but nothing in Python" in said
        ops = host.host_ops(NP, np.float64)
        monkeypatch.setattr(host, "lane_count", lambda rows, n_a, gates, itemsize: 2)
        assert ops.direct_steps(np.float64, check=engine.check_direct, rows=16, n_a=5, gates=4) is None
        if lanes_could_run():
            assert host.lanes_status().startswith("engine's loop (the host library's lanes are off: lane_job's")
    finally:
        host._lanes_gate.cache_clear()


def test_status_without_fast_paths_or_library_is_unchanged(monkeypatch, reloaded):
    monkeypatch.setenv("XSEQ_FUSED", "0")
    assert host.status() == "array-API reference steps (XSEQ_FUSED=0)"
    monkeypatch.setenv("XSEQ_FUSED", "1")
    monkeypatch.setenv("XSEQ_HOST_KERNELS", "0")
    assert host.status() == "NumPy in-place steps; host kernels unavailable: turned off by XSEQ_HOST_KERNELS"
    assert host.features() == {}
    assert host.lanes_status().startswith("engine's loop")  # no library: no lanes, whatever OpenBLAS has


# ---------------------------------------------------------------- the native sources are real files

def test_the_translation_unit_includes_the_files_and_generates_only_the_kernels():
    source = native_source.host_source()
    assert source.startswith('#include "prelude.h"\n') and source.rstrip().endswith('#include "exports.cpp"')
    for name in ("extern \"C\" void xseq_lane_", "namespace xseq_packed", "struct lane_job", "xseq_adam_"):
        assert name not in source  # those live in the files, not in Python strings
    assert "extern \"C\" void xseq_lstm_forward_float(" in source  # the generated step kernels
    assert "struct kernels<double>" in source


def test_the_cache_key_covers_every_native_file(tmp_path, monkeypatch):
    copy = tmp_path / "native"
    shutil.copytree(native_source.NATIVE_DIR, copy)
    monkeypatch.setattr(native_source, "NATIVE_DIR", copy)
    compiler = COMPILER or "c++"
    before = native_build.cached_path(compiler, "the same unit")
    for path in sorted(copy.iterdir()):
        original = path.read_bytes()
        path.write_bytes(original + b"\n// one more line\n")
        assert native_build.cached_path(compiler, "the same unit") != before, path.name
        path.write_bytes(original)
    assert native_build.cached_path(compiler, "the same unit") == before
    (copy / "new.h").write_text("// a file the unit does not include yet\n")
    assert native_build.cached_path(compiler, "the same unit") != before


@needs_compiler
def test_a_compiler_message_names_the_files_own_line(tmp_path, monkeypatch):
    copy = tmp_path / "native"
    shutil.copytree(native_source.NATIVE_DIR, copy)
    monkeypatch.setattr(native_build, "INCLUDE_FLAGS", ("-I", str(copy)))
    lines = (copy / "packed.h").read_text().splitlines()
    at = next(k for k, line in enumerate(lines) if "constexpr int MR = tile_rows;" in line)
    lines[at] = lines[at].replace("constexpr int MR = tile_rows;", "constexpr int MR = not_declared_here;")
    (copy / "packed.h").write_text("\n".join(lines) + "\n")
    build = tmp_path / "build"
    build.mkdir()
    built, error = native_build.build(COMPILER, native_source.host_source(), build)
    assert built is None
    assert f"{copy / 'packed.h'}:{at + 1}:" in error and "not_declared_here" in error, error


@needs_compiler
@pytest.mark.parametrize("header", sorted(p.name for p in native_source.NATIVE_DIR.glob("*.h")))
def test_every_header_compiles_on_its_own(header, tmp_path):
    """What a linter or an editor sees: each header includes what it uses."""
    unit = tmp_path / "unit.cpp"
    unit.write_text(f'#include "{header}"\n')
    done = subprocess.run([COMPILER, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                           *native_build.INCLUDE_FLAGS, str(unit)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@needs_compiler
def test_a_non_editable_build_carries_the_sources_and_builds_from_them_where_installed(tmp_path):
    """What a wheel holds (setuptools' ``build_py``, with the package data): every native file, and the host
    build works from that copy alone."""
    pytest.importorskip("setuptools", reason="building the package needs setuptools (the build backend)")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(ROOT / "xseq", project / "xseq", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    installed = tmp_path / "installed"
    done = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                           "--build-lib", str(installed)], cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    carried = {p.name for p in (installed / "xseq" / "ops" / "native").iterdir()}
    assert carried == {p.name for p in native_source.native_files()}

    code = (
        "import pathlib, sys, tempfile\n"
        "from xseq.ops import native_build as b, native_source as s\n"
        "assert s.NATIVE_DIR.is_relative_to(pathlib.Path(sys.argv[1])), s.NATIVE_DIR\n"
        "built, error = b.build(b.find_compiler(), s.host_source(), pathlib.Path(tempfile.mkdtemp()))\n"
        "assert built is not None, error\n"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run([sys.executable, "-c", code, str(installed.resolve())], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
