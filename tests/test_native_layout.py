"""The structs the host library shares with Python (``xseq/ops/native_layout.py``): C++ reports their layout, and a
ctypes structure that differs from it in any field is refused before a byte of it reaches C++.

The library is the one xseq builds (``xseq.ops.host.library``); the mismatches are planted on the Python side
(a ctypes structure with a field moved, narrowed, dropped or added) and, in the C++, by a copy of the native
sources whose struct gained a field its layout table does not list.
"""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from xseq.engine import sequence as engine
from xseq.ops import host, native_build, native_layout, native_source
from xseq.ops.native_features import LANES, check_features
from xseq.ops.native_layout import LaneJob, layout_problem, native_layout as reported, python_layout

BUILT = host.library()
pytestmark = pytest.mark.skipif(BUILT.lib is None, reason=f"no host build on this machine: {BUILT.reason}")

INT, PTR = ctypes.c_int64, ctypes.c_void_p


def job_type(fields):
    """A ctypes structure with ``fields``: LaneJob's, changed by a test."""
    return type("PlantedJob", (ctypes.Structure,), {"_fields_": fields})


def changed(**how):
    """LaneJob's fields with one change: ``swap=(a, b)``, ``narrow=name``, ``drop=name`` or ``add=name``."""
    fields = list(LaneJob._fields_)
    names = [name for name, _ in fields]
    if "swap" in how:
        i, j = (names.index(name) for name in how["swap"])
        fields[i], fields[j] = fields[j], fields[i]
    if "narrow" in how:
        fields[names.index(how["narrow"])] = (how["narrow"], ctypes.c_int32)
    if "drop" in how:
        del fields[names.index(how["drop"])]
    if "add" in how:
        fields.append((how["add"], INT))
    return job_type(fields)


class Hiding:
    """The loaded library with some entry points hidden, as a build without them would be."""

    def __init__(self, lib, *hidden):
        self._lib, self._hidden = lib, set(hidden)

    def __getattr__(self, name):
        if name in self._hidden:
            raise AttributeError(name)
        return getattr(self._lib, name)


# ---------------------------------------------------------------- what C++ reports

def test_the_library_reports_lane_job_as_python_lays_it_out():
    size, fields = reported(BUILT.lib, "lane_job")
    assert (size, fields) == python_layout(LaneJob)
    assert [name for name, _, _ in fields] == [name for name, _ in LaneJob._fields_]
    assert size == ctypes.sizeof(LaneJob) == 38 * 8
    assert layout_problem(BUILT.lib, "lane_job", LaneJob) == ""


def test_an_unknown_struct_or_a_library_without_layouts_is_a_problem_not_a_guess():
    assert reported(BUILT.lib, "no_such_struct") is None
    assert "does not report the layout of no_such_struct" in layout_problem(BUILT.lib, "no_such_struct", LaneJob)
    assert "(xseq_layout)" in layout_problem(Hiding(BUILT.lib, "xseq_layout"), "lane_job", LaneJob)


# ---------------------------------------------------------------- planted mismatches are refused

@pytest.mark.parametrize("how, expected", [
    (dict(swap=("m", "n_a")),
     "lane_job's field 3 is m at offset 24 (8 bytes) in C++ but n_a at offset 24 (8 bytes) in Python"),
    (dict(narrow="kind"),
     "lane_job's field 1 is kind at offset 8 (8 bytes) in C++ but kind at offset 8 (4 bytes) in Python"),
    (dict(drop="hw_step"),
     "lane_job's field 26 is hw_step at offset 208 (8 bytes) in C++ but u0 at offset 208 (8 bytes) in Python"),
    (dict(add="extra"), "lane_job's field 38 is nothing in C++ but extra at offset 304 (8 bytes) in Python"),
], ids=["field-moved", "field-narrowed", "field-dropped", "field-added"])
def test_a_planted_mismatch_is_named(how, expected):
    assert layout_problem(BUILT.lib, "lane_job", changed(**how)).startswith(expected)


def test_the_same_fields_in_a_struct_of_another_size_are_refused(monkeypatch):
    """Padding at the end (an alignment of the C++ struct) changes no field: the sizes are compared too."""
    size, fields = reported(BUILT.lib, "lane_job")
    monkeypatch.setattr(native_layout, "native_layout", lambda lib, name: (size + 8, fields))
    assert layout_problem(BUILT.lib, "lane_job", LaneJob).startswith("lane_job is 312 bytes in C++ but 304 in Python")


def test_a_device_with_a_mismatched_job_refuses_to_be_made():
    class Planted(host.HostDevice):
        job_type = changed(swap=("m", "n_a"))

    blas, reason = host.numpy_openblas()
    if blas is None:
        pytest.skip(f"lanes need NumPy's bundled OpenBLAS: {reason}")
    with pytest.raises(ValueError, match="lanes cannot be used: lane_job's field 3 is m"):
        Planted(np.float64, BUILT.lib, blas)


def test_the_lanes_gate_closes_and_the_engine_keeps_its_loop(monkeypatch):
    """A mismatched struct turns the lanes off, with the difference as the reason; the other pieces stay on."""
    monkeypatch.setitem(native_layout.SHARED_STRUCTS, "lane_job", changed(drop="hw_step"))
    features = check_features(BUILT.lib, vectorized=True)
    assert not features[LANES].on and "field 26 is hw_step" in features[LANES].reason
    assert all(f.on for name, f in features.items() if name != LANES), features


def test_a_mismatched_device_is_never_run_by_the_engine(monkeypatch):
    """Past the gate (a device made for a check), the device itself refuses: a warning and the engine's loop."""
    blas, reason = host.numpy_openblas()
    if blas is None:
        pytest.skip(f"lanes need NumPy's bundled OpenBLAS: {reason}")
    monkeypatch.setattr(host.HostDevice, "job_type", changed(narrow="T"))
    monkeypatch.setattr(host, "_DEVICES", {})
    with pytest.warns(RuntimeWarning, match="lanes disabled for float64.*lane_job's field 2 is T"):
        assert host.host_device(np.float64, BUILT.lib, engine.check_direct) is None
    assert "not used for float64: ValueError: the host library's lanes cannot be used" in host.lanes_status()


# ---------------------------------------------------------------- the C++ side checks its own table

@pytest.fixture
def native_copy(tmp_path, monkeypatch):
    """A copy of ``xseq/ops/native/`` that the build includes instead of the package's (for planted changes)."""
    copy = tmp_path / "native"
    shutil.copytree(native_source.NATIVE_DIR, copy)
    monkeypatch.setattr(native_build, "INCLUDE_FLAGS", ("-I", str(copy)))
    return copy


def _build(tmp_path):
    compiler = native_build.find_compiler()
    out = tmp_path / "build"
    out.mkdir()
    return native_build.build(compiler, native_source.host_source(), out)


def test_a_field_added_to_the_struct_but_not_to_the_table_fails_the_build(native_copy, tmp_path):
    loops = native_copy / "loops.h"
    text = loops.read_text()
    assert "    int64_t xw_step, s_step," in text
    loops.write_text(text.replace("    int64_t xw_step, s_step,", "    int64_t extra;\n    int64_t xw_step, s_step,"))
    built, error = _build(tmp_path)
    assert built is None
    assert f"{native_copy / 'exports.cpp'}:" in error and "lane_job_fields must list every field" in error, error


def test_the_unchanged_copy_builds(native_copy, tmp_path):
    """The control of the test above: the same build from the unchanged copy succeeds."""
    built, error = _build(tmp_path)
    assert built is not None, error
