"""The structs the host library shares with Python, and the check that both sides lay them out alike.

A ctypes structure restates a C++ struct by hand; a field moved on one side
only would make the C++ code read and write the wrong memory. So the library
reports each shared struct's size and every field's name, offset and size
(``xseq_layout`` in ``xseq/ops/native/exports.cpp``, whose table the
compiler checks against the struct), and :func:`layout_problem` compares
that with the ctypes structure before the struct is ever handed over: a
difference turns the feature that uses it off, with the difference as the
reason (:mod:`xseq.ops.native_features`).
"""

from __future__ import annotations

import ctypes


class LaneJob(ctypes.Structure):
    """One lane's loop, as ``xseq_loops::lane_job`` in ``xseq/ops/native/loops.h`` (same fields, same order)."""

    _fields_ = ([(name, ctypes.c_int64) for name in ("backward", "kind", "T", "m", "n_a")]
                + [(name, ctypes.c_void_p) for name in ("gemm", "xw", "s", "c", "g", "dy", "dz", "dhw", "w",
                                                        "b_hn", "hw", "dh", "dc", "work", "packed")]
                + [(name, ctypes.c_int64) for name in ("xw_step", "s_step", "c_step", "g_step", "dy_step",
                                                       "z_step", "hw_step", "u0", "u1")]
                + [("barrier", ctypes.c_void_p)]
                + [(name, ctypes.c_void_p) for name in ("x1", "w_ih", "b_in", "packed_in", "dx")]
                + [(name, ctypes.c_int64) for name in ("n_x", "i0", "i1")])


class LaneBarrier(ctypes.Structure):
    """Where lanes that share rows meet once a step, as ``xseq_loops::lane_barrier`` (each counter on a cache line);
    ``sleeps`` and ``slept_ns``: how often and how long its lanes slept waiting for a late one."""

    _fields_ = [("parties", ctypes.c_int64), ("pad0", ctypes.c_int64 * 7), ("count", ctypes.c_int64),
                ("pad1", ctypes.c_int64 * 7), ("phase", ctypes.c_int32), ("sleepers", ctypes.c_int32),
                ("sleeps", ctypes.c_int64), ("slept_ns", ctypes.c_int64), ("pad2", ctypes.c_int64 * 5)]


#: ``{C++ struct name: the ctypes structure that restates it}``: every struct shared with Python.
SHARED_STRUCTS = {"lane_job": LaneJob, "lane_barrier": LaneBarrier}


def native_layout(lib, name):
    """``(size, [(field, offset, size), ...])`` of the struct ``name`` as the library was compiled, or None.

    None where the library does not export its layouts (``xseq_layout``) or
    does not know ``name``.
    """
    describe = getattr(lib, "xseq_layout", None)
    if describe is None:
        return None
    describe.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_char_p),
                         ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64)]
    describe.restype = ctypes.c_int64
    field, offset, size = ctypes.c_char_p(), ctypes.c_int64(), ctypes.c_int64()
    fields = []
    while True:
        total = describe(name.encode(), len(fields), ctypes.byref(field), ctypes.byref(offset), ctypes.byref(size))
        if total < 0:
            return None
        if field.value is None:
            return total, fields
        fields.append((field.value.decode(), offset.value, size.value))


def python_layout(struct):
    """``(size, [(field, offset, size), ...])`` of a ctypes structure, in the order of its fields."""
    fields = [(name, getattr(struct, name).offset, getattr(struct, name).size) for name, *_ in struct._fields_]
    return ctypes.sizeof(struct), fields


def layout_problem(lib, name, struct):
    """``""`` where the ctypes ``struct`` lays out the library's struct ``name`` exactly, else what differs.

    Compares the sizes and, field by field in order, the names, offsets and
    sizes; the message names the first difference.
    """
    native = native_layout(lib, name)
    if native is None:
        return f"the library does not report the layout of {name} (xseq_layout)"
    (c_size, c_fields), (py_size, py_fields) = native, python_layout(struct)
    for k in range(max(len(c_fields), len(py_fields))):
        c = c_fields[k] if k < len(c_fields) else None
        py = py_fields[k] if k < len(py_fields) else None
        if c != py:
            def say(f):
                return "nothing" if f is None else f"{f[0]} at offset {f[1]} ({f[2]} bytes)"
            return (f"{name}'s field {k} is {say(c)} in C++ but {say(py)} in Python "
                    f"({struct.__module__}.{struct.__qualname__})")
    if c_size != py_size:
        return f"{name} is {c_size} bytes in C++ but {py_size} in Python ({struct.__module__}.{struct.__qualname__})"
    return ""
