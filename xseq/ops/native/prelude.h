// The host build's prelude: what NVRTC declares implicitly for the CUDA kernels of
// xseq.ops.kernel_source.KERNELS. On the host the qualifiers mean nothing; exp and tanh are
// vecmath.h's (xseq_vecmath: inline, vectorized by g++ and clang alike, no libmvec), brought into
// each namespace that holds kernel code by a using-declaration there -- the generated loops'
// (xseq.ops.native_source.host_function), xseq_helpers' -- since <cmath> declares ::exp(double)
// globally and a global using-declaration of xseq_vecmath::exp would clash with it. The global
// using-declarations of <cmath>'s float/double overloads below stay as the fallback for code outside
// those namespaces. XSEQ_ROW is the host loop's row counter (see kernel_source.PREAMBLE): the
// generated loops name it _row.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "vecmath.h"

#define __device__
#define __forceinline__ inline
#define XSEQ_ROW(i, n_a) _row

// Before a loop whose iterations are independent (outputs alias inputs only element for element): lets the
// compiler vectorize it without proving that its pointers do not overlap. GCC's ivdep; clang ignores that
// pragma (it would check the kernels' half-dozen pointers at run time, give up, and leave the LSTM's and the
// GRU's loops scalar: 9x slower) and takes its own.
#if defined(__clang__)
#define XSEQ_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define XSEQ_IVDEP _Pragma("GCC ivdep")
#endif

using std::exp;
using std::fabs;
using std::tanh;
