"""Stand-ins for CUDA and NCCL, so that the GPU ranks' logic runs on a machine without a GPU.

"Device" memory is host memory seen through ``__cuda_array_interface__``; :class:`MPIBackedNCCL` sums it
over real MPI processes, so an NCCL communicator built on it really sums across ranks.
"""

import ctypes
import os

import numpy as np


class DeviceArray:
    """A host array that shows itself as device memory (``__cuda_array_interface__``)."""

    def __init__(self, host):
        self.host = host
        self.shape, self.dtype = host.shape, host.dtype

    @property
    def __cuda_array_interface__(self):
        strides = None if self.host.flags.c_contiguous else self.host.strides
        return {"shape": self.host.shape, "typestr": self.host.dtype.str, "strides": strides,
                "data": (self.host.ctypes.data, False), "version": 3}

    device = "cpu"

    def __array_namespace__(self, api_version=None):
        return np

    def __array__(self, dtype=None, copy=None):
        return self.host


class FakeNCCL:
    """cupy.cuda.nccl's interface, recording every call and doing nothing else."""

    available = True

    @staticmethod
    def get_unique_id():
        return tuple(range(128))

    class NcclCommunicator:
        def __init__(self, ndev, unique_id, rank):
            self.args, self.calls = (ndev, unique_id, rank), []

        def allReduce(self, send, receive, count, datatype, op, stream):
            self.calls.append(("allReduce", send, receive, count, datatype, op, stream))

        def bcast(self, pointer, count, datatype, root, stream):
            self.calls.append(("bcast", pointer, count, datatype, root, stream))

        def abort(self):
            self.calls.append(("abort",))


class FakeCuda:
    """cupy.cuda's device count and selection, recording which device each rank made current."""

    def __init__(self, devices, stream=77):
        self.used = []
        self.stream = stream
        cuda = self

        class runtime:
            @staticmethod
            def getDeviceCount():
                return devices

        class Device:
            def __init__(self, index):
                self.index = index

            def use(self):
                cuda.used.append(self.index)

        self.runtime, self.Device = runtime, Device

    def get_current_stream(self):
        class Stream:
            ptr = self.stream

        return Stream()


class MPIBackedNCCL:
    """cupy.cuda.nccl's interface over MPI: ``allReduce`` sums the memory behind the pointers across ranks.

    Every process draws its own unique id, as NCCL's does, so a rank that made its own instead of receiving
    rank 0's would be seen (:attr:`ids` records the id each rank joined with).
    """

    available = True

    def __init__(self, mpi_comm):
        self.mpi_comm = mpi_comm
        self.ids = []
        outer = self

        class NcclCommunicator:
            def __init__(self, ndev, unique_id, rank):
                outer.ids.append(unique_id)
                self.ndev, self.rank = ndev, rank

            def allReduce(self, send, receive, count, datatype, op, stream):
                from mpi4py import MPI

                assert send == receive and op == 0
                ctype = {7: ctypes.c_float, 8: ctypes.c_double}[datatype]
                buffer = np.ctypeslib.as_array((ctype * count).from_address(receive))
                outer.mpi_comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

            def bcast(self, pointer, count, datatype, root, stream):
                ctype = {7: ctypes.c_float, 8: ctypes.c_double}[datatype]
                outer.mpi_comm.Bcast(np.ctypeslib.as_array((ctype * count).from_address(pointer)), root=root)

            def abort(self):
                pass

        self.NcclCommunicator = NcclCommunicator

    @staticmethod
    def get_unique_id():
        return tuple(os.urandom(128))
