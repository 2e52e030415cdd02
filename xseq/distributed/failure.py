"""One rank's failure ends the whole job, with its message, instead of leaving the others waiting.

When one rank of a data-parallel job raises, the others are blocked in (or
about to enter) a collective operation that can never complete: the job
would hang until its time limit. :func:`abort_on_error` prints the error,
prefixed with the rank, and aborts the communicator, which ends every
process of the job (``mpiexec`` exits with the code given).
"""

from __future__ import annotations

import contextlib
import sys
import traceback

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def write_lines(lines, *, file=None):
    """Write whole lines to ``file`` (default stderr) in one piece.

    Python's stderr is unbuffered: ``print(text, file=sys.stderr)`` makes one
    system call for ``text`` and another for the newline, and the launcher,
    which merges every rank's stderr into one, may put another rank's line
    between the two (two messages glued into one line). One ``write`` of the
    finished lines keeps each line whole.
    """
    out = sys.stderr if file is None else file
    out.write("".join(line + "\n" for line in lines))
    out.flush()


def rank_prefix(comm):
    """``"[rank 3/4] "`` in a job of several processes, ``""`` in a single process."""
    return f"[rank {comm.rank}/{comm.size}] " if comm.size > 1 else ""


@contextlib.contextmanager
def abort_on_error(comm, *, file=None):
    """End every rank of the job when the block raises on this one.

    In a single process the exception simply propagates. In a job of several
    processes the traceback is printed on ``file`` (default stderr) with every
    line prefixed by :func:`rank_prefix`, and ``comm.abort`` ends the job with
    status 1, 130 for a ``KeyboardInterrupt``, or the code of a
    ``SystemExit`` (an exit with status 0 is let through).

    Examples
    --------
    A custom training loop across ranks::

        comm = xseq.distributed.from_environment()
        with xseq.distributed.abort_on_error(comm):
            ...  # any exception here stops every rank within seconds
    """
    try:
        yield
    except BaseException as exc:
        if comm.size == 1 or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            raise
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
            text = "" if isinstance(exc.code, int) else f"{exc.code}\n"
        else:
            code = EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_FAILURE
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        prefix = rank_prefix(comm)
        lines = [prefix + line for line in text.splitlines()] + [f"{prefix}ending all {comm.size} processes of the job"]
        write_lines(lines, file=file)
        comm.abort(code)
