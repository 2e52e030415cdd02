// The step kernels of xseq.ops.kernel_source.KERNELS by element type, for the time loops (loops.h):
// kernels<float>::lstm_forward is xseq_lstm_forward_float, and so on for every kernel without its
// "xseq_" prefix, and kernels<float>::lstm_forward_cols its entry over a range of columns (hidden
// units) of every row, for the lanes that own units (loops.h). The kernels' host loops are generated from their CUDA source with the two
// specializations of this template (xseq.ops.native_source.host_source), ahead of exports.cpp.
#pragma once

namespace xseq_steps {
template <typename T>
struct kernels;
}  // namespace xseq_steps
