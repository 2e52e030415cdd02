"""Running the fused kernels, whatever launches them: the step methods and the direct loop.

:class:`FusedSteps` is the six step methods of the reference, each one kernel
launch; :class:`DirectSteps` is the engine's whole time loop with one gemm and
one kernel launch per step, by address. Both take their launcher from a
subclass or a *device* object -- CuPy on the GPU (:mod:`xseq.ops.cuda`), a
host build of the same source on the CPU (:mod:`xseq.ops.host`, and the tests'
stand-ins) -- so the code that computes addresses, strides and gemm arguments
is the same code the tests run without a GPU.
"""

from __future__ import annotations

import warnings

# ---------------------------------------------------------------- direct launches
#
# At the sizes a GPU finishes a step in a few microseconds, the fused path is bound by the host:
# per step, the engine slices half a dozen step views out of the sequence buffers, CuPy's matmul
# checks and dispatches its operands, and ElementwiseKernel analyses seven arguments -- tens of
# microseconds of Python and CuPy per step for microseconds of GPU work. The direct loop below does
# the same work with two host calls per step: cuBLAS's gemm and the raw kernel, both given
# addresses computed from each buffer's base address and its stride per step.

#: Threads per block of a direct launch (ElementwiseKernel's default too).


class FusedSteps:
    """The six step methods of :class:`~xseq.ops.reference.ArrayAPIOps`, each one kernel launch.

    Same arguments, results and buffer writes as the reference; the buffer
    views (``S[t+1]``, ``saved[t]`` ...) are passed to the kernel as its
    outputs, so nothing is copied. A subclass says how a kernel is launched
    (``_launch``) and where an array a step returns lives (``_step_array``):
    :class:`~xseq.ops.cuda.FusedCupyOps` on the GPU,
    :class:`~xseq.ops.host.HostFusedOps` on the CPU.
    """

    def _launch(self, name, *args):
        raise NotImplementedError

    def _step_array(self, key, like):
        """An array shaped like ``like`` for a step's result; ``key`` names the role."""
        raise NotImplementedError

    def rnn_forward(self, xw, hw, saved, S, t):
        self._launch("xseq_rnn_forward", xw, hw, S[t + 1])

    def rnn_backward(self, S, t, dh, dy, dZ):
        self._launch("xseq_rnn_backward", S[t + 1], dh, dy, dZ[t])

    def lstm_forward(self, xw, hw, c_prev, saved, C, S, t):
        n_a = c_prev.shape[1]
        self._launch("xseq_lstm_forward", xw, hw, c_prev, n_a, saved[t], C[t + 1], S[t + 1])

    def lstm_backward(self, saved, C, t, dh, dy, dc, dZ):
        n_a = dh.shape[1]
        # returned, and read back as the next step's dc: two arrays in turn
        dc_prev = self._step_array(f"dc{t % 2}", dh)
        self._launch("xseq_lstm_backward", saved[t], C[t], C[t + 1], dh, dy, dc, n_a, dZ[t], dc_prev)
        return dc_prev

    def gru_forward(self, xw, hw, b_hn, h_prev, saved, S, t):
        n_a = h_prev.shape[1]
        self._launch("xseq_gru_forward", xw, hw, b_hn, h_prev, n_a, saved[t], S[t + 1])

    def gru_backward(self, saved, S, t, dh, dy, dXW, dHW):
        n_a = dh.shape[1]
        dh_direct = self._step_array("dh_direct", dh)
        self._launch("xseq_gru_backward", saved[t], S[t], dh, dy, n_a, dXW[t], dHW[t], dh_direct)
        return dh_direct


def colmajor_gemm(m, n, k, a, lda, b, ldb, c, ldc):
    """BLAS arguments (column-major, no transposes) for the row-major product ``C = A @ B``.

    ``A`` is ``(m, k)``, ``B`` is ``(k, n)``, ``C`` is ``(m, n)``, each given by
    address and row stride in elements. Read column-major, a row-major matrix
    is its transpose, so the call computes ``C.T = B.T @ A.T``: returns
    ``(M, N, K, A', lda', B', ldb', C', ldc')`` for ``gemm('N', 'N', ...)``.
    """
    return n, m, k, b, ldb, a, lda, c, ldc


def _c_contiguous(shape, strides, itemsize):
    expected = itemsize
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size > 1 and stride != expected:
            return False
        expected *= size
    return True


def block_address(device, a):
    """The address of ``a``, which the kernels and the gemm read as one C-contiguous block of the device's dtype."""
    if a.dtype != device.dtype or not _c_contiguous(a.shape, a.strides, a.itemsize):
        raise ValueError(f"direct steps need C-contiguous {device.dtype} blocks; got {a.dtype} "
                         f"of shape {a.shape} with strides {a.strides}")
    return device.address(a)


def step_blocks(device, a):
    """``(address of a[0], bytes from a[t] to a[t+1])`` for a ``(T, rows, cols)`` buffer.

    Each step's block must be C-contiguous; the stride between steps may be
    anything, negative for a view flipped in time.
    """
    return block_address(device, a[0, ...]), a.strides[0]


# Why: see docs/decisions/005-cupy-direct-loop.md
class DirectSteps:
    """The time loops of :mod:`xseq.engine.sequence` with one gemm and one kernel launch per step, by address.

    ``device`` has ``dtype``, and inside its ``session()`` context it offers
    ``address(array)``, ``launch(name, n, args)`` (kernel ``name`` of
    :data:`~xseq.ops.kernel_source.KERNELS` over ``n`` elements; ``args`` its
    parameters as Python ints: addresses, and ``n_a``) and ``gemm(m, n, k, a,
    lda, b, ldb, beta, c, ldc)`` (row-major ``C = A @ B + beta*C`` by address,
    ``beta`` 0 or 1). :class:`~xseq.ops.cuda.CupyDevice` is the GPU's; the
    tests drive the same loops with a host build. Same arithmetic and buffer
    writes as the engine's loops over the :class:`FusedSteps` methods.
    """

    #: What :meth:`forward` takes as its recurrent weight: ``W_hh.T``, C-contiguous (the engine copies it so).
    #: The host's lanes take ``"W_hh"`` itself and pack its transpose (:class:`xseq.ops.lanes.LaneSteps`).
    forward_weight = "W_hh.T"
    def input_products(self, n_x):
        """Whether :meth:`forward` and :meth:`backward` make the products with ``W_ih`` themselves: no, the
        engine's GEMMs do; the host's lanes of units may (:meth:`xseq.ops.lanes.UnitSteps.input_products`)."""
        return False

    def __init__(self, device):
        self.device = device

    def forward(self, kind, XW, W_hhT, b_hn, saved, S, C, hw):
        """Steps ``0..T-1`` of an unmasked forward pass: writes ``S[1:]``, ``C[1:]``, ``saved``."""
        with self.device.session() as dev:
            self._forward(dev, kind, XW, W_hhT, b_hn, saved, S, C, hw)

    @staticmethod
    def _forward(dev, kind, XW, W_hhT, b_hn, saved, S, C, hw):
        T, m, GN = XW.shape
        if T == 0:
            return
        n_a = S.shape[2]
        n = m * n_a
        xw0, xw_step = step_blocks(dev, XW)
        s0, s_step = step_blocks(dev, S)
        hw_p, w_p = block_address(dev, hw), block_address(dev, W_hhT)
        if kind == "lstm":
            c0, c_step = step_blocks(dev, C)
            g0, g_step = step_blocks(dev, saved)
        elif kind == "gru":
            g0, g_step = step_blocks(dev, saved)
            b_hn_p = block_address(dev, b_hn)
        for t in range(T):
            h = s0 + t * s_step
            dev.gemm(m, GN, n_a, h, n_a, w_p, GN, 0, hw_p, GN)  # hw = h @ W_hh.T
            xw = xw0 + t * xw_step
            if kind == "rnn":
                dev.launch("xseq_rnn_forward", n, (xw, hw_p, h + s_step))
            elif kind == "lstm":
                c = c0 + t * c_step
                dev.launch("xseq_lstm_forward", n, (xw, hw_p, c, n_a, g0 + t * g_step, c + c_step, h + s_step))
            else:
                dev.launch("xseq_gru_forward", n, (xw, hw_p, b_hn_p, h, n_a, g0 + t * g_step, h + s_step))

    def backward(self, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty):
        """Steps ``T-1..0`` of an unmasked backward pass: writes ``dZ`` (and ``dHW``); returns ``(dh0, dc0)``.

        ``dY`` is ``(T, m, n_a)`` or None, ``dh``/``dc`` the gradients of the
        final states (C-contiguous, ``dc`` None but for the LSTM), ``empty(*shape)``
        allocates the loop's own buffers.
        """
        with self.device.session() as dev:
            return self._backward(dev, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty)

    @staticmethod
    def _backward(dev, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty):
        T, m, GN = dZ.shape
        if T == 0:
            return dh, dc
        n_a = S.shape[2]
        n = m * n_a
        s0, s_step = step_blocks(dev, S)
        z0, z_step = step_blocks(dev, dZ)
        hw0, hw_step = step_blocks(dev, dHW)
        w_p = block_address(dev, W_hh)
        if dY is None:  # no output gradient: every step reads one block of zeros
            dY = empty(1, m, n_a)
            dY[...] = 0
            dy0, dy_step = block_address(dev, dY), 0
        else:
            dy0, dy_step = step_blocks(dev, dY)
        if kind != "rnn":
            g0, g_step = step_blocks(dev, saved)
        if kind == "lstm":
            c0, c_step = step_blocks(dev, C)
            dc_buffers = [empty(m, n_a) for _ in range(2)]
            dc_p = block_address(dev, dc)
        dh_buffers = [empty(m, n_a) for _ in range(2)]
        dh_p = block_address(dev, dh)
        # Two buffers in turn for dh (and dc): a step never writes the array it reads.
        for t in range(T - 1, -1, -1):
            dh_prev = dh_buffers[t % 2]
            dh_prev_p, dy, dz = dev.address(dh_prev), dy0 + t * dy_step, z0 + t * z_step
            beta = 0
            if kind == "rnn":
                dev.launch("xseq_rnn_backward", n, (s0 + (t + 1) * s_step, dh_p, dy, dz))
            elif kind == "lstm":
                dc_prev = dc_buffers[t % 2]
                dc_prev_p, c = dev.address(dc_prev), c0 + t * c_step
                args = (g0 + t * g_step, c, c + c_step, dh_p, dy, dc_p, n_a, dz, dc_prev_p)
                dev.launch("xseq_lstm_backward", n, args)
                dc, dc_p = dc_prev, dc_prev_p
            else:
                # the kernel writes the direct part of dh_prev; the gemm adds the part through W_hh
                args = (g0 + t * g_step, s0 + t * s_step, dh_p, dy, n_a, dz, hw0 + t * hw_step, dh_prev_p)
                dev.launch("xseq_gru_backward", n, args)
                beta = 1
            dev.gemm(m, n_a, GN, hw0 + t * hw_step, GN, w_p, n_a, beta, dh_prev_p, n_a)  # dh_prev (+)= dHW[t] @ W_hh
            dh, dh_p = dh_prev, dh_prev_p
        return dh, dc


def checked_once(cache, key, build, what, fallback):
    """The device ``build()`` makes (and checks) for ``key``, made once; None where that failed.

    ``cache`` maps ``key`` (its first item the dtype's name) to ``(device or
    None, reason)``, which a status function reads. A build that raises
    leaves None and its reason there, and warns once that ``what`` is
    disabled and ``fallback`` is used; a build that re-enters (its check runs
    the engine) gets None.
    """
    if key not in cache:
        cache[key] = (None, "being checked")
        try:
            cache[key] = (build(), "")
        except Exception as exc:  # any failure is a reason to keep the fallback
            reason = f"{type(exc).__name__}: {exc}"
            cache[key] = (None, reason)
            warnings.warn(f"xseq: {what} disabled for {key[0]}, using {fallback} ({reason})", RuntimeWarning,
                          stacklevel=4)
    return cache[key][0]
