"""``python -m xseq``: the ``xseq`` command line (see :mod:`xseq.lm.cli`)."""

from .lm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
