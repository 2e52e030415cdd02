"""GPU ranks: one GPU per process, gradients summed with NCCL, control over MPI.

Each CuPy rank uses the GPU its local rank picks (:func:`gpu_communicator`
makes it the current device before the model is built). NCCL sums device
buffers directly between GPUs, over NVLink, PCIe or the network, on the
current CUDA stream; MPI still carries everything else (the NCCL unique id,
Python objects, barriers). Where NCCL cannot be used -- ``cupy.cuda.nccl``
is not available, or two ranks share one GPU, which NCCL refuses -- the
sums go through host copies over MPI, with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np

from .communicator import (
    _check_reducible,
    _check_root,
    _is_array,
    agree_or_raise,
)

# NCCL's ncclDataType_t for NumPy's type strings (nccl.h: ncclInt8 0 ... ncclFloat64 8).
NCCL_TYPES = {"i1": 0, "u1": 1, "i4": 2, "u4": 3, "i8": 4, "u8": 5, "f2": 6, "f4": 7, "f8": 8}
NCCL_SUM = 0  # ncclRedOp_t ncclSum


class NCCLCommunicator:
    """A communicator for CuPy ranks: device arrays summed and broadcast by NCCL, the rest by MPI.

    Rank 0 creates NCCL's unique id, MPI broadcasts it, and every rank joins
    the NCCL communicator with it on its current device. Arrays that expose
    ``__cuda_array_interface__`` (CuPy's) go through NCCL, in place, on the
    current stream; host arrays and Python objects through ``mpi``.

    Parameters
    ----------
    mpi : Communicator
        The job's MPI communicator (:class:`~xseq.distributed.MPICommunicator`): it carries the
        unique id, the host arrays and the objects; the ranks and sizes are its own.
    nccl : module, optional
        ``cupy.cuda.nccl`` (the default); tests pass a stand-in.
    cuda : module, optional
        ``cupy.cuda`` (the default), whose ``get_current_stream()`` is the
        stream NCCL runs on; tests pass a stand-in.
    """

    description = "MPI + NCCL"

    def __init__(self, mpi, *, nccl=None, cuda=None):
        if nccl is None:
            from cupy.cuda import nccl
        if cuda is None:
            import cupy

            cuda = cupy.cuda
        self.mpi = mpi
        self.rank, self.size = mpi.rank, mpi.size
        self.local_rank, self.local_size = mpi.local_rank, mpi.local_size
        self._cuda = cuda
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = mpi.broadcast(unique_id, root=0)
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)

    def allreduce_sum(self, array):
        _check_reducible(array)
        if not hasattr(array, "__cuda_array_interface__"):
            return self.mpi.allreduce_sum(array)
        pointer, count, dtype = _device_buffer("allreduce_sum", array)
        self.comm.allReduce(pointer, pointer, count, dtype, NCCL_SUM, self._cuda.get_current_stream().ptr)
        return array

    def broadcast(self, value, root=0):
        _check_root(root, self.size)
        if not (_is_array(value) and hasattr(value, "__cuda_array_interface__")):
            return self.mpi.broadcast(value, root=root)
        pointer, count, dtype = _device_buffer("broadcast", value)
        # The same size on every rank, or NCCL would read or write past a buffer.
        expected = self.mpi.broadcast((tuple(value.shape), dtype), root=root)
        agree_or_raise(self.mpi, (tuple(value.shape), dtype) == expected,
                       f"broadcast: rank {root} sends a device array of shape {expected[0]}; rank {self.rank} "
                       f"passed shape {tuple(value.shape)}")
        self.comm.bcast(pointer, count, dtype, root, self._cuda.get_current_stream().ptr)
        return value

    def barrier(self):
        self.mpi.barrier()

    @property
    def watchdog(self):
        """The MPI communicator's (:mod:`~xseq.distributed.watchdog`). It times the collectives over MPI only:
        NCCL's are queued on a CUDA stream and return before they complete, so a wait in NCCL is not seen."""
        return getattr(self.mpi, "watchdog", None)

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(code)

    def __repr__(self):
        return f"NCCLCommunicator(rank={self.rank}, size={self.size})"


def _device_buffer(operation, array):
    """(pointer, element count, NCCL type) of a C-contiguous device array."""
    interface = array.__cuda_array_interface__
    typestr = interface["typestr"]
    if typestr[1:] not in NCCL_TYPES:
        raise TypeError(f"{operation}: NCCL cannot sum arrays of type {typestr!r}")
    shape, strides = tuple(interface["shape"]), interface.get("strides")
    itemsize = int(typestr[2:])
    if strides is not None and tuple(strides) != _c_strides(shape, itemsize):
        raise ValueError(f"{operation}: the device array of shape {shape} must be C-contiguous; got strides {strides}")
    return interface["data"][0], int(np.prod(shape, dtype=np.int64)), NCCL_TYPES[typestr[1:]]


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def use_local_gpu(comm, *, cuda=None):
    """Make this rank's GPU, ``local_rank`` modulo the node's GPUs, CuPy's current device.

    Call it before anything is allocated with CuPy (choosing the backend
    included), so that no rank opens a context on another rank's GPU.

    Parameters
    ----------
    comm : Communicator
    cuda : module, optional
        ``cupy.cuda`` (the default); tests pass a stand-in.

    Returns
    -------
    int or None
        The device's index; None, changing nothing, where CuPy or a GPU is missing.
    """
    if cuda is None:
        try:
            import cupy

            cuda = cupy.cuda
            devices = cuda.runtime.getDeviceCount()
        except Exception:  # not installed, or CUDA cannot start (CuPy raises its own error types)
            return None
    else:
        devices = cuda.runtime.getDeviceCount()
    if devices < 1:
        return None
    index = comm.local_rank % devices
    cuda.Device(index).use()
    return index


def gpu_communicator(comm, *, nccl=None, cuda=None):
    """Pick this rank's GPU and return the communicator for its arrays.

    Call it before the model is built: the local rank's GPU (see
    :func:`use_local_gpu`) becomes CuPy's current device, where the model's
    arrays and NCCL's buffers will live.

    Parameters
    ----------
    comm : Communicator
        From :func:`~xseq.distributed.from_environment`; it carries the NCCL unique id.
    nccl : module, optional
        ``cupy.cuda.nccl`` (the default); tests pass a stand-in.
    cuda : module, optional
        ``cupy.cuda`` (the default); tests pass a stand-in with
        ``runtime.getDeviceCount()``, ``Device(i).use()`` and ``get_current_stream()``.

    Returns
    -------
    Communicator
        ``comm`` itself for one process; an :class:`NCCLCommunicator` when NCCL
        is available and each rank of the node has a GPU of its own; else
        ``comm`` (sums through host copies) with a :class:`RuntimeWarning`
        saying why.
    """
    if cuda is None:
        import cupy

        cuda = cupy.cuda
    if use_local_gpu(comm, cuda=cuda) is None:
        raise RuntimeError("gpu_communicator was asked for the CuPy arrays of a rank that has no GPU")
    devices = cuda.runtime.getDeviceCount()
    if comm.size == 1:
        return comm
    reason = None
    if comm.local_size > devices:
        reason = (f"{comm.local_size} ranks share the {devices} GPU{'s' * (devices > 1)} of this node, and NCCL "
                  "refuses two ranks on one device")
    else:
        if nccl is None:
            with warnings.catch_warnings():
                # CuPy warns when it cannot load libnccl; the warning below says what that means here.
                warnings.simplefilter("ignore")
                from cupy.cuda import nccl
        if not getattr(nccl, "available", False):
            reason = "NCCL is not available to CuPy (pip install nvidia-nccl-cu12)"
    # Every rank must take the same path, or NCCL's ranks would wait for MPI's.
    use_nccl = comm.allreduce_sum(np.array([0.0 if reason is None else 1.0]))[0] == 0
    if use_nccl:
        return NCCLCommunicator(comm, nccl=nccl, cuda=cuda)
    warnings.warn(f"gradients are summed through host memory over MPI, not with NCCL: "
                  f"{reason or 'another rank of the job cannot use NCCL (see its warning)'}",
                  RuntimeWarning, stacklevel=2)
    return comm
