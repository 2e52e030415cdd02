"""The fused step kernels of :mod:`xseq.ops.kernel_source` built for the CPU, and what NumPy's arrays get of them.

NumPy runs a step's pointwise work as about ten passes over memory (see
:mod:`xseq.ops.numpy_inplace`); the CUDA operation strings in
:data:`xseq.ops.kernel_source.KERNELS` do it in one. They are plain C++ once
the CUDA qualifiers are defined away, so the host build wraps each in a host
loop over the ``(m, n_a)`` elements, the way ``cupy.ElementwiseKernel`` binds
its parameters, compiles them for float and double into one shared library
and calls it through ``ctypes``: the same kernel source serves the GPU and the
CPU. This module holds the ops class (:class:`HostFusedOps`), the choice of
lanes and the status lines; the other jobs have modules of their own:

* :mod:`xseq.ops.native_source` -- the C++: the files of ``xseq/ops/native/``
  (package data) and the loops generated around the CUDA kernels;
* :mod:`xseq.ops.native_build` -- the compiler, its flags, the build and the cache key;
* :mod:`xseq.ops.kernel_cache` -- the cache and how far it is trusted
  (docs/decisions/006-kernel-cache-trust.md);
* :mod:`xseq.ops.native_library` -- :func:`library`: built or found, loaded once;
* :mod:`xseq.ops.native_features` -- each piece's own gate: step kernels,
  lanes, packed products, softmax cross-entropy, fused Adam;
* :mod:`xseq.ops.native_layout` -- the structs shared with C++, checked at load;
* :mod:`xseq.ops.native_bindings` -- the entry points typed for ``ctypes``;
* :mod:`xseq.ops.host_onepass` -- the softmax cross-entropy and Adam in one pass;
* :mod:`xseq.ops.openblas` and :mod:`xseq.ops.lanes` -- NumPy's OpenBLAS and
  the time loops on its threads;
* :mod:`xseq.ops.runtime` -- the one owner of the lanes, OpenBLAS's thread
  count and the packed weights (:func:`xseq.cpu_runtime`).

Build and use
-------------
* Built on the first NumPy sequence call that wants it (never at import),
  ``-O3 -march=native -ffast-math`` (``-march=$XSEQ_HOST_MARCH`` where set) so
  that the loops vectorize, ``exp`` and ``tanh`` included: they are the
  build's own (``xseq/ops/native/vecmath.h``), with g++ or clang, on x86 with
  FMA and on aarch64; glibc's libmvec serves only x86 CPUs without FMA. Cached
  by a hash of the sources, the flags, the compiler's version and the CPU.
* The step kernels are used only where the library came out with vectorized
  math (:func:`xseq.ops.native_features.vector_math`): scalar ``tanhf`` is 40x
  slower than NumPy's. Adam's step and the packed product need no math
  functions and keep their own gates.
* Anything missing (no compiler, a failed build, math not vectorized, a
  dtype other than float32/float64) leaves NumPy's in-place steps in charge;
  :func:`status` says which path is active, which pieces are off, and why.
  ``XSEQ_HOST_KERNELS=0`` (read once, at the first NumPy sequence call)
  turns the build off, ``XSEQ_FUSED=0`` every fast path.

Numerics: the reference's formulas in the same order, with the C library's
``exp``/``tanh`` and fast-math rounding: within a few ulps of the reference
(``tests/test_host_kernels.py``); NaN and infinities still propagate, and
subnormals are kept.
"""

from __future__ import annotations

import functools

import array_api_compat.numpy as xp_numpy
import numpy as np

from .fused import FusedSteps, checked_once
from .host_onepass import adam_step, softmax_xent_rows
from .kernel_cache import cache_dir
from .kernel_source import CTYPES
from .lanes import (
    MAX_LANE_WEIGHT_BYTES,
    MAX_LANES,
    MIN_LANE_ROWS,
    MIN_LANE_UNITS,
    HostDevice,
    LaneSteps,
    UnitSteps,
    lane_count,
    packed_products,
    row_blocks,
    unit_blocks,
    unit_lane_count,
)
from .native_bindings import HostKernel, entry, kernel
from .native_build import FLAG_SETS, cached_path, find_compiler
from .native_features import LANES, PACKED_PRODUCTS, STEP_KERNELS, Feature, gate, off_features
from .native_library import library
from .native_source import host_function, host_source
from .numpy_inplace import NumpyOps
from .openblas import numpy_openblas
from .runtime import cpu_runtime
from .switches import fused_enabled, onednn_requested

__all__ = [
    "FLAG_SETS", "MAX_LANES", "MAX_LANE_WEIGHT_BYTES", "MIN_LANE_ROWS", "MIN_LANE_UNITS", "Feature", "HostDevice",
    "HostFusedOps", "HostKernel", "LaneSteps", "UnitSteps", "adam_step", "cache_dir", "cached_path", "features",
    "find_compiler", "host_device", "host_function", "host_ops", "host_source", "lane_count", "lanes_status", "library",
    "numpy_openblas", "packed_products", "row_blocks", "softmax_xent_rows", "status", "unit_blocks", "unit_lane_count",
]


def features():
    """``{name: Feature}``: each piece of the host library, whether it is on and why not (empty without one)."""
    return dict(library().features)


def status():
    """Which step implementation NumPy arrays get, and why: a line for humans.

    With a library, every piece of it that is off is named with its reason
    (:func:`features`); a line with nothing to report names the library only.
    """
    if not fused_enabled():
        return "array-API reference steps (XSEQ_FUSED=0)"
    lib = library()
    if lib.lib is None:
        return f"NumPy in-place steps; host kernels unavailable: {lib.reason}"
    if not lib.on(STEP_KERNELS):
        # lib.reason says why the step kernels are off; the rest of the library may still serve
        on = ", ".join(f.name for f in lib.features.values() if f.on)
        off = off_features({name: f for name, f in lib.features.items() if name != STEP_KERNELS})
        return "; ".join(note for note in (f"NumPy in-place steps; host kernels unavailable: {lib.reason}",
                                           f"on from the same library: {on}" if on else "", off) if note)
    off = off_features(lib.features)
    loaded = f"host kernels (fused C++ steps) from {lib.path}"
    notes = "; ".join(note for note in (lib.reason, off) if note)
    return f"{loaded} ({notes})" if notes else loaded


# Why: see docs/decisions/004-host-kernels.md
class HostFusedOps(FusedSteps, NumpyOps):
    """NumPy's ops with every step one call of a host-compiled kernel.

    Buffers, products and everything but the six step methods are NumPy's
    (:class:`xseq.ops.numpy_inplace.NumpyOps`); the step methods are
    :class:`xseq.ops.fused.FusedSteps`', the same launches the GPU makes.
    Unmasked sequences large enough to share take their time loops from
    :meth:`direct_steps`: the rows split over lanes, one core each
    (:class:`LaneSteps`). ``lanes`` is None for that choice, False for never,
    or a :class:`LaneSteps` (the check's).
    """

    name = "host-kernels"

    def __init__(self, xp, lib, lanes=None):
        super().__init__(xp)
        self._lib = lib
        self._lanes = lanes

    def direct_steps(self, dtype, device=None, check=None, rows=None, n_a=None, gates=None):
        """The time loop in C++ for a sequence of ``rows`` examples of ``n_a`` units, or None for the engine's loop.

        :class:`LaneSteps` where the rows split over lanes (:func:`lane_count`);
        else :class:`UnitSteps` where the units do (:func:`unit_lane_count`: one
        sequence at a time, or a recurrent weight too large for every lane to
        read whole); else, where NumPy's OpenBLAS has one thread
        (:meth:`xseq.ops.runtime.CPURuntime.one_lane`), one lane on the calling
        thread. ``check(device, xp, ops)`` proves a new :class:`HostDevice`
        against the step methods (the engine's ``check_direct``); without one,
        or where the library's lanes are off (:func:`features`), the engine
        keeps its loop.
        """
        if self._lanes is not None:
            return self._lanes or None
        if check is None or rows is None or n_a is None or gates is None:
            return None
        if self.gemm is not None:  # the products go to another library (oneDNN): one thread pool, not two
            return None
        lanes = lane_count(rows, n_a, gates, np.dtype(dtype).itemsize)
        units = unit_lane_count(n_a) if lanes < 2 else 1
        if max(lanes, units) < 2 and not cpu_runtime().one_lane():
            return None
        if not _lanes_gate(self._lib).on:
            return None
        device = host_device(dtype, self._lib, check)
        if device is None:
            return None
        if units >= 2:
            return UnitSteps(device, units)
        return LaneSteps(device, lanes)  # lanes of rows, or one lane: the whole loop on this thread

    def _launch(self, name, *args):
        kernel(self._lib, name)(*args)

    def _step_array(self, key, like):
        return self._buffer(key, like.shape, like.dtype)

    def copy_into(self, out, x):
        gather3 = entry(self._lib, "gather3", x.dtype)
        itemsize = x.dtype.itemsize
        if (
            gather3 is None or x.ndim != 3 or x.flags.c_contiguous or out.dtype != x.dtype
            or out.shape != x.shape or out.strides[2] != itemsize
            or any(stride % itemsize for stride in x.strides + out.strides)
        ):
            return super().copy_into(out, x)
        s0, s1, s2 = (stride // itemsize for stride in x.strides)
        d0, d1 = (stride // itemsize for stride in out.strides[:2])
        gather3(x.ctypes.data, s0, s1, s2, out.ctypes.data, d0, d1, *x.shape)
        return out

    def softmax_rows(self, z):
        softmax = entry(self._lib, "softmax_rows", z.dtype)
        if softmax is None or z.ndim != 2 or not z.flags.c_contiguous or z.shape[1] == 0:
            return super().softmax_rows(z)
        softmax(z.ctypes.data, z.shape[0], z.shape[1])
        return z


@functools.lru_cache(maxsize=None)
def _lanes_gate(lib):
    """The lanes' :class:`~xseq.ops.native_features.Feature` for ``lib``, whose step kernels are in use."""
    return gate(lib, LANES)


def host_ops(xp, dtype):
    """``HostFusedOps`` for arrays of ``dtype``, or None where the host kernels cannot serve them."""
    if dtype is None or np.dtype(dtype) not in CTYPES:
        return None
    lib = library()
    return HostFusedOps(xp, lib.lib) if lib.on(STEP_KERNELS) else None


#: ``(dtype name, host library) -> (HostDevice or None, reason)``: built and checked once each.
_DEVICES = {}


def host_device(dtype, lib, check):
    """The checked :class:`HostDevice` for ``dtype``, or None (the reason in :func:`lanes_status`).

    ``check(device, xp, ops)`` runs small sequences of each cell through two
    lanes and through the step methods and raises if they differ (the
    engine's ``check_direct``). A failure keeps the engine's loop, with a
    ``RuntimeWarning`` once.
    """
    dtype = np.dtype(dtype)

    def build():
        blas, reason = numpy_openblas()
        if blas is None:
            raise RuntimeError(reason)
        device = HostDevice(dtype, lib, blas)
        plain = HostFusedOps(xp_numpy, lib, lanes=False)
        for lanes in (LaneSteps(device, 2), UnitSteps(device, 2)):  # rows split, units split
            check(device, xp_numpy, (plain, HostFusedOps(xp_numpy, lib, lanes=lanes)))
        return device

    return checked_once(_DEVICES, (dtype.name, lib), build, "time-loop lanes", "the engine's loop")


def lanes_status():
    """How NumPy's unmasked time loops run, and why: a line for humans.

    "engine's loop (reason)" wherever no loop can run in lanes: every fast
    path off, no host library or its lanes off, ``XSEQ_LANES=0`` or
    ``lanes=1`` (:func:`xseq.cpu_runtime`), no NumPy OpenBLAS. "one lane"
    where NumPy's OpenBLAS has one thread (the loops run whole in C++ on
    the calling thread). Otherwise the most lanes a loop gets, their products and size
    rule, how loops of several Python threads share them and how many ran
    which way so far (:meth:`xseq.ops.runtime.CPURuntime.status`), and any
    dtype whose check refused the lanes.
    """
    if not fused_enabled():
        return "engine's loop (the array-API reference steps: XSEQ_FUSED=0)"
    lib = library()
    if lib.lib is None:
        return f"engine's loop (no host library: {lib.reason})"
    if not lib.on(LANES):
        return f"engine's loop (the host library's lanes are off: {lib.features[LANES].reason})"
    runtime = cpu_runtime()
    limit, reason = runtime.lane_limit()
    failed = sorted({f"{dtype}: {why}" for (dtype, _), (device, why) in _DEVICES.items() if device is None})
    products = ("xseq's products with W_hh packed once a loop" if lib.on(PACKED_PRODUCTS)
                else "one-thread OpenBLAS products")
    if limit < 2:
        if not runtime.one_lane():
            return f"engine's loop ({reason})"
        notes = [f"one lane: every unmasked loop whole in C++ on the calling thread, {products} ({reason})"]
        if failed:
            notes.append(f"not used for {'; '.join(failed)}")
        return "; ".join(notes)
    lanes = f"up to {limit} lanes on NumPy's OpenBLAS threads"
    rule = (f"(lanes of rows where W_hh is at most {MAX_LANE_WEIGHT_BYTES >> 20} MiB, at least {MIN_LANE_ROWS} "
            f"rows a lane; else lanes of units, at least {MIN_LANE_UNITS} units a lane)")
    notes = [f"{lanes}, {products} {rule}", runtime.status()]
    if onednn_requested():
        notes.append("float32 sequences whose products oneDNN takes (XSEQ_ONEDNN=1 and installed: "
                     "xseq.ops.blas.status()) keep the engine's loop")
    if failed:
        notes.append(f"not used for {'; '.join(failed)}")
    return "; ".join(notes)
