"""Shared fixtures: ``xp`` runs a test once per array backend.

NumPy, array-api-strict and PyTorch (CPU) must run in CI; CuPy runs only
where ``cupy.is_available()``. A backend that cannot run is skipped with the
reason shown (``pytest -ra``).
"""

import importlib

import pytest

import xseq

BACKEND_NAMES = ("numpy", "array_api_strict", "torch", "cupy")


def _namespace_or_skip(name):
    try:
        return xseq.backend(name)
    except xseq.BackendUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=BACKEND_NAMES)
def xp(request):
    """The array API namespace of one backend."""
    return _namespace_or_skip(request.param)


@pytest.fixture
def torch():
    """PyTorch, for parity tests; skipped with a reason where it is not installed."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        pytest.skip(f"PyTorch is not installed ({exc}); parity tests need it")
