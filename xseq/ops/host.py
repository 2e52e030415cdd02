"""The fused step kernels of :mod:`xseq.ops.kernel_source` built for the CPU with the system C++ compiler.

NumPy runs a step's pointwise work as about ten passes over memory (see
:mod:`xseq.ops.numpy_inplace`); the CUDA operation strings in
:data:`xseq.ops.kernel_source.KERNELS` do it in one. They are plain C++ once
the CUDA qualifiers are defined away, so this module wraps each in a host
loop over the ``(m, n_a)`` elements, the way ``cupy.ElementwiseKernel`` binds
its parameters, compiles them for float and double into one shared library
and calls it through ``ctypes``: the same kernel source serves the GPU and the
CPU.

Build and use
-------------
* Built on the first NumPy sequence call that wants it (never at import),
  with ``$CXX``, ``g++``, ``c++`` or ``clang++``: ``-O3 -march=native
  -ffast-math`` so that the loops vectorize, ``exp`` and ``tanh`` included
  (glibc's libmvec). ``-ffast-math`` is given to the compile step only: the
  link step without it does not add GCC's ``crtfastmath.o``, which would
  turn on flush-to-zero for the whole process on load.
* Used only when the library came out with vectorized math (it references
  libmvec's ``_ZGV`` functions): scalar ``tanhf`` is 40x slower than NumPy's.
* Cached by a hash of the source, the flags, the compiler's version and the
  CPU in ``$XSEQ_CACHE_DIR`` (default ``$XDG_CACHE_HOME/xseq`` or
  ``~/.cache/xseq``). The name is no secret, so the cache is trusted only as
  far as it is checked: the directory is opened once (not through a symbolic
  link) and must belong to the user with no one else allowed to write it (one
  of the user's own that others could write is made 0700); the library is
  opened once inside it (not through a symbolic link) and must be a regular
  file of the user's, with one name, that no one else can write; and the
  file loaded is that open file (``/proc/self/fd``, or a private copy where
  there is none), so a path swapped after the checks changes nothing.
  Anything else is built in a private temporary directory for this process,
  and :func:`status` says why. Builds go to a private temporary directory
  and are copied into the cache atomically, the library 0600 and new
  directories 0700 whatever the umask.
* Anything missing (no compiler, a failed build, math not vectorized, a
  dtype other than float32/float64) leaves NumPy's in-place steps in charge;
  :func:`status` says which path is active and why. ``XSEQ_HOST_KERNELS=0``
  (read once, at the first NumPy sequence call) turns the build off,
  ``XSEQ_FUSED=0`` every fast path.

Beyond the step kernels the library holds three host-only pieces: the
engine's time loops in C++ (``LOOPS``), which :class:`LaneSteps` runs on
blocks of rows, one of NumPy's OpenBLAS threads each, where that was measured
faster (see "lanes" below), their per-step products by ``W_hh`` packed once a
loop where the build has 512-bit vectors (:func:`packed_products`); the
projection loss's softmax cross-entropy in one pass a row
(:func:`softmax_xent_rows`); and Adam's step in one pass (:func:`adam_step`).

Numerics: the reference's formulas in the same order, with the C library's
``exp``/``tanh`` and fast-math rounding: within a few ulps of the reference
(``tests/test_host_kernels.py``); NaN and infinities still propagate, and
subnormals are kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import array_api_compat.numpy as xp_numpy
import numpy as np

from .fused import FusedSteps, checked_once
from .kernel_source import CTYPES, KERNELS, elementwise_signature
from .numpy_inplace import NumpyOps
from .switches import fused_enabled, lanes_enabled

# NVRTC declares the CUDA qualifiers and the float/double overloads of the math
# functions implicitly; on the host the qualifiers mean nothing and the overloads
# come from <cmath>. XSEQ_ROW is the host loop's row counter (see kernel_source.PREAMBLE).
HOST_PRELUDE = r"""
#include <cmath>
#include <cstddef>
#include <cstdint>
#define __device__
#define __forceinline__ inline
#define XSEQ_ROW(i, n_a) _row
using std::exp;
using std::fabs;
using std::tanh;
"""

# Tried in order; the first that compiles is used (the x86 options are unknown to other
# targets' compilers). -ffast-math is what makes glibc declare its vector exp/tanh;
# -mrecip=none keeps divisions IEEE (fast-math's approximate reciprocal would make
# sigmoid(100) 1 - 2^-24 instead of 1).
FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-mrecip=none"),
    ("-O3", "-march=native", "-ffast-math", "-mrecip=none"),
    ("-O3", "-march=native", "-ffast-math"),
)


def host_function(name, src, ctype):
    """One kernel for one dtype: a loop over rows and columns around the CUDA operation."""
    params, bindings = elementwise_signature(name, src)
    has_rows = any(pname == "n_a" for pname, *_ in src.parameters())
    cols = "n_a" if has_rows else "_n"
    return f"""
namespace k_{name}_{ctype} {{
typedef {ctype} T;
{src.preamble}
extern "C" void {name}_{ctype}({", ".join(params)}) {{
    const ptrdiff_t _cols = {cols};
    const ptrdiff_t _rows = _cols > 0 ? _n / _cols : 0;
    for (ptrdiff_t _row = 0; _row < _rows; ++_row) {{
        // elements of one row are independent (outputs may alias inputs only element for element)
        #pragma GCC ivdep
        for (ptrdiff_t _col = 0; _col < _cols; ++_col) {{
            const ptrdiff_t i = _row * _cols + _col;
            {bindings}
            {src.operation}
        }}
    }}
}}
}}
"""


# Two host-only helpers around the steps (no GPU counterpart: CuPy's own copies and
# reductions serve there): the course layout read time-major in tiles, and an
# in-place softmax of each row.
HELPERS = r"""
namespace xseq_helpers {
// dst[t, k, j] = src[t, k, j] for (n0, n1, n2) arrays, strides in elements, dst's last
// stride 1. The course layout read time-major has j as its slowest axis and t as its
// fastest: tiles of 16 x 16 (t, j) read whole cache lines of src and write whole lines of
// dst. (A register transpose of each tile with AVX-512 was measured no faster.)
template <typename T>
void gather3(const T* src, ptrdiff_t s0, ptrdiff_t s1, ptrdiff_t s2, T* dst, ptrdiff_t d0, ptrdiff_t d1,
             ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t n2) {
    const ptrdiff_t B = 16;
    for (ptrdiff_t k = 0; k < n1; ++k)
        for (ptrdiff_t t0 = 0; t0 < n0; t0 += B)
            for (ptrdiff_t j0 = 0; j0 < n2; j0 += B) {
                const ptrdiff_t t1 = t0 + B < n0 ? t0 + B : n0, j1 = j0 + B < n2 ? j0 + B : n2;
                for (ptrdiff_t t = t0; t < t1; ++t)
                    for (ptrdiff_t j = j0; j < j1; ++j)
                        dst[t * d0 + k * d1 + j] = src[t * s0 + k * s1 + j * s2];
            }
}
// Each row of the (rows, cols) array z replaced by its softmax, the reference's way:
// exp(z - max(z)) / sum.
template <typename T>
void softmax_rows(T* z, ptrdiff_t rows, ptrdiff_t cols) {
    for (ptrdiff_t r = 0; r < rows; ++r) {
        T* row = z + r * cols;
        T top = row[0];
        for (ptrdiff_t j = 1; j < cols; ++j) top = row[j] > top ? row[j] : top;
        T total = T(0);
        for (ptrdiff_t j = 0; j < cols; ++j) {
            row[j] = exp(row[j] - top);
            total += row[j];
        }
        for (ptrdiff_t j = 0; j < cols; ++j) row[j] /= total;
    }
}
// The softmax cross-entropy of a chunk of logits, one pass over memory a row (a row of a
// vocabulary stays in cache): each row of z (rows, cols) gets the bias b added, is shifted by
// its maximum and exponentiated; the row's -log softmax at its target is added to the returned
// sum; with grad, the row becomes the gradient of scale * nll with respect to the logits,
// (softmax - one_hot(target)) * scale, and is added into db (cols). Same formulas as
// xseq.nn.projection_loss.StandardOps.chunk.
template <typename T>
double softmax_xent_rows(T* z, const T* b, const int64_t* targets, ptrdiff_t rows, ptrdiff_t cols, T scale,
                         int grad, T* db) {
    double total = 0.0;
    for (ptrdiff_t r = 0; r < rows; ++r) {
        T* row = z + r * cols;
        T top = row[0] + b[0];
        for (ptrdiff_t j = 0; j < cols; ++j) {
            row[j] += b[j];
            top = row[j] > top ? row[j] : top;
        }
        const ptrdiff_t t = targets[r];
        const T picked = row[t] - top;
        T sum = T(0);
        for (ptrdiff_t j = 0; j < cols; ++j) {
            row[j] = exp(row[j] - top);
            sum += row[j];
        }
        total += std::log(static_cast<double>(sum)) - static_cast<double>(picked);
        if (!grad) continue;
        const T f = scale / sum;
        for (ptrdiff_t j = 0; j < cols; ++j) {
            row[j] *= f;
            db[j] += row[j];
        }
        row[t] -= scale;
        db[t] -= scale;
    }
    return total;
}
// One Adam step of n parameters in one pass (xseq.nn.optim.Adam's formulas, same order): new moments
// m_out, v_out and new parameters p_out from p, the gradient g and the moments m, v; c1 = 1 - beta1^t,
// c2 = 1 - beta2^t. Outputs may be the inputs' own arrays element for element.
template <typename T>
void adam(const T* p, const T* g, const T* m, const T* v, T* p_out, T* m_out, T* v_out, ptrdiff_t n, T lr,
          T beta1, T beta2, T eps, T c1, T c2) {
    const T a1 = T(1) - beta1, a2 = T(1) - beta2;
    #pragma GCC ivdep
    for (ptrdiff_t i = 0; i < n; ++i) {
        const T gi = g[i];
        const T mi = beta1 * m[i] + a1 * gi;
        const T vi = beta2 * v[i] + a2 * (gi * gi);
        m_out[i] = mi;
        v_out[i] = vi;
        p_out[i] = p[i] - lr * (mi / c1) / (std::sqrt(vi / c2) + eps);
    }
}
}
"""


def _helper_exports(ctype):
    return f"""
extern "C" void xseq_gather3_{ctype}(const {ctype}* src, ptrdiff_t s0, ptrdiff_t s1, ptrdiff_t s2, {ctype}* dst,
                                  ptrdiff_t d0, ptrdiff_t d1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t n2) {{
    xseq_helpers::gather3(src, s0, s1, s2, dst, d0, d1, n0, n1, n2);
}}
extern "C" void xseq_softmax_rows_{ctype}({ctype}* z, ptrdiff_t rows, ptrdiff_t cols) {{
    xseq_helpers::softmax_rows(z, rows, cols);
}}
extern "C" double xseq_softmax_xent_rows_{ctype}({ctype}* z, const {ctype}* b, const int64_t* targets, ptrdiff_t rows,
                                              ptrdiff_t cols, {ctype} scale, int grad, {ctype}* db) {{
    return xseq_helpers::softmax_xent_rows(z, b, targets, rows, cols, scale, grad, db);
}}
extern "C" void xseq_adam_{ctype}(const {ctype}* p, const {ctype}* g, const {ctype}* m, const {ctype}* v,
                                {ctype}* p_out, {ctype}* m_out, {ctype}* v_out, ptrdiff_t n, {ctype} lr,
                                {ctype} beta1, {ctype} beta2, {ctype} eps, {ctype} c1, {ctype} c2) {{
    xseq_helpers::adam(p, g, m, v, p_out, m_out, v_out, n, lr, beta1, beta2, eps, c1, c2);
}}
"""


# The time loops of ops.fused.DirectSteps in C++, for one lane's rows (see "lanes" below): the same two
# calls a step -- the product through the BLAS function given by address (CBLAS, row-major, 64-bit
# integers) and the step's kernel above -- with no Python between the steps, so a lane holds no lock
# while it runs. Pointers are each buffer's first step of the lane's rows; strides are in elements
# from one step to the next (negative for a buffer flipped in time).
LOOPS = r"""
#include <cstdint>
#include <cstring>
// The per-step product with the weight packed once a sequence (see "packed" below): a lane's product is
// (rows, K) @ (K, N) with the same right operand at every step, and a BLAS call packs that operand into
// its own panel layout again at every call. Here it is packed once into panels of NR columns (two
// 64-byte vectors: 32 floats or 16 doubles), panel p holding B[k][p NR + j] at (p K + k) NR + j, zero
// past the last column; each block of MR rows of C is then MR x 2 vector accumulators over k, the row's
// element times the panel's two vectors (GCC's vector extensions: AVX-512 registers where the compiler
// targets them). Sums over k in order, one multiply-add at a time.
namespace xseq_packed {
template <typename T>
struct vec {
    typedef T type __attribute__((vector_size(64)));
};
template <typename T>
constexpr int64_t panel_cols() { return 128 / sizeof(T); }
// elements of a (K x N) weight packed by pack: whole panels
template <typename T>
constexpr int64_t packed_size(int64_t K, int64_t N) { return (N + panel_cols<T>() - 1) / panel_cols<T>() * panel_cols<T>() * K; }

template <typename T>
void pack(const T* b, int64_t K, int64_t N, T* out) {  // b: K x N, row-major
    const int64_t NR = panel_cols<T>();
    for (int64_t p = 0; p * NR < N; ++p) {
        const int64_t cols = N - p * NR < NR ? N - p * NR : NR;
        for (int64_t k = 0; k < K; ++k) {
            T* dst = out + (p * K + k) * NR;
            std::memcpy(dst, b + k * N + p * NR, cols * sizeof(T));
            for (int64_t j = cols; j < NR; ++j) dst[j] = T(0);
        }
    }
}

// rows r..r+MR of C (ncols of its columns from the panel's first) = A's rows @ the panel + beta C (beta 0 or 1)
template <typename T, int MR>
inline void tile(const T* a, int64_t lda, const T* panel, int64_t K, T* c, int64_t ldc, int64_t ncols, T beta) {
    typedef typename vec<T>::type V;
    constexpr int W = 64 / sizeof(T);
    V acc0[MR], acc1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = V{};
    for (int64_t k = 0; k < K; ++k) {
        V b0, b1;
        std::memcpy(&b0, panel + k * 2 * W, sizeof(V));
        std::memcpy(&b1, panel + k * 2 * W + W, sizeof(V));
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const T x = a[r * lda + k];
            acc0[r] += x * b0;
            acc1[r] += x * b1;
        }
    }
    for (int r = 0; r < MR; ++r) {
        T out[2 * W];
        std::memcpy(out, &acc0[r], sizeof(V));
        std::memcpy(out + W, &acc1[r], sizeof(V));
        T* row = c + r * ldc;
        if (beta == T(0))
            std::memcpy(row, out, ncols * sizeof(T));
        else
            for (int64_t j = 0; j < ncols; ++j) row[j] += out[j];
    }
}

// C (M x N, row stride ldc) = A (M x K, row stride lda) @ B (packed by pack) + beta C, beta 0 or 1
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* packed, T beta, T* c, int64_t ldc) {
    const int64_t NR = panel_cols<T>();
    constexpr int MR = 8;
    for (int64_t p = 0; p * NR < N; ++p) {  // a panel (K x NR) stays in cache while every row block uses it
        const int64_t ncols = N - p * NR < NR ? N - p * NR : NR;
        const T* panel = packed + p * K * NR;
        int64_t r = 0;
        for (; r + MR <= M; r += MR) tile<T, MR>(a + r * lda, lda, panel, K, c + r * ldc + p * NR, ldc, ncols, beta);
        const T* ar = a + r * lda;
        T* cr = c + r * ldc + p * NR;
        switch (M - r) {
            case 7: tile<T, 7>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 6: tile<T, 6>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 5: tile<T, 5>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 4: tile<T, 4>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 3: tile<T, 3>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 2: tile<T, 2>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 1: tile<T, 1>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            default: break;
        }
    }
}
}

// 1 where the packed product was compiled for 512-bit vector registers, the only target it was measured on
extern "C" int xseq_packed_native() {
#if defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}

namespace xseq_loops {
template <typename T>
using gemm_t = void (*)(int, int, int, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t, T, T*,
                        int64_t);
// C (m x n, row stride ldc) = A (m x k) @ B (k x n) + beta C, all row-major: by the packed B where there is
// one, else by the BLAS function
template <typename T>
inline void mm(gemm_t<T> gemm, const T* packed, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
               int64_t ldb, T beta, T* c, int64_t ldc) {
    if (packed)
        xseq_packed::gemm<T>(m, n, k, a, lda, packed, beta, c, ldc);
    else
        gemm(101, 111, 111, m, n, k, T(1), a, lda, b, ldb, beta, c, ldc);
}
// Everything one lane's loop needs (xseq.ops.host._LaneJob has the same fields in the same order).
// forward: xw, s, c, g step by step, w = W_hh.T, b_hn, hw; backward: g, s, c, dy, dz, dhw step by step,
// w = W_hh, dh and dc (in: the final states' gradients; out: the first states'), work (4 m n_a). packed: w packed
// by xseq_packed::pack, or null for the BLAS function.
struct lane_job {
    int64_t backward, kind, T, m, n_a;
    void *gemm, *xw, *s, *c, *g, *dy, *dz, *dhw, *w, *b_hn, *hw, *dh, *dc, *work, *packed;
    int64_t xw_step, s_step, c_step, g_step, dy_step, z_step, hw_step;
};
}
"""


def _loop_exports(ctype):
    """The forward and backward loops of each cell for one element type, calling the kernels above."""
    k = lambda name: f"k_xseq_{name}_{ctype}::xseq_{name}_{ctype}"  # noqa: E731
    return f"""
extern "C" void xseq_forward_loop_{ctype}(int kind, void* gemm_p, int64_t T, int64_t m, int64_t n_a,
        const {ctype}* xw, int64_t xw_step, {ctype}* s, int64_t s_step, {ctype}* c, int64_t c_step,
        {ctype}* g, int64_t g_step, const {ctype}* w_hhT, const {ctype}* b_hn, {ctype}* hw, const {ctype}* packed) {{
    typedef {ctype} T_;
    auto gemm = reinterpret_cast<xseq_loops::gemm_t<T_>>(gemm_p);
    const int64_t G = kind == 0 ? 1 : kind == 1 ? 4 : 3, GN = G * n_a, n = m * n_a;
    for (int64_t t = 0; t < T; ++t) {{
        T_* h = s + t * s_step;
        xseq_loops::mm<T_>(gemm, packed, m, GN, n_a, h, n_a, w_hhT, GN, T_(0), hw, GN);  // hw = h @ W_hh.T
        const T_* x = xw + t * xw_step;
        if (kind == 0) {k("rnn_forward")}(x, hw, h + s_step, n);
        else if (kind == 1) {k("lstm_forward")}(x, hw, c + t * c_step, (int)n_a, g + t * g_step,
                                                 c + (t + 1) * c_step, h + s_step, n);
        else {k("gru_forward")}(x, hw, b_hn, h, (int)n_a, g + t * g_step, h + s_step, n);
    }}
}}

extern "C" void xseq_backward_loop_{ctype}(int kind, void* gemm_p, int64_t T, int64_t m, int64_t n_a,
        const {ctype}* g, int64_t g_step, const {ctype}* s, int64_t s_step, const {ctype}* c, int64_t c_step,
        const {ctype}* w_hh, const {ctype}* dy, int64_t dy_step, {ctype}* dz, int64_t z_step,
        {ctype}* dhw, int64_t hw_step, {ctype}* dh, {ctype}* dc, {ctype}* work, const {ctype}* packed) {{
    // dh, dc: the final states' gradients in, the first states' out; work: 4 (m, n_a) blocks
    typedef {ctype} T_;
    auto gemm = reinterpret_cast<xseq_loops::gemm_t<T_>>(gemm_p);
    const int64_t G = kind == 0 ? 1 : kind == 1 ? 4 : 3, GN = G * n_a, n = m * n_a;
    T_* dh_buf[2] = {{work, work + n}};
    T_* dc_buf[2] = {{work + 2 * n, work + 3 * n}};
    const T_* dh_cur = dh;
    const T_* dc_cur = dc;
    for (int64_t t = T - 1; t >= 0; --t) {{
        T_* dh_prev = dh_buf[t % 2];
        T_ beta = T_(0);
        if (kind == 0) {k("rnn_backward")}(s + (t + 1) * s_step, dh_cur, dy + t * dy_step, dz + t * z_step, n);
        else if (kind == 1) {{
            T_* dc_prev = dc_buf[t % 2];
            {k("lstm_backward")}(g + t * g_step, c + t * c_step, c + (t + 1) * c_step, dh_cur, dy + t * dy_step,
                                 dc_cur, (int)n_a, dz + t * z_step, dc_prev, n);
            dc_cur = dc_prev;
        }} else {{
            // the kernel writes the direct part of dh_prev; the product adds the part through W_hh
            {k("gru_backward")}(g + t * g_step, s + t * s_step, dh_cur, dy + t * dy_step, (int)n_a,
                                dz + t * z_step, dhw + t * hw_step, dh_prev, n);
            beta = T_(1);
        }}
        xseq_loops::mm<T_>(gemm, packed, m, n_a, GN, dhw + t * hw_step, GN, w_hh, n_a, beta, dh_prev, n_a);
        dh_cur = dh_prev;
    }}
    for (int64_t i = 0; i < n; ++i) dh[i] = dh_cur[i];
    if (kind == 1)
        for (int64_t i = 0; i < n; ++i) dc[i] = dc_cur[i];
}}

// One lane's loop (a :class:`_LaneJob`): what OpenBLAS's gotoblas_pthread runs on each of its threads.
extern "C" void xseq_lane_{ctype}(void* job_p) {{
    typedef {ctype} T_;
    const xseq_loops::lane_job& j = *static_cast<const xseq_loops::lane_job*>(job_p);
    if (!j.backward)
        xseq_forward_loop_{ctype}((int)j.kind, j.gemm, j.T, j.m, j.n_a, (const T_*)j.xw, j.xw_step, (T_*)j.s,
                                  j.s_step, (T_*)j.c, j.c_step, (T_*)j.g, j.g_step, (const T_*)j.w,
                                  (const T_*)j.b_hn, (T_*)j.hw, (const T_*)j.packed);
    else
        xseq_backward_loop_{ctype}((int)j.kind, j.gemm, j.T, j.m, j.n_a, (const T_*)j.g, j.g_step, (const T_*)j.s,
                                   j.s_step, (const T_*)j.c, j.c_step, (const T_*)j.w, (const T_*)j.dy, j.dy_step,
                                   (T_*)j.dz, j.z_step, (T_*)j.dhw, j.hw_step, (T_*)j.dh, (T_*)j.dc, (T_*)j.work,
                                   (const T_*)j.packed);
}}

// The weight w (K x N, row-major) packed for the lanes' products, into out (xseq_packed_size_ elements).
extern "C" void xseq_pack_{ctype}(const {ctype}* w, int64_t K, int64_t N, {ctype}* out) {{
    xseq_packed::pack(w, K, N, out);
}}
extern "C" int64_t xseq_packed_size_{ctype}(int64_t K, int64_t N) {{
    return xseq_packed::packed_size<{ctype}>(K, N);
}}
"""


def host_source():
    """The C++ of every kernel, helper and time loop in both precisions."""
    return (
        HOST_PRELUDE
        + "".join(host_function(name, src, ctype) for name, src in KERNELS.items() for ctype in CTYPES.values())
        + HELPERS
        + "".join(_helper_exports(ctype) for ctype in CTYPES.values())
        + LOOPS
        + "".join(_loop_exports(ctype) for ctype in CTYPES.values())
    )


def find_compiler():
    for candidate in (os.environ.get("CXX", ""), "g++", "c++", "clang++"):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def cache_dir():
    if os.environ.get("XSEQ_CACHE_DIR"):
        return Path(os.environ["XSEQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xseq"


def _cpu_description():
    """What -march=native depends on: a binary is reused only on the same kind of CPU."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        pass
    return text


def _run(cmd, cwd):
    """``(succeeded, its output)``; a compiler that cannot be started or hangs is a failure, not an error."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{cmd[0]}: {exc}"
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def _build(compiler, source, directory):
    """Compile and link in ``directory``; returns ``(library path or None, what went wrong)``."""
    src, obj, lib = directory / "kernels.cpp", directory / "kernels.o", directory / "kernels.so"
    src.write_text(source)
    errors = []
    for flags in FLAG_SETS:
        ok, err = _run([compiler, "-std=c++17", "-fPIC", *flags, "-c", str(src), "-o", str(obj)], directory)
        if not ok:
            errors.append(err.splitlines()[-1] if err else "compile failed")
            continue
        # no -ffast-math here: see the module docstring
        for libs in (["-lmvec", "-lm"], ["-lm"]):
            ok, err = _run([compiler, "-shared", str(obj), "-o", str(lib), *libs], directory)
            if ok:
                return lib, ""
        errors.append(err.splitlines()[-1] if err else "link failed")
    return None, "; ".join(errors)


class _Library:
    """The loaded shared library, or why there is none; with a library, what happened to the cache, if anything."""

    def __init__(self, lib=None, path=None, reason=""):
        self.lib, self.path, self.reason = lib, path, reason


def _join(*notes):
    return "; ".join(note for note in notes if note)


# Opened as /proc/self/fd/N, a file is loaded through the descriptor that was checked.
PROC_FD = "/proc/self/fd"

# What the checks need (POSIX); without it the cache is not used.
CACHE_CHECKABLE = (
    hasattr(os, "geteuid") and hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")
    and os.open in os.supports_dir_fd
)


def _load(fd, path, note=""):
    """Load the library open as ``fd``, which this function takes over; ``path`` names it in messages."""
    kept = False
    try:
        with open(fd, "rb", closefd=False) as f:
            f.seek(0)  # _install hands over the descriptor it has just written
            data = f.read()
        if b"_ZGV" not in data:
            slow = f"{path}: exp/tanh did not vectorize (no libmvec); NumPy's steps are faster"
            return _Library(reason=_join(slow, note))
        if os.path.isdir(PROC_FD):
            lib = ctypes.CDLL(f"{PROC_FD}/{fd}")
            # glibc knows a loaded library by the name it was opened under and hands it back for
            # that name: the descriptor stays open so that its number never names another file here
            kept = True
        else:
            lib = _load_private_copy(data, path.name)
        return _Library(lib, path, note)
    except OSError as exc:  # not a library this process can load
        return _Library(reason=_join(f"{path} could not be loaded: {exc}", note))
    finally:
        if not kept:
            os.close(fd)


def _load_private_copy(data, name):
    """Load the bytes of a checked file from a copy in a directory only this user can reach."""
    with tempfile.TemporaryDirectory(prefix="xseq_load_") as private:
        copy = os.path.join(private, name)
        with open(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        return ctypes.CDLL(copy)  # the mapping outlives the file


def cached_path(compiler, source):
    """Where the cache keeps the build of ``source`` by ``compiler`` for this CPU."""
    _, version = _run([compiler, "--version"], None)
    key = hashlib.sha256("\n".join([source, repr(FLAG_SETS), compiler, version, _cpu_description()]).encode())
    return cache_dir() / f"host_kernels_{key.hexdigest()[:20]}.so"


def _make_directories(directory):
    """Create ``directory`` and its missing parents, each 0700 (the umask can only narrow that)."""
    missing = []
    while not os.path.lexists(directory) and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            os.mkdir(path, 0o700)


def _refusal(exc, name, dir_fd=None):
    """Why an ``os.open`` of ``name`` with ``O_NOFOLLOW`` failed, for a message (the open decided).

    A symbolic link fails with ELOOP, or with ENOTDIR where ``O_DIRECTORY`` is asked too.
    """
    try:
        is_link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        is_link = False
    return "is a symbolic link" if is_link else f"cannot be opened: {exc.strerror}"


# Why: see docs/decisions/006-kernel-cache-trust.md
def _open_cache_dir(directory):
    """The cache directory, opened once, if it is this user's and no one else can write it.

    Returns
    -------
    (int or None, str)
        A descriptor of the directory and a note (what was changed), or None and
        why the directory is not used. Everything after this goes through the
        descriptor, so renaming or swapping a directory on the path afterwards
        changes nothing.
    """
    if not CACHE_CHECKABLE:
        return None, "this platform cannot check the cache directory (no O_NOFOLLOW, O_DIRECTORY or dir_fd)"
    try:
        _make_directories(directory)
    except OSError as exc:
        return None, f"the cache directory {directory} cannot be created: {exc.strerror}"
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        return None, f"the cache directory {directory} {_refusal(exc, directory)}"
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            problem = f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
        elif st.st_mode & 0o022:
            # no one else can add a file from now on; what others planted before is not the
            # user's (or has a second name) and is refused file by file
            os.fchmod(fd, 0o700)
            mode = stat.S_IMODE(st.st_mode)
            return fd, f"the cache directory {directory} was writable by others (mode {mode:04o}); made it 0700"
        else:
            return fd, ""
    except OSError as exc:
        problem = f"cannot be made private: {exc.strerror}"
    os.close(fd)
    return None, f"the cache directory {directory} {problem}"


def _open_cached(dir_fd, name):
    """The cached library ``name`` in the open cache directory, opened once and checked as opened.

    Returns
    -------
    (int or None, str)
        A descriptor and ``""``; None and ``""`` where there is no such file;
        None and why not where there is one that must not be loaded.
    """
    try:
        # O_NONBLOCK: opening a FIFO planted under the name would otherwise wait for a writer
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, _refusal(exc, name, dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    elif st.st_nlink != 1:
        # xseq writes it with one name; a second may be a link to another of the user's files
        problem = f"has {st.st_nlink} names (hard links)"
    else:
        return fd, ""
    os.close(fd)
    return None, problem


def _install(built, dir_fd, name):
    """Copy the library ``built`` into the open cache directory as ``name``, 0600, atomically.

    Returns a descriptor of the installed file, for :func:`_load`: what was
    written is what is loaded.
    """
    temporary = f".{name}.{secrets.token_hex(8)}"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with open(built, "rb") as src, open(fd, "wb", closefd=False) as dst:
            shutil.copyfileobj(src, dst)
        os.fsync(fd)
        # atomic: another process sees the old state or the whole file
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    return fd


def _build_and_load(compiler, source, cached, dir_fd, note):
    """Build in a private temporary directory; install into the cache open as ``dir_fd`` (None: none) and load."""
    with tempfile.TemporaryDirectory(prefix="xseq_build_") as tmp:
        built, error = _build(compiler, source, Path(tmp))
        if built is None:
            return _Library(reason=_join(f"the host build with {compiler} failed: {error}", note))
        if dir_fd is not None:
            try:
                fd = _install(built, dir_fd, cached.name)
            except OSError as exc:
                note = _join(note, f"{cached} could not be written: {exc.strerror}")
            else:
                return _load(fd, cached, note)
        # loaded before the temporary directory goes: the mapping outlives the file
        return _load(os.open(built, os.O_RDONLY), built, f"built for this process only: {note}")


@functools.cache
def library():
    """Build (or find in the cache) and load the host kernels, once per process."""
    if os.environ.get("XSEQ_HOST_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return _Library(reason="turned off by XSEQ_HOST_KERNELS")
    compiler = find_compiler()
    if compiler is None:
        return _Library(reason="no C++ compiler ($CXX, g++, c++ or clang++) on PATH")
    source = host_source()
    cached = cached_path(compiler, source)
    dir_fd, note = _open_cache_dir(cached.parent)
    if dir_fd is None:
        return _build_and_load(compiler, source, cached, None, note)
    try:
        fd, problem = _open_cached(dir_fd, cached.name)
        if fd is not None:
            return _load(fd, cached, note)
        if problem:
            refused = f"{cached} {problem}, so it is not loaded (remove it to let xseq build it again)"
            return _build_and_load(compiler, source, cached, None, _join(note, refused))
        return _build_and_load(compiler, source, cached, dir_fd, note)
    finally:
        os.close(dir_fd)


def status():
    """Which step implementation NumPy arrays get, and why: a line for humans."""

    if not fused_enabled():
        return "array-API reference steps (XSEQ_FUSED=0)"
    lib = library()
    if lib.lib is None:
        return f"NumPy in-place steps; host kernels unavailable: {lib.reason}"
    loaded = f"host kernels (fused C++ steps) from {lib.path}"
    return f"{loaded} ({lib.reason})" if lib.reason else loaded


class HostKernel:
    """One kernel of the host library, called like ``cupy.ElementwiseKernel``: inputs, then outputs."""

    def __init__(self, lib, name):
        self.name = name
        params = KERNELS[name].parameters()
        self.names = [pname for pname, *_ in params]
        self.outputs = [is_output for _, _, _, is_output in params]
        self.is_int = [typ == "int32" for _, typ, _, _ in params]
        # the loop runs over the elements of the first non-raw array
        self.size_from = next(k for k, (_, typ, raw, _) in enumerate(params) if typ == "T" and not raw)
        self.functions = {}
        for dtype, ctype in CTYPES.items():
            fn = getattr(lib, f"{name}_{ctype}")
            fn.argtypes = [ctypes.c_int if is_int else ctypes.c_void_p for is_int in self.is_int]
            fn.argtypes += [ctypes.c_ssize_t]
            fn.restype = None
            self.functions[dtype] = fn

    def __call__(self, *args):
        dtype = args[self.size_from].dtype
        c_args = list(args)
        copies = []  # contiguous copies of strided inputs, alive until the call returns
        for k, a in enumerate(args):
            if self.is_int[k]:
                continue
            if a.dtype != dtype:
                raise TypeError(f"{self.name}: {self.names[k]} is {a.dtype}, the other arrays {dtype}")
            if not a.flags.c_contiguous:
                # The loop indexes every array linearly. Inputs may be copied; outputs are the
                # engine's step views, contiguous by construction.
                if self.outputs[k]:
                    raise ValueError(f"{self.name}: output {self.names[k]} is not C-contiguous")
                a = np.ascontiguousarray(a)
                copies.append(a)
            c_args[k] = _address(a)
        self.functions[dtype](*c_args, args[self.size_from].size)


def _address(a):
    """The address of a C-contiguous array's first element.

    Through the buffer protocol: a sixth of the time of ``a.ctypes.data``, which
    counts at several calls per time step. Read-only arrays do not export a
    writable buffer and take the slow way.
    """
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


# Why: see docs/decisions/004-host-kernels.md
class HostFusedOps(FusedSteps, NumpyOps):
    """NumPy's ops with every step one call of a host-compiled kernel.

    Buffers, products and everything but the six step methods are NumPy's
    (:class:`xseq.ops.numpy_inplace.NumpyOps`); the step methods are
    :class:`xseq.ops.fused.FusedSteps`', the same launches the GPU makes.
    Unmasked sequences large enough to share take their time loops from
    :meth:`direct_steps`: the rows split over lanes, one core each
    (:class:`LaneSteps`). ``lanes`` is None for that choice, False for never,
    or a :class:`LaneSteps` (the check's).
    """

    name = "host-kernels"

    def __init__(self, xp, lib, lanes=None):
        super().__init__(xp)
        self._lib = lib
        self._lanes = lanes

    def direct_steps(self, dtype, device=None, check=None, rows=None, n_a=None, gates=None):
        """:class:`LaneSteps` for a sequence of ``rows`` examples of ``n_a`` units, or None for the engine's loop.

        ``check(device, xp, ops)`` proves a new :class:`HostDevice` against the
        step methods (the engine's ``check_direct``); without one, or for a
        shape below :func:`lane_count`'s thresholds, the engine keeps its loop.
        """
        if self._lanes is not None:
            return self._lanes or None
        if check is None or rows is None or n_a is None or gates is None:
            return None
        if self.gemm is not None:  # the products go to another library (oneDNN): one thread pool, not two
            return None
        lanes = lane_count(rows, n_a, gates, np.dtype(dtype).itemsize)
        if lanes < 2:
            return None
        device = host_device(dtype, self._lib, check)
        return LaneSteps(device, lanes) if device is not None else None

    def _launch(self, name, *args):
        _kernel(self._lib, name)(*args)

    def _step_array(self, key, like):
        return self._buffer(key, like.shape, like.dtype)

    def copy_into(self, out, x):
        functions = _helpers(self._lib).get(x.dtype)
        itemsize = x.dtype.itemsize
        if (
            functions is None or x.ndim != 3 or x.flags.c_contiguous or out.dtype != x.dtype
            or out.shape != x.shape or out.strides[2] != itemsize
            or any(stride % itemsize for stride in x.strides + out.strides)
        ):
            return super().copy_into(out, x)
        s0, s1, s2 = (stride // itemsize for stride in x.strides)
        d0, d1 = (stride // itemsize for stride in out.strides[:2])
        functions["gather3"](x.ctypes.data, s0, s1, s2, out.ctypes.data, d0, d1, *x.shape)
        return out

    def softmax_rows(self, z):
        functions = _helpers(self._lib).get(z.dtype)
        if functions is None or z.ndim != 2 or not z.flags.c_contiguous or z.shape[1] == 0:
            return super().softmax_rows(z)
        functions["softmax_rows"](z.ctypes.data, z.shape[0], z.shape[1])
        return z


@functools.lru_cache(maxsize=None)
def _kernel(lib, name):
    return HostKernel(lib, name)


@functools.lru_cache(maxsize=None)
def _helpers(lib):
    """``{dtype: {"gather3": fn, "softmax_rows": fn, "softmax_xent_rows": fn, "adam": fn}}``, typed for ctypes."""
    P, N = ctypes.c_void_p, ctypes.c_ssize_t
    signatures = {"gather3": [P, N, N, N, P, N, N, N, N, N], "softmax_rows": [P, N, N]}
    helpers = {}
    for dtype, ctype in CTYPES.items():
        helpers[dtype] = {}
        for name, argtypes in signatures.items():
            fn = getattr(lib, f"xseq_{name}_{ctype}")
            fn.argtypes, fn.restype = argtypes, None
            helpers[dtype][name] = fn
        fn = getattr(lib, f"xseq_softmax_xent_rows_{ctype}")
        scalar = ctypes.c_float if ctype == "float" else ctypes.c_double
        fn.argtypes, fn.restype = [P, P, P, N, N, scalar, ctypes.c_int, P], ctypes.c_double
        helpers[dtype]["softmax_xent_rows"] = fn
        fn = getattr(lib, f"xseq_adam_{ctype}")
        fn.argtypes, fn.restype = [P] * 7 + [N] + [scalar] * 6, None
        helpers[dtype]["adam"] = fn
    return helpers


# Why: see docs/decisions/009-projection-loss-one-pass-a-row.md
def softmax_xent_rows(z, b, targets, scale, db):
    """The host build's fused softmax cross-entropy of the logits ``z`` (rows, V), in place; None where it cannot run.

    ``z`` (C-contiguous, float32/float64) gets the bias ``b`` (V,) added and
    becomes ``(softmax - one_hot(targets)) * scale``, its column sums added
    into ``db`` (V,); without ``db`` only the loss is computed (``z`` is left
    as the exponentials). ``targets`` are int64 ids (rows,), checked by the
    caller. Returns the sum over the rows of ``-log softmax(z + b)[target]``.
    """
    lib = library().lib
    if lib is None or not fused_enabled():
        return None
    functions = _helpers(lib).get(z.dtype)
    arrays = (z, b, targets) + ((db,) if db is not None else ())
    if (functions is None or z.ndim != 2 or z.shape[1] == 0 or targets.dtype != np.int64
            or any(not a.flags.c_contiguous for a in arrays) or b.dtype != z.dtype
            or (db is not None and (db.dtype != z.dtype or not db.flags.writeable))):
        return None
    return functions["softmax_xent_rows"](z.ctypes.data, b.ctypes.data, targets.ctypes.data, z.shape[0], z.shape[1],
                                          scale, int(db is not None), 0 if db is None else db.ctypes.data)


# Why: see docs/decisions/014-adam-in-one-pass.md
def adam_step(p, g, m, v, lr, beta1, beta2, eps, t):
    """The host build's Adam step: new arrays ``(p, m, v)`` in one pass; None where it cannot run.

    ``p``, ``g``, ``m``, ``v`` are NumPy arrays of one shape and one dtype
    (float32/float64); nothing is written into them. ``t`` is the step
    count (from 1). The formulas and their order are
    :meth:`xseq.nn.optim.Adam._update`'s, so the result is the reference's
    up to the rounding of fused multiply-adds.
    """
    lib = library().lib
    if lib is None or not fused_enabled():
        return None
    functions = _helpers(lib).get(p.dtype)
    arrays = (p, g, m, v)
    if functions is None or any(a.dtype != p.dtype or a.shape != p.shape or not a.flags.c_contiguous for a in arrays):
        return None
    out = tuple(np.empty_like(p) for _ in range(3))
    functions["adam"](*(a.ctypes.data for a in arrays + out), p.size, lr, beta1, beta2, eps,
                      1 - beta1**t, 1 - beta2**t)
    return out


def host_ops(xp, dtype):
    """``HostFusedOps`` for arrays of ``dtype``, or None where the host kernels cannot serve them."""
    if dtype is None or np.dtype(dtype) not in CTYPES:
        return None
    lib = library()
    return None if lib.lib is None else HostFusedOps(xp, lib.lib)


# ---------------------------------------------------------------- lanes: the time loop on row blocks, one core each
#
# The per-step product of a recurrence is small: (64, 256) @ (256, 1024) is 34 MFLOP, a fraction of a
# millisecond, and NumPy's OpenBLAS splits it over its threads at every step, then runs the step's
# pointwise kernel on one core while the other waits. The examples of a batch never meet in a
# recurrence, so the time loop can be cut by rows instead: each core runs the whole loop on its own
# examples (one-thread products, its own pointwise work, no Python array views: DirectSteps' two calls
# a step, by address) and no core waits for another until the loop ends. The lanes run on OpenBLAS's
# own threads (HostDevice.run), so they share the cores with nothing.

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
MAX_LANES = 8


def lane_count(rows, n_a, gates, itemsize):
    """How many lanes a sequence of ``rows`` examples, ``n_a`` units and ``gates`` gate blocks gets (1: none).

    None when ``W_hh`` (``gates * n_a * n_a`` elements of ``itemsize``
    bytes) is larger than :data:`MAX_LANE_WEIGHT_BYTES`. Otherwise one per
    thread of NumPy's OpenBLAS (``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``,
    else one per core: a user's limit is the lanes' limit too), at most
    :data:`MAX_LANES`, and no more than keep :data:`MIN_LANE_ROWS` rows in
    every lane.
    """
    if not lanes_enabled() or gates * n_a * n_a * itemsize > MAX_LANE_WEIGHT_BYTES:
        return 1
    blas, _ = numpy_openblas()
    if blas is None:
        return 1
    return max(1, min(blas.threads(), MAX_LANES, rows // MIN_LANE_ROWS))


class _OpenBLAS:
    """NumPy's bundled OpenBLAS (scipy-openblas, 64-bit integers), as NumPy loaded it."""

    def __init__(self, lib, path):
        self.path = path
        # called by address from the C++ loops (CBLAS, 64-bit integers: LOOPS' gemm_t)
        self.gemm = {np.dtype(np.float32): lib.scipy_cblas_sgemm64_, np.dtype(np.float64): lib.scipy_cblas_dgemm64_}
        self.set_threads_local = lib.openblas_set_num_threads_local  # OpenBLAS >= 0.3.27
        self.set_threads_local.argtypes, self.set_threads_local.restype = [ctypes.c_int], ctypes.c_int
        self._threads = lib.scipy_openblas_get_num_threads64_
        self._threads.argtypes, self._threads.restype = [], ctypes.c_int
        # gotoblas_pthread(n, function, args, stride): function(args + i * stride) for i < n, the first on the
        # calling thread and the others on OpenBLAS's own threads, and back when all are done (the pthreads
        # build's server; the OpenMP build has none, and then there are no lanes)
        self.run_on_threads = lib.gotoblas_pthread
        self.run_on_threads.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.run_on_threads.restype = ctypes.c_int

    def threads(self):
        """OpenBLAS's thread count now (what NumPy's products use)."""
        return int(self._threads())


@functools.cache
def numpy_openblas():
    """``(_OpenBLAS, "")`` for the OpenBLAS NumPy has loaded, or ``(None, reason)``.

    Only a library already in the process is taken (``RTLD_NOLOAD``): nothing
    is loaded that NumPy did not load itself.
    """
    if not hasattr(os, "RTLD_NOLOAD"):
        return None, "this platform cannot look up a loaded library (no RTLD_NOLOAD)"
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    candidates = sorted(libs.glob("libscipy_openblas64_*.so*")) if libs.is_dir() else []
    reason = "NumPy's BLAS is not its bundled OpenBLAS (scipy-openblas64)"
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        except OSError:
            reason = f"{path.name} is not loaded in this process"
            continue
        try:
            return _OpenBLAS(lib, path), ""
        except AttributeError as exc:
            reason = f"{path.name} lacks {exc} (the pthreads build of OpenBLAS 0.3.27 or later is needed)"
    return None, reason


# Why: see docs/decisions/016-packed-weight-product-avx512.md
def packed_products(lib):
    """Whether the lanes' per-step products take the weight packed once a loop (:data:`LOOPS`' ``xseq_packed``).

    Where the host build has 512-bit vectors (AVX-512), the only target it
    was measured on: 0.61x-0.84x of a one-thread OpenBLAS call's time at the
    lanes' shapes (float32 and float64,
    docs/decisions/016-packed-weight-product-avx512.md). Elsewhere the lanes call NumPy's OpenBLAS.
    """
    native = lib.xseq_packed_native
    native.argtypes, native.restype = [], ctypes.c_int
    return bool(native())


class _LaneJob(ctypes.Structure):
    """One lane's loop, as LOOPS' ``xseq_loops::lane_job`` (same fields, same order)."""

    _fields_ = ([(name, ctypes.c_int64) for name in ("backward", "kind", "T", "m", "n_a")]
                + [(name, ctypes.c_void_p) for name in ("gemm", "xw", "s", "c", "g", "dy", "dz", "dhw", "w",
                                                        "b_hn", "hw", "dh", "dc", "work", "packed")]
                + [(name, ctypes.c_int64) for name in ("xw_step", "s_step", "c_step", "g_step", "dy_step",
                                                       "z_step", "hw_step")])


# Why: see docs/decisions/012-lanes-on-openblas-threads.md
class HostDevice:
    """The engine's time loops in C++ (:data:`LOOPS`) on lanes of rows, run on NumPy's own OpenBLAS threads.

    :meth:`forward_job`/:meth:`backward_job` describe one lane's loop;
    :meth:`run` runs a list of them at once: the first on the calling
    thread, the others on OpenBLAS's threads (``gotoblas_pthread``), with
    every product inside a lane on that lane's thread alone. So a lane is
    one core, and no thread is added to the process: the threads that run
    the lanes are the ones that would otherwise spin waiting for NumPy's
    next product (a separate pool of lane threads competed with them for
    the cores and ran at about half speed).

    ``openblas_set_num_threads_local`` sets the process's count in NumPy's
    (pthreads) build, not the thread's: it is 1 while lanes run and
    restored after, under a lock (runs of lanes from several Python threads
    take turns; meanwhile NumPy's other products run on one thread).
    """

    _lock = threading.Lock()

    def __init__(self, dtype, lib, blas, packed=None):
        self.dtype = np.dtype(dtype)
        self._blas = blas
        self._gemm_address = ctypes.cast(blas.gemm[self.dtype], ctypes.c_void_p).value
        self._lane_address = ctypes.cast(getattr(lib, f"xseq_lane_{CTYPES[self.dtype]}"), ctypes.c_void_p).value
        self._pack = getattr(lib, f"xseq_pack_{CTYPES[self.dtype]}")
        self._pack.argtypes, self._pack.restype = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p], None
        self._packed_size = getattr(lib, f"xseq_packed_size_{CTYPES[self.dtype]}")
        self._packed_size.argtypes, self._packed_size.restype = [ctypes.c_int64, ctypes.c_int64], ctypes.c_int64
        #: whether the lanes' per-step products use the weight packed once a loop rather than NumPy's OpenBLAS
        self.packed = packed_products(lib) if packed is None else bool(packed)
        self._packed_buffer = np.empty(0, dtype=self.dtype)

    def forward_job(self, kind, XW, W_hhT, b_hn, saved, S, C, hw):
        """A lane of :class:`~xseq.ops.fused.DirectSteps`' forward loop: writes ``S[1:]``, ``C[1:]``, ``saved``."""
        T, m, _ = XW.shape
        job = _LaneJob(backward=0, kind=_KIND_CODES[kind], T=T, m=m, n_a=S.shape[2], gemm=self._gemm_address)
        if T == 0:
            return job
        job.xw, job.xw_step = self._steps(XW)
        job.s, job.s_step = self._steps(S)
        if C is not None:
            job.c, job.c_step = self._steps(C)
        if saved is not None:
            job.g, job.g_step = self._steps(saved)
        job.w, job.hw = self._block(W_hhT), self._block(hw)
        job.b_hn = None if b_hn is None else self._block(b_hn)
        return job

    def backward_job(self, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW):
        """A lane of :class:`~xseq.ops.fused.DirectSteps`' backward loop: ``dh``/``dc`` (C-contiguous) hold the
        final states' gradients and are overwritten with the first states'; writes ``dZ`` (and ``dHW``)."""
        T, m, _ = dZ.shape
        n_a = S.shape[2]
        job = _LaneJob(backward=1, kind=_KIND_CODES[kind], T=T, m=m, n_a=n_a, gemm=self._gemm_address)
        if T == 0:
            return job
        if dY is None:  # no output gradient: every step reads one block of zeros
            job.keep_dy = np.zeros((m, n_a), dtype=self.dtype)
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
        job.keep_work = np.empty(4 * m * n_a, dtype=self.dtype)  # the loop's two dh and two dc buffers
        job.w, job.work = self._block(W_hh), self._block(job.keep_work)
        job.dh, job.dc = self._block(dh), None if dc is None else self._block(dc)
        return job

    def run(self, jobs, weight):
        """Run the lanes ``jobs`` at once (as many at a time as OpenBLAS has threads) and return when all are done.

        ``weight`` is the right operand of every lane's per-step product (``W_hh.T`` forward, ``W_hh`` backward):
        packed once here for all lanes and steps where :attr:`packed`.
        """
        jobs = [job for job in jobs if job.T > 0]
        if not jobs:
            return
        with self._lock:
            if self.packed:
                packed = self._packed_weight(weight)
                for job in jobs:
                    job.packed = packed
            threads = self._blas.set_threads_local(1)
            try:
                at_once = max(1, min(threads, len(jobs)))  # never more lanes than OpenBLAS has threads to run them
                for first in range(0, len(jobs), at_once):
                    group = jobs[first:first + at_once]
                    structs = (_LaneJob * len(group))(*group)  # one C array, as gotoblas_pthread strides it
                    self._blas.run_on_threads(len(group), self._lane_address, ctypes.addressof(structs),
                                              ctypes.sizeof(_LaneJob))
            finally:
                self._blas.set_threads_local(threads)

    def _packed_weight(self, weight):
        """``weight`` (K, N) packed into panels (:data:`LOOPS`' ``xseq_packed::pack``) in a buffer kept for the next run."""
        K, N = weight.shape
        size = self._packed_size(K, N)  # the layout's own count (LOOPS' xseq_packed::packed_size)
        if self._packed_buffer.size < size:
            self._packed_buffer = np.empty(size, dtype=self.dtype)
        self._pack(self._block(weight), K, N, _address(self._packed_buffer))
        return _address(self._packed_buffer)

    def _block(self, a):
        if a.dtype != self.dtype or not a.flags.c_contiguous:
            raise ValueError(f"the time loops need C-contiguous {self.dtype} blocks; got {a.dtype} "
                             f"of shape {a.shape} with strides {a.strides}")
        return _address(a)

    def _steps(self, a):
        """``(address of a[0], elements from a[t] to a[t+1])``; each step's block C-contiguous."""
        return self._block(a[0, ...]), a.strides[0] // a.itemsize


_KIND_CODES = {"rnn": 0, "lstm": 1, "gru": 2}

#: ``(dtype name, host library) -> (HostDevice or None, reason)``: built and checked once each.
_DEVICES = {}


def host_device(dtype, lib, check):
    """The checked :class:`HostDevice` for ``dtype``, or None (the reason in :func:`lanes_status`).

    ``check(device, xp, ops)`` runs small sequences of each cell through two
    lanes and through the step methods and raises if they differ (the
    engine's ``check_direct``). A failure keeps the engine's loop, with a
    ``RuntimeWarning`` once.
    """
    dtype = np.dtype(dtype)

    def build():
        blas, reason = numpy_openblas()
        if blas is None:
            raise RuntimeError(reason)
        device = HostDevice(dtype, lib, blas)
        ops = (HostFusedOps(xp_numpy, lib, lanes=False), HostFusedOps(xp_numpy, lib, lanes=LaneSteps(device, 2)))
        check(device, xp_numpy, ops)
        return device

    return checked_once(_DEVICES, (dtype.name, lib), build, "time-loop lanes", "the engine's loop")


def lanes_status():
    """How NumPy's unmasked time loops run, and why: a line for humans."""
    if not lanes_enabled():
        return "engine's loop (XSEQ_LANES=0)"
    blas, reason = numpy_openblas()
    if blas is None:
        return f"engine's loop ({reason})"
    failed = sorted({f"{dtype}: {why}" for (dtype, _), (device, why) in _DEVICES.items() if device is None})
    lanes = f"up to {min(blas.threads(), MAX_LANES)} lanes on NumPy's OpenBLAS threads"
    rule = f"(W_hh of at most {MAX_LANE_WEIGHT_BYTES >> 20} MiB, at least {MIN_LANE_ROWS} rows a lane)"
    if blas.threads() < 2:
        return "engine's loop (NumPy's OpenBLAS has 1 thread)"
    lib = library().lib
    products = ("xseq's products with W_hh packed once a loop" if lib is not None and packed_products(lib)
                else "one-thread OpenBLAS products")
    return f"{lanes}, {products} {rule}" + (f"; not used for {'; '.join(failed)}" if failed else "")


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
    (:data:`LOOPS`: :class:`~xseq.ops.fused.DirectSteps`' two calls a step)
    -- and the lanes never wait for each other; the loops end together.
    Every buffer a lane touches is its rows of the engine's buffers (each
    step's rows stay one contiguous block), so the results are the engine's
    loop's (up to the rounding of a product split differently over threads).

    ``device`` is :class:`HostDevice`: it describes each lane's loop and
    runs them together.
    """

    def __init__(self, device, lanes):
        self.device, self.lanes = device, lanes

    def forward(self, kind, XW, W_hhT, b_hn, saved, S, C, hw):
        """As :meth:`~xseq.ops.fused.DirectSteps.forward`: writes ``S[1:]``, ``C[1:]``, ``saved``."""
        def lane(start, stop):
            rows = slice(start, stop)
            return self.device.forward_job(kind, XW[:, rows], W_hhT, b_hn, None if saved is None else saved[:, rows],
                                           S[:, rows], None if C is None else C[:, rows], hw[rows])

        self.device.run([lane(*block) for block in row_blocks(XW.shape[1], self.lanes)], W_hhT)

    def backward(self, kind, saved, S, C, W_hh, dY, dh, dc, dZ, dHW, empty):
        """As :meth:`~xseq.ops.fused.DirectSteps.backward`: writes ``dZ`` (and ``dHW``); returns ``(dh0, dc0)``."""
        m, n_a = dh.shape
        dh0 = empty(m, n_a)
        dh0[...] = dh
        dc0 = None
        if dc is not None:
            dc0 = empty(m, n_a)
            dc0[...] = dc

        def lane(start, stop):
            rows = slice(start, stop)
            return self.device.backward_job(kind, None if saved is None else saved[:, rows], S[:, rows],
                                            None if C is None else C[:, rows], W_hh,
                                            None if dY is None else dY[:, rows], dh0[rows],
                                            None if dc0 is None else dc0[rows], dZ[:, rows], dHW[:, rows])

        self.device.run([lane(*block) for block in row_blocks(m, self.lanes)], W_hh)
        return dh0, dc0
