"""The CPU runtime (``xseq/ops/runtime.py``): the one owner of the lanes, NumPy's OpenBLAS thread count and the
packed weights.

* ``lanes_status()`` says "engine's loop" exactly where no loop runs in lanes (checked by running a sequence and
  counting lane runs): no host library, the lanes' gate off, ``XSEQ_FUSED=0``, ``XSEQ_LANES=0``, ``lanes=1``,
  one OpenBLAS thread; and the truth while several Python threads run loops;
* two Python threads: neither reads the other's 1 as OpenBLAS's count, one holds the lanes at a time, the
  other's loop runs on its own thread (or waits, ``contention="wait"``), OpenBLAS's count comes back when the
  last loop ends or the other thread ends; both threads compute what one thread computes;
* settings: what ``xseq.cpu_runtime`` accepts and refuses;
* a forked child gets a free runtime and OpenBLAS's count from before the loops.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import array_api_compat.numpy as xp
import numpy as np
import pytest

import xseq
from xseq.ops import host, native_layout, runtime

from .helpers import engine_sequence

BUILT = host.library()
BLAS, BLAS_REASON = host.numpy_openblas()
needs_blas = pytest.mark.skipif(BLAS is None, reason=f"the runtime's threads are NumPy's OpenBLAS's: {BLAS_REASON}")
needs_lanes = pytest.mark.skipif(
    BLAS is None or not BUILT.on(host.LANES),
    reason=f"no lanes here: {BLAS_REASON or BUILT.reason or host.features().get(host.LANES)}")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def rt():
    """The process's runtime with two OpenBLAS threads and the default settings; everything put back after."""
    before = BLAS.threads() if BLAS is not None else None
    state = xseq.cpu_runtime(lanes=None, contention="share", blas_threads=2 if BLAS is not None else None)
    state.forget_threads()  # the calls of earlier tests (this thread's) are not this test's
    yield state
    state = xseq.cpu_runtime()
    assert state._active == 0 and state._holder is None, "a test left a loop running"
    state.configure(lanes=None, contention="share")
    state.forget_threads()
    if before is not None:
        state.configure(blas_threads=before)


def lane_runs(monkeypatch):
    """The lanes of each lane run of one LSTM sequence through ``ops_for`` (16 rows: ``[2, 2]`` where lanes run,
    the forward loop and the backward loop)."""
    engine_sequence("lstm", None, m=16)  # the lanes' first use checks them (more runs): not counted
    calls = []
    real = host.HostDevice.run
    with monkeypatch.context() as patch:
        patch.setattr(host.HostDevice, "run", lambda self, jobs: calls.append(len(jobs)) or real(self, jobs))
        engine_sequence("lstm", None, m=16)
    return calls


def says_engine_loop():
    return host.lanes_status().startswith("engine's loop")


# ---------------------------------------------------------------- lanes_status tells the truth


@pytest.mark.parametrize("lanes", [pytest.param(True, marks=needs_lanes), False])
def test_lanes_status_without_a_host_library(monkeypatch, rt, lanes):
    """No library (no compiler, a failed build): NumPy's in-place steps, never lanes, whatever OpenBLAS has."""
    from xseq.ops.native_library import _Library

    with monkeypatch.context() as patch:
        patch.setattr(host, "library", lambda: _Library(reason="no C++ compiler (planted)"))
        assert host.lanes_status() == "engine's loop (no host library: no C++ compiler (planted))"
        assert host.host_ops(xp, np.float64) is None  # so no sequence can run in lanes
        assert lane_runs(patch) == []
    if lanes:
        assert not says_engine_loop() and lane_runs(monkeypatch) == [2, 2]  # the same process with its library


@needs_lanes
def test_lanes_status_with_the_lanes_gate_off(monkeypatch, rt):
    """A library whose lane_job is not Python's: the steps run, the lanes do not, and the status says so."""
    planted = type("Planted", (native_layout.LaneJob.__base__,), {"_fields_": native_layout.LaneJob._fields_[:-1]})
    try:
        with monkeypatch.context() as patch:
            patch.setitem(native_layout.SHARED_STRUCTS, "lane_job", planted)
            host.library.cache_clear()
            host._lanes_gate.cache_clear()
            said = host.lanes_status()
            assert said.startswith("engine's loop (the host library's lanes are off: lane_job's"), said
            assert lane_runs(patch) == []
    finally:
        host.library.cache_clear()
        host._lanes_gate.cache_clear()
    assert not says_engine_loop() and lane_runs(monkeypatch) == [2, 2]


@needs_lanes
@pytest.mark.parametrize("switch, value, said", [
    ("XSEQ_LANES", "0", "engine's loop (XSEQ_LANES=0)"),
    ("XSEQ_FUSED", "0", "engine's loop (the array-API reference steps: XSEQ_FUSED=0)"),
])
def test_lanes_status_with_an_environment_switch_off(monkeypatch, rt, switch, value, said):
    assert not says_engine_loop() and lane_runs(monkeypatch) == [2, 2]
    monkeypatch.setenv(switch, value)
    assert host.lanes_status() == said
    assert lane_runs(monkeypatch) == []


@needs_lanes
def test_lanes_status_with_lanes_set_to_one_and_one_openblas_thread(monkeypatch, rt):
    """The runtime's settings: ``lanes=1``; ``blas_threads=1`` (a container limited to one CPU)."""
    rt.configure(lanes=1)
    assert host.lanes_status() == "engine's loop (lanes=1 set by xseq.cpu_runtime)"
    assert lane_runs(monkeypatch) == []
    rt.configure(lanes=None, blas_threads=1)
    assert BLAS.threads() == 1
    assert host.lanes_status().startswith("one lane: every unmasked loop whole in C++ on the calling thread")
    assert host.lanes_status().endswith("(NumPy's OpenBLAS has 1 thread)")
    assert lane_runs(monkeypatch) == [1, 1]  # the forward and the backward loop, each one job on this thread
    rt.configure(blas_threads=2)
    assert host.lanes_status().startswith("up to 2 lanes on NumPy's OpenBLAS threads")
    assert lane_runs(monkeypatch) == [2, 2]


class Holder:
    """A Python thread that holds the lanes (a loop of ``wanted`` lanes, computing nothing) until :meth:`release`
    is set, then stays alive until :meth:`end`."""

    def __init__(self, wanted=2):
        self.entered, self.release, self.left, self.gone = (threading.Event() for _ in range(4))
        self.got = None
        self.thread = threading.Thread(target=self._hold, args=(wanted,))
        self.thread.start()
        assert self.entered.wait(30)

    def _hold(self, wanted):
        xseq.cpu_runtime().note_sequence()
        with xseq.cpu_runtime().lane_run(wanted) as got:
            self.got = got
            self.entered.set()
            self.release.wait(30)
        self.left.set()
        self.gone.wait(30)

    def end(self):
        self.release.set()
        self.gone.set()
        self.thread.join(30)


@needs_lanes
def test_while_another_thread_holds_the_lanes_the_count_and_status_are_the_real_ones(rt):
    """The bug of issue 22: a loop of another thread set OpenBLAS to 1, and this thread read that 1 as the count
    (no lanes, one-thread products: the lanes silently lost). The runtime answers with the count from before."""
    holder = Holder()
    try:
        assert holder.got == (2, 2)
        assert BLAS.threads() == 1  # what NumPy's products in any thread get meanwhile
        assert rt.blas_threads() == 2
        assert host.lane_count(32, 128, 4, 4) == 2
        said = host.lanes_status()
        assert said.startswith("up to 2 lanes on NumPy's OpenBLAS threads"), said
        assert "OpenBLAS held at 1 thread (back to 2 after)" in said
    finally:
        holder.end()
    assert BLAS.threads() == 1  # this thread's call (lane_count) and the holder's: two threads computed lately
    rt.forget_threads()
    assert BLAS.threads() == 2
    assert "held at" not in host.lanes_status()


# ---------------------------------------------------------------- two Python threads


def run_beside(holder, wanted=2):
    """A loop of ``wanted`` lanes on this thread, started while ``holder`` holds the lanes and ended after it lets
    go; returns what it got and whether it started before the holder let go."""
    seen = {}

    def body():
        xseq.cpu_runtime().note_sequence()
        with xseq.cpu_runtime().lane_run(wanted) as got:
            seen["got"], seen["holder done"] = got, holder.release.is_set()
            seen["threads in loop"] = BLAS.threads()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(0.3)
    started_early = "got" in seen
    holder.release.set()  # its loop ends; its thread lives on
    thread.join(30)
    holder.end()
    return seen, started_early


@needs_lanes
def test_share_a_loop_beside_another_threads_lanes_waits_for_them_then_runs_as_one_lane(rt):
    holder = Holder()
    seen, started_early = run_beside(holder)
    assert not started_early and seen["holder done"]  # it did not put a third thread on the two cores
    assert seen["got"] == (1, 2) and seen["threads in loop"] == 1  # one lane, on its own thread
    counts = rt.counts()
    assert counts["shared"] >= 1 and counts["waited"] >= 1
    assert BLAS.threads() == 2  # both threads gone: OpenBLAS has its count back


@needs_lanes
def test_wait_a_loop_beside_another_threads_lanes_gets_them_after(rt):
    rt.configure(contention="wait")
    holder = Holder()
    seen, started_early = run_beside(holder)
    assert not started_early and seen["got"] == (2, 2)
    assert BLAS.threads() == 2


def sequence_loop(rt, wanted=2):
    """What a sequence call that runs in lanes does with the runtime: note the call, run one loop; returns what the
    loop got."""
    rt.note_sequence()
    with rt.lane_run(wanted) as got:
        return got


class Looper:
    """A Python thread that makes one sequence call with a loop, then stays alive until :meth:`end`."""

    def __init__(self, rt):
        self.looped, self.gone, self.got = threading.Event(), threading.Event(), None
        self.thread = threading.Thread(target=self._run, args=(rt,))
        self.thread.start()
        assert self.looped.wait(30)

    def _run(self, rt):
        self.got = sequence_loop(rt)
        self.looped.set()
        self.gone.wait(30)

    def end(self):
        self.gone.set()
        self.thread.join(30)


@needs_lanes
def test_openblas_stays_at_one_thread_while_two_threads_compute_and_comes_back_when_one_is_left(rt):
    """Between two threads' loops their products take a core each too; one thread left: its count and lanes."""
    assert sequence_loop(rt) == (2, 2)  # this thread alone: it has the lanes
    other = Looper(rt)
    try:
        assert other.got == (1, 2)  # this thread's call was among the last ones: the other runs as one lane
        assert BLAS.threads() == 1 and rt.blas_threads() == 2  # held between the loops
        assert "several Python threads compute now" in host.lanes_status()
        # only this thread computes now: its calls push the other's out of the window
        grants = [sequence_loop(rt)[0] for _ in range(runtime.RECENT_CALLS)]
        assert grants == [1] * (runtime.RECENT_CALLS - 1) + [2]
        assert BLAS.threads() == 2
    finally:
        other.end()


@needs_lanes
def test_when_every_thread_that_computed_has_ended_openblas_gets_its_count_back(rt):
    """At once, not at a next call (which may never come); threads started anew for each step share at once."""
    first, second = Looper(rt), Looper(rt)
    assert first.got == (2, 2) and second.got == (1, 2)
    assert BLAS.threads() == 1  # two threads computed: held between their loops
    first.end()
    assert BLAS.threads() == 1  # the second may still compute
    second.end()
    assert BLAS.threads() == 2 and rt.blas_threads() == 2
    assert "several Python threads compute now" not in host.lanes_status()
    again = Looper(rt)  # the next step's new thread: the window still holds the last step's two
    try:
        assert again.got == (1, 2) and BLAS.threads() == 1
    finally:
        again.end()
    assert BLAS.threads() == 2


@needs_lanes
def test_switching_to_wait_lets_openblas_go(rt):
    first, second = Looper(rt), Looper(rt)
    try:
        assert BLAS.threads() == 1
        rt.configure(contention="wait")
        assert BLAS.threads() == 2
    finally:
        first.end()
        second.end()


@needs_lanes
def test_wait_takes_turns_and_never_holds_openblas_between_loops(rt):
    rt.configure(contention="wait")
    first, second = Looper(rt), Looper(rt)
    try:
        assert first.got == (2, 2) and second.got == (2, 2)
        assert BLAS.threads() == 2
    finally:
        first.end()
        second.end()


def train_layer(seed, out):
    n_x, n_a, m, T = 6, 16, 24, 7  # 24 rows: 3 lanes of 8 rows where OpenBLAS had 3 threads, 2 here
    rng = np.random.default_rng(seed)
    layer = xseq.LSTM(n_x, n_a, backend="numpy", dtype="float64", seed=seed)
    x, da = rng.standard_normal((n_x, m, T)), rng.standard_normal((n_a, m, T))
    for _ in range(3):
        y, _ = layer.forward(x)
        layer.zero_grad()
        dx = layer.backward(da)
    out[seed] = dict(y=y, dx=dx, **{k: g.copy() for k, g in layer.grads.items()})


@pytest.mark.parametrize("contention", ["share", "wait"])
@needs_lanes
def test_two_threads_each_training_a_layer_compute_what_one_thread_computes(rt, contention):
    rt.configure(contention=contention)
    alone = {}
    for seed in (1, 2):
        train_layer(seed, alone)
    before = rt.counts()
    together = {}
    threads = [threading.Thread(target=train_layer, args=(seed, together)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(together) == {1, 2}
    for seed in (1, 2):
        for name, want in alone[seed].items():
            np.testing.assert_allclose(together[seed][name], want, rtol=0, atol=1e-12 * max(1, np.abs(want).max()),
                                       err_msg=f"layer {seed}: {name}")
    after = rt.counts()
    assert sum(after.values()) - sum(before.values()) >= 12  # 2 threads x 3 steps x (forward, backward) loops
    assert BLAS.threads() == 2


@needs_lanes
def test_each_thread_packs_its_weight_into_its_own_buffer(rt):
    mine = rt.packed_buffer(np.float32, 100)
    assert rt.packed_buffer(np.float32, 50) is mine  # kept for the thread's next loop
    assert rt.packed_buffer(np.float32, 200).size >= 200
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(rt.packed_buffer(np.float32, 100)))
    thread.start()
    thread.join(30)
    assert not np.shares_memory(theirs[0], rt.packed_buffer(np.float32, 100))


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 0}, "lanes must be None (the environment's default) or an int >= 1; got 0"),
    ({"lanes": True}, "lanes must be None (the environment's default) or an int >= 1; got True"),
    ({"lanes": 2.0}, "lanes must be None (the environment's default) or an int >= 1; got 2.0"),
    ({"blas_threads": -1}, "blas_threads must be None (the environment's default) or an int >= 1; got -1"),
    ({"contention": "queue"}, "contention must be one of ('share', 'wait'); got 'queue'"),
])
def test_bad_settings_are_refused_and_change_nothing(rt, kwargs, message):
    before = (rt.lanes, rt.contention)
    with pytest.raises(ValueError) as info:
        xseq.cpu_runtime(**kwargs)
    assert str(info.value) == message
    assert (rt.lanes, rt.contention) == before


@needs_lanes
def test_forget_threads_gives_openblas_its_count_back_while_the_threads_live_on(rt):
    first, second = Looper(rt), Looper(rt)
    try:
        assert BLAS.threads() == 1
        rt.forget_threads()
        assert BLAS.threads() == 2
        assert sequence_loop(rt) == (2, 2)  # this thread alone now
    finally:
        first.end()
        second.end()


def test_one_runtime_a_process():
    assert xseq.cpu_runtime() is xseq.cpu_runtime() is runtime.cpu_runtime()
    assert isinstance(xseq.cpu_runtime(), xseq.CPURuntime)


@needs_blas
def test_the_lanes_setting_bounds_the_lane_count(monkeypatch, rt):
    monkeypatch.setattr(BLAS, "threads", lambda: 64)
    assert host.lane_count(1024, 16, 4, 4) == runtime.MAX_LANES
    rt.configure(lanes=3)
    assert host.lane_count(1024, 16, 4, 4) == 3
    assert rt.lane_limit() == (3, "")
    monkeypatch.setenv("XSEQ_LANES", "0")  # a setting passed to the runtime wins over the environment's default
    assert host.lane_count(1024, 16, 4, 4) == 3
    rt.configure(lanes=None)
    assert host.lane_count(1024, 16, 4, 4) == 1


@needs_lanes
def test_blas_threads_set_while_a_loop_runs_is_the_count_after_it(rt):
    holder = Holder()
    try:
        rt.configure(blas_threads=3)
        assert BLAS.threads() == 1 and rt.blas_threads() == 3
    finally:
        holder.end()
    assert BLAS.threads() == 3


def test_blas_threads_without_numpys_openblas_is_refused(monkeypatch):
    monkeypatch.setattr(runtime, "numpy_openblas", lambda: (None, "NumPy's BLAS is not its bundled OpenBLAS"))
    with pytest.raises(RuntimeError, match="blas_threads=2 cannot be set: NumPy's BLAS is not its bundled"):
        xseq.cpu_runtime(blas_threads=2)
    assert xseq.cpu_runtime().lane_limit() in ((1, "NumPy's BLAS is not its bundled OpenBLAS"), (1, "XSEQ_LANES=0"))


# ---------------------------------------------------------------- fork


@needs_lanes
def test_a_forked_child_gets_a_free_runtime_and_openblass_count(rt):
    """A thread holds the lanes (OpenBLAS at 1), computing nothing, when the main thread forks: in the child
    that thread does not exist; its runtime must not wait for it, and OpenBLAS has its count back."""
    code = textwrap.dedent("""
        import os, signal, sys, threading
        import numpy as np
        import xseq
        from xseq.ops import host
        import tests.test_lanes as t
        blas, _ = host.numpy_openblas()
        xseq.cpu_runtime(blas_threads=2)
        want = t.run_sequence("lstm", t.lanes_ops(2, np.float64))
        entered, release = threading.Event(), threading.Event()
        def hold():
            with xseq.cpu_runtime().lane_run(2):
                entered.set()
                release.wait()
        holder = threading.Thread(target=hold)
        holder.start()
        entered.wait()
        assert blas.threads() == 1
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a child that waits for the parent's thread would hang
            if blas.threads() != 2:
                os._exit(4)
            calls = []
            got = t.run_sequence("lstm", t.lanes_ops(2, np.float64, calls))
            ok = all(np.array_equal(got[k], want[k]) for k in want) and calls == [2, 2]
            os._exit(0 if ok and blas.threads() == 2 else 3)
        _, status = os.waitpid(pid, 0)
        release.set()
        holder.join()
        assert blas.threads() == 2
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)


# ---------------------------------------------------------------- the packed weights' buffer


def _vm_flags(address):
    """The kernel's VmFlags of the mapping holding ``address`` (Linux's /proc/self/smaps), or None."""
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return None
    flags = None
    inside = False
    for line in text.splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            flags = line.split()[1:]
    return flags


def test_packed_weights_lie_in_huge_pages_from_256_kib_on():
    """A lane reads its packed weight at every step: from 256 KiB on the buffer starts on a 2 MiB boundary of a
    mapping advised for transparent huge pages (VmFlags "hg"); smaller ones are NumPy's own."""
    import mmap

    from xseq.ops.runtime import HUGE_PAGE, HUGE_PAGE_FROM, huge_page_array

    small = huge_page_array(HUGE_PAGE_FROM // 8 - 1, np.float64)
    assert small.shape == (HUGE_PAGE_FROM // 8 - 1,) and small.dtype == np.float64 and small.base is None
    for size, dtype in ((HUGE_PAGE_FROM // 4, np.float32), (3 * HUGE_PAGE // 8 + 5, np.float64)):
        a = huge_page_array(size, dtype)
        assert a.shape == (size,) and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        a[...] = 7
        assert float(a[0]) == float(a[-1]) == 7.0
        if getattr(mmap, "MADV_HUGEPAGE", None) is None:
            pytest.skip("this platform has no MADV_HUGEPAGE: NumPy's buffers")
        assert a.ctypes.data % HUGE_PAGE == 0
        flags = _vm_flags(a.ctypes.data)
        if flags is None:
            pytest.skip("no /proc/self/smaps to read the mapping's flags from")
        assert "hg" in flags, flags


def test_a_loops_packed_weights_come_from_the_huge_page_buffer():
    rt = runtime.cpu_runtime()
    buffer = rt.packed_buffer(np.float32, 300_000)
    assert buffer.size >= 300_000 and buffer.dtype == np.float32
    assert rt.packed_buffer(np.float32, 1000) is buffer  # kept for the thread's next loop
    from xseq.ops.runtime import HUGE_PAGE
    import mmap
    if getattr(mmap, "MADV_HUGEPAGE", None) is not None:
        assert buffer.ctypes.data % HUGE_PAGE == 0
