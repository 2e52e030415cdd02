"""The pieces of the host library, each with its own gate: one missing piece does not switch off the rest.

* ``step kernels`` -- NumPy's step methods (:class:`xseq.ops.host.HostFusedOps`);
  need vectorized exp/tanh;
* ``lanes`` -- the time loops on rows, one core each (:mod:`xseq.ops.lanes`);
  need the step kernels and ``lane_job`` laid out as Python's
  (:mod:`xseq.ops.native_layout`);
* ``packed products`` -- the lanes' products by a weight packed once a loop;
  need vector registers with a fused multiply-add, of a width they were
  measured faster than OpenBLAS at (:data:`PACKED_VECTOR_BYTES`) and no
  narrower than the CPU's (:func:`cpu_vector_bytes`);
* ``softmax cross-entropy`` -- the projection loss in one pass a row
  (:func:`xseq.ops.host_onepass.softmax_xent_rows`); needs vectorized exp;
* ``fused Adam`` -- Adam's step in one pass (:func:`xseq.ops.host_onepass.adam_step`).

Every feature also needs its entry points in the library. "Vector exp/tanh"
concerns only the pieces that call them: scalar ``tanhf`` is 40x slower than
NumPy's, so step kernels without vector math would be a loss, while Adam's
step (no exp) and the packed product (no math functions) are not affected.
The build's exp and tanh are ``xseq/ops/native/vecmath.h``'s own wherever the
target has a fused multiply-add (every aarch64, x86 from Haswell on), with
any compiler; only x86 builds without one fall back to the C library's,
vectorized where GCC and glibc's libmvec are there (:func:`vector_math`).
:func:`check_features` decides each gate once, when the library is loaded
(:func:`xseq.ops.native_library.library`); :func:`xseq.ops.host.status`
reports every feature that is off, with its reason.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

from .kernel_source import CTYPES, KERNELS
from .native_layout import SHARED_STRUCTS, layout_problem

STEP_KERNELS = "step kernels"
LANES = "lanes"
PACKED_PRODUCTS = "packed products"
SOFTMAX_XENT = "softmax cross-entropy"
FUSED_ADAM = "fused Adam"


@dataclass(frozen=True)
class Feature:
    """Whether one piece of the host library may be used (``on``) and, where not, why (``reason``)."""

    name: str
    on: bool
    reason: str = ""


def _typed(*names):
    return tuple(f"{name}_{ctype}" for name in names for ctype in CTYPES.values())


@dataclass(frozen=True)
class _Spec:
    """What a feature needs: its entry points, vector math, other features, shared structs, and a probe."""

    symbols: tuple
    vector_math: bool = False
    needs: tuple = ()
    structs: tuple = ()
    probe: object = None  # probe(lib) -> "" or why the build cannot serve the feature


#: The vector widths, in bytes (``xseq_packed_vector_bytes``: AVX-512 64, AVX2 with FMA 32, aarch64's NEON
#: 16), at which the packed product is used. 64 and 32 were measured faster than one-thread OpenBLAS at the
#: lanes' shapes (docs/decisions/016-packed-weight-product-avx512.md and its addendum); 16 (NEON) is checked
#: for correctness under qemu only (tests/test_native_targets.py), its speed unmeasured.
PACKED_VECTOR_BYTES = (64, 32, 16)


@functools.cache
def cpu_vector_bytes():
    """The widest vectors with a fused multiply-add of the CPU this process runs on, in bytes, or None.

    From the flags ``/proc/cpuinfo`` lists: 64 with AVX-512 (``avx512f``), 32 with AVX2 and FMA, 16 on
    aarch64 (``asimd``); None where the file does not tell (another system, another CPU).
    """
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return None
    flags = set(line.partition(":")[2].split())
    if "avx512f" in flags:
        return 64
    if {"avx2", "fma"} <= flags:
        return 32
    if "asimd" in flags:
        return 16
    return None


def _packed_probe(lib):
    width = lib.xseq_packed_vector_bytes
    width.argtypes, width.restype = [], ctypes.c_int
    found = width()
    if found == 0:
        return "the build has no vector registers with a fused multiply-add (AVX2, AVX-512, NEON) for it"
    if found not in PACKED_VECTOR_BYTES:
        kept = ", ".join(f"{8 * b}-bit" for b in PACKED_VECTOR_BYTES)
        return f"the build's vectors are {8 * found}-bit; the packed product is used with {kept} vectors only"
    cpu = cpu_vector_bytes()
    if cpu is not None and found < cpu:
        # Why: see docs/decisions/016-packed-weight-product-avx512.md (addendum)
        return (f"the build's {8 * found}-bit vectors are narrower than this CPU's {8 * cpu}-bit ones "
                "(XSEQ_HOST_MARCH): OpenBLAS, whose kernels are chosen for the CPU it runs on, is faster")
    return ""


#: Each feature's needs, in the order they are decided (a feature needs only features above it).
SPECS = {
    STEP_KERNELS: _Spec(_typed(*KERNELS, "xseq_gather3", "xseq_softmax_rows"), vector_math=True),
    LANES: _Spec(_typed("xseq_lane"), needs=(STEP_KERNELS,), structs=("lane_job", "lane_barrier")),
    PACKED_PRODUCTS: _Spec(_typed("xseq_pack", "xseq_packed_size") + ("xseq_packed_vector_bytes",),
                           probe=_packed_probe),
    SOFTMAX_XENT: _Spec(_typed("xseq_softmax_xent_rows"), vector_math=True),
    FUSED_ADAM: _Spec(_typed("xseq_adam")),
}

#: Why a feature that calls exp/tanh is off where the build did not vectorize them.
NO_VECTOR_MATH = {
    STEP_KERNELS: "exp/tanh did not vectorize (no fused multiply-add for vecmath.h, no libmvec); "
                  "NumPy's steps are faster",
    SOFTMAX_XENT: "exp did not vectorize (no fused multiply-add for vecmath.h, no libmvec); NumPy's passes are used",
}


def vector_math(lib, data):
    """Whether the loaded library ``lib``, whose bytes are ``data``, has vectorized exp and tanh.

    The one place that decides it for every piece of :data:`NO_VECTOR_MATH`:
    yes where its exp/tanh are ``vecmath.h``'s own (``xseq_vecmath_vector()``
    returns 1: a target with a fused multiply-add, any compiler), else where
    it calls glibc's libmvec (``_ZGV`` names in ``data``: GCC ``-ffast-math``
    on x86 without FMA, vecmath.h forwarding to the C library).
    """
    own = getattr(lib, "xseq_vecmath_vector", None)
    if own is not None:
        own.argtypes, own.restype = [], ctypes.c_int
        if own() == 1:
            return True
    return b"_ZGV" in data


def _missing(lib, symbols):
    missing = [name for name in symbols if not hasattr(lib, name)]
    if not missing:
        return ""
    more = f" and {len(missing) - 1} more entry points" if len(missing) > 1 else ""
    return f"the library lacks {missing[0]}{more}"


def check_features(lib, vectorized):
    """``{name: Feature}`` for the loaded library ``lib``; ``vectorized``: whether its exp/tanh vectorized."""
    features = {}
    for name in SPECS:
        features[name] = _decide(lib, name, vectorized, features)
    return features


def gate(lib, name, vectorized=True):
    """The :class:`Feature` ``name`` of ``lib`` alone, deciding only the features it needs on the way.

    For a library whose bytes are not at hand: ``vectorized`` says whether
    its exp/tanh vectorized (True for one whose step kernels are in use;
    irrelevant to :data:`PACKED_PRODUCTS`, which calls no math function).
    """
    features = {}
    for need in _needs(name):
        features[need] = _decide(lib, need, vectorized, features)
    return _decide(lib, name, vectorized, features)


def _needs(name):
    """Every feature ``name`` needs, directly or not, in the order of :data:`SPECS`."""
    found = set()
    todo = list(SPECS[name].needs)
    while todo:
        need = todo.pop()
        if need not in found:
            found.add(need)
            todo += SPECS[need].needs
    return [need for need in SPECS if need in found]


def _decide(lib, name, vectorized, decided):
    """The gate of ``name``, the features it needs being ``decided`` already."""
    spec = SPECS[name]
    reason = _missing(lib, spec.symbols)
    if not reason and spec.vector_math and not vectorized:
        reason = NO_VECTOR_MATH[name]
    for need in spec.needs:
        if not reason and not decided[need].on:
            reason = f"needs the {need} (off)"
    for struct in spec.structs:
        reason = reason or layout_problem(lib, struct, SHARED_STRUCTS[struct])
    if not reason and spec.probe is not None:
        reason = spec.probe(lib)
    return Feature(name, not reason, reason)


def off_features(features):
    """``"name: reason; ..."`` for every feature that is off, or ``""``."""
    return "; ".join(f"{f.name} off: {f.reason}" for f in features.values() if not f.on)
