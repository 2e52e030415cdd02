"""NumPy's time loops in lanes (``xseq/ops/host.py``: ``LaneSteps``, ``HostDevice``, ``lane_count``): the rows of
a batch split over NumPy's OpenBLAS threads, each running the whole loop on its own examples with one-thread
products.

Every result is compared with the array-API reference; the choice of lanes, NumPy's OpenBLAS thread count
around a run, more lanes than threads, and lanes after a fork are checked too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import ctypes
import textwrap

import array_api_compat.numpy as xp
import numpy as np
import pytest

from xseq.engine import sequence as engine
from xseq.ops import native_features
from xseq.ops import host
from xseq.ops.reference import ArrayAPIOps

from .helpers import engine_sequence

BUILT = host.library()
BLAS, BLAS_REASON = host.numpy_openblas()
pytestmark = [
    pytest.mark.skipif(BUILT.lib is None, reason=f"no host build of the kernels on this machine: {BUILT.reason}"),
    pytest.mark.skipif(BLAS is None, reason=f"lanes need NumPy's bundled OpenBLAS: {BLAS_REASON}"),
]
KINDS = ("rnn", "lstm", "gru")


def lanes_ops(lanes, dtype, calls=None, packed=None):
    """Host ops whose every unmasked loop runs in ``lanes`` lanes (recording each run's lane count); ``packed``:
    the products by the weight packed once a loop (True), by OpenBLAS (False), or the build's choice (None)."""
    class Counted(host.HostDevice):
        def run(self, jobs):
            if calls is not None:
                calls.append(len(jobs))
            return super().run(jobs)

    device = Counted(dtype, BUILT.lib, BLAS, packed=packed)
    return host.HostFusedOps(xp, BUILT.lib, lanes=host.LaneSteps(device, lanes))


def run_sequence(kind, ops, **options):
    """7 examples (blocks of unequal rows in 2 or 3 lanes) through the engine on ``ops``."""
    return engine_sequence(kind, ops, **{"m": 7, **options})


def assert_same(got, want, dtype, what):
    assert got.keys() == want.keys()
    # float32: the RNN's gradients grow through time (|dX| up to ~55 here), and rounding grows with them; the
    # reference's products are NumPy's OpenBLAS, whose kernel depends on the CPU (OPENBLAS_CORETYPE=Haswell on
    # an AVX-512 machine sums in another order): 4e-5 of the largest value was seen there. A wrong product
    # or accumulator is off by far more.
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for key in want:
        scale = max(1.0, float(np.abs(want[key]).max()))
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=tol * scale, err_msg=f"{what}: {key}")


@pytest.mark.parametrize("lanes", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_lanes_compute_what_the_reference_computes(kind, dtype, lanes):
    """7 examples in 1, 2, 3 or 7 lanes (blocks of unequal rows): outputs, final states and every gradient."""
    calls = []
    got = run_sequence(kind, lanes_ops(lanes, dtype, calls), dtype=dtype)
    want = run_sequence(kind, ArrayAPIOps(xp), dtype=dtype)
    assert calls == [lanes, lanes]  # the forward and the backward loop both ran in lanes
    assert_same(got, want, dtype, f"{kind} in {lanes} lanes")


@pytest.mark.parametrize("packed", [True, False], ids=["packed-weight", "openblas"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_both_products_of_the_lanes_compute_what_the_reference_computes(kind, dtype, packed):
    """19 examples in 2 lanes (10 and 9 rows: a block of 8 and the rest), 40 units (the gates' 120-160 columns:
    whole panels and a part), 33 inputs: the packed product and OpenBLAS's, both against the reference."""
    shape = dict(m=19, n_a=40, n_x=33, dtype=dtype)
    got = run_sequence(kind, lanes_ops(2, dtype, packed=packed), **shape)
    want = run_sequence(kind, ArrayAPIOps(xp), **shape)
    assert_same(got, want, dtype, f"{kind}, packed={packed}")


def test_the_packed_products_are_used_where_the_build_has_512_bit_vectors():
    """The build's choice is what the compiler targets on this CPU (``-march=native``, as the build), and the
    status line says which products the lanes use."""
    device = host.HostDevice(np.float32, BUILT.lib, BLAS)
    assert device.packed == host.packed_products(BUILT.lib)
    width = BUILT.lib.xseq_packed_vector_bytes()
    assert device.packed == (width in native_features.PACKED_VECTOR_BYTES
                             and (native_features.cpu_vector_bytes() or 0) <= width)
    status = host.lanes_status()
    if "lanes on" in status:
        assert ("packed once a loop" in status) == device.packed
        assert ("one-thread OpenBLAS products" in status) == (not device.packed)


@pytest.mark.parametrize("with_dY, with_final", [(True, False), (False, True)], ids=["dY", "dh_T"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward-time", "reverse"])
@pytest.mark.parametrize("kind", KINDS)
def test_lanes_in_reverse_and_without_output_gradients(kind, reverse, with_dY, with_final):
    got = run_sequence(kind, lanes_ops(2, np.float64), reverse=reverse, with_dY=with_dY, with_final=with_final)
    want = run_sequence(kind, ArrayAPIOps(xp), reverse=reverse, with_dY=with_dY, with_final=with_final)
    assert_same(got, want, np.float64, f"{kind} reverse={reverse}")


def test_masked_sequences_keep_the_engines_loop():
    calls = []
    mask = (np.arange(6)[:, None] < np.array([6, 2, 4, 6, 1, 3, 5])[None, :])[:, :, None]
    got = run_sequence("lstm", lanes_ops(2, np.float64, calls), mask=mask)
    want = run_sequence("lstm", ArrayAPIOps(xp), mask=mask)
    assert calls == []
    assert_same(got, want, np.float64, "masked")


def test_row_blocks_cover_the_rows_once_as_equal_as_can_be():
    for m in range(0, 20):
        for lanes in range(1, 6):
            blocks = host.row_blocks(m, lanes)
            assert len(blocks) == lanes and blocks[0][0] == 0 and blocks[-1][1] == m
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            sizes = [stop - start for start, stop in blocks]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_the_lane_count_follows_numpys_threads_the_thresholds_and_the_switch(monkeypatch):
    monkeypatch.setattr(BLAS, "threads", lambda: 2)
    assert host.lane_count(32, 128, 4, 4) == 2  # the character model's LSTM
    assert host.lane_count(64, 256, 4, 4) == 2  # the benchmark's LSTM layer
    monkeypatch.setattr(BLAS, "threads", lambda: 1)  # OPENBLAS_NUM_THREADS=1: a user's limit
    assert host.lane_count(32, 128, 4, 4) == 1
    monkeypatch.setattr(BLAS, "threads", lambda: 64)
    assert host.lane_count(1024, 16, 4, 4) == host.MAX_LANES
    assert host.lane_count(3 * host.MIN_LANE_ROWS + 1, 64, 4, 4) == 3  # rows bound it
    assert host.lane_count(host.MIN_LANE_ROWS * 2 - 1, 64, 4, 4) == 1
    # W_hh: G n_a^2 elements, at most MAX_LANE_WEIGHT_BYTES
    largest = int((host.MAX_LANE_WEIGHT_BYTES / (4 * 4)) ** 0.5)
    assert host.lane_count(32, largest, 4, 4) > 1 and host.lane_count(32, largest + 1, 4, 4) == 1
    assert host.lane_count(32, largest, 4, 8) == 1  # the same units in float64: twice the bytes
    assert host.lane_count(64, 1024, 4, 4) == 1  # measured slower in lanes
    monkeypatch.setenv("XSEQ_LANES", "0")
    assert host.lane_count(32, 128, 4, 4) == 1
    assert host.lanes_status() == "engine's loop (XSEQ_LANES=0)"


def test_the_engine_takes_lanes_where_the_count_says_so(monkeypatch):
    """Through ``ops_for``: lanes where ``lane_count`` gives 2 or more, the engine's loop otherwise."""
    # the library ops_for takes now (another test may have built it again), checked before counting
    assert host.host_device(np.float64, host.library().lib, engine.check_direct) is not None
    calls = []
    real = host.HostDevice.run
    monkeypatch.setattr(host.HostDevice, "run",
                        lambda self, jobs: calls.append(len(jobs)) or real(self, jobs))
    monkeypatch.setattr(host, "lane_count", lambda rows, n_a, gates, itemsize: 2)
    got = run_sequence("gru", None)
    assert calls == [2, 2]
    monkeypatch.setattr(host, "lane_count", lambda rows, n_a, gates, itemsize: 1)
    again = run_sequence("gru", None)
    assert calls == [2, 2]
    assert_same(got, again, np.float64, "lanes against the engine's loop")


def recording_threads(monkeypatch, fail=False):
    """Record each call of OpenBLAS's ``gotoblas_pthread``: (lanes at once, NumPy's thread count then)."""
    real, seen = BLAS.run_on_threads, []

    def run_on_threads(n, function, args, stride):
        seen.append((n, BLAS.threads()))
        if fail:
            raise OSError("lanes failed")
        return real(n, function, args, stride)

    monkeypatch.setattr(BLAS, "run_on_threads", run_on_threads)
    return seen


def test_lanes_run_on_numpys_openblas_threads_with_one_thread_products(monkeypatch):
    """One call of OpenBLAS's own runner a loop, all lanes at once, NumPy's count 1 meanwhile and restored after."""
    before = BLAS.threads()
    seen = recording_threads(monkeypatch)
    ops = lanes_ops(min(before, 2), np.float64)
    got = run_sequence("lstm", ops)
    assert seen == [(min(before, 2), 1)] * 2  # the forward loop and the backward loop
    assert BLAS.threads() == before
    assert_same(got, run_sequence("lstm", ArrayAPIOps(xp)), np.float64, "lanes on OpenBLAS's threads")


def test_numpys_thread_count_is_restored_when_the_lanes_fail(monkeypatch):
    before = BLAS.threads()
    seen = recording_threads(monkeypatch, fail=True)
    with pytest.raises(OSError, match="lanes failed"):
        run_sequence("gru", lanes_ops(2, np.float64))
    assert seen and seen[0][1] == 1
    assert BLAS.threads() == before


def test_more_lanes_than_openblas_threads_run_in_turns(monkeypatch):
    """Never more lanes at once than OpenBLAS has threads (a lane with no thread to run it would never end)."""
    before = BLAS.set_threads_local(2)
    try:
        seen = recording_threads(monkeypatch)
        got = run_sequence("rnn", lanes_ops(3, np.float64))
    finally:
        BLAS.set_threads_local(before)
    assert seen == [(2, 1), (1, 1)] * 2  # 3 lanes: two at once, then the third
    assert_same(got, run_sequence("rnn", ArrayAPIOps(xp)), np.float64, "3 lanes on 2 threads")


def test_a_device_that_computes_wrong_products_is_refused_by_the_check(monkeypatch, recwarn):
    """The engine's check runs before a device is used: wrong products mean the engine's loop, and a warning."""
    class WrongGemm(host.HostDevice):
        def run(self, jobs):
            super().run(jobs)
            for job in jobs:
                if not job.backward:  # one element of each lane's last state off
                    last = ctypes.c_double.from_address(job.s + job.T * job.s_step * ctypes.sizeof(ctypes.c_double))
                    last.value += 1.0

    monkeypatch.setattr(host, "HostDevice", WrongGemm)
    monkeypatch.setattr(host, "_DEVICES", {})
    with pytest.warns(RuntimeWarning, match="lanes disabled for float64.*differs"):
        assert host.host_device(np.float64, BUILT.lib, engine.check_direct) is None
    assert "not used for float64: RuntimeError: self-check" in host.lanes_status()
    monkeypatch.setattr(host, "HostDevice", WrongGemm.__mro__[1])
    monkeypatch.setattr(host, "_DEVICES", {})
    assert host.host_device(np.float64, BUILT.lib, engine.check_direct) is not None


def test_lanes_work_in_a_forked_child():
    """OpenBLAS's threads do not survive a fork; in the child OpenBLAS makes new ones and the lanes run on them."""
    code = textwrap.dedent("""
        import os, sys
        import numpy as np
        from xseq.ops import host
        import tests.test_lanes as t
        want = t.run_sequence("lstm", t.lanes_ops(2, np.float64))  # the parent's OpenBLAS threads ran lanes
        pid = os.fork()
        if pid == 0:
            got = t.run_sequence("lstm", t.lanes_ops(2, np.float64))
            ok = all(np.array_equal(got[k], want[k]) for k in want)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_only_the_library_numpy_loaded_is_used():
    assert BLAS.path.parent.name == "numpy.libs" and "openblas" in BLAS.path.name
    assert "lanes" in host.lanes_status() or "1 thread" in host.lanes_status()


def test_no_lanes_where_the_products_go_to_another_library(monkeypatch):
    """With oneDNN's products on (``XSEQ_ONEDNN=1``) every product stays with it: one thread pool, not two."""
    monkeypatch.setattr(host, "lane_count", lambda rows, n_a, gates, itemsize: 2)
    ops = host.HostFusedOps(xp, BUILT.lib)
    assert isinstance(ops.direct_steps(np.float64, check=engine.check_direct, rows=8, n_a=5, gates=4),
                      host.LaneSteps)
    ops.gemm = lambda a, b, out: None
    assert ops.direct_steps(np.float64, check=engine.check_direct, rows=8, n_a=5, gates=4) is None


def test_a_users_openblas_num_threads_is_the_lanes_limit():
    """``OPENBLAS_NUM_THREADS=1`` in a fresh process: no lanes (one lane: the loop whole on the calling thread),
    and the status says why."""
    code = textwrap.dedent("""
        from xseq.ops import host
        print(host.lane_count(32, 128, 4, 4), host.lanes_status())
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, done.stderr
    count, said = done.stdout.strip().split(" ", 1)
    assert count == "1" and said.startswith("one lane: ") and said.endswith("(NumPy's OpenBLAS has 1 thread)")


# (K, N, extra): whole panels and a narrower last one, K a whole number of vectors and not (the values of k past
# the last whole vector go element by element), and rows of w longer than K (a block of a lane's columns of W_hh)
PACK_SHAPES = [(256, 128, 0), (40, 40, 0), (33, 37, 5), (1, 1, 0), (16, 64, 3), (100, 31, 0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", PACK_SHAPES, ids=["x".join(map(str, s)) for s in PACK_SHAPES])
def test_packing_the_transpose_gives_the_panels_of_the_transposed_weight(shape, dtype):
    """``pack_transposed`` (a forward loop packs ``W_hh.T`` from ``W_hh``; blocks of a vector's width are
    transposed in registers) writes exactly what ``pack`` writes for a transposed copy, zeros included."""
    K, N, extra = shape
    name = np.dtype(dtype).name.replace("float32", "float").replace("float64", "double")
    pointer = ctypes.POINTER(ctypes.c_float if dtype == np.float32 else ctypes.c_double)
    pack, pack_t, size = (getattr(BUILT.lib, f"xseq_{entry}_{name}")
                          for entry in ("pack", "pack_transposed", "packed_size"))
    pack.argtypes = [pointer, ctypes.c_int64, ctypes.c_int64, pointer]
    pack_t.argtypes = [pointer, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, pointer]
    size.argtypes, size.restype = [ctypes.c_int64, ctypes.c_int64], ctypes.c_int64
    rng = np.random.default_rng(K * N + extra)
    w = rng.standard_normal((N, K + extra)).astype(dtype)  # N rows of K values of k, each row K + extra long
    want = np.full(size(K, N), np.nan, dtype=dtype)
    got = np.full(size(K, N), np.nan, dtype=dtype)
    transposed = np.ascontiguousarray(w[:, :K].T)
    pack(transposed.ctypes.data_as(pointer), K, N, want.ctypes.data_as(pointer))
    pack_t(w.ctypes.data_as(pointer), K + extra, K, N, got.ctypes.data_as(pointer))
    assert not np.isnan(want).any()
    np.testing.assert_array_equal(got, want)
