"""The environment switches of the fast paths, read at each call so that a test or a user can flip them."""

from __future__ import annotations

import os


def fused_enabled():
    """Whether CuPy and NumPy arrays take their fast paths (``XSEQ_FUSED=0`` turns them off)."""
    return os.environ.get("XSEQ_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def direct_enabled():
    """Whether CuPy arrays may take the direct loop (``XSEQ_DIRECT=0`` turns it off)."""
    return os.environ.get("XSEQ_DIRECT", "1").strip().lower() not in ("0", "false", "no", "off")


def lanes_enabled():
    """Whether NumPy's unmasked time loops may run in lanes (``XSEQ_LANES=0`` keeps the engine's steps)."""
    return os.environ.get("XSEQ_LANES", "1").strip().lower() not in ("0", "false", "no", "off")


def onednn_requested():
    """Whether ``XSEQ_ONEDNN=1`` asks for oneDNN's products (:func:`xseq.ops.blas.enabled` decides the same)."""
    return os.environ.get("XSEQ_ONEDNN", "0").strip().lower() in ("1", "true", "yes", "on")
