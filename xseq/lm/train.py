"""The *line* plan's trainer under its 0.1.0 name: :class:`Trainer` is the one
:class:`~xseq.lm.trainer.Trainer` on a :class:`~xseq.lm.lines_data.LineData` built from lines.

The recipe is described in :mod:`xseq.lm.lines_data`; the loop, the step,
the ranks and the checkpoints in :mod:`xseq.lm.trainer`.
"""

from __future__ import annotations

from . import trainer as _trainer
from .checkpoint import load_checkpoint
# The line plan's data and the recipe live in their own modules; their public names are this module's too, as they
# were in xseq 0.1.0 (``from xseq.lm.train import TrainConfig, split_corpus``).
from .lines_data import LineData, corpus_fingerprint, evaluate, share, split_corpus, split_sequences  # noqa: F401
from .recipe import DivergedError, TrainConfig  # noqa: F401
from .trainer import TRAINER_FORMAT_VERSION  # noqa: F401


class Trainer(_trainer.Trainer):
    """:class:`xseq.lm.trainer.Trainer` on the line plan's data, built from lines as in xseq 0.1.0.

    The plan's attributes (``train_ids``, ``val_ids``, ``shuffle_rng``: see
    :class:`~xseq.lm.lines_data.LineData`) read as the trainer's.

    Parameters
    ----------
    lines : list of str
        The corpus, one sequence per entry (e.g. :func:`xseq.read_corpus`).
    config : TrainConfig
    backend : str, default "auto"
        Where the model lives (see :func:`xseq.backend`).
    source : str, optional
        Where the corpus came from (a path, or "built-in"), recorded in the checkpoint.
    comm : Communicator, optional
        The processes to train with (:func:`xseq.distributed.from_environment`);
        None for this process alone.
    """

    def __init__(self, lines, config=None, *, backend="auto", source=None, comm=None):
        super().__init__(LineData(lines, config, source=source), backend=backend, comm=comm)

    @classmethod
    def resume(cls, path, lines, *, backend="auto", epochs=None, steps=None, source=None, comm=None):
        """Continue a run saved by :meth:`~xseq.lm.trainer.Trainer.save`, on any number of processes.

        Parameters
        ----------
        path : str or os.PathLike
            The checkpoint.
        lines : list of str
            The same corpus as the saved run (its fingerprint is checked).
        backend : str
        epochs, steps : int, optional
            A new length for the run, counted from its start (at most one);
            None keeps the saved one.
        source : str, optional
            Where ``lines`` came from, for the error message and the checkpoint.
        comm : Communicator, optional
            Every rank reads ``path`` (a file system all ranks see).

        Raises
        ------
        CheckpointError
            As :meth:`Trainer.restore <xseq.lm.trainer.Trainer.restore>`.
        """
        arrays, meta = load_checkpoint(path)
        return cls.restore(arrays, meta, LineData, backend=backend, epochs=epochs, steps=steps,
                           where=f"checkpoint {str(path)!r}", comm=comm, lines=lines, source=source)
