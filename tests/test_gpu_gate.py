"""tests/gpu.py: the GPU tests skip only where there is no GPU, and fail where CUDA will not start on one.

Checked on any machine with a stand-in ``cupy`` module put in ``sys.modules``.
"""

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from . import gpu


class FakeCUDARuntimeError(RuntimeError):
    """Like CuPy's CUDARuntimeError: the CUDA status code in ``status``."""

    def __init__(self, status, name):
        super().__init__(f"{name}: (the runtime's message)")
        self.status = status


NO_DEVICE = FakeCUDARuntimeError(100, "cudaErrorNoDevice")
OLD_DRIVER = FakeCUDARuntimeError(35, "cudaErrorInsufficientDriver")
NOT_INITIALISED = FakeCUDARuntimeError(3, "cudaErrorInitializationError")


def fake_cupy(monkeypatch, devices, arange=np.arange):
    """Install a ``cupy`` whose device count is ``devices`` (or raises it) and whose ``arange`` is ``arange``."""
    def get_device_count():
        if isinstance(devices, Exception):
            raise devices
        return devices

    module = SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDeviceCount=get_device_count)),
                             arange=arange)
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


def failing(*args):
    raise NOT_INITIALISED


def test_a_working_gpu_runs_the_tests(monkeypatch):
    cupy = fake_cupy(monkeypatch, 1)
    assert gpu.cuda_verdict(driver_gpus=1) == ("run", cupy)


@pytest.mark.parametrize("driver_gpus", [0, 1])
def test_a_gpu_that_cuda_counts_but_cannot_start_on_fails_the_tests(monkeypatch, driver_gpus):
    fake_cupy(monkeypatch, 2, arange=failing)
    verdict, reason = gpu.cuda_verdict(driver_gpus)
    assert verdict == "fail"
    assert "CuPy counts 2 CUDA device(s) but CUDA does not start on them" in reason
    assert "cudaErrorInitializationError" in reason


def test_a_gpu_that_computes_wrong_fails_the_tests(monkeypatch):
    fake_cupy(monkeypatch, 1, arange=lambda n: np.zeros(n))
    assert gpu.cuda_verdict(1) == ("fail", "CuPy counts 1 CUDA device(s) but computes arange(3).sum() = 0, not 3")


def test_a_gpu_the_driver_lists_but_cuda_cannot_count_fails_the_tests(monkeypatch):
    fake_cupy(monkeypatch, OLD_DRIVER)
    verdict, reason = gpu.cuda_verdict(driver_gpus=2)
    assert verdict == "fail"
    assert "the NVIDIA driver lists 2 GPU(s) but CUDA cannot count them" in reason
    assert "cudaErrorInsufficientDriver" in reason


def test_no_driver_and_no_device_skips_with_the_reason(monkeypatch):
    fake_cupy(monkeypatch, OLD_DRIVER)
    verdict, reason = gpu.cuda_verdict(driver_gpus=0)
    assert verdict == "skip"
    assert reason.startswith(gpu.GPU_ONLY + "CUDA cannot count devices") and "cudaErrorInsufficientDriver" in reason


@pytest.mark.parametrize("driver_gpus", [0, 1])  # 1: a GPU hidden by CUDA_VISIBLE_DEVICES
def test_no_visible_device_skips(monkeypatch, driver_gpus):
    fake_cupy(monkeypatch, NO_DEVICE)
    verdict, reason = gpu.cuda_verdict(driver_gpus)
    assert verdict == "skip" and reason.startswith(gpu.GPU_ONLY + "CUDA finds no GPU") and "cudaErrorNoDevice" in reason
    fake_cupy(monkeypatch, 0)
    assert gpu.cuda_verdict(driver_gpus) == ("skip", gpu.GPU_ONLY + "CUDA finds no GPU (0 devices)")


def test_no_cupy_skips(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    verdict, reason = gpu.cuda_verdict(driver_gpus=1)
    assert verdict == "skip" and reason.startswith("CuPy is not installed")


def test_driver_gpu_count_counts_the_drivers_entries(tmp_path, monkeypatch):
    for name in ("0000:01:00.0", "0000:02:00.0"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(gpu, "DRIVER_GPUS", str(tmp_path))
    assert gpu.driver_gpu_count() == 2
    monkeypatch.setattr(gpu, "DRIVER_GPUS", str(tmp_path / "absent"))
    assert gpu.driver_gpu_count() == 0
