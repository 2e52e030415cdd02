// Two host-only helpers around the steps (no GPU counterpart: CuPy's own copies and reductions serve
// there): the course layout read time-major in tiles, and an in-place softmax of each row. Exported for
// float and double by exports.cpp; called by xseq.ops.host.HostFusedOps (copy_into, softmax_rows).
#pragma once

#include "prelude.h"

namespace xseq_helpers {
using xseq_vecmath::exp;  // vecmath.h's, vectorized (see prelude.h)
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
}  // namespace xseq_helpers
