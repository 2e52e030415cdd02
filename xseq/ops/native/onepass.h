// Two updates in one pass over memory, host only: the projection loss's softmax cross-entropy a row at
// a time and Adam's step. Exported for float and double by exports.cpp; called by
// xseq.ops.host_onepass (softmax_xent_rows, adam_step).
#pragma once

#include "prelude.h"

namespace xseq_helpers {
using xseq_vecmath::exp;  // vecmath.h's, vectorized (see prelude.h)
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
    XSEQ_IVDEP
    for (ptrdiff_t i = 0; i < n; ++i) {
        const T gi = g[i];
        const T mi = beta1 * m[i] + a1 * gi;
        const T vi = beta2 * v[i] + a2 * (gi * gi);
        m_out[i] = mi;
        v_out[i] = vi;
        p_out[i] = p[i] - lr * (mi / c1) / (std::sqrt(vi / c2) + eps);
    }
}
}  // namespace xseq_helpers
