"""Lanes of units (``xseq/ops/lanes.py``: ``UnitSteps``; ``xseq/ops/native/loops.h``): every lane on every row,
each owning a block of the hidden units, meeting once a step; and the one-lane loop.

For a batch too small to split by rows (batch 1) or a recurrent weight too large for every lane to read whole
(``n_a = 1024``). Every result is compared with the array-API reference; which loop the engine gets, the unit
blocks, the kernels' column-range entries (a lane writes nothing outside its units) and the guard against lanes
that could not all run at once are checked too.
"""

from __future__ import annotations

import ctypes

import array_api_compat.numpy as xp
import numpy as np
import pytest

import xseq
from xseq.engine import sequence as engine
from xseq.ops import host
from xseq.ops import lanes as lanes_module
from xseq.ops.kernel_source import CTYPES
from xseq.ops.reference import ArrayAPIOps
from xseq.ops.runtime import cpu_runtime

from .helpers import engine_sequence

from . import test_lanes
from .test_lanes import BLAS, BUILT, KINDS

pytestmark = test_lanes.pytestmark  # the same skips: no host build, no NumPy OpenBLAS
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def unit_ops(lanes, dtype, jobs=None, packed=None):
    """Host ops whose every unmasked loop runs in ``lanes`` lanes of units (recording each run's jobs' units)."""
    class Recorded(host.HostDevice):
        def run(self, run_jobs):
            if jobs is not None:
                jobs.append([(job.u0, job.u1, bool(job.barrier)) for job in run_jobs])
            return super().run(run_jobs)

    device = Recorded(dtype, BUILT.lib, BLAS, packed=packed)
    return host.HostFusedOps(xp, BUILT.lib, lanes=host.UnitSteps(device, lanes))


def threads_for(lanes):
    """Skip where NumPy's OpenBLAS cannot run ``lanes`` lanes at once (lanes of units need them all together)."""
    threads = cpu_runtime().blas_threads() or 1
    if threads < lanes:
        pytest.skip(f"{lanes} lanes of units need {lanes} OpenBLAS threads; NumPy's OpenBLAS has {threads}")


def assert_same(got, want, dtype, what):
    assert got.keys() == want.keys()
    tol = 1e-4 if dtype == np.float32 else 1e-12  # as tests/test_lanes.py: rounding, not a wrong column
    for key in want:
        scale = max(1.0, float(np.abs(want[key]).max()))
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=tol * scale, err_msg=f"{what}: {key}")


@pytest.mark.parametrize("m, n_a", [(1, 40), (3, 37), (2, 70)], ids=["batch1-40", "rows3-37", "rows2-70"])
@DTYPES
@pytest.mark.parametrize("kind", KINDS)
def test_lanes_of_units_compute_what_the_reference_computes(kind, dtype, m, n_a):
    """Two lanes of units (blocks of 16/8-unit vectors where n_a allows, the rest to the last lane; 37 units in
    float64: 16 + 21): outputs, final states and every gradient."""
    threads_for(2)
    jobs = []
    shape = dict(m=m, n_a=n_a, n_x=6, dtype=dtype)
    got = engine_sequence(kind, unit_ops(2, dtype, jobs), **shape)
    want = engine_sequence(kind, ArrayAPIOps(xp), **shape)
    blocks = host.unit_blocks(n_a, 2, np.dtype(dtype).itemsize)
    assert jobs == [[(u0, u1, True) for u0, u1 in blocks]] * 2  # forward and backward, each lane its units
    assert_same(got, want, dtype, f"{kind} in lanes of units")


@pytest.mark.parametrize("packed", [True, False], ids=["packed-weight", "openblas"])
@pytest.mark.parametrize("kind", KINDS)
def test_both_products_of_the_lanes_of_units(kind, packed):
    """The lane's own packed columns of W_hh, and OpenBLAS's product on those columns in place."""
    threads_for(2)
    shape = dict(m=2, n_a=48, n_x=5, dtype=np.float64)
    got = engine_sequence(kind, unit_ops(2, np.float64, packed=packed), **shape)
    want = engine_sequence(kind, ArrayAPIOps(xp), **shape)
    assert_same(got, want, np.float64, f"{kind}, packed={packed}")


@pytest.mark.parametrize("with_dY, with_final", [(True, False), (False, True)], ids=["dY", "dh_T"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward-time", "reverse"])
@pytest.mark.parametrize("kind", KINDS)
def test_lanes_of_units_in_reverse_and_without_output_gradients(kind, reverse, with_dY, with_final):
    threads_for(2)
    options = dict(m=1, n_a=33, reverse=reverse, with_dY=with_dY, with_final=with_final)
    got = engine_sequence(kind, unit_ops(2, np.float64), **options)
    want = engine_sequence(kind, ArrayAPIOps(xp), **options)
    assert_same(got, want, np.float64, f"{kind} reverse={reverse}")


@pytest.mark.parametrize("kind", KINDS)
def test_inference_in_lanes_of_units_is_the_training_forward(kind):
    """Without a trace the LSTM's cell state and the gates are one block rewritten every step (stride 0 in time):
    each lane still writes only its own units of it."""
    threads_for(2)
    rng = np.random.default_rng(3)
    T, m, n_x, n_a, G = 9, 1, 5, 64, engine.GATES[kind]
    args = (kind, rng.standard_normal((T, m, n_x)), rng.standard_normal((G * n_a, n_x)) * 0.3,
            rng.standard_normal((G * n_a, n_a)) * 0.3, rng.standard_normal(G * n_a), rng.standard_normal(G * n_a),
            rng.standard_normal((m, n_a)), rng.standard_normal((m, n_a)) if kind == "lstm" else None)
    ops = unit_ops(2, np.float64)
    Y, h, c, trace = engine.sequence_forward(*args, ops=ops, keep=True)
    Y, h = np.array(Y), np.array(h)
    Yi, hi, ci, none = engine.sequence_forward(*args, ops=ops, keep=False)
    assert none is None and trace is not None
    np.testing.assert_array_equal(Yi, Y)
    np.testing.assert_array_equal(hi, h)
    want = engine.sequence_forward(*args, ops=ArrayAPIOps(xp), keep=False)[0]
    np.testing.assert_allclose(Yi, want, rtol=0, atol=1e-12)


def test_unit_blocks_cover_the_units_once_on_whole_vectors():
    for itemsize, align in ((4, 16), (8, 8)):
        for n_a in (1, 5, 16, 31, 32, 37, 64, 100, 256, 1000, 1024):
            for lanes in (1, 2, 3, 4):
                if lanes > n_a:
                    continue
                blocks = host.unit_blocks(n_a, lanes, itemsize)
                assert len(blocks) == lanes and blocks[0][0] == 0 and blocks[-1][1] == n_a
                assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(blocks, blocks[1:] + [(n_a, None)]))
                if n_a >= lanes * align:  # every lane but the last starts and ends on a 64-byte vector
                    assert all(u0 % align == 0 and u1 % align == 0 for u0, u1 in blocks[:-1])
                    sizes = [u1 - u0 for u0, u1 in blocks]  # whole vectors, the last one's rest added
                    assert max(sizes) - min(sizes) < 2 * align, (n_a, lanes, blocks)


def test_the_engine_chooses_lanes_of_rows_of_units_or_its_own_loop(monkeypatch):
    """Rows where they split (every lane at least MIN_LANE_ROWS, W_hh at most MAX_LANE_WEIGHT_BYTES); else units
    where each lane keeps MIN_LANE_UNITS; else the engine's loop (OpenBLAS has more than one thread here)."""
    threads_for(2)
    monkeypatch.setattr(host, "lane_count", lambda rows, n_a, gates, itemsize: max(1, min(2, rows // 8))
                        if gates * n_a * n_a * itemsize <= host.MAX_LANE_WEIGHT_BYTES else 1)
    monkeypatch.setattr(host, "unit_lane_count", lambda n_a: max(1, min(2, n_a // host.MIN_LANE_UNITS)))
    ops = host.HostFusedOps(xp, BUILT.lib)

    def chosen(rows, n_a, dtype=np.float32):
        return ops.direct_steps(dtype, check=engine.check_direct, rows=rows, n_a=n_a, gates=4)

    assert isinstance(chosen(64, 256), host.LaneSteps) and chosen(64, 256).lanes == 2
    for rows, n_a in ((1, 256), (8, 256), (64, 1024)):  # one sequence; too few rows; a 16 MiB W_hh
        steps = chosen(rows, n_a)
        assert isinstance(steps, host.UnitSteps) and steps.lanes == 2, (rows, n_a)
    assert chosen(1, 2 * host.MIN_LANE_UNITS - 1) is None  # too few units for two lanes


def test_the_real_counts_choose_units_for_one_sequence_and_for_a_large_weight():
    threads_for(2)
    limit, _ = cpu_runtime().lane_limit()
    assert host.unit_lane_count(256) == min(limit, 256 // host.MIN_LANE_UNITS)
    assert host.unit_lane_count(host.MIN_LANE_UNITS) == 1
    assert host.lane_count(1, 256, 4, 4) == 1 and host.lane_count(64, 1024, 4, 4) == 1  # rows don't split


@pytest.mark.parametrize("kind", KINDS)
def test_a_loop_that_gets_one_lane_runs_whole_on_this_thread(kind, monkeypatch):
    """Where the runtime gives the loop one lane (another Python thread's loop holds them), the lanes of units
    become one job of every unit: no barrier to wait at, the same results."""
    jobs = []
    ops = unit_ops(2, np.float64, jobs)
    rt = cpu_runtime()
    real = rt.lane_run

    def one_lane(wanted):
        return real(1)

    monkeypatch.setattr(rt, "lane_run", one_lane)
    got = engine_sequence(kind, ops, m=1, n_a=40)
    monkeypatch.undo()
    want = engine_sequence(kind, ArrayAPIOps(xp), m=1, n_a=40)
    assert jobs == [[(0, 40, False)]] * 2
    assert_same(got, want, np.float64, f"{kind} in one lane")


def test_lanes_of_units_that_could_not_all_run_at_once_are_refused_not_run():
    """A lane of units waits for the others at every step: more of them than OpenBLAS can run at once would never
    end, so the device refuses them before starting any."""
    threads = cpu_runtime().blas_threads() or 1
    device = host.HostDevice(np.float64, BUILT.lib, BLAS)
    T, m, n_a = 2, 1, 8
    lanes = threads + 1
    XW, S, C = np.zeros((T, m, 4 * n_a)), np.zeros((T + 1, m, n_a)), np.zeros((T + 1, m, n_a))
    W_hh, hw = np.zeros((4 * n_a, n_a)), np.zeros((m, 4 * n_a))
    barrier = lanes_module.lane_barrier(lanes)
    blocks = host.unit_blocks(n_a, lanes, 8)
    jobs = [device.forward_job("lstm", XW, W_hh, None, XW, S, C, hw, units=units, barrier=barrier)
            for units in blocks]
    with pytest.raises(RuntimeError, match=f"{lanes} lanes of units need as many threads at once"):
        device.run(jobs)
    with pytest.raises(ValueError, match="lanes of units and lanes of rows cannot run together"):
        device.run(jobs[:1] + [device.forward_job("lstm", XW, W_hh, None, XW, S, C, hw)])
    with pytest.raises(ValueError, match=r"units must be None \(all 8\) without a barrier, or \(u0, u1\)"):
        device.forward_job("lstm", XW, W_hh, None, XW, S, C, hw, units=(4, 9), barrier=barrier)


@DTYPES
@pytest.mark.parametrize("kind", KINDS)
def test_the_kernels_column_entries_write_only_their_columns(kind, dtype):
    """``xseq_<kernel>_<type>_cols``: columns ``[3, 11)`` of 4 rows of 16 units; every output outside them keeps its
    planted value, and inside them the whole-array kernel's value (to an ulp or two: the columns start off a
    vector, so the compiler's scalar lead-in and vector body may contract multiply-adds differently)."""
    from xseq.ops.kernel_source import KERNELS

    ctype = CTYPES[np.dtype(dtype)]
    rng = np.random.default_rng(7)
    m, n_a, col0, col1 = 4, 16, 3, 11
    for direction in ("forward", "backward"):
        name = f"xseq_{kind}_{direction}"
        params = KERNELS[name].parameters()

        def arrays(fill):
            out = []
            for pname, typ, raw, is_output in params:
                if typ == "int32":
                    out.append(n_a)
                    continue
                width = 4 if pname in ("gates", "saved") else engine.GATES[kind] if raw else 1
                if pname == "b_hn":
                    width = None
                shape = (n_a,) if width is None else (m, width * n_a)
                out.append(np.full(shape, np.nan, dtype) if is_output and fill else rng.uniform(-2, 2, shape)
                           .astype(dtype))
            return out

        inputs = arrays(False)
        whole = [a.copy() if isinstance(a, np.ndarray) else a for a in inputs]
        part = [a.copy() if isinstance(a, np.ndarray) else a for a in inputs]
        for args, outputs_nan in ((whole, False), (part, True)):
            for k, (pname, typ, raw, is_output) in enumerate(params):
                if is_output and outputs_nan:
                    args[k][...] = -7.0  # planted
        call(BUILT.lib, f"{name}_{ctype}", whole, m * n_a)
        call(BUILT.lib, f"{name}_{ctype}_cols", part, None, (m, n_a, col0, col1))
        for k, (pname, typ, raw, is_output) in enumerate(params):
            if not is_output:
                continue
            width = part[k].shape[1] // n_a
            got = part[k].reshape(m, width, n_a)
            want = whole[k].reshape(m, width, n_a)
            np.testing.assert_allclose(got[:, :, col0:col1], want[:, :, col0:col1], rtol=4 * np.finfo(dtype).eps,
                                       atol=4 * np.finfo(dtype).eps, err_msg=f"{name} {pname}")
            outside = np.concatenate([got[:, :, :col0], got[:, :, col1:]], axis=2)
            assert np.all(outside == -7.0), f"{name} wrote {pname} outside its columns"


def call(lib, symbol, args, n, cols=None):
    function = getattr(lib, symbol)
    c_args = []
    for a in args:
        c_args.append(ctypes.c_int(a) if isinstance(a, int) else ctypes.c_void_p(a.ctypes.data))
    if cols is None:
        c_args.append(ctypes.c_ssize_t(n))
    else:
        c_args += [ctypes.c_ssize_t(v) for v in cols]
    function.restype = None
    function(*c_args)


def test_one_sequence_under_inference_mode_through_the_public_layer():
    """``xseq.LSTM`` at batch 1 (lanes of units where two OpenBLAS threads are free), inside and outside
    ``xseq.inference_mode``: the same outputs, bit for bit, and the reference's."""
    rng = np.random.default_rng(2)
    layer = xseq.LSTM(8, 96, dtype="float64", seed=4)
    x = rng.standard_normal((8, 1, 12))
    y = np.array(layer.forward(x)[0])
    with xseq.inference_mode():
        yi = np.array(layer.forward(x)[0])
    np.testing.assert_array_equal(yi, y)
    with engine_reference():
        want = np.array(layer.forward(x)[0])
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-12)


def engine_reference():
    """The array-API reference steps for NumPy arrays while inside (``XSEQ_FUSED=0``, read at every call)."""
    import contextlib
    import os

    @contextlib.contextmanager
    def switched():
        before = os.environ.get("XSEQ_FUSED")
        os.environ["XSEQ_FUSED"] = "0"
        try:
            yield
        finally:
            if before is None:
                del os.environ["XSEQ_FUSED"]
            else:
                os.environ["XSEQ_FUSED"] = before

    return switched()


# ---------------------------------------------------------------- lanes of units on a busy machine


def test_two_stalled_loops_in_a_row_pause_the_lanes_of_units_doubling_and_a_good_one_resets(monkeypatch):
    """``note_meetings``: lanes that slept over a quarter of the loop's time (each, on average) stall it; one stalled
    loop alone pauses nothing (a lane descheduled once), two in a row make the next UNIT_PAUSE_FIRST loops of units
    run as one lane, a further stall right after twice as many; a loop that did not stall resets both."""
    from xseq.ops import runtime
    from xseq.ops.runtime import UNIT_PAUSE_FIRST, UNIT_STALLS_TO_PAUSE, CPURuntime

    assert UNIT_STALLS_TO_PAUSE == 2
    UNIT_STALL_SHARE = 0.25  # the module's value (conftest makes it infinite for every other test)
    monkeypatch.setattr(runtime, "UNIT_STALL_SHARE", UNIT_STALL_SHARE)
    rt = CPURuntime()
    wall = 1_000_000
    over = int(2 * UNIT_STALL_SHARE * wall) + 2
    assert not rt.note_meetings(wall, int(2 * UNIT_STALL_SHARE * wall) - 1, parties=2)  # just under: no stall
    assert not rt.units_paused()
    assert rt.note_meetings(wall, over, parties=2)  # a stall alone: no pause
    assert not rt.units_paused()
    assert not rt.note_meetings(wall, 0, parties=2)  # a good loop between them: still none
    assert rt.note_meetings(wall, over, parties=2)
    assert not rt.units_paused()
    assert rt.note_meetings(wall, 2 * wall, parties=2)  # the second in a row
    assert [rt.units_paused() for _ in range(UNIT_PAUSE_FIRST + 1)] == [True] * UNIT_PAUSE_FIRST + [False]
    assert rt.note_meetings(wall, 2 * wall, parties=2)  # stalled again right after the pause: twice as long
    assert sum(rt.units_paused() for _ in range(3 * UNIT_PAUSE_FIRST)) == 2 * UNIT_PAUSE_FIRST
    assert not rt.note_meetings(wall, 0, parties=2)  # a good loop: two stalls needed again, then UNIT_PAUSE_FIRST
    assert rt.note_meetings(wall, 2 * wall, parties=2)
    assert not rt.units_paused()
    assert rt.note_meetings(wall, 2 * wall, parties=2)
    assert sum(rt.units_paused() for _ in range(3 * UNIT_PAUSE_FIRST)) == UNIT_PAUSE_FIRST
    counts = rt.counts()
    assert counts["units stalled"] == 6 and counts["units paused"] == 4 * UNIT_PAUSE_FIRST
    assert "6 loops in lanes of units stalled" in rt.status()
    assert not rt.note_meetings(0, 5, parties=2)  # no time measured: nothing to judge
    rt.note_meetings(wall, 2 * wall, parties=2)
    rt.end_unit_pause()  # ends the count of stalls in a row too
    rt.note_meetings(wall, 2 * wall, parties=2)
    assert not rt.units_paused()


def test_after_two_stalls_the_loops_of_units_run_as_one_lane_with_the_same_results(monkeypatch):
    """A forward and a backward whose meetings slept most of their time (planted after the real runs) make the
    next loops run whole on this thread; the results stay the reference's."""
    from xseq.ops import runtime
    from xseq.ops.runtime import UNIT_PAUSE_FIRST

    monkeypatch.setattr(runtime, "UNIT_STALL_SHARE", 0.25)  # the module's value (conftest: infinite)
    threads_for(2)
    jobs = []
    ops = unit_ops(2, np.float64, jobs)
    real = host.HostDevice.run

    def slept(self, run_jobs):
        real(self, run_jobs)
        if run_jobs and run_jobs[0].barrier:
            run_jobs[0].keep_barrier.slept_ns = 10**12  # as if the lanes had waited for minutes

    rt = cpu_runtime()
    before = rt.counts()
    want = engine_sequence("lstm", ArrayAPIOps(xp), m=1, n_a=40)
    with monkeypatch.context() as patch:
        patch.setattr(host.HostDevice, "run", slept)
        got = engine_sequence("lstm", ops, m=1, n_a=40)  # the forward loop stalls, then the backward
    assert_same(got, want, np.float64, "the stalled loops")
    again = engine_sequence("lstm", ops, m=1, n_a=40)  # both loops paused: one lane each
    assert_same(again, want, np.float64, "after two stalls")
    blocks = [(u0, u1, True) for u0, u1 in host.unit_blocks(40, 2, 8)]
    assert jobs == [blocks, blocks, [(0, 40, False)], [(0, 40, False)]]
    after = rt.counts()
    assert after["units stalled"] == before["units stalled"] + 2
    assert after["units paused"] == before["units paused"] + 2
    while rt.units_paused():  # the rest of the pause, so that other tests get their lanes
        pass
    assert rt.counts()["units paused"] == before["units paused"] + UNIT_PAUSE_FIRST


def test_a_lane_that_waits_long_at_a_meeting_sleeps_and_the_barrier_counts_it():
    """Lanes of very unequal work (1 unit against 1023 of 1024): the small lane waits at every meeting longer
    than its spin and sleeps; ``sleeps`` and ``slept_ns`` say so, and the results are still the reference's."""
    threads_for(2)
    rng = np.random.default_rng(5)
    T, m, n_a, G = 3, 16, 1024, 4
    device = host.HostDevice(np.float32, BUILT.lib, BLAS)
    XW = rng.standard_normal((T, m, G * n_a)).astype(np.float32)
    W_hh = (rng.standard_normal((G * n_a, n_a)) * 0.03).astype(np.float32)
    S, C = np.zeros((T + 1, m, n_a), np.float32), np.zeros((T + 1, m, n_a), np.float32)
    saved, hw = np.empty_like(XW), np.empty((m, G * n_a), np.float32)
    barrier = lanes_module.lane_barrier(2)
    jobs = [device.forward_job("lstm", XW, W_hh, None, saved, S, C, hw, units=units, barrier=barrier)
            for units in ((0, 1), (1, n_a))]
    device.run(jobs)
    assert barrier.sleeps >= 1 and barrier.slept_ns > 0, (barrier.sleeps, barrier.slept_ns)
    S2, C2 = np.zeros_like(S), np.zeros_like(C)
    device.run([device.forward_job("lstm", XW, W_hh, None, np.empty_like(XW), S2, C2, np.empty_like(hw))])
    np.testing.assert_allclose(S, S2, rtol=0, atol=1e-5)


def test_waiting_for_the_lanes_to_start_is_not_counted_as_sleep():
    """The first meeting of a loop waits for the last lane to start (a thread waking, a lane packing more
    columns: here 1023 units' against 1): a loop of one step, whose only meeting is that one, counts no sleep,
    so that starting lanes never pauses them (``note_meetings``); the same lanes over three steps do count."""
    threads_for(2)
    rng = np.random.default_rng(7)
    m, n_a, G = 16, 1024, 4
    device = host.HostDevice(np.float32, BUILT.lib, BLAS)
    W_hh = (rng.standard_normal((G * n_a, n_a)) * 0.03).astype(np.float32)
    counted = {}
    for T in (1, 3):
        XW = rng.standard_normal((T, m, G * n_a)).astype(np.float32)
        S, C = np.zeros((T + 1, m, n_a), np.float32), np.zeros((T + 1, m, n_a), np.float32)
        saved, hw = np.empty_like(XW), np.empty((m, G * n_a), np.float32)
        barrier = lanes_module.lane_barrier(2)
        device.run([device.forward_job("lstm", XW, W_hh, None, saved, S, C, hw, units=units, barrier=barrier)
                    for units in ((0, 1), (1, n_a))])
        counted[T] = (barrier.sleeps, barrier.slept_ns, barrier.sleepers)
    assert counted[1] == (0, 0, 0), counted
    assert counted[3][0] >= 1 and counted[3][1] > 0 and counted[3][2] == 0, counted


# ---------------------------------------------------------------- the input projection in the lanes

@pytest.fixture
def small_inputs(monkeypatch):
    """The lanes make the products with W_ih from one input on (512 by default: these tests' sizes are small)."""
    monkeypatch.setattr(lanes_module, "MIN_INPUT_PRODUCT_INPUTS", 1)


def test_the_lanes_make_the_input_products_from_512_inputs_on():
    """Below 512 inputs the engine's OpenBLAS products are as fast (measured at 64 and 256: the addendum of
    docs/decisions/019-lanes-of-units.md); from there where the device packs."""
    for packed in (True, False):
        steps = host.UnitSteps(host.HostDevice(np.float32, BUILT.lib, BLAS, packed=packed), 2)
        assert [steps.input_products(n_x) for n_x in (1, 64, 511, 512, 1024)] == [False] * 3 + [packed] * 2
    assert not host.LaneSteps(host.HostDevice(np.float32, BUILT.lib, BLAS), 2).input_products(4096)


def projection_ops(lanes, dtype, projected, packed=None):
    """As :func:`unit_ops`; ``projected`` gets, for every run, whether each forward job computes its input
    projection, and for a backward job its columns ``(i0, i1)`` of the input's gradient (False: none); the ops'
    own products are counted under ``"matmul"``."""
    class Recorded(host.HostDevice):
        def run(self, run_jobs):
            projected.append([(job.dx is not None and (job.i0, job.i1)) if job.backward else bool(job.x1)
                              for job in run_jobs])
            return super().run(run_jobs)

    class Counted(host.HostFusedOps):
        def matmul(self, a, b, out):
            projected.append("matmul")
            return super().matmul(a, b, out)

    device = Recorded(dtype, BUILT.lib, BLAS, packed=packed)
    return Counted(xp, BUILT.lib, lanes=host.UnitSteps(device, lanes))


@pytest.mark.usefixtures("small_inputs")
@DTYPES
@pytest.mark.parametrize("kind", KINDS)
def test_lanes_of_units_compute_their_own_input_projection(kind, dtype):
    """With the packed product each lane computes its columns of X1 @ [W_ih b]^T before its loop (no [W_ih b] copy,
    no product for it in the engine); 50 steps of 2 rows: the 100 rows of X1 in a chunk of 64 and one of 36."""
    if not host.HostDevice(dtype, BUILT.lib, BLAS).packed:
        pytest.skip("the packed product is off in this build: the engine computes the projection")
    threads_for(2)
    rng = np.random.default_rng(5)
    T, m, n_x, n_a, G = 50, 2, 7, 40, engine.GATES[kind]
    args = (kind, rng.standard_normal((T, m, n_x)).astype(dtype), (rng.standard_normal((G * n_a, n_x)) * 0.3).astype(dtype),
            (rng.standard_normal((G * n_a, n_a)) * 0.3).astype(dtype), rng.standard_normal(G * n_a).astype(dtype),
            rng.standard_normal(G * n_a).astype(dtype), rng.standard_normal((m, n_a)).astype(dtype),
            rng.standard_normal((m, n_a)).astype(dtype) if kind == "lstm" else None)
    for keep in (True, False):
        projected = []
        got = engine.sequence_forward(*args, ops=projection_ops(2, dtype, projected), keep=keep)
        assert projected == [[True, True]], projected  # no "matmul": the lanes projected, both of them
        want = engine.sequence_forward(*args, ops=ArrayAPIOps(xp), keep=keep)
        for name, g, w in zip(("Y", "h_T", "c_T"), got[:3], want[:3]):
            if w is not None:
                tol = 1e-4 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(np.array(g), np.array(w), rtol=0, atol=tol * max(1.0, float(np.abs(w).max())),
                                           err_msg=f"{kind} keep={keep}: {name}")


@pytest.mark.usefixtures("small_inputs")
@pytest.mark.parametrize("kind", KINDS)
def test_the_projection_without_biases_and_in_one_lane(kind, monkeypatch):
    """No biases (the folded bias is zeros); and a loop the runtime gives one lane: one job of every row and unit,
    which projects every column itself."""
    if not host.HostDevice(np.float64, BUILT.lib, BLAS).packed:
        pytest.skip("the packed product is off in this build: the engine computes the projection")
    threads_for(2)
    rng = np.random.default_rng(6)
    T, m, n_x, n_a, G = 6, 1, 5, 48, engine.GATES[kind]
    args = (kind, rng.standard_normal((T, m, n_x)), rng.standard_normal((G * n_a, n_x)) * 0.3,
            rng.standard_normal((G * n_a, n_a)) * 0.3, None, None, rng.standard_normal((m, n_a)),
            rng.standard_normal((m, n_a)) if kind == "lstm" else None)
    want = engine.sequence_forward(*args, ops=ArrayAPIOps(xp))
    projected = []
    got = engine.sequence_forward(*args, ops=projection_ops(2, np.float64, projected))
    rt = cpu_runtime()
    real = rt.lane_run
    monkeypatch.setattr(rt, "lane_run", lambda wanted: real(1))
    alone = engine.sequence_forward(*args, ops=projection_ops(2, np.float64, projected))
    alone_grads = engine.sequence_backward(alone[3], dY=np.ones((T, m, n_a)), ops=projection_ops(2, np.float64, projected))
    monkeypatch.undo()
    want_grads = engine.sequence_backward(want[3], dY=np.ones((T, m, n_a)), ops=ArrayAPIOps(xp))
    assert projected == [[True, True], [True], [(0, n_x)], "matmul", "matmul"]
    for key, w in want_grads.items():
        if w is not None:
            np.testing.assert_allclose(np.array(alone_grads[key]), np.array(w), rtol=0, atol=1e-12, err_msg=key)
    for result in (got, alone):
        for g, w in zip(result[:3], want[:3]):
            if w is not None:
                np.testing.assert_allclose(np.array(g), np.array(w), rtol=0, atol=1e-12)


@pytest.mark.usefixtures("small_inputs")
def test_the_engine_projects_where_the_lanes_multiply_by_openblas():
    """Without the packed product (OpenBLAS's per-step products) the lanes take XW from the engine's product and
    leave dX to the engine's."""
    threads_for(2)
    projected = []
    got = engine_sequence("lstm", projection_ops(2, np.float64, projected, packed=False), m=1, n_a=40)
    want = engine_sequence("lstm", ArrayAPIOps(xp), m=1, n_a=40)
    assert projected == ["matmul", [False, False], [False, False], "matmul", "matmul", "matmul"]
    assert_same(got, want, np.float64, "openblas products")


@pytest.mark.usefixtures("small_inputs")
@pytest.mark.parametrize("n_x", [40, 9, 1], ids=["whole-vectors", "unaligned", "one-input"])
@DTYPES
@pytest.mark.parametrize("kind", KINDS)
def test_lanes_of_units_compute_the_inputs_gradient_after_their_loop(kind, dtype, n_x):
    """Each lane a block of dX's columns (whole 64-byte vectors where n_x allows; at n_x = 1 one lane has none),
    after a meeting: the other lanes' columns of dZ are read too. Every output and gradient against the reference."""
    if not host.HostDevice(dtype, BUILT.lib, BLAS).packed:
        pytest.skip("the packed product is off in this build: the engine computes dX")
    threads_for(2)
    projected = []
    shape = dict(m=2, n_a=40, n_x=n_x, dtype=dtype)
    got = engine_sequence(kind, projection_ops(2, dtype, projected), **shape)
    want = engine_sequence(kind, ArrayAPIOps(xp), **shape)
    columns = [tuple(block) for block in host.unit_blocks(n_x, 2, np.dtype(dtype).itemsize)]
    assert columns[0][0] == 0 and columns[0][1] == columns[1][0] and columns[1][1] == n_x
    assert (columns[1][0] == columns[1][1]) == (n_x == 1)
    assert projected == [[True, True], columns, "matmul", "matmul"]  # the two weight gradients stay the engine's
    assert_same(got, want, dtype, f"{kind}: n_x={n_x}")


def test_a_projection_the_lane_cannot_compute_is_refused():
    device = host.HostDevice(np.float64, BUILT.lib, BLAS, packed=True)
    T, m, n_x, n_a = 3, 2, 4, 8
    XW, S, C = np.zeros((T, m, 4 * n_a)), np.zeros((T + 1, m, n_a)), np.zeros((T + 1, m, n_a))
    W_hh, hw, W_ih, bias = np.zeros((4 * n_a, n_a)), np.zeros((m, 4 * n_a)), np.zeros((4 * n_a, n_x)), np.zeros(4 * n_a)
    X1 = np.zeros((T * m, n_x + 1))
    with pytest.raises(ValueError, match=r"projection: expected X1 \(6, 5\), W_ih \(32, 4\) and bias \(32,\)"):
        device.forward_job("lstm", XW, W_hh, None, XW, S, C, hw, projection=(X1[:, :n_x], W_ih, bias))
    with pytest.raises(ValueError, match="projection: XW must hold every row of every step in one block"):
        device.forward_job("lstm", XW[:, :1], W_hh, None, XW[:, :1], S[:, :1], C[:, :1], hw[:1],
                           projection=(X1[:T], W_ih, bias))
    plain = host.HostDevice(np.float64, BUILT.lib, BLAS, packed=False)
    with pytest.raises(ValueError, match="a lane computes the input projection by the packed product only"):
        plain.forward_job("lstm", XW, W_hh, None, XW, S, C, hw, projection=(X1, W_ih, bias))
