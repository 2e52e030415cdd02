"""The host library's entry points typed for ``ctypes``: the step kernels and the helpers, by dtype.

Each entry point is looked up and typed once per library (:func:`kernel`,
:func:`entry`); the caller's feature gate (:mod:`xseq.ops.native_features`)
has made sure it exists.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from .kernel_source import CTYPES, KERNELS


class HostKernel:
    """One kernel of the host library, called like ``cupy.ElementwiseKernel``: inputs, then outputs."""

    def __init__(self, lib, name):
        self.name = name
        params = KERNELS[name].parameters()
        self.names = [pname for pname, *_ in params]
        self.outputs = [is_output for _, _, _, is_output in params]
        self.is_int = [typ == "int32" for _, typ, _, _ in params]
        # the loop runs over the elements of the first non-raw array
        self.size_from = next(k for k, (_, typ, raw, _) in enumerate(params) if typ == "T" and not raw)
        self.functions = {}
        for dtype, ctype in CTYPES.items():
            fn = getattr(lib, f"{name}_{ctype}")
            fn.argtypes = [ctypes.c_int if is_int else ctypes.c_void_p for is_int in self.is_int]
            fn.argtypes += [ctypes.c_ssize_t]
            fn.restype = None
            self.functions[dtype] = fn

    def __call__(self, *args):
        dtype = args[self.size_from].dtype
        c_args = list(args)
        copies = []  # contiguous copies of strided inputs, alive until the call returns
        for k, a in enumerate(args):
            if self.is_int[k]:
                continue
            if a.dtype != dtype:
                raise TypeError(f"{self.name}: {self.names[k]} is {a.dtype}, the other arrays {dtype}")
            if not a.flags.c_contiguous:
                # The loop indexes every array linearly. Inputs may be copied; outputs are the
                # engine's step views, contiguous by construction.
                if self.outputs[k]:
                    raise ValueError(f"{self.name}: output {self.names[k]} is not C-contiguous")
                a = np.ascontiguousarray(a)
                copies.append(a)
            c_args[k] = address(a)
        self.functions[dtype](*c_args, args[self.size_from].size)


def address(a):
    """The address of a C-contiguous array's first element.

    Through the buffer protocol: a sixth of the time of ``a.ctypes.data``, which
    counts at several calls per time step. Read-only arrays do not export a
    writable buffer and take the slow way.
    """
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


@functools.lru_cache(maxsize=None)
def kernel(lib, name):
    """The :class:`HostKernel` ``name`` (a key of :data:`xseq.ops.kernel_source.KERNELS`) of ``lib``."""
    return HostKernel(lib, name)


_P, _N, _I = ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int

#: ``{helper: (argument types, result type)}``; ``"T"`` is the element type's scalar.
SIGNATURES = {
    "gather3": ([_P, _N, _N, _N, _P, _N, _N, _N, _N, _N], None),
    "softmax_rows": ([_P, _N, _N], None),
    "softmax_xent_rows": ([_P, _P, _P, _N, _N, "T", _I, _P], ctypes.c_double),
    "adam": ([_P] * 7 + [_N] + ["T"] * 6, None),
}


@functools.lru_cache(maxsize=None)
def entry(lib, name, dtype):
    """The helper ``name`` (a key of :data:`SIGNATURES`) of ``lib`` for ``dtype``, typed; None for other dtypes."""
    ctype = CTYPES.get(np.dtype(dtype))
    if ctype is None:
        return None
    scalar = ctypes.c_float if ctype == "float" else ctypes.c_double
    argtypes, restype = SIGNATURES[name]
    fn = getattr(lib, f"xseq_{name}_{ctype}")
    fn.argtypes, fn.restype = [scalar if a == "T" else a for a in argtypes], restype
    return fn
