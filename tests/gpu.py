"""Whether the GPU tests run, skip or fail on this machine: one decision, testable without a GPU.

A machine without a GPU skips them and says why. On a machine with one, CUDA
must start: a skip there would let a broken driver or CUDA install pass as a
green run, so it is a failure instead.
"""

import os

#: ``cudaErrorNoDevice``: the CUDA runtime sees no device (none is present, or
#: ``CUDA_VISIBLE_DEVICES`` hides them all).
NO_DEVICE = 100

#: One entry per GPU that the NVIDIA kernel driver manages (Linux); absent
#: where the driver is not loaded.
DRIVER_GPUS = "/proc/driver/nvidia/gpus"

#: Every skip for want of a GPU starts with this, so CI's full run (where nothing else may skip) tells them apart.
GPU_ONLY = "GPU-only test, no GPU here: "


def driver_gpu_count():
    """How many GPUs the operating system's NVIDIA driver lists; 0 where it lists none or is not there."""
    try:
        return len(os.listdir(DRIVER_GPUS))
    except OSError:
        return 0


def cuda_verdict(driver_gpus):
    """Run, skip or fail the GPU tests here.

    Parameters
    ----------
    driver_gpus : int
        GPUs the NVIDIA driver lists (:func:`driver_gpu_count`). They decide
        whether a GPU is present when CUDA cannot even count its devices.

    Returns
    -------
    ("run", cupy) or ("skip", reason) or ("fail", reason)
        * CuPy cannot be imported: skip.
        * The CUDA runtime counts at least one device: a GPU is present, so
          CUDA must start on it (an array is made and a kernel is compiled and
          run); if it does not: fail.
        * The runtime counts none, or reports "no device": skip.
        * Counting raises anything else (a driver too old for the runtime, a
          failed initialisation): fail where the driver lists a GPU, skip where
          it lists none (no driver, no GPU).
    """
    try:
        import cupy
    except ImportError as exc:
        return "skip", f"CuPy is not installed ({exc}); the fused kernels need it and a GPU"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy's CUDARuntimeError, or whatever a broken install raises
        error = f"{type(exc).__name__}: {exc}"
        if getattr(exc, "status", None) == NO_DEVICE:
            return "skip", GPU_ONLY + f"CUDA finds no GPU ({error})"
        if driver_gpus:
            return "fail", f"the NVIDIA driver lists {driver_gpus} GPU(s) but CUDA cannot count them ({error})"
        return "skip", GPU_ONLY + f"CUDA cannot count devices ({error}) and no NVIDIA driver lists a GPU"
    if count < 1:
        return "skip", GPU_ONLY + f"CUDA finds no GPU ({count} devices)"
    try:
        total = int(cupy.arange(3).sum())
    except Exception as exc:
        return "fail", (f"CuPy counts {count} CUDA device(s) but CUDA does not start on them "
                        f"({type(exc).__name__}: {exc})")
    if total != 3:
        return "fail", f"CuPy counts {count} CUDA device(s) but computes arange(3).sum() = {total}, not 3"
    return "run", cupy
