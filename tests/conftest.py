"""Shared fixtures: ``xp`` runs a test once per array backend.

NumPy, array-api-strict and PyTorch (CPU) must run in CI; CuPy runs only
where ``cupy.is_available()``. A backend that cannot run is skipped with the
reason shown (``pytest -ra``).
"""

import importlib
import os

import pytest

from .gpu import GPU_ONLY
from .helpers import namespace_or_skip

BACKEND_NAMES = ("numpy", "array_api_strict", "torch", "cupy")


@pytest.fixture(params=BACKEND_NAMES)
def xp(request):
    """The array API namespace of one backend."""
    return namespace_or_skip(request.param)


@pytest.fixture(autouse=True)
def lanes_of_units_never_pause(monkeypatch):
    """A loop of lanes of units that stalls (its lanes slept a quarter of its time: another process kept a core
    busy) pauses them for the next loops (``xseq.ops.runtime.CPURuntime.note_meetings``): how a test's loops ran
    would then depend on the machine's load. No test's loop stalls: the stall share is infinite and no pause is
    left from an earlier test; the tests of the policy set the share themselves."""
    from xseq.ops import runtime

    monkeypatch.setattr(runtime, "UNIT_STALL_SHARE", float("inf"))
    runtime.cpu_runtime().end_unit_pause()


@pytest.fixture
def torch():
    """PyTorch, for parity tests; skipped with a reason where it is not installed."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        pytest.skip(f"PyTorch is not installed ({exc}); parity tests need it")


# In CI's second run (XSEQ_CI_FULL=1) every optional piece is installed, so the only skip that may remain
# is a GPU-only test on a machine without a GPU; any other skip means a test silently stopped running.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("XSEQ_CI_FULL") != "1" or not report.skipped:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if GPU_ONLY not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI's full run, where only GPU-only tests may skip: {reason}"
