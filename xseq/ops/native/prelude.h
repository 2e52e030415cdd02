// The host build's prelude: what NVRTC declares implicitly for the CUDA kernels of
// xseq.ops.kernel_source.KERNELS. On the host the qualifiers mean nothing and the float/double
// overloads of the math functions come from <cmath>. XSEQ_ROW is the host loop's row counter (see
// kernel_source.PREAMBLE): the generated loops (xseq.ops.native_source.host_function) name it _row.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#define __device__
#define __forceinline__ inline
#define XSEQ_ROW(i, n_a) _row

using std::exp;
using std::fabs;
using std::tanh;
