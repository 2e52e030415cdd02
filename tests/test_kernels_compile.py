"""Compile every fused kernel with NVRTC, without a GPU.

``cupy.ElementwiseKernel`` compiles on first launch, so on a machine without
a GPU a typo in ``xseq.ops.kernel_source`` would go unnoticed until someone runs on
one. NVRTC (``cupy.cuda.nvrtc``, from the ``nvidia-cuda-nvrtc-cu12`` wheel)
needs no device, so this test compiles, for float and for double with the
options CuPy uses, each kernel's preamble and operation wrapped in a
standalone ``extern "C" __global__`` function that binds the parameters the
way ElementwiseKernel does -- ``typedef <type> T`` before the preamble,
``ptrdiff_t i`` the element index of a grid-stride loop, ``raw`` arrays as
pointers indexed with ``[]``, the others as references to element ``i``,
inputs const (``xseq.ops.kernel_source.raw_kernel_module``). That module is also
exactly what the direct loop (``DirectSteps`` on ``CupyDevice``) launches
with ``cupy.RawModule``; the whole of it compiles here too. Where CuPy's own code generator can be driven without a device
(it can in CuPy 13/14), a second test also compiles exactly the source that
``cupy.ElementwiseKernel`` would generate, CuPy headers included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xseq.ops.kernel_source import CTYPES as KERNEL_CTYPES
from xseq.ops.kernel_source import KERNELS, KernelSource, raw_kernel_module

CTYPES = tuple(KERNEL_CTYPES.values())  # "float", "double"


@pytest.fixture(scope="module")
def nvrtc():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed, so there is no NVRTC to compile with")
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # the NVRTC library itself is missing or broken
        pytest.skip(f"CuPy {cupy.__version__} is installed but NVRTC cannot be loaded: {exc}")
    return nvrtc


def device_function(name, src, ctype):
    """One kernel as a module of its own: exactly what the direct loop's ``cupy.RawModule`` compiles for it."""
    return raw_kernel_module(ctype, {name: src})


def compile_ptx(nvrtc, source, filename, extra_options=()):
    """PTX of ``source``; fails the test with NVRTC's log (and the source) on any compile error."""
    archs = nvrtc.getSupportedArchs() if hasattr(nvrtc, "getSupportedArchs") else (75,)
    arch = next((a for a in archs if a >= 75), archs[-1])
    # -ftz=true: CuPy compiles every kernel with it.
    options = [*extra_options, f"--gpu-architecture=compute_{arch}", "-ftz=true"]
    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            numbered = "\n".join(f"{n:3d}  {line}" for n, line in enumerate(source.splitlines(), 1))
            pytest.fail(f"NVRTC failed to compile {filename} ({exc}):\n{log}\n--- source ---\n{numbered}", pytrace=False)
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


@pytest.mark.parametrize("ctype", CTYPES)
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_compiles(nvrtc, name, ctype):
    ptx = compile_ptx(nvrtc, device_function(name, KERNELS[name], ctype), f"{name}_{ctype}.cu")
    assert f".entry {name}(" in ptx
    if ctype == "float":
        # A stray double literal or a double-only math call would silently
        # compute a float kernel in double, several times slower on most GPUs.
        assert ".f64" not in ptx, f"{name}: the float kernel does double-precision arithmetic"


@pytest.mark.parametrize("ctype", CTYPES)
def test_direct_module_compiles(nvrtc, ctype):
    """The module CupyDevice compiles: all six kernels, one element type, one preamble."""
    ptx = compile_ptx(nvrtc, raw_kernel_module(ctype), f"xseq_direct_{ctype}.cu")
    for name in KERNELS:
        assert f".entry {name}(" in ptx, name


def cupy_generated_source(name, src, dtype):
    """The module ElementwiseKernel would compile for ``src`` with C-contiguous (m, n_a) arguments.

    Uses CuPy internals (``cupy._core._kernel``), so any surprise there is a
    skip, not a failure: this is a second opinion on the standalone harness.
    """
    import numpy as np

    try:
        import cupy
        from cupy._core import _carray, _kernel, _scalar, core

        params = (
            _kernel._get_param_info(src.in_params, True)
            + _kernel._get_param_info(src.out_params, False)
            + _kernel._get_param_info("CIndexer _ind", False)
        )
        ndarray_kind, indexer_kind, scalar_kind = 1, 2, 3  # cupy/_core/_kernel.pxd: _ArgKind
        infos = []
        for p in params[:-1]:
            if p.ctype == "T":  # C-contiguous, so CuPy reduces the non-raw ones to 1-D; raw ones keep theirs
                infos.append(_kernel._ArgInfo(ndarray_kind, cupy.ndarray, np.dtype(dtype), 2 if p.raw else 1, True, True))
            else:
                infos.append(_kernel._ArgInfo(scalar_kind, _scalar.CScalar, p.dtype, 0, True, True))
        infos.append(_kernel._ArgInfo(indexer_kind, _carray.Indexer, None, 1, True, True))
        type_map = _kernel._TypeMap((("T", np.dtype(dtype)),))
        code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, params, src.operation, name, src.preamble)
        options = list(core.assemble_cupy_compiler_options(()))
    except Exception as exc:
        pytest.skip(f"CuPy's kernel code generator cannot be driven here ({type(exc).__name__}: {exc})")
    expected = ["CArray<", "CIndexer<"] + (["const int n_a"] if "n_a" in src.in_params else [])
    if not all(marker in code for marker in expected):
        pytest.skip("CuPy's kernel code generator produced an unexpected layout; its internals changed")
    return "#include <cupy/carray.cuh>\n" + code, options


@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_compiles_as_cupy_generates_it(nvrtc, name, dtype):
    source, options = cupy_generated_source(name, KERNELS[name], dtype)
    try:
        compile_ptx(nvrtc, source, f"{name}_{dtype}_cupy.cu", options)
    except pytest.fail.Exception as exc:
        if "cannot open source file" in str(exc):  # CuPy's headers need files this machine lacks
            pytest.skip(f"CuPy's headers do not compile here: {str(exc).splitlines()[1]}")
        raise


def test_compile_error_is_reported(nvrtc):
    """The harness really compiles: a broken operation fails with NVRTC's message."""
    broken = KernelSource("T xw, T hw", "T h", "h = tanh(xw + hw)  undeclared_name;")
    with pytest.raises(pytest.fail.Exception, match="undeclared_name"):
        compile_ptx(nvrtc, device_function("broken", broken, "float"), "broken.cu")


def test_registry_names_and_parameters():
    """Six kernels, named as launched; the parameter names ElementwiseKernel forbids or reserves are avoided."""
    assert set(KERNELS) == {f"xseq_{cell}_{way}" for cell in ("rnn", "lstm", "gru") for way in ("forward", "backward")}
    for name, src in KERNELS.items():
        names = [p[0] for p in src.parameters()]
        assert len(set(names)) == len(names), name
        assert not {"i", "_ind"} & set(names), name
        assert all(not n.startswith("_raw_") for n in names), name


def test_import_does_not_touch_cuda():
    """``import xseq`` and ``import xseq.ops.cuda`` must work, and stay cheap, on machines without CUDA."""
    code = "import sys, xseq, xseq.ops.cuda; assert 'cupy' not in sys.modules, 'cupy was imported'"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
