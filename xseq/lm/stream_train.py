"""The *stream* plan's recipe, and its trainer under its 0.1.0 name (:class:`StreamTrainer`).

:class:`StreamTrainer` is the one :class:`~xseq.lm.trainer.Trainer` on a
:class:`~xseq.lm.stream_data.StreamData` built from lines. The recipe:

The recipe of PyTorch's ``word_language_model`` and of the TensorFlow PTB
tutorial (Zaremba et al. 2014):

* **The stream.** Every line of the corpus, blank ones included, becomes its
  tokens followed by ``<eos>`` (``line.split() + ['<eos>']`` at word level);
  the lines are joined into one stream of ids (:func:`stream_ids`).
* **Validation.** A second file, or else the last ``val_fraction`` of the
  lines (at least one line, at most all but one), in file order. The
  vocabulary is built from the training lines only.
* **Columns.** The stream is cut into ``batch_size`` contiguous columns of
  ``n = N // batch_size`` tokens each; the last ``N % batch_size`` tokens are
  dropped (:func:`batchify`). Column ``i`` holds tokens ``i*n .. (i+1)*n - 1``.
* **Windows.** Window ``k`` covers steps ``[k*bptt, min((k+1)*bptt, n-1))``:
  its inputs are those columns' tokens, its targets the tokens one step
  later; the last window of an epoch may be shorter (:func:`window`). An
  epoch is ``ceil((n-1) / bptt)`` windows, in order.
* **Carried state.** Each window starts from the final state of the one
  before (values only: no gradient crosses a window, truncated
  back-propagation through time); the state is zero at the start of every
  epoch.
* **The loss** of a window is the cross-entropy summed over its steps and
  averaged over the columns (the TensorFlow tutorial's convention, which
  ``--lr 1 --clip 5`` assume); reported losses are nats per token, and
  perplexity is ``exp`` of that.
* **The step.** Gradient clipping (global norm, or by value), then SGD
  (``momentum`` defaults to 0 here) or Adam. Epoch ``e`` (from 1) runs at
  ``lr * lr_decay ** max(0, e - decay_after)``: with ``decay_after = 4``
  epochs 1-4 run at ``lr`` and each later epoch at ``lr_decay`` times the one
  before (Zaremba's ``max_epoch``).
* **Validation** after every epoch runs the same way from a zero state, with
  the training batch (fewer columns when the validation stream is too short
  to give every column two tokens: :func:`validation_batch`) and windows of
  ``bptt`` steps, as the TensorFlow tutorial validates.
  :func:`evaluate_stream` with one column (``xseq evaluate``) scores a whole
  file as one stream.

Resuming
--------
A checkpoint holds, besides the model: the optimiser state, the recipe, the
step, epoch and window counters, the carried state after the last window
(mid-epoch), the dropout stream's state, every window's loss, the history,
and SHA-256 fingerprints of the training and validation lines. The stream
and its windows follow from the corpus and the recipe, so the window index
is the stream position; :meth:`StreamTrainer.resume` continues with exactly
the losses of the uninterrupted run.

Across processes
----------------
As the line trainer (:mod:`xseq.lm.train`, "Across processes"), with the
columns as the examples: each rank trains a contiguous share of the
``batch_size`` columns (:func:`~xseq.lm.train.share`; with fewer columns than
ranks some have none) and carries the state of its own columns; its
gradients are scaled by its share of the columns (every column has the same
number of steps), the loss and the gradients summed over the ranks.
Validation shares the validation columns the same way. A checkpoint holds the
state of every column (gathered from the ranks), so it resumes on any number
of ranks.
"""


from __future__ import annotations

from .checkpoint import load_checkpoint
from .lines_data import share  # noqa: F401
# The recipe and the plan's data live in their own modules; their public names are this module's too, as they
# were in xseq 0.1.0 (``from xseq.lm.stream_train import StreamConfig, batchify``).
from .recipe import DEFAULT_BPTT, LEVELS, STREAM_DEFAULT_LR, StreamConfig, max_init_scale  # noqa: F401
from .stream_data import (  # noqa: F401
    EVALUATION_WINDOW,
    StreamData,
    batchify,
    build_vocabulary,
    evaluate_stream,
    num_windows,
    reading_recipe,
    split_lines,
    stream_corpus,
    stream_ids,
    validation_batch,
    window,
)
from .trainer import Trainer


class StreamTrainer(Trainer):
    """:class:`~xseq.lm.trainer.Trainer` on the stream plan's data, built from lines as in xseq 0.1.0.

    The plan's attributes (``train_data``, ``val_data``, ``state``,
    ``dropped``, ``validation``: see :class:`~xseq.lm.stream_data.StreamData`)
    read as the trainer's.

    Parameters
    ----------
    lines : list of str or StreamCorpus
        The training corpus, one entry per line, blank lines included
        (``xseq.read_corpus(path, keep_blank=True)``), or the text read from files.
    config : StreamConfig
    val_lines : list of str, optional
        The validation corpus; None holds out the last ``val_fraction`` of ``lines``.
    backend : str, default "auto"
    source, val_source : str, optional
        Where the corpora came from, recorded in the checkpoint.
    comm : Communicator, optional
        The processes to train with; None for this process alone.
    """

    def __init__(self, lines, config=None, *, val_lines=None, backend="auto", source=None, val_source=None,
                 comm=None):
        config = StreamConfig() if config is None else config
        if not isinstance(config, StreamConfig):
            raise TypeError(f"config must be an xseq.lm.stream_train.StreamConfig; got {type(config).__name__}")
        data = StreamData(stream_corpus(lines, val_lines, config), config, source=source, val_source=val_source)
        super().__init__(data, backend=backend, comm=comm)

    @classmethod
    def resume(cls, path, lines, *, val_lines=None, backend="auto", epochs=None, steps=None, source=None,
               val_source=None, comm=None):
        """Continue a run saved by :meth:`~xseq.lm.trainer.Trainer.save`, on any number of processes.

        Parameters
        ----------
        path : str or os.PathLike
        lines, val_lines : list of str
            The same training corpus and validation corpus (or None, when the
            saved run held out the end of the corpus) as the saved run; their
            fingerprints are checked.
        backend : str
        epochs, steps : int, optional
            A new length for the run, counted from its start (at most one).
        source, val_source : str, optional
            Where the corpora came from, for messages and the checkpoint.
        comm : Communicator, optional

        Raises
        ------
        CheckpointError
            As :meth:`Trainer.restore <xseq.lm.trainer.Trainer.restore>`, or
            another validation corpus than the saved run's.
        """
        arrays, meta = load_checkpoint(path)
        return cls.from_checkpoint(arrays, meta, lines, val_lines=val_lines, backend=backend, epochs=epochs,
                                   steps=steps, source=source, val_source=val_source,
                                   where=f"checkpoint {str(path)!r}", comm=comm)

    @classmethod
    def from_checkpoint(cls, arrays, meta, lines, *, val_lines=None, backend="auto", epochs=None, steps=None,
                        source=None, val_source=None, where="checkpoint", comm=None):
        """:meth:`resume` from what :func:`xseq.load_checkpoint` returned."""
        return cls.restore(arrays, meta, StreamData, backend=backend, epochs=epochs, steps=steps, where=where,
                           comm=comm, text=(lines, val_lines), source=source, val_source=val_source)
