// The time loops of xseq.ops.fused.DirectSteps in C++, for one lane's rows (see xseq.ops.lanes): the
// same two calls a step -- the product through the BLAS function given by address (CBLAS, row-major,
// 64-bit integers), or by the weight packed once a loop (packed.h), and the step's kernel (steps.h) --
// with no Python between the steps, so a lane holds no lock while it runs. Pointers are each buffer's
// first step of the lane's rows; strides are in elements from one step to the next (negative for a
// buffer flipped in time). Exported for float and double by exports.cpp.
#pragma once

#include <cstdint>

#include "packed.h"
#include "steps.h"

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

// Everything one lane's loop needs. Shared with Python: xseq.ops.native_layout.LaneJob restates it as a
// ctypes structure, and the library is used for lanes only where the layout exports.cpp reports
// (xseq_layout) is that structure's, field for field.
// forward: xw, s, c, g step by step, w = W_hh.T, b_hn, hw; backward: g, s, c, dy, dz, dhw step by step,
// w = W_hh, dh and dc (in: the final states' gradients; out: the first states'), work (4 m n_a). packed: w packed
// by xseq_packed::pack, or null for the BLAS function.
struct lane_job {
    int64_t backward, kind, T, m, n_a;
    void *gemm, *xw, *s, *c, *g, *dy, *dz, *dhw, *w, *b_hn, *hw, *dh, *dc, *work, *packed;
    int64_t xw_step, s_step, c_step, g_step, dy_step, z_step, hw_step;
};

// kind: 0 RNN, 1 LSTM, 2 GRU. hw = h @ W_hh.T, then the step's kernel, for t = 0 .. T-1.
template <typename T_>
void forward_loop(int kind, void* gemm_p, int64_t T, int64_t m, int64_t n_a, const T_* xw, int64_t xw_step, T_* s,
                  int64_t s_step, T_* c, int64_t c_step, T_* g, int64_t g_step, const T_* w_hhT, const T_* b_hn,
                  T_* hw, const T_* packed) {
    typedef xseq_steps::kernels<T_> K;
    auto gemm = reinterpret_cast<gemm_t<T_>>(gemm_p);
    const int64_t G = kind == 0 ? 1 : kind == 1 ? 4 : 3, GN = G * n_a, n = m * n_a;
    for (int64_t t = 0; t < T; ++t) {
        T_* h = s + t * s_step;
        mm<T_>(gemm, packed, m, GN, n_a, h, n_a, w_hhT, GN, T_(0), hw, GN);  // hw = h @ W_hh.T
        const T_* x = xw + t * xw_step;
        if (kind == 0) K::rnn_forward(x, hw, h + s_step, n);
        else if (kind == 1) K::lstm_forward(x, hw, c + t * c_step, (int)n_a, g + t * g_step, c + (t + 1) * c_step,
                                            h + s_step, n);
        else K::gru_forward(x, hw, b_hn, h, (int)n_a, g + t * g_step, h + s_step, n);
    }
}

// The backward loop, t = T-1 .. 0. dh, dc: the final states' gradients in, the first states' out;
// work: 4 (m, n_a) blocks.
template <typename T_>
void backward_loop(int kind, void* gemm_p, int64_t T, int64_t m, int64_t n_a, const T_* g, int64_t g_step,
                   const T_* s, int64_t s_step, const T_* c, int64_t c_step, const T_* w_hh, const T_* dy,
                   int64_t dy_step, T_* dz, int64_t z_step, T_* dhw, int64_t hw_step, T_* dh, T_* dc, T_* work,
                   const T_* packed) {
    typedef xseq_steps::kernels<T_> K;
    auto gemm = reinterpret_cast<gemm_t<T_>>(gemm_p);
    const int64_t G = kind == 0 ? 1 : kind == 1 ? 4 : 3, GN = G * n_a, n = m * n_a;
    T_* dh_buf[2] = {work, work + n};
    T_* dc_buf[2] = {work + 2 * n, work + 3 * n};
    const T_* dh_cur = dh;
    const T_* dc_cur = dc;
    for (int64_t t = T - 1; t >= 0; --t) {
        T_* dh_prev = dh_buf[t % 2];
        T_ beta = T_(0);
        if (kind == 0) K::rnn_backward(s + (t + 1) * s_step, dh_cur, dy + t * dy_step, dz + t * z_step, n);
        else if (kind == 1) {
            T_* dc_prev = dc_buf[t % 2];
            K::lstm_backward(g + t * g_step, c + t * c_step, c + (t + 1) * c_step, dh_cur, dy + t * dy_step, dc_cur,
                             (int)n_a, dz + t * z_step, dc_prev, n);
            dc_cur = dc_prev;
        } else {
            // the kernel writes the direct part of dh_prev; the product adds the part through W_hh
            K::gru_backward(g + t * g_step, s + t * s_step, dh_cur, dy + t * dy_step, (int)n_a, dz + t * z_step,
                            dhw + t * hw_step, dh_prev, n);
            beta = T_(1);
        }
        mm<T_>(gemm, packed, m, n_a, GN, dhw + t * hw_step, GN, w_hh, n_a, beta, dh_prev, n_a);
        dh_cur = dh_prev;
    }
    for (int64_t i = 0; i < n; ++i) dh[i] = dh_cur[i];
    if (kind == 1)
        for (int64_t i = 0; i < n; ++i) dc[i] = dc_cur[i];
}

// One lane's loop (a lane_job): what OpenBLAS's gotoblas_pthread runs on each of its threads.
template <typename T_>
void lane(const lane_job& j) {
    if (!j.backward)
        forward_loop<T_>((int)j.kind, j.gemm, j.T, j.m, j.n_a, (const T_*)j.xw, j.xw_step, (T_*)j.s, j.s_step,
                         (T_*)j.c, j.c_step, (T_*)j.g, j.g_step, (const T_*)j.w, (const T_*)j.b_hn, (T_*)j.hw,
                         (const T_*)j.packed);
    else
        backward_loop<T_>((int)j.kind, j.gemm, j.T, j.m, j.n_a, (const T_*)j.g, j.g_step, (const T_*)j.s, j.s_step,
                          (const T_*)j.c, j.c_step, (const T_*)j.w, (const T_*)j.dy, j.dy_step, (T_*)j.dz,
                          j.z_step, (T_*)j.dhw, j.hw_step, (T_*)j.dh, (T_*)j.dc, (T_*)j.work,
                          (const T_*)j.packed);
}
}  // namespace xseq_loops
