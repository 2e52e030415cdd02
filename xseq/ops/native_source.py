"""The C++ of the host build: the files in ``xseq/ops/native/`` and the loops generated around the CUDA kernels.

The native code lives in real files shipped with the package (package data),
so that compiler messages, sanitizers and linters name their lines:

* ``prelude.h`` -- what NVRTC declares implicitly for the CUDA kernels (the
  qualifiers, the math functions' float/double overloads);
* ``vecmath.h`` -- ``exp`` and ``tanh`` of xseq's own, which g++ and clang
  vectorize alike (no libmvec): each namespace of kernel code takes them by a
  using-declaration (:func:`host_function`'s, ``xseq_helpers``);
* ``helpers.h`` -- the course layout's copy and the softmax of rows;
* ``onepass.h`` -- the projection loss's softmax cross-entropy and Adam's step,
  each in one pass over memory;
* ``packed.h`` -- the lanes' product by a weight packed once a loop;
* ``steps.h`` and ``loops.h`` -- the engine's time loops in C++ (the lanes');
* ``exports.cpp`` -- every C entry point but the step kernels', and the layout
  of each struct shared with Python (:mod:`xseq.ops.native_layout`).

The step kernels stay generated: :func:`host_function` wraps each CUDA
operation of :data:`xseq.ops.kernel_source.KERNELS` in a host loop over the
``(m, n_a)`` elements, the way ``cupy.ElementwiseKernel`` binds its
parameters, so that one source serves the GPU and the CPU. :func:`host_source`
is the translation unit the build compiles: the prelude, the generated loops,
the table that names them for ``loops.h`` by element type, then
``exports.cpp``, with ``-I`` :data:`NATIVE_DIR` (:data:`INCLUDE_FLAGS`).
The cache key covers every file of the folder (:func:`native_digest`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .kernel_source import CTYPES, KERNELS, elementwise_signature

#: The folder of the native sources (package data).
NATIVE_DIR = Path(__file__).resolve().parent / "native"
#: What the compile step is given so that the translation unit finds the files.
INCLUDE_FLAGS = ("-I", str(NATIVE_DIR))
#: The suffixes of the native sources (all of them count in the cache key).
SUFFIXES = (".h", ".hpp", ".cpp", ".cc", ".inc")


def host_function(name, src, ctype):
    """One kernel for one dtype: a loop over rows and columns around the CUDA operation.

    In a namespace of its own whose ``exp`` and ``tanh`` are ``vecmath.h``'s; the loop over a row's
    columns is marked independent (``XSEQ_IVDEP``, ``prelude.h``) so that g++ and clang vectorize it.
    Two entry points: ``{name}_{ctype}`` over every element (the step methods' call, the kernel's
    signature), and ``{name}_{ctype}_cols``, whose last four parameters (``rows``, ``stride``,
    ``col0``, ``col1``) replace ``_n``: columns ``col0 .. col1-1`` of ``rows`` rows of ``stride``
    elements (``n_a``), for a time loop whose lanes own the hidden units (``loops.h``).
    """
    params, bindings = elementwise_signature(name, src)
    names = [param.split()[-1] for param in params[:-1]]  # every parameter but _n, by name
    has_rows = any(pname == "n_a" for pname, *_ in src.parameters())
    cols = "n_a" if has_rows else "_n"
    head = ", ".join(params[:-1])
    return f"""
namespace k_{name}_{ctype} {{
typedef {ctype} T;
using xseq_vecmath::exp;
using xseq_vecmath::tanh;
{src.preamble}
extern "C" void {name}_{ctype}_cols({head}, const ptrdiff_t _rows, const ptrdiff_t _stride,
                                    const ptrdiff_t _col0, const ptrdiff_t _col1) {{
    for (ptrdiff_t _row = 0; _row < _rows; ++_row) {{
        // elements of one row are independent (outputs may alias inputs only element for element)
        XSEQ_IVDEP
        for (ptrdiff_t _col = _col0; _col < _col1; ++_col) {{
            const ptrdiff_t i = _row * _stride + _col;
            {bindings}
            {src.operation}
        }}
    }}
}}
extern "C" void {name}_{ctype}({", ".join(params)}) {{
    const ptrdiff_t _cols = {cols};
    {name}_{ctype}_cols({", ".join(names)}, _cols > 0 ? _n / _cols : 0, _cols, 0, _cols);
}}
}}
"""


def step_kernel_table(ctype):
    """``xseq_steps::kernels<ctype>`` (``steps.h``): each generated kernel by its name without ``xseq_``
    (``lstm_forward``), and its column-range entry (``lstm_forward_cols``)."""
    entries = "".join(
        f"    static constexpr auto& {name.removeprefix('xseq_')}{cols} = ::k_{name}_{ctype}::{name}_{ctype}{cols};\n"
        for name in KERNELS for cols in ("", "_cols")
    )
    return f"namespace xseq_steps {{\ntemplate <>\nstruct kernels<{ctype}> {{\n{entries}}};\n}}\n"


def host_source():
    """The translation unit of the host build: the files of :data:`NATIVE_DIR` and the generated step kernels."""
    return (
        '#include "prelude.h"\n#include "steps.h"\n'
        + "".join(host_function(name, src, ctype) for name, src in KERNELS.items() for ctype in CTYPES.values())
        + "".join(step_kernel_table(ctype) for ctype in CTYPES.values())
        + '#include "exports.cpp"\n'
    )


def native_files():
    """Every native source file of :data:`NATIVE_DIR`, sorted by name."""
    return sorted(p for p in NATIVE_DIR.iterdir() if p.suffix in SUFFIXES and p.is_file())


def native_digest():
    """A SHA-256 of every native source file's name and content: what the cache key adds to the generated text."""
    digest = hashlib.sha256()
    for path in native_files():
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
