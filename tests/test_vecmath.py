"""``xseq/ops/native/vecmath.h``, the host kernels' own vectorizable ``exp`` and ``tanh``, built as the host build builds them.

Targets, each built once per module from ``tests/native/vecmath_check.cpp``
(compiled with the host build's flags, linked without ``-ffast-math`` as the
host build links):

* ``g++`` and ``clang++`` for this machine (``-march=native``; on x86 the host
  build's first flag set, ``-mprefer-vector-width=512 -ffast-math -mrecip=none``);
* ``aarch64``: ``aarch64-linux-gnu-g++ -march=armv8-a`` (NEON) run under
  ``qemu-aarch64``, at smaller sample sizes.

On each: the error in ulps against NumPy (float64 for float32 results, long
double for float64 results) over the whole range -- float32 every 1009th bit
pattern (every 16411th under qemu) plus every float near the points where the
method changes (overflow, underflow, the subnormal range, each change of the
reduction's ``k``, tanh's switch and saturation), float64 random bit patterns,
the live range uniformly and log-uniformly, and the neighbours of the same
points --; NaN, infinities and signed zeros exactly as the C library gives
them; and the kernels' ``sigmoid`` (``xseq.ops.kernel_source.PREAMBLE``)
compiled inside a namespace with ``using xseq_vecmath::exp`` as the host
build will. Separately, that the loops vectorize: no call in the loop
functions and packed FMAs on the expected registers, for ``-march=native``,
``haswell`` (AVX2), ``x86-64-v4`` (AVX-512) and ``armv8-a`` (NEON); and that
without a fused multiply-add (``x86-64-v2``) the header falls back to the C
library's functions. Last, that ``benchmarks/bench_vecmath.py`` stops before
timing when a contender's results are wrong.

A missing compiler or emulator is a visible skip; CI's full run (where skips
fail) installs ``clang``, ``g++-aarch64-linux-gnu`` and ``qemu-user``.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from xseq.ops.kernel_source import PREAMBLE

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "xseq" / "ops" / "native"
HARNESS = Path(__file__).resolve().parent / "native" / "vecmath_check.cpp"
X86 = platform.machine().lower() in ("x86_64", "amd64")

# The host build's clang flag set on x86 (FLAG_SETS of xseq/ops/native_build.py: g++ tries -mno-recip first, which
# only tightens the bound); elsewhere its portable part.
NATIVE_FLAGS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-mrecip=none")
    if X86 else ("-O3", "-march=native", "-ffast-math")
)
AARCH64_FLAGS = ("-O3", "-march=armv8-a", "-ffast-math")
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
INSTALL = "apt-get install clang g++-aarch64-linux-gnu qemu-user"

# Largest error allowed, in ulps of the result. Measured (vecmath.h has the table): exp 0.988 (float, all
# 2^32 inputs) and 0.97 (double, sampled); tanh float 1.34 (clang++, all inputs) and 1.64 with GCC 12,
# whose -ffast-math divides float vectors through an approximate reciprocal even with -mrecip=none;
# tanh double 1.21; the kernels' sigmoid, e / (1 + e) around vecmath's exp, float 2.40 (clang++) and
# 3.56 (g++), double 2.03.
ULP_BOUNDS = {
    ("exp", "f32"): 1.0,
    ("exp", "f64"): 1.0,
    ("tanh", "f32"): 1.75,
    ("tanh", "f64"): 1.5,
    ("sigmoid", "f32"): 4.0,
    ("sigmoid", "f64"): 2.5,
}
FUNCS = ("exp", "tanh", "sigmoid")
DTYPES = {"f32": np.float32, "f64": np.float64}
LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class Target:
    """How to compile the harness for one target and how to run what comes out."""

    name: str
    compiler: str
    flags: tuple
    runner: tuple = ()
    # float32 bit-pattern stride, float64 samples per kind, values each side of a critical point
    stride: int = 1009
    n64: int = 1_000_000
    window32: int = 2048
    window64: int = 64

    def missing(self):
        """Why this target cannot be built and run here, or None."""
        if shutil.which(self.compiler) is None:
            return f"{self.compiler} is not installed ({INSTALL})"
        if self.runner and shutil.which(self.runner[0]) is None:
            return f"{self.runner[0]} is not installed ({INSTALL})"
        if self.runner and not Path(AARCH64_SYSROOT).is_dir():
            return f"{AARCH64_SYSROOT} is missing: the aarch64 C library ({INSTALL})"
        return None


TARGETS = {
    "g++": Target("g++", "g++", NATIVE_FLAGS),
    "clang++": Target("clang++", "clang++", NATIVE_FLAGS),
    "aarch64": Target(
        "aarch64", "aarch64-linux-gnu-g++", AARCH64_FLAGS, ("qemu-aarch64", "-L", AARCH64_SYSROOT),
        stride=16411, n64=50_000, window32=256, window64=16,
    ),
}


def compile_harness(compiler, flags, directory, link=True, libs=("-lm",)):
    """Compile (and link) the harness with the kernels' preamble; returns (object, executable)."""
    directory.mkdir(parents=True, exist_ok=True)
    preamble = directory / "preamble.inc"
    preamble.write_text(PREAMBLE)
    obj, exe = directory / "vecmath_check.o", directory / "vecmath_check"
    compile_cmd = [compiler, "-std=c++17", *flags, f"-I{NATIVE}", f'-DXSEQ_CHECK_PREAMBLE="{preamble}"',
                   "-c", str(HARNESS), "-o", str(obj)]
    proc = subprocess.run(compile_cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(compile_cmd)} failed:\n{proc.stderr}"
    if link:
        # no -ffast-math when linking: it would add crtfastmath.o (flush-to-zero for the process)
        proc = subprocess.run([compiler, str(obj), "-o", str(exe), *libs], capture_output=True, text=True)
        assert proc.returncode == 0, f"linking {obj} failed:\n{proc.stderr}"
    return obj, exe


@dataclass
class Built:
    target: Target
    exe: Path

    def run(self, func, x, impl="xseq"):
        """``func`` of every element of ``x`` (float32 or float64, 1-d), computed by the harness."""
        dtype = "f32" if x.dtype == np.float32 else "f64"
        cmd = [*self.target.runner, str(self.exe), "map", func, dtype, impl]
        proc = subprocess.run(cmd, input=np.ascontiguousarray(x).tobytes(), capture_output=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode()}"
        y = np.frombuffer(proc.stdout, dtype=x.dtype)
        assert y.shape == x.shape, f"{' '.join(cmd)}: {y.size} results for {x.size} inputs"
        return y


@pytest.fixture(scope="module", params=list(TARGETS))
def built(request, tmp_path_factory):
    target = TARGETS[request.param]
    reason = target.missing()
    if reason:
        pytest.skip(reason)
    _, exe = compile_harness(target.compiler, target.flags, tmp_path_factory.mktemp(target.name))
    return Built(target, exe)


# -- samples -------------------------------------------------------------------------------------

def critical_points(func, dtype):
    """Arguments where the method or the result's format changes: range ends, k steps, switches."""
    f32 = dtype == "f32"
    fi = np.finfo(np.float32 if f32 else np.float64)
    ln_max, ln_min = float(np.log(float(fi.max))), float(np.log(float(fi.tiny)))
    ln_sub = float(np.log(float(fi.smallest_subnormal)))
    ks = range(-152, 130) if f32 else range(-1080, 1026, 7 if func == "sigmoid" else 1)
    if func in ("exp", "sigmoid"):
        points = [0.0, ln_max, ln_min, ln_sub, ln_sub - LN2 / 2, -104.0 if f32 else -746.0, 89.0 if f32 else 710.0]
        points += [(k + 0.5) * LN2 for k in ks]
        if func == "sigmoid":
            points = [p for p in points if p <= 0] + [-p for p in points if p < 0]
    else:
        points = [0.0, float(np.arctanh(0.5)), 0.5493, 9.02, 9.25, 19.07, 19.5, float(fi.tiny)]
        points += [(k + 0.5) * LN2 / 2 for k in range(60)]
        points += [-p for p in points]
    return np.array(points, dtype=np.float64)


def neighbours(points, dtype, width):
    """Every value within ``width`` representable steps of each point (as the point's dtype)."""
    np_dtype, uint = (np.float32, np.uint32) if dtype == "f32" else (np.float64, np.uint64)
    bits = points.astype(np_dtype).view(uint).astype(np.int64)
    offsets = np.arange(-width, width + 1, dtype=np.int64)
    span = (bits[:, None] + offsets[None, :]).ravel()
    top = np.iinfo(uint).max
    return np.clip(span, 0, top).astype(uint).view(np_dtype)


def specials(dtype):
    np_dtype = DTYPES[dtype]
    fi = np.finfo(np_dtype)
    values = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, fi.max, -fi.max, fi.tiny, -fi.tiny,
              fi.smallest_subnormal, -fi.smallest_subnormal, 1e30, -1e30, 1000.0, -1000.0]
    with np.errstate(over="ignore"):
        return np.array(values, dtype=np_dtype)


def samples(func, dtype, target, seed=0):
    """The arguments a target is checked on (see the module docstring)."""
    window = target.window32 if dtype == "f32" else target.window64
    parts = [neighbours(critical_points(func, dtype), dtype, window), specials(dtype)]
    if dtype == "f32":
        # float32 is checked over its whole range: every stride-th bit pattern, both signs
        patterns = np.arange(7, 2**32, target.stride, dtype=np.uint64).astype(np.uint32)
        parts.append(patterns.view(np.float32))
    else:
        rng = np.random.default_rng(seed)
        n = target.n64
        live = {"exp": (-746.0, 710.0), "tanh": (-20.0, 20.0), "sigmoid": (-750.0, 750.0)}[func]
        magnitudes = 10.0 ** rng.uniform(-320, 3, n) * rng.choice([-1.0, 1.0], n)
        parts += [rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False).view(np.float64),
                  rng.uniform(*live, n), magnitudes]
    with np.errstate(all="ignore"):  # signalling NaNs among the bit patterns
        return np.concatenate([p.astype(DTYPES[dtype]) for p in parts])


# -- reference and errors ------------------------------------------------------------------------

def reference(func, x):
    """``func(x)`` in a wider type: float64 for float32, long double for float64."""
    wide = np.float64 if x.dtype == np.float32 else np.longdouble
    with np.errstate(all="ignore"):  # signalling NaNs among the bit patterns
        xr = x.astype(wide)
        if func == "exp":
            return np.exp(xr)
        if func == "tanh":
            return np.tanh(xr)
        return wide(1) / (wide(1) + np.exp(-xr))


def ulp_errors(y, ref, dtype):
    """``|y - ref| / ulp(ref)`` (the ulp of ``ref``'s binade in ``dtype``, the subnormal spacing below it).

    Where ``ref`` rounds to a non-finite value in ``dtype``, ``y`` must be that value (inf of the
    same sign, or NaN): the error is 0 if so and inf if not. A NaN ``y`` for a finite ``ref`` is inf.
    """
    fi = np.finfo(dtype)
    with np.errstate(all="ignore"):
        rounded = ref.astype(dtype)
    nonfinite = ~np.isfinite(rounded)
    err = np.zeros(y.shape, dtype=np.float64)
    same = (y[nonfinite] == rounded[nonfinite]) | (np.isnan(y[nonfinite]) & np.isnan(rounded[nonfinite]))
    err[nonfinite] = np.where(same, 0.0, np.inf)
    r = ref[~nonfinite]
    _, e = np.frexp(r)
    ulp = np.ldexp(np.ones_like(r), np.maximum(e - 1, fi.minexp) - fi.nmant)
    with np.errstate(all="ignore"):
        finite_err = (np.abs(y[~nonfinite].astype(r.dtype) - r) / ulp).astype(np.float64)
    err[~nonfinite] = np.where(np.isnan(finite_err), np.inf, finite_err)
    return err


def worst(func, x, y, ref, err):
    i = int(np.argmax(err))
    return (f"{func}({x[i]!r}) = {y[i]!r}, reference {ref[i]!r}: {err[i]:.3f} ulp "
            f"({int(np.sum(err > 1.0))} of {err.size} over 1 ulp)")


# -- accuracy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("func", FUNCS)
def test_ulp_error_over_the_whole_range(built, func, dtype):
    if dtype == "f64" and np.finfo(np.longdouble).nmant <= 52:
        pytest.skip("long double is no wider than double here: no float64 reference for ulp errors")
    x = samples(func, dtype, built.target)
    y = built.run(func, x)
    ref = reference(func, x)
    err = ulp_errors(y, ref, DTYPES[dtype])
    bound = ULP_BOUNDS[(func, dtype)]
    assert err.max() <= bound, f"{built.target.name}: {worst(func, x, y, ref, err)}; allowed {bound}"


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_subnormal_results_are_kept(built, dtype):
    """exp rounds into the subnormal range (gradual underflow), tanh returns tiny arguments unchanged."""
    np_dtype = DTYPES[dtype]
    fi = np.finfo(np_dtype)
    x = np.linspace(np.log(float(fi.tiny)) - 1, np.log(float(fi.smallest_subnormal)) + 0.1, 1001).astype(np_dtype)
    y = built.run("exp", x)
    assert np.all(y > 0) and np.all(y < fi.tiny), f"{built.target.name}: exp flushed or left the subnormal range"
    err = ulp_errors(y, reference("exp", x), np_dtype)
    assert err.max() <= 1.0, f"{built.target.name}: subnormal exp {worst('exp', x, y, reference('exp', x), err)}"
    tiny = (np.arange(1, 1001) * fi.smallest_subnormal).astype(np_dtype)
    for sign in (1, -1):
        np.testing.assert_array_equal(built.run("tanh", sign * tiny), sign * tiny)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("func", FUNCS)
def test_non_finite_and_signed_zero_as_the_c_library(built, func, dtype):
    x = specials(dtype)
    y = built.run(func, x)
    with np.errstate(all="ignore"):
        expected = {"exp": np.exp, "tanh": np.tanh,
                    "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[func](x)
    for xi, yi, ei in zip(x, y, expected):
        if np.isnan(ei):
            assert np.isnan(yi), f"{built.target.name}: {func}({xi!r}) = {yi!r}, expected NaN"
        elif not np.isfinite(ei) or ei == 0 or abs(ei) == 1 or ei == xi:
            # infinities, zeros (with their sign), saturation and tanh(tiny) = tiny are exact
            assert yi == ei and np.signbit(yi) == np.signbit(ei), (
                f"{built.target.name}: {func}({xi!r}) = {yi!r}, expected {ei!r}")
        else:
            assert ulp_errors(np.array([yi]), reference(func, np.array([xi])), DTYPES[dtype])[0] <= 1.0


# -- vectorization -------------------------------------------------------------------------------

NEON = "neon"
VECTOR_BUILDS = {
    # name: (compiler, flags, registers of the packed FMAs expected: an x86 register pattern or NEON)
    "g++-native": ("g++", NATIVE_FLAGS, r"%[xyz]mm\d+" if X86 else NEON),
    "clang++-native": ("clang++", NATIVE_FLAGS, r"%[xyz]mm\d+" if X86 else NEON),
    "g++-haswell": ("g++", ("-O3", "-march=haswell", "-ffast-math", "-mrecip=none"), r"%ymm\d+"),
    "clang++-haswell": ("clang++", ("-O3", "-march=haswell", "-ffast-math", "-mrecip=none"), r"%ymm\d+"),
    "g++-x86-64-v4": ("g++", ("-O3", "-march=x86-64-v4", "-mprefer-vector-width=512", "-ffast-math",
                              "-mrecip=none"), r"%zmm\d+"),
    "clang++-x86-64-v4": ("clang++", ("-O3", "-march=x86-64-v4", "-mprefer-vector-width=512", "-ffast-math",
                                      "-mrecip=none"), r"%zmm\d+"),
    "aarch64-armv8-a": ("aarch64-linux-gnu-g++", AARCH64_FLAGS, NEON),
}


def loop_functions(disassembly):
    """``{name: [instruction lines]}`` for the harness's loop_FUNC_DTYPE functions in objdump output."""
    functions, current = {}, None
    for line in disassembly.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            name = re.search(r"loop_(exp|tanh|sigmoid)_(f32|f64)", header.group(1))
            current = name.group(0) if name else None
            if current:
                functions[current] = []
        elif current and line.strip():
            functions[current].append(line)
    return functions


@pytest.mark.parametrize("build", list(VECTOR_BUILDS))
def test_loops_vectorize_without_calls(build, tmp_path):
    compiler, flags, registers = VECTOR_BUILDS[build]
    aarch64 = compiler.startswith("aarch64")
    if not aarch64 and not X86 and registers != NEON:
        pytest.skip(f"{build}: x86 targets are checked on x86 machines")
    objdump = "aarch64-linux-gnu-objdump" if aarch64 else "objdump"
    for tool in (compiler, objdump):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed ({INSTALL})")
    obj, _ = compile_harness(compiler, flags, tmp_path, link=False)
    disassembly = subprocess.run([objdump, "-d", "-r", "--no-show-raw-insn", str(obj)],
                                 capture_output=True, text=True, check=True).stdout
    functions = loop_functions(disassembly)
    assert sorted(functions) == sorted(f"loop_{f}_{d}" for f in FUNCS for d in DTYPES), sorted(functions)
    for name, lines in functions.items():
        text = "\n".join(lines)
        calls = [line for line in lines if re.search(r"\bcall|\bbl\s|R_X86_64_PLT32|R_AARCH64_(CALL|JUMP)26", line)]
        assert not calls, f"{build}: {name} calls out (not vectorized math):\n" + "\n".join(calls)
        if registers == NEON:
            lanes = "4s" if name.endswith("f32") else "2d"
            pattern = rf"\bfml[as]\s+v\d+\.{lanes}"
        else:
            suffix = "ps" if name.endswith("f32") else "pd"
            pattern = rf"\bvfn?m(add|sub)\d{{3}}{suffix}\s.*{registers}"
        assert re.search(pattern, text), f"{build}: {name} has no packed FMA matching {pattern!r}:\n{text[:3000]}"


@pytest.mark.skipif(not X86, reason="the fallback is for x86 without FMA3; every aarch64 has a fused multiply-add")
def test_without_fma_the_c_library_is_used(tmp_path):
    """-march=x86-64-v2 has no FMA: XSEQ_VECMATH_VECTOR is 0 and the functions are the C library's."""
    if shutil.which("g++") is None:
        pytest.skip(f"g++ is not installed ({INSTALL})")
    probe = tmp_path / "probe.cpp"
    probe.write_text('#include "vecmath.h"\nstatic_assert(XSEQ_VECMATH_VECTOR == 0, "expected the fallback");\n'
                     "double f(double x) { return xseq_vecmath::exp(x) + xseq_vecmath::tanh(x); }\n")
    proc = subprocess.run(["g++", "-std=c++17", "-O3", "-march=x86-64-v2", "-ffast-math", f"-I{NATIVE}", "-c",
                           str(probe), "-o", str(tmp_path / "probe.o")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # as the host build links: GCC -ffast-math calls glibc's vector functions (libmvec)
    _, exe = compile_harness("g++", ("-O3", "-march=x86-64-v2", "-ffast-math"), tmp_path / "v2",
                             libs=("-lmvec", "-lm"))
    fallback = Built(Target("x86-64-v2", "g++", ()), exe)
    for dtype in DTYPES:
        x = np.concatenate([specials(dtype), np.linspace(-700, 700, 10001).astype(DTYPES[dtype])])
        for func in ("exp", "tanh"):
            y = fallback.run(func, x)
            err = ulp_errors(y, reference(func, x), DTYPES[dtype])
            assert err.max() <= 4.0, f"x86-64-v2: {worst(func, x, y, reference(func, x), err)}"


# -- the benchmark's check -----------------------------------------------------------------------

FAKE_HARNESS = """#!{python}
import sys
import numpy as np
if sys.argv[1] != "map":
    open({log!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
    sys.exit(3)
func, dtype, impl = sys.argv[2:5]
x = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32 if dtype == "f32" else np.float64)
wide = np.float64 if dtype == "f32" else np.longdouble
y = getattr(np, func)(x.astype(wide)).astype(x.dtype)
if {wrong!r} == impl:
    y = np.nextafter(np.nextafter(y, np.inf), np.inf) * (1 + 8 * np.finfo(x.dtype).eps)
sys.stdout.buffer.write(y.tobytes())
"""


def fake_harness(directory, wrong):
    """A stand-in for the benchmark's harness: NumPy's exp/tanh, ``wrong`` (an IMPL name) off by ~10 ulps."""
    path = directory / f"fake-{wrong}"
    log = directory / "timed.log"
    path.write_text(FAKE_HARNESS.format(python=sys.executable, log=str(log), wrong=wrong))
    path.chmod(0o700)
    return path, log


def test_benchmark_check_catches_a_wrong_contender(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_vecmath

    right, _ = fake_harness(tmp_path, wrong="nobody")
    assert bench_vecmath.check(right, 4096)
    for impl in ("xseq", "libm"):
        wrong, _ = fake_harness(tmp_path, wrong=impl)
        assert not bench_vecmath.check(wrong, 4096), f"a contender {impl} 10 ulps off passed the check"


def test_benchmark_times_nothing_after_a_failed_check(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_vecmath

    if shutil.which("g++") is None:
        pytest.skip(f"g++ is not installed ({INSTALL})")
    wrong, log = fake_harness(tmp_path, wrong="xseq")
    monkeypatch.setattr(bench_vecmath, "build", lambda *args: wrong)
    assert bench_vecmath.main(["--n", "1024", "--reps", "2", "--rounds", "1"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert not log.exists(), f"timed after a failed check: {log.read_text()}"
