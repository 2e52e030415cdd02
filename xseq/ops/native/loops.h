// The time loops of xseq.ops.fused.DirectSteps in C++, for one lane's rows (see xseq.ops.lanes): the
// same two calls a step -- the product through the BLAS function given by address (CBLAS, row-major,
// 64-bit integers), or by the weight packed once a loop (packed.h), and the step's kernel (steps.h) --
// with no Python between the steps, so a lane holds no lock while it runs. Pointers are each buffer's
// first step of the lane's rows; strides are in elements from one step to the next (negative for a
// buffer flipped in time). Exported for float and double by exports.cpp.
#pragma once

#include <time.h>

#include <cstdint>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

// The gate blocks of a cell by its kind code (0 RNN, 1 LSTM, 2 GRU): G, the weights' G n_a rows.
inline int64_t gate_blocks(int64_t kind) { return kind == 0 ? 1 : kind == 1 ? 4 : 3; }

// Everything one lane's loop needs. Shared with Python: xseq.ops.native_layout.LaneJob restates it as a
// ctypes structure, and the library is used for lanes only where the layout exports.cpp reports
// (xseq_layout) is that structure's, field for field.
// forward: xw, s, c, g step by step, w = W_hh, b_hn, hw; backward: g, s, c, dy, dz, dhw step by step,
// w = W_hh, dh and dc (in: the final states' gradients; out: the first states'), work (4 m n_a). packed: room
// for the lane's packed weight (packed by the lane itself: forward W_hh.T's columns, backward W_hh's, of the
// lane's units; a lane of rows packs the whole), or null for the BLAS function.
// u0, u1: the hidden units the lane owns in every row; 0 and n_a for a lane of rows (the weight packed for
// all lanes before they start, in packed). A lane of units (u1 - u0 < n_a) shares its rows with the other
// lanes of its barrier (a lane_barrier) and packs its own columns of w into packed itself.
// x1 (forward, null for none): the lane computes its own columns of xw before the loop, xw = X1 @ [W_ih b]^T,
// X1 being (T m, n_x + 1) rows [x, 1] (xw (T m, G n_a) then, every row of every step), w_ih W_ih (G n_a,
// n_x), b_in the folded biases (G n_a), packed_in room for its packed columns (project_cols).
// dx (backward, null for none): after the loop the lane computes columns i0 .. i1-1 of dX = dZ @ W_ih (dx:
// (T m, n_x), dz every row of every step), w_ih, n_x and packed_in as above (input_grad_cols).
struct lane_job {
    int64_t backward, kind, T, m, n_a;
    void *gemm, *xw, *s, *c, *g, *dy, *dz, *dhw, *w, *b_hn, *hw, *dh, *dc, *work, *packed;
    int64_t xw_step, s_step, c_step, g_step, dy_step, z_step, hw_step;
    int64_t u0, u1;
    void* barrier;
    void *x1, *w_ih, *b_in, *packed_in, *dx;
    int64_t n_x, i0, i1;
};

// Where the lanes that share rows meet once a step: parties lanes, count of them arrived, phase the
// meeting's number (32 bits: a futex word), sleepers the lanes asleep on it; sleeps and slept_ns how many
// times and how long, summed over the lanes, a lane slept (a meeting waited past the spin: another lane was
// late, descheduled on a busy machine); the counters on cache lines of their own. Shared with Python
// (xseq.ops.native_layout.LaneBarrier), which zeroes it, sets parties and reads sleeps and slept_ns after the loop.
struct lane_barrier {
    int64_t parties, pad0[7], count, pad1[7];
    int32_t phase, sleepers;
    int64_t sleeps, slept_ns, pad2[5];
};

inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// Sleep while *word == value (for at most a millisecond: the caller looks again), and wake every sleeper.
// Linux: a futex; elsewhere a short sleep, the waker having nothing to do.
inline void sleep_while(int32_t* word, int32_t value) {
#if defined(__linux__)
    struct timespec limit = {0, 1000000};
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, &limit, nullptr, 0);
#else
    (void)word, (void)value;
    struct timespec pause = {0, 20000};
    nanosleep(&pause, nullptr);
#endif
}
inline void wake_all(int32_t* word) {
#if defined(__linux__)
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
#else
    (void)word;
#endif
}

// Wait until every lane of the barrier has arrived. Spins first (the lanes are each on a core of their own
// and a step is microseconds), then sleeps on the phase word: on a machine with more busy threads than
// cores a lane waiting for a descheduled one gives its core away rather than keep it from that lane (a spin
// that only yielded took 0.3 s over a 1 ms loop there). The last lane to arrive wakes the sleepers; both
// sides' sequentially consistent accesses make one of them see the other (the sleeper the new phase, or the
// waker the sleeper), and the futex checks the phase again before it sleeps. A sleep at a loop's first meeting
// (phase 0) is not counted in sleeps and slept_ns: there the lanes wait for the last of them to start (a thread
// of OpenBLAS's waking, a lane packing more columns), which is no sign of a core kept busy by another process
// (xseq.ops.runtime.CPURuntime.note_meetings pauses the lanes of units on those counts).
inline void meet(lane_barrier* b) {
    const int32_t phase = __atomic_load_n(&b->phase, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->parties) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->phase, phase + 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST) > 0) wake_all(&b->phase);
        return;
    }
    for (int spins = 0; __atomic_load_n(&b->phase, __ATOMIC_ACQUIRE) == phase; ++spins) {
        if (spins < 4000) {
            relax();
            continue;
        }
        __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&b->phase, __ATOMIC_SEQ_CST) == phase) {
            struct timespec start, end;
            clock_gettime(CLOCK_MONOTONIC, &start);
            sleep_while(&b->phase, phase);
            clock_gettime(CLOCK_MONOTONIC, &end);
            if (phase != 0) {  // not the lanes' start (see above)
                __atomic_add_fetch(&b->sleeps, 1, __ATOMIC_RELAXED);
                __atomic_add_fetch(&b->slept_ns,
                                   (int64_t(end.tv_sec) - start.tv_sec) * 1000000000 + (end.tv_nsec - start.tv_nsec),
                                   __ATOMIC_RELAXED);
            }
        }
        __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
    }
}

// kind: 0 RNN, 1 LSTM, 2 GRU. hw = h @ W_hh.T, then the step's kernel, for t = 0 .. T-1.
// w_hh: W_hh (G n_a, n_a); packed: W_hh.T packed (pack_transposed), or null for the BLAS function.
template <typename T_>
void forward_loop(int kind, void* gemm_p, int64_t T, int64_t m, int64_t n_a, const T_* xw, int64_t xw_step, T_* s,
                  int64_t s_step, T_* c, int64_t c_step, T_* g, int64_t g_step, const T_* w_hh, const T_* b_hn,
                  T_* hw, const T_* packed) {
    typedef xseq_steps::kernels<T_> K;
    auto gemm = reinterpret_cast<gemm_t<T_>>(gemm_p);
    const int64_t G = gate_blocks(kind), GN = G * n_a, n = m * n_a;
    for (int64_t t = 0; t < T; ++t) {
        T_* h = s + t * s_step;
        if (packed)  // hw = h @ W_hh.T
            xseq_packed::gemm<T_>(m, GN, n_a, h, n_a, packed, T_(0), hw, GN);
        else
            gemm(101, 111, 112, m, GN, n_a, T_(1), h, n_a, w_hh, n_a, T_(0), hw, GN);
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
    const int64_t G = gate_blocks(kind), GN = G * n_a, n = m * n_a;
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

// C (m x U, row stride ldc) = A (m x k) @ columns [col, col + U) of B (k x ldb; transposed: B = b^T, b being
// (ldb x k) row-major) + beta C: by the packed block where there is one, else by the BLAS function on B's
// columns in place
template <typename T>
inline void mm_cols(gemm_t<T> gemm, const T* packed, int64_t m, int64_t U, int64_t k, const T* a, int64_t lda,
                    const T* b, int64_t ldb, bool transposed, int64_t col, T beta, T* c, int64_t ldc) {
    if (packed)
        xseq_packed::gemm<T>(m, U, k, a, lda, packed, beta, c, ldc);
    else if (transposed)
        gemm(101, 111, 112, m, U, k, T(1), a, lda, b + col * k, k, beta, c, ldc);
    else
        gemm(101, 111, 111, m, U, k, T(1), a, lda, b + col, ldb, beta, c, ldc);
}

// The input projection of the lane's columns (units u0 .. u0+U-1 of every gate block) for every row of
// every step, before the loop (lane_job's x1): each gate block's columns of [W_ih b]^T packed (pack_projection),
// then the rows of X1 a chunk of up to 64 at a time (the chunk stays in cache while every panel uses it).
template <typename T_>
void project_cols(const lane_job& j, int64_t u0, int64_t U) {
    const int64_t G = gate_blocks(j.kind), n_a = j.n_a, GN = G * n_a, n_x = j.n_x,
                  n_in = n_x + 1, rows = j.T * j.m, chunk = 64;
    const T_ *x1 = (const T_*)j.x1, *w_ih = (const T_*)j.w_ih, *b = (const T_*)j.b_in;
    T_ *packed = (T_*)j.packed_in, *xw = (T_*)j.xw;
    const int64_t block = xseq_packed::packed_size<T_>(n_in, U);
    for (int64_t gate = 0; gate < G; ++gate)
        xseq_packed::pack_projection(w_ih + (gate * n_a + u0) * n_x, n_x, n_x, b + gate * n_a + u0, U,
                                     packed + gate * block);
    for (int64_t r = 0; r < rows; r += chunk) {
        const int64_t M = rows - r < chunk ? rows - r : chunk;
        for (int64_t gate = 0; gate < G; ++gate)
            xseq_packed::gemm<T_>(M, U, n_in, x1 + r * n_in, n_in, packed + gate * block, T_(0),
                                  xw + r * GN + gate * n_a + u0, GN);
    }
}

// The input's gradient, columns i0 .. i1-1 of dX = dZ @ W_ih for every row of every step, after the loop
// (lane_job's dx; dZ complete: every lane's columns written): those columns of W_ih packed, then the rows of
// dZ a chunk of up to 64 at a time, the sum over dZ's G n_a columns in blocks of 256 KiB of a chunk's rows
// (a block of dZ stays in cache while every panel uses it; a whole chunk of 64 rows of 4096 does not).
template <typename T_>
void input_grad_cols(const lane_job& j) {
    const int64_t G = gate_blocks(j.kind), GN = G * j.n_a, n_x = j.n_x, i0 = j.i0,
                  NI = j.i1 - j.i0, rows = j.T * j.m, chunk = 64,
                  KB = int64_t(256 * 1024 / (chunk * sizeof(T_))), NR = xseq_packed::panel_cols<T_>();
    if (NI <= 0) return;
    const T_ *w_ih = (const T_*)j.w_ih, *dz = (const T_*)j.dz;
    T_ *packed = (T_*)j.packed_in, *dx = (T_*)j.dx;
    xseq_packed::pack(w_ih + i0, GN, NI, n_x, packed);
    for (int64_t r = 0; r < rows; r += chunk) {
        const int64_t M = rows - r < chunk ? rows - r : chunk;
        for (int64_t k = 0; k < GN; k += KB)
            xseq_packed::gemm<T_>(M, NI, GN - k < KB ? GN - k : KB, dz + r * GN + k, GN, packed + k * NR,
                                  k == 0 ? T_(0) : T_(1), dx + r * n_x + i0, n_x, GN);
    }
}

// The forward loop of a lane that owns units u0 .. u1-1 of every row: at each step the columns of hw that
// belong to its units (one product a gate block, by its own packed columns of W_hh.T), its units' kernel,
// then the barrier: the next step's product reads the whole h, which every lane wrote a part of. Nothing a
// lane writes is read by another before the next barrier (hw, gates, c: the lane's own columns; h: read
// after it).
template <typename T_>
void unit_forward_loop(const lane_job& j) {
    typedef xseq_steps::kernels<T_> K;
    auto gemm = reinterpret_cast<gemm_t<T_>>(j.gemm);
    const int kind = (int)j.kind;
    const int64_t G = gate_blocks(kind), n_a = j.n_a, GN = G * n_a, m = j.m, u0 = j.u0,
                  U = j.u1 - j.u0;
    const T_* w = (const T_*)j.w;  // W_hh, (GN, n_a): the product is by its transpose
    T_* packed = (T_*)j.packed;
    const int64_t block = xseq_packed::packed_size<T_>(n_a, U);
    if (packed)  // the gate blocks' columns of W_hh.T this lane owns: rows of W_hh
        for (int64_t gate = 0; gate < G; ++gate)
            xseq_packed::pack_transposed(w + (gate * n_a + u0) * n_a, n_a, n_a, U, packed + gate * block);
    if (j.x1) project_cols<T_>(j, u0, U);  // the lane's own columns: no other lane reads them
    auto* barrier = (lane_barrier*)j.barrier;
    T_ *s = (T_*)j.s, *c = (T_*)j.c, *g = (T_*)j.g, *hw = (T_*)j.hw;
    const T_ *xw = (const T_*)j.xw, *b_hn = (const T_*)j.b_hn;
    for (int64_t t = 0; t < j.T; ++t) {
        T_* h = s + t * j.s_step;
        for (int64_t gate = 0; gate < G; ++gate)
            mm_cols<T_>(gemm, packed ? packed + gate * block : nullptr, m, U, n_a, h, n_a, w, GN, true,
                        gate * n_a + u0, T_(0), hw + gate * n_a + u0, GN);
        const T_* x = xw + t * j.xw_step;
        if (kind == 0) K::rnn_forward_cols(x, hw, h + j.s_step, m, n_a, u0, u0 + U);
        else if (kind == 1) K::lstm_forward_cols(x, hw, c + t * j.c_step, (int)n_a, g + t * j.g_step,
                                                 c + (t + 1) * j.c_step, h + j.s_step, m, n_a, u0, u0 + U);
        else K::gru_forward_cols(x, hw, b_hn, h, (int)n_a, g + t * j.g_step, h + j.s_step, m, n_a, u0, u0 + U);
        meet(barrier);
    }
}

// The backward loop of a lane that owns units u0 .. u1-1: its units' kernel writes their columns of dz (and
// dhw) and their dc, the barrier, then its units' columns of the next dh from the whole dhw (its own packed
// columns of W_hh). dh and dc: the final states' gradients in, the first states' out (each lane its units);
// work: 4 (m, n_a) blocks shared by the lanes, each writing its own units.
template <typename T_>
void unit_backward_loop(const lane_job& j) {
    typedef xseq_steps::kernels<T_> K;
    auto gemm = reinterpret_cast<gemm_t<T_>>(j.gemm);
    const int kind = (int)j.kind;
    const int64_t G = gate_blocks(kind), n_a = j.n_a, GN = G * n_a, m = j.m, u0 = j.u0, u1 = j.u1,
                  U = u1 - u0, n = m * n_a;
    const T_* w = (const T_*)j.w;  // W_hh, (GN, n_a)
    T_* packed = (T_*)j.packed;
    if (packed) xseq_packed::pack(w + u0, GN, U, n_a, packed);
    auto* barrier = (lane_barrier*)j.barrier;
    const T_ *g = (const T_*)j.g, *s = (const T_*)j.s, *c = (const T_*)j.c, *dy = (const T_*)j.dy;
    T_ *dz = (T_*)j.dz, *dhw = (T_*)j.dhw, *dh = (T_*)j.dh, *dc = (T_*)j.dc, *work = (T_*)j.work;
    T_* dh_buf[2] = {work, work + n};
    T_* dc_buf[2] = {work + 2 * n, work + 3 * n};
    const T_* dh_cur = dh;
    const T_* dc_cur = dc;
    for (int64_t t = j.T - 1; t >= 0; --t) {
        T_* dh_prev = dh_buf[t % 2];
        T_ beta = T_(0);
        if (kind == 0) K::rnn_backward_cols(s + (t + 1) * j.s_step, dh_cur, dy + t * j.dy_step, dz + t * j.z_step,
                                            m, n_a, u0, u1);
        else if (kind == 1) {
            T_* dc_prev = dc_buf[t % 2];
            K::lstm_backward_cols(g + t * j.g_step, c + t * j.c_step, c + (t + 1) * j.c_step, dh_cur,
                                  dy + t * j.dy_step, dc_cur, (int)n_a, dz + t * j.z_step, dc_prev, m, n_a, u0, u1);
            dc_cur = dc_prev;
        } else {
            K::gru_backward_cols(g + t * j.g_step, s + t * j.s_step, dh_cur, dy + t * j.dy_step, (int)n_a,
                                 dz + t * j.z_step, dhw + t * j.hw_step, dh_prev, m, n_a, u0, u1);
            beta = T_(1);
        }
        meet(barrier);  // every lane's columns of dhw[t] written
        mm_cols<T_>(gemm, packed, m, U, GN, dhw + t * j.hw_step, GN, w, n_a, false, u0, beta, dh_prev + u0, n_a);
        dh_cur = dh_prev;
    }
    for (int64_t r = 0; r < m; ++r)
        for (int64_t i = r * n_a + u0; i < r * n_a + u1; ++i) dh[i] = dh_cur[i];
    if (kind == 1)
        for (int64_t r = 0; r < m; ++r)
            for (int64_t i = r * n_a + u0; i < r * n_a + u1; ++i) dc[i] = dc_cur[i];
    if (j.dx) {
        meet(barrier);  // every lane's columns of dz written: dX reads them all
        input_grad_cols<T_>(j);
    }
}

// One lane's loop (a lane_job): what OpenBLAS's gotoblas_pthread runs on each of its threads.
template <typename T_>
void lane(const lane_job& j) {
    if (j.u0 != 0 || j.u1 != j.n_a) {
        if (!j.backward) unit_forward_loop<T_>(j);
        else unit_backward_loop<T_>(j);
        return;
    }
    const int64_t GN = gate_blocks(j.kind) * j.n_a;
    if (j.packed && !j.backward) xseq_packed::pack_transposed((const T_*)j.w, j.n_a, j.n_a, GN, (T_*)j.packed);
    else if (j.packed) xseq_packed::pack((const T_*)j.w, GN, j.n_a, (T_*)j.packed);
    if (!j.backward && j.x1) project_cols<T_>(j, 0, j.n_a);  // one lane of every row and unit
    if (!j.backward)
        forward_loop<T_>((int)j.kind, j.gemm, j.T, j.m, j.n_a, (const T_*)j.xw, j.xw_step, (T_*)j.s, j.s_step,
                         (T_*)j.c, j.c_step, (T_*)j.g, j.g_step, (const T_*)j.w, (const T_*)j.b_hn, (T_*)j.hw,
                         (const T_*)j.packed);
    else
        backward_loop<T_>((int)j.kind, j.gemm, j.T, j.m, j.n_a, (const T_*)j.g, j.g_step, (const T_*)j.s, j.s_step,
                          (const T_*)j.c, j.c_step, (const T_*)j.w, (const T_*)j.dy, j.dy_step, (T_*)j.dz,
                          j.z_step, (T_*)j.dhw, j.hw_step, (T_*)j.dh, (T_*)j.dc, (T_*)j.work,
                          (const T_*)j.packed);
    if (j.backward && j.dx) input_grad_cols<T_>(j);  // one lane of every row: every column of dX
}
}  // namespace xseq_loops
