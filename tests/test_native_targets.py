"""The host build on other machines than the one it was tuned on: clang++, another target (``XSEQ_HOST_MARCH``),
and aarch64, cross-compiled and run under qemu-user.

* ``clang++`` (no libmvec) and ``XSEQ_HOST_MARCH=haswell`` (AVX2, with g++ and with clang++), and the default
  build for comparison: each built in a subprocess of its own against a private cache (``XSEQ_CACHE_DIR``),
  the way a user's process builds it. The library must load with every feature on (the packed product unless
  its vectors are narrower than the CPU's, :func:`xseq.ops.native_features.cpu_vector_bytes`), its exp/tanh
  vecmath.h's own (no libm or libmvec call, no approximate reciprocal on x86), and every cell's forward and
  backward through the step kernels and through two lanes, with the packed products and with OpenBLAS's, must
  agree with the array-API reference (float32 and float64).
* aarch64 (``aarch64-linux-gnu-g++ -O3 -march=armv8-a -ffast-math``): the whole translation unit of the host
  build (:func:`xseq.ops.native_source.host_source` and the native folder) compiled and linked as the shared
  library the build makes, which must export every entry point the features need and call no exp/tanh of the
  C library; and the same object linked into ``tests/native/kernel_check.cpp`` (a static executable) run under
  ``qemu-aarch64``: each step kernel, the packed product (whole and partial panels and tiles) and the lanes'
  time loops with packed weights, one lane of rows and lanes of units on threads of their own (meeting at their
  spin barrier each step: ARM's weak memory order is where a missing fence would show), against NumPy and the
  array-API reference on the same inputs.

A missing compiler or emulator, or a CPU that cannot run AVX2 code, is a visible skip; CI's full run (where
skips fail) installs ``clang``, ``g++-aarch64-linux-gnu`` and ``qemu-user``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import array_api_compat.numpy as xp
import numpy as np
import pytest

from xseq.ops import native_build, native_features, native_source
from xseq.ops.native_features import PACKED_PRODUCTS, PACKED_VECTOR_BYTES, SPECS
from xseq.ops.reference import ArrayAPIOps

ROOT = Path(__file__).resolve().parent.parent
HARNESS = Path(__file__).resolve().parent / "native" / "kernel_check.cpp"
X86 = platform.machine().lower() in ("x86_64", "amd64")
INSTALL = "apt-get install clang g++-aarch64-linux-gnu qemu-user"
AARCH64_CXX = "aarch64-linux-gnu-g++"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
AARCH64_FLAGS = ("-O3", "-march=armv8-a", "-ffast-math")
QEMU = ("qemu-aarch64", "-L", AARCH64_SYSROOT)
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SAVED = {"rnn": 0, "lstm": 4, "gru": 4}
# float32: the RNN's gradients grow through time and rounding with them (see tests/test_lanes.py); a wrong
# product, offset or formula is an O(1) error.
LOOP_TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-12}


def cpu_flags():
    """The flags /proc/cpuinfo lists for this CPU (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split(":")[-1].split())
    except OSError:
        return set()


def run_tool(cmd, **kwargs):
    """``cmd``'s standard output; the test fails with its error output where it fails."""
    done = subprocess.run(cmd, capture_output=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stderr!r}"
    return done.stdout


def largest_error(got, want):
    """``max |got - want| / max(1, max |want|)`` over every array of two dicts with the same keys."""
    assert got.keys() == want.keys()
    worst = 0.0
    for key in want:
        assert got[key].shape == want[key].shape, key
        scale = max(1.0, float(np.abs(want[key]).max(initial=0.0)))
        worst = max(worst, float(np.abs(got[key] - want[key]).max(initial=0.0)) / scale)
    return worst


# ---------------------------------------------------------------- clang++ and XSEQ_HOST_MARCH, in a subprocess

# What the subprocess runs: the build as a user's process makes it, its features, and every cell through the
# step kernels and through two lanes (with the packed products and with OpenBLAS's) against the array-API
# reference.
TARGET_CHECK = textwrap.dedent("""
    import json
    import array_api_compat.numpy as xp
    import numpy as np
    from xseq.ops import host
    from xseq.ops.reference import ArrayAPIOps
    from tests.helpers import engine_sequence
    from tests.test_native_targets import largest_error

    lib = host.library()
    out = {"path": str(lib.path), "reason": lib.reason, "status": host.status(),
           "features": {name: [f.on, f.reason] for name, f in lib.features.items()}}
    if lib.lib is not None:
        out["vecmath_vector"] = lib.lib.xseq_vecmath_vector()
        out["packed_vector_bytes"] = lib.lib.xseq_packed_vector_bytes()
        blas, _ = host.numpy_openblas()
        out["numpy_openblas"] = blas is not None  # the lanes run on NumPy's OpenBLAS (NumPy 1.26's is not found)
        errors = {}
        for dtype in (np.float32, np.float64):
            if blas is not None:
                out["packed_" + np.dtype(dtype).name] = host.HostDevice(dtype, lib.lib, blas).packed
            for kind in ("rnn", "lstm", "gru"):
                shape = dict(m=19, n_a=40, n_x=33, dtype=dtype)  # 2 lanes of 10 and 9 rows, partial panels
                want = engine_sequence(kind, ArrayAPIOps(xp), **shape)
                name = f"{kind} {np.dtype(dtype).name}"
                steps = engine_sequence(kind, host.HostFusedOps(xp, lib.lib, lanes=False), **shape)
                errors[name + " steps"] = largest_error(steps, want)
                for packed in (True, False) if blas is not None else ():  # both of the lanes' products
                    device = host.HostDevice(dtype, lib.lib, blas, packed=packed)
                    lanes = host.HostFusedOps(xp, lib.lib, lanes=host.LaneSteps(device, 2))
                    got = engine_sequence(kind, lanes, **shape)
                    errors[name + (" lanes, packed" if packed else " lanes, OpenBLAS")] = largest_error(got, want)
        out["errors"] = errors
    print(json.dumps(out))
""")


def build_and_check(tmp_path, compiler, march=None):
    """Run :data:`TARGET_CHECK` with ``CXX=compiler`` (and ``XSEQ_HOST_MARCH=march``) against a private cache."""
    env = {**os.environ, "CXX": compiler, "XSEQ_CACHE_DIR": str(tmp_path / "cache"), "XSEQ_FUSED": "1",
           "XSEQ_HOST_KERNELS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("XSEQ_HOST_MARCH", None)
    if march is not None:
        env["XSEQ_HOST_MARCH"] = march
    done = subprocess.run([sys.executable, "-c", TARGET_CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def math_calls(library, nm="nm"):
    """The C library's exp/tanh and glibc's vector functions (``_ZGV``) that the shared ``library`` calls."""
    if shutil.which(nm) is None:
        pytest.skip(f"{nm} is not installed (binutils)")
    undefined = run_tool([nm, "-D", "--undefined-only", str(library)], text=True).split()
    names = {word.split("@")[0] for word in undefined}
    return sorted(n for n in names if n in {"exp", "expf", "tanh", "tanhf"} or n.startswith("_ZGV"))


def approximate_reciprocals(library):
    """How many x86 approximate-reciprocal instructions (``vrcp14ps``, ``rcpps``, ...) the shared ``library`` has."""
    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed (binutils)")
    code = run_tool(["objdump", "-d", "--no-show-raw-insn", str(library)], text=True)
    return sum(1 for line in code.splitlines() if "rcp" in line.split("\t")[-1].split(" ")[0])


#: Where the step kernels' exp/tanh vectorized: packed single-precision multiply-adds in the function's code.
PACKED_FMA = {"x86": r"vfmadd\d+ps\s.*%[yz]mm", "aarch64": r"fmla\s+v\d+\.4s"}


def packed_fmas(library, function, objdump="objdump", isa="x86"):
    """How many packed float multiply-adds ``function`` of the shared ``library`` has (0: a scalar loop)."""
    if shutil.which(objdump) is None:
        pytest.skip(f"{objdump} is not installed (binutils)")
    code = run_tool([objdump, "-d", "--no-show-raw-insn", f"--disassemble={function}", str(library)], text=True)
    return len(re.findall(PACKED_FMA[isa], code))


def can_run_avx2():
    """Why this machine cannot build and run ``-march=haswell`` code, or None."""
    if not X86:
        return f"-march=haswell is an x86 target; this machine is {platform.machine()}"
    missing = {"avx2", "fma", "bmi2", "f16c"} - cpu_flags()
    return f"this CPU lacks {', '.join(sorted(missing))}: it cannot run -march=haswell code" if missing else None


TARGETS = {
    "g++-native": ("g++", None),  # the default build, built the same way for comparison
    "clang++-native": ("clang++", None),
    "g++-haswell": ("g++", "haswell"),
    "clang++-haswell": ("clang++", "haswell"),
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_build_for_another_compiler_or_target_has_every_feature_and_agrees_with_the_reference(target, tmp_path):
    compiler, march = TARGETS[target]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed ({INSTALL})")
    if march == "haswell" and can_run_avx2():
        pytest.skip(can_run_avx2())
    if march is None and X86 and not {"fma", "sse4_1"} <= cpu_flags():
        pytest.skip("this CPU has no FMA3: vecmath.h falls back to the C library's exp/tanh here (vectorized by "
                    "g++ through libmvec only, never by clang); this test is about vecmath.h's builds")
    got = build_and_check(tmp_path, compiler, march)
    assert got["path"] and Path(got["path"]).parent == tmp_path / "cache", got["reason"]
    built = Path(got["path"]).read_bytes()
    assert (b"clang version" in built) == (compiler == "clang++")  # the compiler asked for built it (.comment)
    # every piece on; the packed product but where its vectors are narrower than the CPU's (an AVX2 build on an
    # AVX-512 CPU: OpenBLAS's products are faster there)
    narrower = native_features.cpu_vector_bytes() is not None and (
        got["packed_vector_bytes"] < native_features.cpu_vector_bytes())
    packed_on, packed_reason = got["features"][PACKED_PRODUCTS]
    assert packed_on == (not narrower) and ("narrower than this CPU's" in packed_reason) == narrower
    assert all(on for name, (on, _) in got["features"].items() if name != PACKED_PRODUCTS), got["features"]
    off = f" (packed products off: {packed_reason})" if narrower else ""  # nothing else to say
    assert got["status"] == f"host kernels (fused C++ steps) from {got['path']}{off}"
    # exp/tanh are vecmath.h's, inline (no libmvec: clang has none; no scalar calls); the packed product has
    # the target's width
    assert got["vecmath_vector"] == 1 and math_calls(got["path"]) == []
    if X86:  # divisions are IEEE (g++ -mno-recip, clang -mrecip=none): sigmoid(100) is 1, not 1 - 2^-24
        assert approximate_reciprocals(got["path"]) == 0
        # the kernels with raw pointers vectorized too (clang ignores GCC's ivdep: XSEQ_IVDEP); their loops are in
        # the column-range entries, which the whole-array entries call
        for function in ("xseq_lstm_forward_float_cols", "xseq_gru_forward_float_cols",
                         "xseq_lstm_backward_float_cols"):
            assert packed_fmas(got["path"], function) > 0, function
    if march == "haswell":
        assert got["packed_vector_bytes"] == 32
    elif X86:
        assert got["packed_vector_bytes"] == (64 if "avx512f" in cpu_flags() else 32)
    assert got["packed_vector_bytes"] in PACKED_VECTOR_BYTES
    if got["numpy_openblas"]:
        assert got["packed_float32"] == got["packed_float64"] == packed_on
    for what, error in got["errors"].items():
        assert error < (1e-4 if "float32" in what else 1e-12), f"{target}, {what}: {error:.2e}"


@pytest.mark.skipif(not X86, reason="x86-64-v2 (no FMA) is an x86 target; every aarch64 has a fused multiply-add")
def test_a_target_without_fma_keeps_the_step_kernels_through_glibcs_libmvec(tmp_path):
    """``XSEQ_HOST_MARCH=x86-64-v2`` with g++: vecmath.h forwards to the C library, which GCC vectorizes through
    libmvec (``_ZGV`` calls), so the step kernels stay on; the packed product has no vector multiply-add."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    got = build_and_check(tmp_path, "g++", "x86-64-v2")
    assert got["vecmath_vector"] == 0 and got["packed_vector_bytes"] == 0
    assert any(name.startswith("_ZGV") for name in math_calls(got["path"]))
    off = {name: reason for name, (on, reason) in got["features"].items() if not on}
    assert off == {PACKED_PRODUCTS: "the build has no vector registers with a fused multiply-add (AVX2, AVX-512, "
                                    "NEON) for it"}
    for what, error in got["errors"].items():
        assert error < (1e-4 if "float32" in what else 1e-12), f"x86-64-v2, {what}: {error:.2e}"


def test_a_target_name_is_checked_before_any_compiler_runs(tmp_path):
    env = {**os.environ, "XSEQ_CACHE_DIR": str(tmp_path / "cache"), "XSEQ_HOST_MARCH": "native -O0"}
    done = subprocess.run([sys.executable, "-c", "from xseq.ops import host; host.library()"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ValueError: XSEQ_HOST_MARCH is 'native -O0'; expected a target name for -march=" in done.stderr
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- aarch64: cross-compiled, run under qemu-user


def aarch64_missing():
    """Why the aarch64 build cannot be made and run here, or None."""
    for tool in (AARCH64_CXX, QEMU[0]):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({INSTALL})"
    if not Path(AARCH64_SYSROOT).is_dir():
        return f"{AARCH64_SYSROOT} is missing: the aarch64 C library ({INSTALL})"
    return None


class Aarch64:
    """The aarch64 builds: the shared library as the host build links it, and the harness linked with it."""

    def __init__(self, directory):
        unit, obj = directory / "kernels.cpp", directory / "kernels.o"
        unit.write_text(native_source.host_source())
        common = (AARCH64_CXX, "-std=c++17", *AARCH64_FLAGS, *native_build.INCLUDE_FLAGS)
        run_tool([*common, "-fPIC", "-c", str(unit), "-o", str(obj)])
        # as the host build links: -shared, without -ffast-math (no crtfastmath.o)
        self.library = directory / "kernels.so"
        run_tool([AARCH64_CXX, "-shared", str(obj), "-o", str(self.library), "-lm"])
        harness_obj, self.exe = directory / "kernel_check.o", directory / "kernel_check"
        run_tool([*common, "-Wall", "-Wextra", "-Werror", "-c", str(HARNESS), "-o", str(harness_obj)])
        # -pthread: the lanes of units run on threads of their own (std::thread)
        run_tool([AARCH64_CXX, "-static", "-pthread", str(harness_obj), str(obj), "-o", str(self.exe), "-lm"])

    def run(self, *args, inputs=(), timeout=600):
        """The harness's output for ``args``, given the arrays ``inputs`` on stdin (raw bytes); the test fails if
        it runs past ``timeout`` seconds (lanes that never all meet at their barrier spin for ever)."""
        data = b"".join(np.ascontiguousarray(a).tobytes() for a in inputs)
        try:
            return run_tool([*QEMU, str(self.exe), *map(str, args)], input=data, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"kernel_check {' '.join(map(str, args))} ran past {timeout} s (a barrier never met?)")


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory):
    why = aarch64_missing()
    if why:
        pytest.skip(why)
    return Aarch64(tmp_path_factory.mktemp("aarch64"))


def split(data, dtype, shapes):
    """The arrays of ``shapes``, one after another in ``data`` (raw values of ``dtype``)."""
    flat = np.frombuffer(data, dtype=dtype)
    sizes = [int(np.prod(shape)) for shape in shapes]
    assert flat.size == sum(sizes), f"the harness wrote {flat.size} values, expected {sum(sizes)}"
    out, at = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[at:at + size].reshape(shape).copy())
        at += size
    return out


def dtype_code(dtype):
    return "f32" if np.dtype(dtype) == np.float32 else "f64"


def test_aarch64_library_exports_every_entry_point_and_calls_no_math_function(aarch64):
    nm = "aarch64-linux-gnu-nm"
    if shutil.which(nm) is None:
        pytest.skip(f"{nm} is not installed (binutils-aarch64-linux-gnu, with {INSTALL})")
    defined = set(run_tool([nm, "-D", "--defined-only", str(aarch64.library)], text=True).split())
    needed = {symbol for spec in SPECS.values() for symbol in spec.symbols}
    assert needed <= defined, sorted(needed - defined)
    assert math_calls(aarch64.library, nm) == []
    for function in ("xseq_lstm_forward_float_cols", "xseq_gru_forward_float_cols", "xseq_lstm_backward_float_cols"):
        assert packed_fmas(aarch64.library, function, "aarch64-linux-gnu-objdump", "aarch64") > 0, function


def test_aarch64_build_has_vecmath_and_128_bit_packed_products(aarch64):
    info = dict(line.split() for line in aarch64.run("info").decode().splitlines())
    assert info == {"vecmath_vector": "1", "packed_vector_bytes": "16"}


def step_inputs(kind, dtype, m, n_a, regime, rng):
    """One step's inputs; ``extreme``: pre-activations over [-100, 100] and the ends pinned (sigmoid(+-100))."""
    G = GATES[kind]
    if regime == "random":
        xw, hw = rng.uniform(-3, 3, (m, G * n_a)), rng.uniform(-3, 3, (m, G * n_a))
        state, b_hn = rng.uniform(-3, 3, (m, n_a)), rng.uniform(-1, 1, n_a)
    else:
        xw, hw = rng.uniform(-90, 90, (m, G * n_a)), rng.uniform(-10, 10, (m, G * n_a))
        xw.flat[:4], hw.flat[:4] = [100, -100, 0, -0.0], 0
        state, b_hn = rng.uniform(-20, 20, (m, n_a)), rng.uniform(-50, 50, n_a)
    grads = [rng.uniform(-1, 1, (m, n_a)) for _ in range(3)]
    cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    return cast(xw), cast(hw), cast(state), cast(b_hn), [cast(g) for g in grads]


@pytest.mark.parametrize("regime", ["random", "extreme"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", list(GATES))
def test_aarch64_step_kernels_match_the_reference(aarch64, kind, dtype, regime):
    m, n_a = 5, 7
    xw, hw, state, b_hn, (dh, dy, dc) = step_inputs(kind, dtype, m, n_a, regime, np.random.default_rng(3))
    ops = ArrayAPIOps(xp)
    S = np.zeros((2, m, n_a), dtype=dtype)
    C = np.zeros_like(S)
    saved = np.zeros((1, m, max(SAVED[kind], 1) * n_a), dtype=dtype)
    dZ, dHW = np.zeros((2, 1, m, GATES[kind] * n_a), dtype=dtype)
    n4, nG, n = (m, 4 * n_a), (m, GATES[kind] * n_a), (m, n_a)
    if kind == "rnn":
        got = split(aarch64.run("step", kind, dtype_code(dtype), m, n_a, inputs=[xw, hw, dh, dy]), dtype, [n, nG])
        ops.rnn_forward(xw, hw, saved, S, 0)
        ops.rnn_backward(S, 0, dh, dy, dZ)
        want = [S[1], dZ[0]]
    elif kind == "lstm":
        got = split(aarch64.run("step", kind, dtype_code(dtype), m, n_a, inputs=[xw, hw, state, dh, dy, dc]), dtype,
                    [n4, n, n, nG, n])
        C[0] = state
        ops.lstm_forward(xw, hw, C[0], saved, C, S, 0)
        dc_prev = ops.lstm_backward(saved, C, 0, dh, dy, dc, dZ)
        want = [saved[0], C[1], S[1], dZ[0], dc_prev]
    else:
        got = split(aarch64.run("step", kind, dtype_code(dtype), m, n_a, inputs=[xw, hw, b_hn, state, dh, dy]),
                    dtype, [n4, n, nG, nG, n])
        S[0] = state
        ops.gru_forward(xw, hw, b_hn, S[0], saved, S, 0)
        dh_direct = ops.gru_backward(saved, S, 0, dh, dy, dZ, dHW)
        want = [saved[0], S[1], dZ[0], dHW[0], dh_direct]
    if regime == "extreme" and kind != "rnn":  # the first gate's sigmoid of 100, -100, 0: exactly 1, tiny, 1/2
        first = got[0][0, :3]
        assert first[0] == 1 and 0 <= first[1] < 1e-40 and first[2] == 0.5, first
    for k, (g, w) in enumerate(zip(got, want)):
        # about 8 ulps relative, and 16 ulps of the array's largest value for the cancellations
        # tests/test_kernels_exec.py explains
        atol = 16 * float(np.finfo(dtype).eps) * float(np.abs(w).max(initial=0.0))
        rtol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{kind} {regime}: output {k}")


# (M, K, N): NEON's panels are 8 floats or 4 doubles wide and a tile 8 rows: whole and partial panels and
# tiles, a single row and column, the lanes' shapes at a small n_a
PACKED_SHAPES = [(19, 33, 37), (16, 8, 32), (1, 1, 1), (7, 40, 160), (10, 160, 40)]


@pytest.mark.parametrize("beta", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", PACKED_SHAPES, ids=["x".join(map(str, s)) for s in PACKED_SHAPES])
def test_aarch64_packed_product_matches_numpy(aarch64, shape, dtype, beta):
    M, K, N = shape
    rng = np.random.default_rng(M * K + N)
    a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((M, K), (K, N), (M, N)))
    (got,) = split(aarch64.run("packed", dtype_code(dtype), M, K, N, beta, inputs=[a, b, c]), dtype, [(M, N)])
    want = a.astype(np.float64) @ b.astype(np.float64) + beta * c.astype(np.float64)
    # K products summed in another order: K ulps of the sum of |terms| at most
    bound = K * float(np.finfo(dtype).eps) * (np.abs(a).astype(np.float64) @ np.abs(b) + beta * np.abs(c))
    assert (np.abs(got - want) <= bound).all(), float(np.max(np.abs(got - want) - bound))


def reference_loops(kind, xw, h0, c0, w_hh, b_hn, dy, dh, dc):
    """``xseq/ops/native/loops.h``'s forward and backward loops, step for step, on the array-API reference.

    ``xw`` (T, m, G n_a), ``h0``, ``c0`` (m, n_a), ``w_hh`` (G n_a, n_a), ``b_hn`` (n_a,), ``dy`` (T, m, n_a),
    ``dh``, ``dc`` (m, n_a): the final states' gradients. Returns the arrays the harness's ``loop`` mode writes,
    by name: ``s``, ``c`` (T + 1, m, n_a), ``saved`` (T, m, S n_a), ``dz``, ``dhw`` (T, m, G n_a), ``dh0``,
    ``dc0`` (m, n_a).
    """
    ops = ArrayAPIOps(xp)
    T, m, _ = xw.shape
    n_a = h0.shape[1]
    S = np.zeros((T + 1, m, n_a), dtype=xw.dtype)
    C = np.zeros_like(S)
    S[0], C[0] = h0, c0
    saved = np.zeros((T, m, SAVED[kind] * n_a), dtype=xw.dtype)
    for t in range(T):
        hw = S[t] @ w_hh.T
        if kind == "rnn":
            ops.rnn_forward(xw[t], hw, saved, S, t)
        elif kind == "lstm":
            ops.lstm_forward(xw[t], hw, C[t], saved, C, S, t)
        else:
            ops.gru_forward(xw[t], hw, b_hn, S[t], saved, S, t)
    dZ, dHW = np.zeros((2, *xw.shape), dtype=xw.dtype)
    for t in reversed(range(T)):
        if kind == "rnn":
            ops.rnn_backward(S, t, dh, dy[t], dZ)
            dh = dZ[t] @ w_hh
        elif kind == "lstm":
            dc = ops.lstm_backward(saved, C, t, dh, dy[t], dc, dZ)
            dh = dZ[t] @ w_hh
        else:
            dh = ops.gru_backward(saved, S, t, dh, dy[t], dZ, dHW) + dHW[t] @ w_hh
    return dict(s=S, c=C, saved=saved, dz=dZ, dhw=dHW if kind == "gru" else dZ, dh0=dh, dc0=dc)


def loop_inputs(kind, dtype, T, m, n_a, seed):
    """The harness's ``loop`` and ``units`` inputs, in its order: values of about 0.7, ``w_hh`` (G n_a, n_a)."""
    G = GATES[kind]
    rng = np.random.default_rng(seed)
    draw = lambda *shape: (rng.standard_normal(shape) * 0.7).astype(dtype)  # noqa: E731
    return dict(xw=draw(T, m, G * n_a), h0=draw(m, n_a), c0=draw(m, n_a), w_hh=draw(G * n_a, n_a), b_hn=draw(n_a),
                dy=draw(T, m, n_a), dh=draw(m, n_a), dc=draw(m, n_a))


def run_loops(aarch64, mode, kind, inputs, *extra, timeout=600):
    """The harness's ``loop`` or ``units`` outputs by name (with ``c`` and ``dc0`` only for the LSTM: the other
    cells have no cell state, and the loops leave it as it was)."""
    T, m, GN = inputs["xw"].shape
    n_a, dtype = inputs["h0"].shape[1], inputs["xw"].dtype
    shapes = dict(s=(T + 1, m, n_a), c=(T + 1, m, n_a), saved=(T, m, SAVED[kind] * n_a), dz=(T, m, GN),
                  dhw=(T, m, GN), dh0=(m, n_a), dc0=(m, n_a))
    out = aarch64.run(mode, kind, dtype_code(dtype), T, m, n_a, *extra, inputs=list(inputs.values()),
                      timeout=timeout)
    got = dict(zip(shapes, split(out, dtype, list(shapes.values()))))
    if kind != "lstm":
        got.pop("c"), got.pop("dc0")
    return got


def reference_for(kind, inputs):
    """:func:`reference_loops` with the outputs :func:`run_loops` returns."""
    want = reference_loops(kind, **inputs)
    if kind != "lstm":
        want.pop("c"), want.pop("dc0")
    return want


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", list(GATES))
def test_aarch64_time_loops_with_packed_weights_match_the_reference(aarch64, kind, dtype):
    """The lanes' loops (one lane) with ``W_hh`` packed: 4 steps of 11 rows (a tile of 8 and 3), 9 units."""
    inputs = loop_inputs(kind, dtype, T=4, m=11, n_a=9, seed=5)
    got = run_loops(aarch64, "loop", kind, inputs)
    assert largest_error(got, reference_for(kind, inputs)) < LOOP_TOL[np.dtype(dtype)]


# (T, m, n_a): 37 units make uneven blocks (18 + 19, 12 + 12 + 13) that are no whole number of NEON vectors
# (4 floats, 2 doubles) or packed panels; a single row too
UNIT_SHAPES = [(5, 3, 37), (5, 1, 37)]


@pytest.mark.parametrize("lanes", [2, 3])
@pytest.mark.parametrize("shape", UNIT_SHAPES, ids=["x".join(map(str, s)) for s in UNIT_SHAPES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", list(GATES))
def test_aarch64_lanes_of_units_on_threads_match_the_reference_and_one_lane(aarch64, kind, dtype, shape, lanes):
    """``lanes`` lanes of units (``xseq_lane_*`` on threads of their own, each packing its own columns of
    ``W_hh`` and meeting the others at their spin barrier every step) give the reference's outputs and one lane
    of rows' (``loop`` mode)."""
    T, m, n_a = shape
    inputs = loop_inputs(kind, dtype, T, m, n_a, seed=7 + m)
    # a barrier that never opens spins for ever: fail in seconds, not at the harness's usual 10 minutes
    got = run_loops(aarch64, "units", kind, inputs, lanes, timeout=120)
    tol = LOOP_TOL[np.dtype(dtype)]
    assert largest_error(got, reference_for(kind, inputs)) < tol
    assert largest_error(got, run_loops(aarch64, "loop", kind, inputs)) < tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", list(GATES))
def test_aarch64_lanes_of_units_make_the_input_products_as_the_reference(aarch64, kind, dtype):
    """Lanes of units that compute their columns of the input projection before the loop and blocks of dX after
    it (lane_job's ``x1`` and ``dx``; 2 lanes of 37 units, 6 steps of 3 rows: 18 rows of x1 in one chunk, 9 inputs:
    blocks of 4 and 5 columns). The harness's own xw is NaN: every value of it must come from the lanes."""
    T, m, n_a, n_x, lanes, G = 6, 3, 37, 9, 2, GATES[kind]
    inputs = loop_inputs(kind, dtype, T=T, m=m, n_a=n_a, seed=11)
    rng = np.random.default_rng(12)
    x1 = np.concatenate([rng.standard_normal((T * m, n_x)), np.ones((T * m, 1))], axis=1).astype(dtype)
    w_ih = (rng.standard_normal((G * n_a, n_x)) * 0.5).astype(dtype)
    bias = (rng.standard_normal(G * n_a) * 0.5).astype(dtype)
    xw = (x1 @ np.concatenate([w_ih, bias[:, None]], axis=1).T).reshape(T, m, G * n_a)
    want = reference_for(kind, {**inputs, "xw": xw})
    want["xw"] = xw
    want["dx"] = want["dz"].reshape(T * m, G * n_a) @ w_ih
    shapes = dict(s=(T + 1, m, n_a), c=(T + 1, m, n_a), saved=(T, m, SAVED[kind] * n_a), dz=(T, m, G * n_a),
                  dhw=(T, m, G * n_a), dh0=(m, n_a), dc0=(m, n_a), xw=(T, m, G * n_a), dx=(T * m, n_x))
    planted = {**inputs, "xw": np.full_like(inputs["xw"], np.nan)}
    out = aarch64.run("units", kind, dtype_code(dtype), T, m, n_a, lanes, n_x,
                      inputs=[*planted.values(), x1, w_ih, bias], timeout=120)
    got = dict(zip(shapes, split(out, dtype, list(shapes.values()))))
    if kind != "lstm":
        got.pop("c"), got.pop("dc0")
    assert not np.isnan(got["xw"]).any()
    assert largest_error(got, want) < LOOP_TOL[np.dtype(dtype)]


# ---------------------------------------------------------------- benchmarks/bench_builds.py's check


def test_the_build_benchmark_checks_each_contenders_build_before_timing(tmp_path):
    """``bench_builds.py --check``: a contender whose process has another build than it claims is refused."""
    script = ROOT / "benchmarks" / "bench_builds.py"
    env = {**os.environ, "XSEQ_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("XSEQ_HOST_MARCH", None)
    env.pop("CXX", None)

    def check(contender, **extra):
        done = subprocess.run([sys.executable, str(script), "--check", contender, "--models", "lstm-layer",
                               "--sizes", "10x16x16x11"], cwd=ROOT, env={**env, **extra}, capture_output=True,
                              text=True, timeout=600)
        return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])

    code, result = check("default")
    assert code == 0 and result["failures"] == [], result
    assert max(result["worst"].values()) < 2e-5  # checks.SAME_FORMULAS
    # the avx2 contender's claim (a -march=haswell build: 256-bit vectors) against the default build
    code, result = check("avx2")
    wrong = result["vector_bytes"] != 32  # this CPU's build (AVX-512 or NEON) is not the claimed AVX2 one
    assert (code == 1) == wrong
    assert any("expected 32" in line for line in result["failures"]) == wrong
