// The library's C entry points for float and double, everything Python calls through ctypes but the
// step kernels themselves (generated, see steps.h): the helpers, the one-pass updates, the time loops
// and the lanes, the packed product, what the build's vector math is, and the layout of every struct
// shared with Python. The host build compiles this file after the generated kernels
// (xseq.ops.native_source.host_source); each group is bound in Python by the feature that uses it
// (xseq.ops.native_features).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "helpers.h"
#include "loops.h"
#include "onepass.h"
#include "packed.h"
#include "prelude.h"
#include "vecmath.h"

// ------------------------------------------------------------------ helpers (xseq.ops.host.HostFusedOps)

extern "C" void xseq_gather3_float(const float* src, ptrdiff_t s0, ptrdiff_t s1, ptrdiff_t s2, float* dst,
                                   ptrdiff_t d0, ptrdiff_t d1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t n2) {
    xseq_helpers::gather3(src, s0, s1, s2, dst, d0, d1, n0, n1, n2);
}
extern "C" void xseq_gather3_double(const double* src, ptrdiff_t s0, ptrdiff_t s1, ptrdiff_t s2, double* dst,
                                    ptrdiff_t d0, ptrdiff_t d1, ptrdiff_t n0, ptrdiff_t n1, ptrdiff_t n2) {
    xseq_helpers::gather3(src, s0, s1, s2, dst, d0, d1, n0, n1, n2);
}
extern "C" void xseq_softmax_rows_float(float* z, ptrdiff_t rows, ptrdiff_t cols) {
    xseq_helpers::softmax_rows(z, rows, cols);
}
extern "C" void xseq_softmax_rows_double(double* z, ptrdiff_t rows, ptrdiff_t cols) {
    xseq_helpers::softmax_rows(z, rows, cols);
}

// ------------------------------------------------------------------ one-pass updates (xseq.ops.host_onepass)

extern "C" double xseq_softmax_xent_rows_float(float* z, const float* b, const int64_t* targets, ptrdiff_t rows,
                                               ptrdiff_t cols, float scale, int grad, float* db) {
    return xseq_helpers::softmax_xent_rows(z, b, targets, rows, cols, scale, grad, db);
}
extern "C" double xseq_softmax_xent_rows_double(double* z, const double* b, const int64_t* targets, ptrdiff_t rows,
                                                ptrdiff_t cols, double scale, int grad, double* db) {
    return xseq_helpers::softmax_xent_rows(z, b, targets, rows, cols, scale, grad, db);
}
extern "C" void xseq_adam_float(const float* p, const float* g, const float* m, const float* v, float* p_out,
                                float* m_out, float* v_out, ptrdiff_t n, float lr, float beta1, float beta2, float eps,
                                float c1, float c2) {
    xseq_helpers::adam(p, g, m, v, p_out, m_out, v_out, n, lr, beta1, beta2, eps, c1, c2);
}
extern "C" void xseq_adam_double(const double* p, const double* g, const double* m, const double* v, double* p_out,
                                 double* m_out, double* v_out, ptrdiff_t n, double lr, double beta1, double beta2,
                                 double eps, double c1, double c2) {
    xseq_helpers::adam(p, g, m, v, p_out, m_out, v_out, n, lr, beta1, beta2, eps, c1, c2);
}

// ------------------------------------------------------------------ time loops and lanes (xseq.ops.lanes)

extern "C" void xseq_forward_loop_float(int kind, void* gemm, int64_t T, int64_t m, int64_t n_a, const float* xw,
                                        int64_t xw_step, float* s, int64_t s_step, float* c, int64_t c_step, float* g,
                                        int64_t g_step, const float* w_hh, const float* b_hn, float* hw,
                                        const float* packed) {
    xseq_loops::forward_loop<float>(kind, gemm, T, m, n_a, xw, xw_step, s, s_step, c, c_step, g, g_step, w_hh, b_hn,
                                    hw, packed);
}
extern "C" void xseq_forward_loop_double(int kind, void* gemm, int64_t T, int64_t m, int64_t n_a, const double* xw,
                                         int64_t xw_step, double* s, int64_t s_step, double* c, int64_t c_step,
                                         double* g, int64_t g_step, const double* w_hh, const double* b_hn,
                                         double* hw, const double* packed) {
    xseq_loops::forward_loop<double>(kind, gemm, T, m, n_a, xw, xw_step, s, s_step, c, c_step, g, g_step, w_hh,
                                     b_hn, hw, packed);
}
extern "C" void xseq_backward_loop_float(int kind, void* gemm, int64_t T, int64_t m, int64_t n_a, const float* g,
                                         int64_t g_step, const float* s, int64_t s_step, const float* c,
                                         int64_t c_step, const float* w_hh, const float* dy, int64_t dy_step,
                                         float* dz, int64_t z_step, float* dhw, int64_t hw_step, float* dh, float* dc,
                                         float* work, const float* packed) {
    xseq_loops::backward_loop<float>(kind, gemm, T, m, n_a, g, g_step, s, s_step, c, c_step, w_hh, dy, dy_step, dz,
                                     z_step, dhw, hw_step, dh, dc, work, packed);
}
extern "C" void xseq_backward_loop_double(int kind, void* gemm, int64_t T, int64_t m, int64_t n_a, const double* g,
                                          int64_t g_step, const double* s, int64_t s_step, const double* c,
                                          int64_t c_step, const double* w_hh, const double* dy, int64_t dy_step,
                                          double* dz, int64_t z_step, double* dhw, int64_t hw_step, double* dh,
                                          double* dc, double* work, const double* packed) {
    xseq_loops::backward_loop<double>(kind, gemm, T, m, n_a, g, g_step, s, s_step, c, c_step, w_hh, dy, dy_step, dz,
                                      z_step, dhw, hw_step, dh, dc, work, packed);
}
// One lane's loop (a xseq_loops::lane_job): what OpenBLAS's gotoblas_pthread runs on each of its threads.
extern "C" void xseq_lane_float(void* job) {
    xseq_loops::lane<float>(*static_cast<const xseq_loops::lane_job*>(job));
}
extern "C" void xseq_lane_double(void* job) {
    xseq_loops::lane<double>(*static_cast<const xseq_loops::lane_job*>(job));
}

// ------------------------------------------------------------------ the packed product (xseq.ops.lanes)

// The weight w (K x N, row-major) packed for the lanes' products, into out (xseq_packed_size_ elements).
extern "C" void xseq_pack_float(const float* w, int64_t K, int64_t N, float* out) { xseq_packed::pack(w, K, N, out); }
extern "C" void xseq_pack_double(const double* w, int64_t K, int64_t N, double* out) {
    xseq_packed::pack(w, K, N, out);
}
// The same panels of w^T, w being N x K with row stride ldw (what a forward loop packs from W_hh itself).
extern "C" void xseq_pack_transposed_float(const float* w, int64_t ldw, int64_t K, int64_t N, float* out) {
    xseq_packed::pack_transposed(w, ldw, K, N, out);
}
extern "C" void xseq_pack_transposed_double(const double* w, int64_t ldw, int64_t K, int64_t N, double* out) {
    xseq_packed::pack_transposed(w, ldw, K, N, out);
}
extern "C" int64_t xseq_packed_size_float(int64_t K, int64_t N) { return xseq_packed::packed_size<float>(K, N); }
extern "C" int64_t xseq_packed_size_double(int64_t K, int64_t N) { return xseq_packed::packed_size<double>(K, N); }
// C (M x N, row stride ldc) = A (M x K, row stride lda) @ the weight packed by xseq_pack_ + beta C (beta 0 or 1):
// the lanes' product on its own, for tests and benchmarks (the lanes call it inside the loops)
extern "C" void xseq_packed_gemm_float(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
                                       const float* packed, float beta, float* c, int64_t ldc) {
    xseq_packed::gemm<float>(M, N, K, a, lda, packed, beta, c, ldc);
}
extern "C" void xseq_packed_gemm_double(int64_t M, int64_t N, int64_t K, const double* a, int64_t lda,
                                        const double* packed, double beta, double* c, int64_t ldc) {
    xseq_packed::gemm<double>(M, N, K, a, lda, packed, beta, c, ldc);
}
// The bytes of the vector registers the packed product was compiled for: 64 (AVX-512), 32 (AVX2 with FMA),
// 16 (aarch64's NEON), 0 where the target has no vector multiply-add (see packed.h)
extern "C" int xseq_packed_vector_bytes() { return xseq_packed::vector_bytes_of_build(); }

// ------------------------------------------------------------------ the build's math (xseq.ops.native_features)

// 1 where exp and tanh are vecmath.h's own branch-free code, which the loops vectorize (a target with a fused
// multiply-add); 0 where they are the C library's (vectorized only through glibc's libmvec, if at all)
extern "C" int xseq_vecmath_vector() { return XSEQ_VECMATH_VECTOR; }

// ------------------------------------------------------------------ structs shared with Python (xseq.ops.native_layout)

namespace {
struct field {
    const char* name;
    int64_t offset, size;
};
#define XSEQ_FIELD(S, f) field{#f, static_cast<int64_t>(offsetof(S, f)), static_cast<int64_t>(sizeof(S::f))}

typedef xseq_loops::lane_job lane_job;
constexpr field lane_job_fields[] = {
    XSEQ_FIELD(lane_job, backward), XSEQ_FIELD(lane_job, kind),    XSEQ_FIELD(lane_job, T),
    XSEQ_FIELD(lane_job, m),        XSEQ_FIELD(lane_job, n_a),     XSEQ_FIELD(lane_job, gemm),
    XSEQ_FIELD(lane_job, xw),       XSEQ_FIELD(lane_job, s),       XSEQ_FIELD(lane_job, c),
    XSEQ_FIELD(lane_job, g),        XSEQ_FIELD(lane_job, dy),      XSEQ_FIELD(lane_job, dz),
    XSEQ_FIELD(lane_job, dhw),      XSEQ_FIELD(lane_job, w),       XSEQ_FIELD(lane_job, b_hn),
    XSEQ_FIELD(lane_job, hw),       XSEQ_FIELD(lane_job, dh),      XSEQ_FIELD(lane_job, dc),
    XSEQ_FIELD(lane_job, work),     XSEQ_FIELD(lane_job, packed),  XSEQ_FIELD(lane_job, xw_step),
    XSEQ_FIELD(lane_job, s_step),   XSEQ_FIELD(lane_job, c_step),  XSEQ_FIELD(lane_job, g_step),
    XSEQ_FIELD(lane_job, dy_step),  XSEQ_FIELD(lane_job, z_step),  XSEQ_FIELD(lane_job, hw_step),
    XSEQ_FIELD(lane_job, u0),       XSEQ_FIELD(lane_job, u1),      XSEQ_FIELD(lane_job, barrier),
    XSEQ_FIELD(lane_job, x1),       XSEQ_FIELD(lane_job, w_ih),    XSEQ_FIELD(lane_job, b_in),
    XSEQ_FIELD(lane_job, packed_in), XSEQ_FIELD(lane_job, dx),      XSEQ_FIELD(lane_job, n_x),
    XSEQ_FIELD(lane_job, i0),       XSEQ_FIELD(lane_job, i1),
};
typedef xseq_loops::lane_barrier lane_barrier;
constexpr field lane_barrier_fields[] = {
    XSEQ_FIELD(lane_barrier, parties), XSEQ_FIELD(lane_barrier, pad0),     XSEQ_FIELD(lane_barrier, count),
    XSEQ_FIELD(lane_barrier, pad1),    XSEQ_FIELD(lane_barrier, phase),    XSEQ_FIELD(lane_barrier, sleepers),
    XSEQ_FIELD(lane_barrier, sleeps),  XSEQ_FIELD(lane_barrier, slept_ns), XSEQ_FIELD(lane_barrier, pad2),
};

// The table lists every field of the struct once, in order: each field starts where the one before it
// ends and the last ends at the struct's end (no padding, no field left out of the table).
template <size_t N>
constexpr bool tiles(const field (&fields)[N], int64_t size) {
    int64_t at = 0;
    for (size_t i = 0; i < N; ++i) {
        if (fields[i].offset != at) return false;
        at += fields[i].size;
    }
    return at == size;
}
static_assert(tiles(lane_job_fields, sizeof(lane_job)),
              "lane_job_fields must list every field of lane_job in order");
static_assert(tiles(lane_barrier_fields, sizeof(lane_barrier)),
              "lane_barrier_fields must list every field of lane_barrier in order");

template <size_t N>
int64_t describe(const field (&fields)[N], int64_t size, int64_t i, const char** name, int64_t* offset,
                 int64_t* bytes) {
    const bool in = i >= 0 && static_cast<size_t>(i) < N;
    *name = in ? fields[i].name : nullptr;
    *offset = in ? fields[i].offset : -1;
    *bytes = in ? fields[i].size : -1;
    return size;
}
}  // namespace

// The layout of the struct called struct_name that Python shares ("lane_job", "lane_barrier"): returns its size in bytes and
// writes field i's name, offset and size (a null name past the last field); -1 for a name it does not know.
extern "C" int64_t xseq_layout(const char* struct_name, int64_t i, const char** name, int64_t* offset,
                               int64_t* size) {
    if (std::strcmp(struct_name, "lane_job") == 0)
        return describe(lane_job_fields, sizeof(lane_job), i, name, offset, size);
    if (std::strcmp(struct_name, "lane_barrier") == 0)
        return describe(lane_barrier_fields, sizeof(lane_barrier), i, name, offset, size);
    *name = nullptr;
    *offset = *size = -1;
    return -1;
}
