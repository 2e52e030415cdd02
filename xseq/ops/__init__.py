"""The step implementations below the engine -- the array-API reference, NumPy in place, the host build of the
fused kernels, CUDA -- and the one place that picks among them (:mod:`xseq.ops.select`)."""
