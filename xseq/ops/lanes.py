"""Lanes: the engine's time loop on blocks of rows, one core each, on NumPy's own OpenBLAS threads.

The per-step product of a recurrence is small: (64, 256) @ (256, 1024) is 34 MFLOP, a fraction of a
millisecond, and NumPy's OpenBLAS splits it over its threads at every step, then runs the step's
pointwise kernel on one core while the other waits. The examples of a batch never meet in a
recurrence, so the time loop can be cut by rows instead: each core runs the whole loop on its own
examples (one-thread products, its own pointwise work, no Python array views: DirectSteps' two calls
a step, by address, ``xseq/ops/native/loops.h``) and no core waits for another until the loop ends.
The lanes run on OpenBLAS's own threads (:meth:`HostDevice.run`), so they share the cores with nothing.
:meth:`xseq.ops.host.HostFusedOps.direct_steps` decides where they run; the process's
:class:`~xseq.ops.runtime.CPURuntime` owns the lanes, OpenBLAS's thread count and the packed weights, and
decides how loops of several Python threads share the cores.
"""

from __future__ import annotations

import ctypes
import functools
import time

import numpy as np

from .kernel_source import CTYPES
from .native_bindings import address
from .native_features import PACKED_PRODUCTS, gate
from .native_layout import LaneBarrier, LaneJob, layout_problem
from .runtime import MAX_LANES, cpu_runtime

# Why: see docs/decisions/013-lane-weight-limit-8mib.md
#: Lanes are used where they were measured faster than the engine's loop with NumPy's threads (the
#: 2-core benchmark machine, forward + backward, docs/decisions/011-lanes.md): 0.54x-0.73x of the
#: engine's time at small language-model sizes (m = 32, n_a = 64-128), 0.85x-0.96x from PTB small's
#: (m = 20, n_a = 200) to (64, 512) and (20, 650); not with n_a = 1024 (1.04x-1.09x), where every
#: lane reads the whole recurrent weight (13-17 MB) at every step and two threads of one product read
#: half of it each (with OpenBLAS's products in the lanes; with the packed products 0.99x-1.05x at
#: 1024 units, 0.64x at (20, 650)). So: the recurrent weight ``W_hh`` at most this many bytes, and every
#: lane at least MIN_LANE_ROWS rows.
MAX_LANE_WEIGHT_BYTES = 8 << 20
MIN_LANE_ROWS = 8
__all__ = ["MAX_LANES", "MAX_LANE_WEIGHT_BYTES", "MIN_LANE_ROWS", "MIN_LANE_UNITS", "HostDevice", "LaneSteps",
           "UnitSteps", "lane_barrier", "lane_count", "packed_products", "row_blocks", "unit_blocks", "unit_lane_count"]


def lane_count(rows, n_a, gates, itemsize):
    """How many lanes a sequence of ``rows`` examples, ``n_a`` units and ``gates`` gate blocks gets (1: none).

    None when ``W_hh`` (``gates * n_a * n_a`` elements of ``itemsize``
    bytes) is larger than :data:`MAX_LANE_WEIGHT_BYTES`. Otherwise as many
    as :meth:`xseq.ops.runtime.CPURuntime.lane_limit` allows (one per thread
    of NumPy's OpenBLAS outside the loops: ``OPENBLAS_NUM_THREADS``/
    ``OMP_NUM_THREADS``, else one per core, a user's limit being the lanes'
    limit too; at most :data:`MAX_LANES`; ``XSEQ_LANES=0`` or ``lanes=1``:
    none), and no more than keep :data:`MIN_LANE_ROWS` rows in every lane.
    Where lanes may run, the call tells the runtime that this Python thread
    starts a sequence (:meth:`xseq.ops.runtime.CPURuntime.note_sequence`).
    """
    runtime = cpu_runtime()
    limit, _ = runtime.lane_limit()
    if limit < 2:
        return 1
    runtime.note_sequence()  # how several Python threads share the cores (xseq.ops.runtime)
    if gates * n_a * n_a * itemsize > MAX_LANE_WEIGHT_BYTES:
        return 1
    return max(1, min(limit, rows // MIN_LANE_ROWS))


def unit_lane_count(n_a):
    """How many lanes of units (:class:`UnitSteps`) a loop of ``n_a`` units gets where its rows are not split (1: none).

    As many as :meth:`xseq.ops.runtime.CPURuntime.lane_limit` allows, and
    no more than keep :data:`MIN_LANE_UNITS` units in every lane.
    """
    limit, _ = cpu_runtime().lane_limit()
    return max(1, min(limit, n_a // MIN_LANE_UNITS))


# Why: see docs/decisions/016-packed-weight-product-avx512.md
def packed_products(lib):
    """Whether the lanes' per-step products take the weight packed once a loop (``xseq/ops/native/packed.h``).

    At the build's vector width (AVX-512, AVX2 or NEON), except where the
    build's vectors are narrower than the CPU's: 0.61x-0.84x of a one-thread
    OpenBLAS call's time at the lanes' shapes with AVX-512, 0.60x-0.93x with
    AVX2 (float32 and float64, docs/decisions/016-packed-weight-product-avx512.md
    and its addendum). Elsewhere the lanes call NumPy's OpenBLAS.
    The feature's gate (:data:`xseq.ops.native_features.PACKED_PRODUCTS`) says why not.
    """
    return gate(lib, PACKED_PRODUCTS).on


# Why: see docs/decisions/012-lanes-on-openblas-threads.md
class HostDevice:
    """The engine's time loops in C++ (``xseq/ops/native/loops.h``) on lanes of rows, on NumPy's OpenBLAS threads.

    :meth:`forward_job`/:meth:`backward_job` describe one lane's loop;
    :meth:`run` runs a list of them at once: the first on the calling
    thread, the others on OpenBLAS's threads (``gotoblas_pthread``), with
    every product inside a lane on that lane's thread alone. So a lane is
    one core, and no thread is added to the process: the threads that run
    the lanes are the ones that would otherwise spin waiting for NumPy's
    next product (a separate pool of lane threads competed with them for
    the cores and ran at about half speed).

    ``openblas_set_num_threads_local`` sets the process's count in NumPy's
    (pthreads) build, not the thread's: the process's
    :class:`~xseq.ops.runtime.CPURuntime` sets it to 1 while any loop runs
    and back after the last, and gives the lanes to one Python thread at a
    time; a loop that does not get them runs its jobs one after another on
    its own thread (:meth:`~xseq.ops.runtime.CPURuntime.lane_run`).

    A library whose ``lane_job`` is not laid out as :attr:`job_type` is
    refused (``ValueError``): the jobs are handed to C++ as raw memory.
    """

    #: The ctypes restatement of ``xseq_loops::lane_job``, checked against the library's layout.
    job_type = LaneJob

    def __init__(self, dtype, lib, blas, packed=None):
        problem = layout_problem(lib, "lane_job", self.job_type)
        if problem:
            raise ValueError(f"the host library's lanes cannot be used: {problem}")
        self.dtype = np.dtype(dtype)
        self._blas = blas
        ctype = CTYPES[self.dtype]
        self._gemm_address = ctypes.cast(blas.gemm[self.dtype], ctypes.c_void_p).value
        self._lane = getattr(lib, f"xseq_lane_{ctype}")
        self._lane.argtypes, self._lane.restype = [ctypes.c_void_p], None
        self._lane_address = ctypes.cast(self._lane, ctypes.c_void_p).value
        #: whether the lanes' per-step products use the weight packed once a loop rather than NumPy's OpenBLAS
        self.packed = packed_products(lib) if packed is None else bool(packed)
        if self.packed:
            packed_size = getattr(lib, f"xseq_packed_size_{ctype}")
            packed_size.argtypes, packed_size.restype = [ctypes.c_int64, ctypes.c_int64], ctypes.c_int64
            self._packed_size = functools.lru_cache(maxsize=256)(packed_size)  # asked at every loop

    def forward_job(self, kind, XW, W_hh, b_hn, saved, S, C, hw, units=None, barrier=None, projection=None):
        """A lane of :class:`~xseq.ops.fused.DirectSteps`' forward loop: writes ``S[1:]``, ``C[1:]``, ``saved``.

        ``units``: ``(u0, u1)``, the hidden units this lane owns in every row
        (None: all of them, a lane of rows); ``barrier``: the
        :class:`~xseq.ops.native_layout.LaneBarrier` of the lanes that share the rows.
        ``projection``: None where ``XW`` holds the input projection already;
        else ``(X1, W_ih, bias)``, the engine's ``(T m, n_x + 1)`` rows ``[x, 1]``,
        ``W_ih`` and the folded biases: the lane computes its columns of ``XW``
        (every row of every step: a lane of units, or one lane of every row)
        before its loop, by the packed product (:attr:`packed` only).
        """
        T, m, _ = XW.shape
        job = self._job(0, kind, T, m, S.shape[2], units, barrier)
        if T == 0:
            return job
        if projection is not None:
            self._projection(job, XW, *projection)
        job.xw, job.xw_step = self._steps(XW)
        job.s, job.s_step = self._steps(S)
        if C is not None:
            job.c, job.c_step = self._steps(C)
        if saved is not None:
            job.g, job.g_step = self._steps(saved)
        job.w, job.hw = self._block(W_hh), self._block(hw)
        job.b_hn = None if b_hn is None else self._block(b_hn)
        return job

    def backward_job(self, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, units=None, barrier=None, shared=None,
                     input_grad=None):
        """A lane of :class:`~xseq.ops.fused.DirectSteps`' backward loop: ``dh``/``dc`` (C-contiguous) hold the
        final states' gradients and are overwritten with the first states'; writes ``dZ`` (and ``dHW``).

        ``units`` and ``barrier`` as for :meth:`forward_job`; lanes that share
        rows share ``shared``: ``(work, zeros)``, the loop's four ``(m, n_a)``
        blocks and one of zeros (None: the lane's own). ``input_grad``: None,
        or ``(dX, W_ih, i0, i1)``: after its loop (and a meeting, for a lane of
        units) the lane computes columns ``i0 .. i1-1`` of ``dX = dZ @ W_ih``,
        ``dX`` being ``(T m, n_x)``, by the packed product (:attr:`packed` only).
        """
        T, m, _ = dZ.shape
        n_a = S.shape[2]
        job = self._job(1, kind, T, m, n_a, units, barrier)
        if T == 0:
            return job
        if input_grad is not None:
            self._input_grad(job, dZ, *input_grad)
        if shared is None:
            shared = (np.empty(4 * m * n_a, dtype=self.dtype), np.zeros((m, n_a), dtype=self.dtype))
        job.keep_work, job.keep_dy = shared
        if dY is None:  # no output gradient: every step reads one block of zeros
            job.dy, job.dy_step = self._block(job.keep_dy), 0
        else:
            job.dy, job.dy_step = self._steps(dY)
        if saved is not None:
            job.g, job.g_step = self._steps(saved)
        if C is not None:
            job.c, job.c_step = self._steps(C)
        job.s, job.s_step = self._steps(S)
        job.dz, job.z_step = self._steps(dZ)
        job.dhw, job.hw_step = self._steps(dHW)
        job.w, job.work = self._block(W_hh), self._block(job.keep_work)  # work: the loop's two dh and two dc
        job.dh, job.dc = self._block(dh), None if dc is None else self._block(dc)
        return job

    def _projection(self, job, XW, X1, W_ih, bias):
        """Point ``job`` at the input projection it computes itself (:meth:`forward_job`'s ``projection``)."""
        self._check_input_product("the input projection", "projection", "XW", XW)
        T, m, GN = XW.shape
        n_x = W_ih.shape[1]
        if X1.shape != (T * m, n_x + 1) or W_ih.shape != (GN, n_x) or bias.shape != (GN,):
            raise ValueError(f"projection: expected X1 ({T * m}, {n_x + 1}), W_ih ({GN}, {n_x}) and bias ({GN},) "
                             f"for XW {XW.shape}; got {X1.shape}, {W_ih.shape} and {bias.shape}")
        job.x1, job.w_ih, job.b_in, job.n_x = self._block(X1), self._block(W_ih), self._block(bias), n_x

    def _input_grad(self, job, dZ, dX, W_ih, i0, i1):
        """Point ``job`` at the columns of the input's gradient it computes (:meth:`backward_job`'s ``input_grad``)."""
        self._check_input_product("the input's gradient", "input_grad", "dZ", dZ)
        T, m, GN = dZ.shape
        n_x = W_ih.shape[1]
        if dX.shape != (T * m, n_x) or W_ih.shape != (GN, n_x) or not 0 <= i0 <= i1 <= n_x:
            raise ValueError(f"input_grad: expected dX ({T * m}, {n_x}), W_ih ({GN}, {n_x}) and 0 <= i0 <= i1 <= {n_x} "
                             f"for dZ {dZ.shape}; got {dX.shape}, {W_ih.shape}, {i0} and {i1}")
        job.dx, job.w_ih, job.n_x, job.i0, job.i1 = self._block(dX), self._block(W_ih), n_x, i0, i1

    def _check_input_product(self, what, argument, name, steps):
        """Refuse an input product (``what``, given as ``argument``) a lane cannot make: without the packed product,
        or where ``steps`` (the ``(T, m, G n_a)`` array ``name``) is not every row of every step in one block, as
        the lane reads it (the ``T m`` rows of one matrix)."""
        if not self.packed:
            raise ValueError(f"a lane computes {what} by the packed product only; "
                             "this device's products are OpenBLAS's (packed is False)")
        if steps.strides[0] != steps.shape[1] * steps.strides[1]:
            raise ValueError(f"{argument}: {name} must hold every row of every step in one block; "
                             f"got strides {steps.strides}")

    def _job(self, backward, kind, T, m, n_a, units, barrier):
        u0, u1 = (0, n_a) if units is None else units
        if not 0 <= u0 < u1 <= n_a or (barrier is None) != (units is None):
            raise ValueError(f"units must be None (all {n_a}) without a barrier, or (u0, u1) with "
                             f"0 <= u0 < u1 <= {n_a} and a barrier; got {units!r} and {barrier!r}")
        job = self.job_type(backward=backward, kind=_KIND_CODES[kind], T=T, m=m, n_a=n_a, gemm=self._gemm_address,
                            u0=u0, u1=u1)
        if barrier is not None:
            job.keep_barrier, job.barrier = barrier, ctypes.addressof(barrier)
        return job

    def run(self, jobs):
        """Run the lanes ``jobs`` at once (as many at a time as OpenBLAS has threads) and return when all are done.

        Where :attr:`packed`, each lane packs the right operand of its per-step product (``W_hh.T`` forward,
        ``W_hh`` backward; its own columns for a lane of units) once, at its start. Where the process's runtime
        gives this loop one lane (another Python thread's loop is running: ``contention="share"``), the jobs of
        rows run one after another on the calling thread. Lanes of units wait for each other at every step: all
        of them must run at once, or they are refused (``RuntimeError``) before any starts.
        """
        jobs = [job for job in jobs if job.T > 0]
        if not jobs:
            return
        units = [job for job in jobs if job.barrier]
        if units and len(units) != len(jobs):
            raise ValueError("lanes of units and lanes of rows cannot run together")
        with cpu_runtime().lane_run(len(jobs)) as (lanes, threads):
            if units and min(lanes, threads or 1) < len(jobs):
                # the lanes of units meet at every step: all of them must run at once, or none would end
                raise RuntimeError(f"{len(jobs)} lanes of units need as many threads at once; "
                                   f"{min(lanes, threads or 1)} are free")
            if self.packed:
                self._pack_for(jobs)
            if lanes < 2:  # on this thread alone, beside OpenBLAS's threads rather than on them
                for job in jobs:
                    self._lane(ctypes.addressof(job))
                return
            at_once = max(1, min(threads, len(jobs)))  # never more lanes than OpenBLAS has threads to run them
            for first in range(0, len(jobs), at_once):
                group = jobs[first:first + at_once]
                structs = (self.job_type * len(group))(*group)  # one C array, as gotoblas_pthread strides it
                self._blas.run_on_threads(len(group), self._lane_address, ctypes.addressof(structs),
                                          ctypes.sizeof(self.job_type))

    def _pack_for(self, jobs):
        """Give every job room for its packed weight, in this Python thread's buffer (the runtime's, kept for its
        next run); each lane packs its own on its own core, at its start: a lane of rows the whole weight
        (``W_hh.T`` forward, ``W_hh`` backward), a lane of units its own columns of it."""
        sizes = []
        for job in jobs:
            GN = _GATES[job.kind] * job.n_a
            units = job.u1 - job.u0
            # forward: G blocks of (n_a, units) of W_hh.T (one (n_a, G n_a) for a lane of rows);
            # backward: (G n_a, units)
            if job.backward:
                sizes.append(self._packed_size(GN, units))
            elif units == job.n_a:
                sizes.append(self._packed_size(job.n_a, GN))
            else:
                sizes.append(_GATES[job.kind] * self._packed_size(job.n_a, units))
        inputs = [self._input_packed_size(job) for job in jobs]
        buffer = cpu_runtime().packed_buffer(self.dtype, sum(sizes) + sum(inputs))
        start = address(buffer)
        for job, size, input_size in zip(jobs, sizes, inputs):
            job.packed = start
            start += size * self.dtype.itemsize
            if input_size:
                job.packed_in = start
                start += input_size * self.dtype.itemsize

    def _input_packed_size(self, job):
        """Elements of ``W_ih`` packed for ``job``'s input product (0: none): for the projection, its G blocks of
        ``(n_x + 1, units)`` of ``[W_ih b].T``; for the input's gradient, its columns of ``W_ih``, ``(G n_a, i1 - i0)``."""
        G = _GATES[job.kind]
        if job.x1:
            return G * self._packed_size(job.n_x + 1, job.u1 - job.u0)
        if job.dx:
            return self._packed_size(G * job.n_a, job.i1 - job.i0)
        return 0

    def _block(self, a):
        if a.dtype != self.dtype or not a.flags.c_contiguous:
            raise ValueError(f"the time loops need C-contiguous {self.dtype} blocks; got {a.dtype} "
                             f"of shape {a.shape} with strides {a.strides}")
        return address(a)

    def _steps(self, a):
        """``(address of a[0], elements from a[t] to a[t+1])``; each step's block C-contiguous."""
        return self._block(a[0, ...]), a.strides[0] // a.itemsize


_KIND_CODES = {"rnn": 0, "lstm": 1, "gru": 2}
_GATES = {0: 1, 1: 4, 2: 3}  # gate blocks by kind code


def row_blocks(m, lanes):
    """``lanes`` contiguous ``(start, stop)`` blocks of ``range(m)``, as equal as can be (the first ones larger)."""
    size, extra = divmod(m, lanes)
    blocks, start = [], 0
    for k in range(lanes):
        stop = start + size + (1 if k < extra else 0)
        blocks.append((start, stop))
        start = stop
    return blocks


# Why: see docs/decisions/011-lanes.md
class LaneSteps:
    """The engine's unmasked time loops on blocks of rows, one lane (thread) per block.

    The examples of a batch never meet in a recurrence: row ``r`` of step
    ``t + 1`` depends only on row ``r`` of step ``t``. So each lane runs the
    whole time loop on its own rows -- its own per-step product ``(rows, n_a)
    @ (n_a, G n_a)`` on one core and its own pointwise work, in one C++ call
    (``xseq/ops/native/loops.h``: :class:`~xseq.ops.fused.DirectSteps`' two calls a step)
    -- and the lanes never wait for each other; the loops end together.
    Every buffer a lane touches is its rows of the engine's buffers (each
    step's rows stay one contiguous block), so the results are the engine's
    loop's (up to the rounding of a product split differently over threads).

    ``device`` is :class:`HostDevice`: it describes each lane's loop and
    runs them together. ``lanes`` is the count asked for; the process's
    :class:`~xseq.ops.runtime.CPURuntime` gives one where another Python
    thread's loop is running (the rows then stay one block, on this thread).
    """

    #: The forward loop takes ``W_hh`` itself (each lane packs its transpose), not a transposed copy.
    forward_weight = "W_hh"

    def __init__(self, device, lanes):
        self.device, self.lanes = device, lanes

    def input_products(self, n_x):
        """False: the engine makes the products with ``W_ih`` (one OpenBLAS product for every lane's rows)."""
        return False

    def forward(self, kind, XW, W_hh, b_hn, saved, S, C, hw):
        """As :meth:`~xseq.ops.fused.DirectSteps.forward`, but by ``W_hh`` itself (:attr:`forward_weight`)."""
        def lane(start, stop):
            rows = slice(start, stop)
            return self.device.forward_job(kind, XW[:, rows], W_hh, b_hn, None if saved is None else saved[:, rows],
                                           S[:, rows], None if C is None else C[:, rows], hw[rows])

        with cpu_runtime().lane_run(self.lanes) as (lanes, _):
            self.device.run([lane(*block) for block in row_blocks(XW.shape[1], lanes)])

    def backward(self, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty):
        """As :meth:`~xseq.ops.fused.DirectSteps.backward`: writes ``dZ`` (and ``dHW``); returns ``(dh0, dc0)``."""
        m, _ = dh.shape
        dh0, dc0 = _state_gradients(dh, dc, empty)

        def lane(start, stop):
            rows = slice(start, stop)
            return self.device.backward_job(kind, None if saved is None else saved[:, rows], S[:, rows],
                                            None if C is None else C[:, rows], W_hh,
                                            None if dY is None else dY[:, rows], dh0[rows],
                                            None if dc0 is None else dc0[rows], dZ[:, rows], dHW[:, rows])

        with cpu_runtime().lane_run(self.lanes) as (lanes, _):
            self.device.run([lane(*block) for block in row_blocks(m, lanes)])
        return dh0, dc0


#: Lanes of units make the products with ``W_ih`` (the projection, the input's gradient) from this many inputs
#: on (:meth:`UnitSteps.input_products`; docs/decisions/019-lanes-of-units.md, addendum).
MIN_INPUT_PRODUCT_INPUTS = 512

#: A lane of units owns at least this many hidden units (a step's share of the work must outweigh the
#: lanes' meeting at its end: about a tenth of a microsecond on the benchmark machine).
MIN_LANE_UNITS = 32


def unit_blocks(n_a, lanes, itemsize):
    """``lanes`` contiguous ``(u0, u1)`` blocks of ``range(n_a)``, each a whole number of 64-byte vectors where
    ``n_a`` allows (then a lane's columns start on a vector of the packed product), as equal as can be."""
    align = max(1, 64 // itemsize)
    if n_a < lanes * align:
        return row_blocks(n_a, lanes)
    chunks = row_blocks(n_a // align, lanes)
    blocks = [(u0 * align, u1 * align) for u0, u1 in chunks]
    blocks[-1] = (blocks[-1][0], n_a)  # the units past the last whole vector go to the last lane
    return blocks


# Why: see docs/decisions/019-lanes-of-units.md
class UnitSteps:
    """The engine's unmasked time loops with the hidden units split over lanes, every lane on every row.

    For a batch too small to split by rows (one sequence at a time: batch 1)
    or a recurrent weight too large for every lane to read whole at every
    step (``n_a = 1024``): lane ``k`` owns units ``u0 .. u1-1`` and computes
    their columns of each step's product (its own columns of ``W_hh``,
    packed once on its own core: half the weight a lane for two) and their
    pointwise step, then meets the other lanes (``xseq/ops/native/loops.h``:
    the next step's product reads the whole hidden state). Backward likewise:
    its units' step, the meeting, then its units' columns of the next
    ``dh`` from every lane's ``dz``. One meeting a step each way.

    Where the process's :class:`~xseq.ops.runtime.CPURuntime` gives the loop
    one lane (another Python thread's loop), it runs whole on the calling
    thread: a lane of all the rows (:class:`LaneSteps`' job), still one C++
    call for the whole loop. So it does for a while after two loops in a row
    whose lanes slept a quarter of their time waiting at the meetings (a lane
    descheduled: another process keeps a core busy;
    :meth:`~xseq.ops.runtime.CPURuntime.note_meetings`).
    """

    #: As :attr:`LaneSteps.forward_weight`.
    forward_weight = "W_hh"

    def __init__(self, device, lanes):
        self.device, self.lanes = device, lanes

    def input_products(self, n_x):
        """Whether the lanes make the products with ``W_ih`` too, for ``n_x`` inputs: :meth:`forward` then takes
        the input projection's operands (``projection``), each lane computing its own columns of ``XW`` before
        its loop, and :meth:`backward` the input's gradient's (``input_grad``), each lane a block of ``dX``'s
        columns after its loop. Where the device packs and ``n_x >= MIN_INPUT_PRODUCT_INPUTS``: there the packed
        product runs closer to the machine's peak than OpenBLAS's (and no ``[W_ih b]`` copy is made); with fewer
        inputs its sums (``n_x + 1`` terms) and ``dX``'s blocks of columns are too short to win."""
        return self.device.packed and n_x >= MIN_INPUT_PRODUCT_INPUTS

    def _blocks(self, n_a, lanes, threads):
        """``[(u0, u1), ...]`` for the lanes this loop gets (``lanes`` from the runtime, OpenBLAS's ``threads``),
        or None: one lane, every unit (fewer lanes free than asked for, or the lanes of units paused after a stall:
        :meth:`xseq.ops.runtime.CPURuntime.units_paused`)."""
        if min(lanes, threads or 1) < self.lanes or min(self.lanes, n_a) < 2 or cpu_runtime().units_paused():
            return None
        return unit_blocks(n_a, min(self.lanes, n_a), self.device.dtype.itemsize)

    def _run(self, jobs, barrier):
        """Run the jobs; a loop of lanes of units tells the runtime how long its lanes slept at the meetings."""
        start = time.perf_counter_ns()
        self.device.run(jobs)
        if barrier is not None and jobs and jobs[0].T > 0:
            cpu_runtime().note_meetings(time.perf_counter_ns() - start, barrier.slept_ns, barrier.parties)

    def forward(self, kind, XW, W_hh, b_hn, saved, S, C, hw, projection=None):
        """As :meth:`~xseq.ops.fused.DirectSteps.forward`, but by ``W_hh`` itself (:attr:`forward_weight`);
        ``projection``: None, or ``(X1, W_ih, bias)`` where :meth:`input_products` (:meth:`HostDevice.forward_job`)."""
        n_a = S.shape[2]
        with cpu_runtime().lane_run(self.lanes) as (lanes, threads):
            blocks, barrier = self._blocks(n_a, lanes, threads), None
            if blocks is None:
                jobs = [self.device.forward_job(kind, XW, W_hh, b_hn, saved, S, C, hw, projection=projection)]
            else:
                barrier = lane_barrier(len(blocks))
                jobs = [self.device.forward_job(kind, XW, W_hh, b_hn, saved, S, C, hw, units=units, barrier=barrier,
                                                projection=projection)
                        for units in blocks]
            self._run(jobs, barrier)

    def backward(self, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty, input_grad=None):
        """As :meth:`~xseq.ops.fused.DirectSteps.backward`: writes ``dZ`` (and ``dHW``); returns ``(dh0, dc0)``.
        ``input_grad``: None, or ``(dX, W_ih)`` where :meth:`input_products`: the lanes write ``dX = dZ @ W_ih``
        (``(T m, n_x)``), each its own block of the input's columns (:meth:`HostDevice.backward_job`)."""
        m, n_a = dh.shape
        dh0, dc0 = _state_gradients(dh, dc, empty)
        with cpu_runtime().lane_run(self.lanes) as (lanes, threads):
            blocks, barrier = self._blocks(n_a, lanes, threads), None
            if blocks is None:
                inputs = None if input_grad is None else (*input_grad, 0, input_grad[1].shape[1])
                jobs = [self.device.backward_job(kind, saved, S, C, W_hh, dY, dh0, dc0, dZ, dHW, input_grad=inputs)]
            else:
                barrier = lane_barrier(len(blocks))
                zeros = empty(m, n_a)  # the engine's buffers (its pool): the loop's work and a block of zeros
                zeros[...] = 0
                shared = (empty(4 * m * n_a), zeros)
                columns = [None] * len(blocks)
                if input_grad is not None:  # each lane a block of dX's columns (an empty one where n_x is small)
                    columns = [(*input_grad, i0, i1) for i0, i1 in
                               unit_blocks(input_grad[1].shape[1], len(blocks), self.device.dtype.itemsize)]
                jobs = [self.device.backward_job(kind, saved, S, C, W_hh, dY, dh0, dc0, dZ, dHW, units=units,
                                                 barrier=barrier, shared=shared, input_grad=inputs)
                        for units, inputs in zip(blocks, columns)]
            self._run(jobs, barrier)
        return dh0, dc0


def _state_gradients(dh, dc, empty):
    """Copies of the final states' gradients (``dc`` None but for the LSTM) in the engine's buffers: the loops
    overwrite them with the first states'."""
    dh0 = empty(*dh.shape)
    dh0[...] = dh
    dc0 = None
    if dc is not None:
        dc0 = empty(*dc.shape)
        dc0[...] = dc
    return dh0, dc0


def lane_barrier(parties):
    """A zeroed :class:`~xseq.ops.native_layout.LaneBarrier` for ``parties`` lanes of units that share rows."""
    barrier = LaneBarrier()
    barrier.parties = parties
    return barrier
