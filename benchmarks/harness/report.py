"""What the benchmarks print: the machine and its libraries, tables, numbers, the line on the targets."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# ---------------------------------------------------------------- the machine


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def usable_cores():
    """The cores this process may run on (its affinity), or every core where that is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def machine_lines():
    """The CPU and the operating system, one line each."""
    return [
        f"CPU: {cpu_model()} ({platform.machine()}), {os.cpu_count()} logical cores, {usable_cores()} usable",
        f"OS: {platform.platform()}; Python {platform.python_version()}",
    ]


def numpy_openblas_call(np, name, restype):
    """``openblas_<name>()`` of NumPy's bundled OpenBLAS (whichever of its symbol spellings it exports), or None."""
    import ctypes
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in (f"scipy_openblas_{name}64_", f"scipy_openblas_{name}", f"openblas_{name}"):
            f = getattr(lib, sym, None)
            if f is not None:
                f.restype = restype
                return f()
    return None


def openblas_corename(np):
    """The OpenBLAS kernel set NumPy's bundled OpenBLAS picked for this CPU ('Zen', 'SkylakeX', ...), or None."""
    import ctypes

    name = numpy_openblas_call(np, "get_corename", ctypes.c_char_p)
    return None if name is None else name.decode()


def library_info():
    """NumPy and its BLAS, torch and its threads, which step path xseq's NumPy sequences take.

    Imports NumPy, torch and xseq: run it in a process of its own (a script's
    ``--info``), like a worker, so that the parent stays free of them.

    Returns
    -------
    dict with numpy, blas, torch, torch_threads, torch_blas, jax, xseq_steps, xseq_products (str or int)
    """
    import numpy as np

    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version', '')}".strip()
    except Exception:  # the layout of show_config differs between NumPy versions
        pass
    corename = openblas_corename(np)
    if corename:
        blas += f" (core {corename})"
    try:
        import threadpoolctl

        pools = threadpoolctl.threadpool_info()
        blas += "; threadpoolctl: " + ", ".join(
            f"{p.get('internal_api')} {p.get('version')} {p.get('architecture', '')} {p.get('num_threads')} threads"
            for p in pools)
    except ImportError:
        blas += " (threadpoolctl not installed: thread count is OpenBLAS's default)"
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    torch_threads, torch_blas = "?", ""
    if torch_version != "not installed":
        import torch

        torch_threads = torch.get_num_threads()
        par = torch.__config__.parallel_info().splitlines()
        found = [line.strip() for line in par if any(k in line for k in ("Math Kernel", "OpenBLAS", "MKL-DNN", "oneDNN"))]
        torch_blas = "; ".join(found) or ("MKL" if torch.backends.mkl.is_available() else "BLAS unknown")
    return {"numpy": np.__version__, "blas": blas, "torch": torch_version, "torch_threads": torch_threads,
            "torch_blas": torch_blas, "jax": jax_info(), "xseq_steps": xseq_steps(), "xseq_products": xseq_products()}


def jax_info():
    """JAX's and jaxlib's versions and the CPU devices XLA sees, or 'not installed'."""
    try:
        version = metadata.version("jax")
    except metadata.PackageNotFoundError:
        return "not installed"
    import jax

    return f"{version} (jaxlib {metadata.version('jaxlib')}); XLA:CPU, {len(jax.devices('cpu'))} device(s), one thread per core"


def xseq_steps():
    """Which step implementation xseq's NumPy sequences use (host kernels, in-place NumPy, reference) and why."""
    try:
        from xseq.ops import host as host_kernels

        return f"{host_kernels.status()}; time loops: {host_kernels.lanes_status()}"
    except ImportError as exc:
        return f"unknown ({exc})"


def xseq_products():
    """Which library computes xseq's float32 NumPy matrix products (OpenBLAS, or oneDNN where turned on) and why."""
    try:
        from xseq.ops import blas

        return blas.status()
    except ImportError as exc:
        return f"unknown ({exc})"


# ---------------------------------------------------------------- numbers and tables


def fmt_ms(v):
    """Milliseconds: two decimals below 10, one above; a dash for a missing value."""
    return "—" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}x"


def markdown_table(header, rows, right_from=None):
    """Lines of a Markdown table; columns from ``right_from`` on are right-aligned."""
    right_from = len(header) if right_from is None else right_from
    rule = "|" + "|".join("---" if i < right_from else "---:" for i in range(len(header))) + "|"
    return ["| " + " | ".join(str(x) for x in header) + " |", rule,
            *("| " + " | ".join(str(x) for x in row) + " |" for row in rows)]


def aligned_table(header, rows, left=1):
    """Lines of a plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return ["  ".join(str(x).ljust(w) if i < left else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
            for row in [header, ["-" * w for w in widths], *rows]]


# ---------------------------------------------------------------- targets


def targets_verdict(all_met, checked):
    """The closing line on the targets: claimed only when the results were checked before they were timed."""
    if not checked:
        return ("targets not claimed: the agreement check was skipped (--no-check), so the timed results "
                "were never compared with the reference")
    return f"all targets {'met' if all_met else 'NOT met'}"
