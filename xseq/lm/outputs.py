"""What ``xseq train`` writes: its checkpoint (``--out``) and its loss curves (``--plot``), checked before any work.

An output never replaces an input, ``train`` replaces no file it was not told
to write (:func:`check_files`), and a file that :func:`~xseq.lm.files.atomic_write`
could not replace is found before training, not at the first save
(:func:`check_writable`).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .corpus import builtin_corpus_path
from .files import Destination, DestinationError, atomic_write, file_identity, resolve_destination
from .usage import UsageError

DEFAULT_OUT = "model.npz"  # of xseq train without --out or --resume; never replaces a file


def check_files(args):
    """Settle ``--out`` and refuse, before any work, an output that is an input or another output.

    ``--out`` defaults to the ``--resume`` file (the run goes on in its own
    file), else to :data:`DEFAULT_OUT`, which must not exist: xseq replaces no
    file it was not told to write. Files are compared by identity (device and
    inode, links followed; the resolved path of a file not yet there), so a
    link or a hard link to the corpus is the corpus. Returns the
    :class:`~xseq.lm.files.Destination` the run writes.
    """
    named = args.out is not None or args.resume is not None
    if args.out is None:
        args.out = args.resume if args.resume is not None else DEFAULT_OUT
        if args.resume is None and os.path.lexists(args.out):
            raise UsageError(f"{args.out} already exists and --out was not given; xseq train replaces no file it "
                             f"was not told to write: give --out {args.out} to replace it, --resume {args.out} to "
                             "continue its run, or another --out")
    corpus = builtin_corpus_path() if args.corpus is None else args.corpus
    inputs = {"CORPUS": corpus, "--val-corpus": getattr(args, "val_corpus", None), "--resume": args.resume}
    outputs = {"--out": args.out, "--plot": args.plot}
    seen = {}
    for flag, path in [*inputs.items(), *outputs.items()]:
        if path is None:
            continue
        identity = file_identity(path)
        if identity in seen and flag in outputs and (seen[identity][0], flag) != ("--resume", "--out"):
            other, other_path = seen[identity]
            what = "an input" if other in inputs else "another output"
            raise UsageError(f"{flag} {path!r} is the same file as {other} {other_path!r}, {what}: writing it would "
                             f"destroy it; give {flag} another file")
        seen.setdefault(identity, (flag, path))
    return Destination(args.out, may_replace=named)


def check_writable(path, option):
    """Fail now, not after training, when :func:`atomic_write` could not replace ``path``.

    Checks what :func:`~xseq.lm.files.resolve_destination` checks (a device,
    FIFO or socket, a link planted in ``/tmp``, another user's file in a sticky
    directory), then creates and removes a file in the directory that will
    receive it, which catches what permission bits do not show (a full quota
    of inodes, some network file systems).
    """
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory; give a file name")
    try:
        target = resolve_destination(path)
    except DestinationError as exc:
        raise UsageError(f"cannot write {option} {path!r}: {exc.reason}") from None
    try:
        with tempfile.TemporaryFile(dir=os.path.dirname(target) or os.curdir):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {option} {path!r}: {exc.strerror or exc}") from None


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed: pip install 'xseq[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(plt, trainer, path, unit):
    steps = range(1, len(trainer.losses) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, trainer.losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="training (per step)")
    window = max(1, trainer.steps_per_epoch)
    if len(trainer.losses) >= window > 1:
        smooth = np.convolve(trainer.losses, np.full(window, 1 / window), mode="valid")
        ax.plot(range(window, len(trainer.losses) + 1), smooth, color="tab:blue",
                label=f"training (mean of {window} steps)")
    ax.plot([r["step"] for r in trainer.history], [r["val_loss"] for r in trainer.history], "o-",
            color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(f"cross-entropy (nats per {unit})")
    ax.set_title(f"xseq {trainer.config.cell}, hidden {trainer.config.hidden_size}, on {trainer.source}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(plt, fig, path, "--plot")


def save_figure(plt, fig, path, option):
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it; UsageError naming ``option`` when it cannot."""
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    except OSError as exc:
        raise UsageError(f"cannot write {option} {path!r}: {exc}") from None
    finally:
        plt.close(fig)
