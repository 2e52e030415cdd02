"""Every output and gradient of a contender compared with a reference's, under a named tolerance.

A benchmark builds each contender as it will time it, runs it, collects what it
computed as a dict of NumPy arrays (``name -> array``, named and laid out alike
for every contender of a case), and hands that dict to :meth:`Check.compare`
with the reference's. Gradients are named with a leading ``d`` (``dx``,
``dh0``, ``dW_hh_l0``: :func:`gradient_names`). The benchmark names the
results a contender must report (every gradient of the reference where the
timed mode has a backward pass, and its outputs), so that a contender that
leaves a result out fails instead of passing unchecked.

The error of an array is ``max |got - want| / max |want|``: the largest
difference relative to the reference's largest value, the same measure for an
output, a gradient summed over thousands of terms or a probability.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """A named bound on :func:`relative_error`."""

    name: str
    bound: float

    def __str__(self):
        return f"{self.name} {self.bound:.0e}"


# xseq's fast paths (host kernels, in-place NumPy steps, fused CuPy kernels) against its own array-API
# reference: the same formulas, summed in another order and with other exp/tanh roundings.
SAME_FORMULAS = Tolerance("same formulas", 2e-5)
# The same on a GPU: cuBLAS picks its GEMM algorithm per shape and call (split-K, other tilings), so the
# fused paths and the reference sum in more different orders; the bound bench_gpu.py always used.
SAME_FORMULAS_GPU = Tolerance("same formulas on a GPU", 1e-4)
# Another implementation (the naive course version, torch, cuDNN) against that reference: other
# formulas for the same function (the course's sigmoid, oneDNN's and cuDNN's kernels), float32.
OTHER_IMPLEMENTATION = Tolerance("other implementation", 1e-4)


def gradient_names(results):
    """The names of the gradients among ``results`` (those starting with ``d``)."""
    return [name for name in results if name.startswith("d")]


def relative_error(got, want):
    """``max |got - want| / max |want|`` (``inf`` where either holds a NaN or an infinity).

    Parameters
    ----------
    got, want : NumPy arrays of the same shape

    Returns
    -------
    error : float
    where : tuple of int
        The index of the largest difference (``()`` for a 0-d or empty array).
    """
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
        return float("inf"), ()
    if want.size == 0:
        return 0.0, ()
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    where = np.unravel_index(int(np.argmax(diff)), diff.shape)
    scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
    return float(diff[where]) / scale, tuple(int(i) for i in where)


class Check:
    """Comparisons of contenders with a reference; every failure is kept, not only the first.

    Attributes
    ----------
    failures : list of str
        One line per array that differs (or is missing, or has another shape or dtype).
    worst : dict
        ``label -> largest relative error`` over the arrays compared for that label.
    arrays : int
        How many arrays were compared.
    """

    def __init__(self):
        self.failures = []
        self.worst = {}
        self.arrays = 0

    def compare(self, label, got, want, tolerance, required=()):
        """Compare every array of ``got`` with the array of the same name in ``want``.

        Parameters
        ----------
        label : str
            Names the contender and case in messages, e.g. ``"lstm 64x256x64x100 forward: torch"``.
        got, want : dict of str to NumPy array
            The contender's results and the reference's.
        tolerance : Tolerance
        required : iterable of str
            Names ``got`` must hold.

        Returns
        -------
        float
            The largest relative error of this comparison.
        """
        worst = 0.0
        for name in sorted(set(required) - set(got)):
            self.failures.append(f"{label}: {name} is missing from the contender's results")
        for name, a in got.items():
            self.arrays += 1
            if name not in want:
                self.failures.append(f"{label}: {name} has no counterpart in the reference")
                continue
            a, b = np.asarray(a), np.asarray(want[name])
            if a.shape != b.shape or a.dtype != b.dtype:
                self.failures.append(f"{label}: {name} is {a.dtype} {a.shape}; the reference's is {b.dtype} {b.shape}")
                continue
            error, where = relative_error(a, b)
            worst = max(worst, error)
            if not error <= tolerance.bound:
                at = f" at {where}" if where else ""
                self.failures.append(f"{label}: {name} differs by {error:.2e} of the reference's largest value{at} "
                                     f"(tolerance: {tolerance})")
        self.worst[label] = max(self.worst.get(label, 0.0), worst)
        return worst

    @property
    def passed(self):
        return not self.failures

    def exit_if_failed(self):
        """Print every failure and exit with status 1 when there is one."""
        if self.failures:
            for line in self.failures:
                print(f"MISMATCH {line}", flush=True)
            sys.exit(f"check failed: {len(self.failures)} of the {self.arrays} arrays compared disagree with the "
                     "reference")
