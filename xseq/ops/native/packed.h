// The per-step product with the weight packed once a sequence: a lane's product is (rows, K) @ (K, N)
// with the same right operand at every step, and a BLAS call packs that operand into its own panel
// layout again at every call. Here it is packed once into panels of NR columns (two vectors of the
// target: XSEQ_PACKED_VECTOR_BYTES each), panel p holding B[k][p NR + j] at (p K + k) NR + j, zero past
// the last column; each block of MR rows of C is then MR x 2 vector accumulators over k, the row's
// element times the panel's two vectors (GCC's vector extensions, which clang shares). Sums over k in
// order, one multiply-add at a time.
//
// The vector width comes from the build's target: 64 bytes with AVX-512 (32 vector registers, MR 8),
// 32 with AVX2 and FMA (16 registers, MR 6: 12 accumulators, the panel's two vectors and the broadcast
// element fit), 16 with aarch64's NEON (32 registers, MR 8). Elsewhere (no vector multiply-add: SSE,
// AVX without FMA, other targets) XSEQ_PACKED_VECTOR_BYTES is 0 and the product is not used; the code
// still compiles, with 16-byte vectors. Used by loops.h where xseq.ops.lanes.packed_products says so
// (xseq_packed_vector_bytes in exports.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>

#if defined(__AVX512F__)
#define XSEQ_PACKED_VECTOR_BYTES 64
#define XSEQ_PACKED_REGISTERS 32
#elif defined(__AVX__) && defined(__FMA__)
#define XSEQ_PACKED_VECTOR_BYTES 32
#define XSEQ_PACKED_REGISTERS 16
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define XSEQ_PACKED_VECTOR_BYTES 16
#define XSEQ_PACKED_REGISTERS 32
#else  // no vector multiply-add: a multiply and an add each step, the product left to BLAS
#define XSEQ_PACKED_VECTOR_BYTES 0
#define XSEQ_PACKED_REGISTERS 16
#endif

namespace xseq_packed {
// Bytes of one vector of the code below (16 where XSEQ_PACKED_VECTOR_BYTES is 0).
constexpr int vector_bytes = XSEQ_PACKED_VECTOR_BYTES > 0 ? XSEQ_PACKED_VECTOR_BYTES : 16;
// Rows of C a tile holds in registers: 2 MR accumulators + 2 panel vectors + 1 broadcast element.
constexpr int tile_rows = XSEQ_PACKED_REGISTERS >= 32 ? 8 : 6;
static_assert(2 * tile_rows + 3 <= XSEQ_PACKED_REGISTERS, "a tile's accumulators must fit the registers");

template <typename T>
struct vec {
    typedef T type __attribute__((vector_size(vector_bytes)));
};
// NR: a panel's columns, two vectors
template <typename T>
constexpr int64_t panel_cols() { return 2 * vector_bytes / sizeof(T); }
// elements of a (K x N) weight packed by pack: whole panels
template <typename T>
constexpr int64_t packed_size(int64_t K, int64_t N) {
    return (N + panel_cols<T>() - 1) / panel_cols<T>() * panel_cols<T>() * K;
}

// b: K x N, row-major, ldb elements from one row to the next (N for a whole matrix; more for a block of
// columns of a wider one)
template <typename T>
void pack(const T* b, int64_t K, int64_t N, int64_t ldb, T* out) {
    const int64_t NR = panel_cols<T>();
    for (int64_t p = 0; p * NR < N; ++p) {
        const int64_t cols = N - p * NR < NR ? N - p * NR : NR;
        for (int64_t k = 0; k < K; ++k) {
            T* dst = out + (p * K + k) * NR;
            std::memcpy(dst, b + k * ldb + p * NR, cols * sizeof(T));
            for (int64_t j = cols; j < NR; ++j) dst[j] = T(0);
        }
    }
}
template <typename T>
void pack(const T* b, int64_t K, int64_t N, T* out) {  // b: K x N, row-major
    pack(b, K, N, N, out);
}
// A W x W block (W = one vector's elements) transposed in registers: log2(W) stages, stage b swapping
// the off-diagonal b x b blocks of every 2b x 2b block (rows i and i + b, i & b == 0: the high columns of
// row i trade places with the low columns of row i + b). Needs __builtin_shufflevector (clang; GCC 12 on);
// without it XSEQ_PACKED_SHUFFLE is 0 and pack_transposed copies element by element.
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define XSEQ_PACKED_SHUFFLE 1
#endif
#endif
#ifndef XSEQ_PACKED_SHUFFLE
#define XSEQ_PACKED_SHUFFLE 0
#endif

#if XSEQ_PACKED_SHUFFLE
// the new row i (low) and row i + b (high) at column c of the pair (a = row i, c = row i + b: indices past W)
constexpr int swap_low(int c, int b, int W) { return (c & b) == 0 ? c : c - b + W; }
constexpr int swap_high(int c, int b, int W) { return (c & b) == 0 ? c + b : c + W; }

template <typename V, int W, int b, std::size_t... C>
inline void swap_blocks(V& low, V& high, std::index_sequence<C...>) {
    const V a = low, c = high;
    low = __builtin_shufflevector(a, c, swap_low(C, b, W)...);
    high = __builtin_shufflevector(a, c, swap_high(C, b, W)...);
}

template <typename V, int W, int b = 1>
inline void transpose_block(V* rows) {
    if constexpr (b < W) {
#pragma GCC unroll 16
        for (int i = 0; i < W; ++i)
            if ((i & b) == 0) swap_blocks<V, W, b>(rows[i], rows[i + b], std::make_index_sequence<W>{});
        transpose_block<V, W, 2 * b>(rows);
    }
}
#endif

// The same panels of B = w^T, w being N x K row-major with row stride ldw (B[k][j] = w[j ldw + k]): a
// forward loop packs W_hh.T from W_hh itself, with no transposed copy of it. A whole panel goes W values
// of k at a time: each of its two vectors' W rows of w loaded, transposed in registers, stored as W rows
// of the panel; the rest (a last panel narrower than NR, the last K % W values of k) element by element.
// panel_rows: the rows a panel has room for, K (0) or more (pack_projection writes the one after K).
template <typename T>
void pack_transposed(const T* w, int64_t ldw, int64_t K, int64_t N, T* out, int64_t panel_rows = 0) {
    const int64_t NR = panel_cols<T>(), KP = panel_rows > K ? panel_rows : K;
    for (int64_t p = 0; p * NR < N; ++p) {
        const int64_t cols = N - p * NR < NR ? N - p * NR : NR;
        T* panel = out + p * KP * NR;
        const T* src = w + p * NR * ldw;  // the panel's first column of B: row p NR of w
        int64_t k0 = 0;
#if XSEQ_PACKED_SHUFFLE
        typedef typename vec<T>::type V;
        constexpr int W = vector_bytes / sizeof(T);
        if (cols == NR) {
            for (; k0 + W <= K; k0 += W) {
                for (int half = 0; half < 2; ++half) {
                    V rows[W];
#pragma GCC unroll 16
                    for (int j = 0; j < W; ++j) std::memcpy(&rows[j], src + (half * W + j) * ldw + k0, sizeof(V));
                    transpose_block<V, W>(rows);
#pragma GCC unroll 16
                    for (int k = 0; k < W; ++k) std::memcpy(panel + (k0 + k) * NR + half * W, &rows[k], sizeof(V));
                }
            }
        }
#endif
        for (int64_t j = 0; j < NR; ++j) {
            if (j < cols) {
                const T* row = src + j * ldw;
                for (int64_t k = k0; k < K; ++k) panel[k * NR + j] = row[k];
            } else {
                for (int64_t k = k0; k < K; ++k) panel[k * NR + j] = T(0);
            }
        }
    }
}

// The input projection's weight for a lane: B = [w | bias]^T, (K + 1) x N, w being N x K with row stride ldw
// (a block of rows of W_ih) and bias N values (the folded biases of those rows), so that a row of
// X1 = [x, 1] times B is the row's x @ w^T + bias; panels as pack's, of K + 1 rows.
template <typename T>
void pack_projection(const T* w, int64_t ldw, int64_t K, const T* bias, int64_t N, T* out) {
    const int64_t NR = panel_cols<T>();
    pack_transposed(w, ldw, K, N, out, K + 1);
    for (int64_t p = 0; p * NR < N; ++p) {
        T* last = out + (p * (K + 1) + K) * NR;
        for (int64_t j = 0; j < NR; ++j) last[j] = p * NR + j < N ? bias[p * NR + j] : T(0);
    }
}

// rows r..r+MR of C (ncols of its columns from the panel's first) = A's rows @ the panel + beta C (beta 0 or 1)
template <typename T, int MR>
inline void tile(const T* a, int64_t lda, const T* panel, int64_t K, T* c, int64_t ldc, int64_t ncols, T beta) {
    typedef typename vec<T>::type V;
    constexpr int W = vector_bytes / sizeof(T);
    static_assert(2 * W == panel_cols<T>(), "a panel is two vectors wide");
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

// As tile for one or two rows (a matrix-vector product: batch 1, or the rows left after the whole tiles):
// with MR <= 2 a tile has too few accumulators to hide the multiply-add's latency, so the sum over k runs
// in four interleaved parts (k = 0, 4, 8, ... in the first; added in a fixed order at the end).
template <typename T, int MR>
inline void narrow_tile(const T* a, int64_t lda, const T* panel, int64_t K, T* c, int64_t ldc, int64_t ncols,
                        T beta) {
    typedef typename vec<T>::type V;
    constexpr int W = vector_bytes / sizeof(T), KU = 4;
    static_assert(MR <= 2, "narrow tiles are one or two rows");
    V acc0[KU][MR], acc1[KU][MR];
#pragma GCC unroll 8
    for (int u = 0; u < KU; ++u)
        for (int r = 0; r < MR; ++r) acc0[u][r] = acc1[u][r] = V{};
    int64_t k = 0;
    for (; k + KU <= K; k += KU) {
#pragma GCC unroll 4
        for (int u = 0; u < KU; ++u) {
            V b0, b1;
            std::memcpy(&b0, panel + (k + u) * 2 * W, sizeof(V));
            std::memcpy(&b1, panel + (k + u) * 2 * W + W, sizeof(V));
            for (int r = 0; r < MR; ++r) {
                const T x = a[r * lda + k + u];
                acc0[u][r] += x * b0;
                acc1[u][r] += x * b1;
            }
        }
    }
    for (; k < K; ++k) {
        V b0, b1;
        std::memcpy(&b0, panel + k * 2 * W, sizeof(V));
        std::memcpy(&b1, panel + k * 2 * W + W, sizeof(V));
        for (int r = 0; r < MR; ++r) {
            const T x = a[r * lda + k];
            acc0[0][r] += x * b0;
            acc1[0][r] += x * b1;
        }
    }
    for (int r = 0; r < MR; ++r) {
        const V s0 = (acc0[0][r] + acc0[1][r]) + (acc0[2][r] + acc0[3][r]);
        const V s1 = (acc1[0][r] + acc1[1][r]) + (acc1[2][r] + acc1[3][r]);
        T out[2 * W];
        std::memcpy(out, &s0, sizeof(V));
        std::memcpy(out + W, &s1, sizeof(V));
        T* row = c + r * ldc;
        if (beta == T(0))
            std::memcpy(row, out, ncols * sizeof(T));
        else
            for (int64_t j = 0; j < ncols; ++j) row[j] += out[j];
    }
}

// C (M x N, row stride ldc) = A (M x K, row stride lda) @ B (packed by pack) + beta C, beta 0 or 1.
// panel_rows: the rows of each packed panel, K (0) or more: rows k0 .. k0+K-1 of a weight packed with more
// rows are gemm(..., K, a + k0, lda, packed + k0 NR, ..., panel_rows) (a block of the sum over k).
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* packed, T beta, T* c, int64_t ldc,
          int64_t panel_rows = 0) {
    const int64_t NR = panel_cols<T>(), KP = panel_rows > K ? panel_rows : K;
    constexpr int MR = tile_rows;
    for (int64_t p = 0; p * NR < N; ++p) {  // a panel (K x NR) stays in cache while every row block uses it
        const int64_t ncols = N - p * NR < NR ? N - p * NR : NR;
        const T* panel = packed + p * KP * NR;
        int64_t r = 0;
        for (; r + MR <= M; r += MR) tile<T, MR>(a + r * lda, lda, panel, K, c + r * ldc + p * NR, ldc, ncols, beta);
        const T* ar = a + r * lda;
        T* cr = c + r * ldc + p * NR;
        static_assert(tile_rows <= 8, "the rows left after the whole tiles are at most 7");
        switch (M - r) {
            case 7: tile<T, 7>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 6: tile<T, 6>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 5: tile<T, 5>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 4: tile<T, 4>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 3: tile<T, 3>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 2: narrow_tile<T, 2>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            case 1: narrow_tile<T, 1>(ar, lda, panel, K, cr, ldc, ncols, beta); break;
            default: break;
        }
    }
}

// The bytes of the vector registers the packed product was compiled for (64 AVX-512, 32 AVX2 with FMA,
// 16 aarch64's NEON), 0 where the target has no vector multiply-add.
constexpr int vector_bytes_of_build() { return XSEQ_PACKED_VECTOR_BYTES; }
}  // namespace xseq_packed
