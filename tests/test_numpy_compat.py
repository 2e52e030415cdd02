"""The declared minimum, NumPy 1.26 (issue 20, item 7): what NumPy 2 added is not assumed.

CI's third run (.ci/run) runs a part of the suite with ``numpy==1.26.4``; these tests reach the
NumPy 1.x paths on any NumPy.
"""

import numpy as np
import pytest

from xseq.distributed import SingleProcess
from xseq.distributed.nccl import NCCLCommunicator

from .distributed_fakes import DeviceArray, FakeCuda, FakeNCCL


class OneRank(SingleProcess):
    local_rank, local_size = 0, 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8])
def test_a_device_array_naming_numpy_as_its_namespace_is_summed_without_numpy_2s_isdtype(monkeypatch, dtype):
    """DeviceArray's namespace is the ``numpy`` module itself, which has ``isdtype`` only from NumPy 2.0."""
    monkeypatch.delattr(np, "isdtype", raising=False)
    nccl = NCCLCommunicator(OneRank(), nccl=FakeNCCL, cuda=FakeCuda(1))
    device = DeviceArray(np.zeros(3, dtype=dtype))
    assert nccl.allreduce_sum(device) is device
    assert len(nccl.comm.calls) == 1


@pytest.mark.parametrize("dtype", [np.bool_, np.complex64])
def test_a_device_array_of_bool_or_complex_is_refused_without_numpy_2s_isdtype(monkeypatch, dtype):
    monkeypatch.delattr(np, "isdtype", raising=False)
    nccl = NCCLCommunicator(OneRank(), nccl=FakeNCCL, cuda=FakeCuda(1))
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=f"allreduce_sum takes a real integer or floating array; got dtype {name}"):
        nccl.allreduce_sum(DeviceArray(np.zeros(3, dtype=dtype)))
    assert nccl.comm.calls == []
