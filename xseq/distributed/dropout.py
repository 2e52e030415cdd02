"""Dropout masks that belong to examples, not to processes.

A layer draws the dropout mask of a whole batch from one random stream
(:attr:`xseq.LSTM.dropout_rng`). When a global batch is split among ranks,
each rank draws masks for its share only, so with one stream per rank the
mask an example gets would depend on how many ranks there are and which one
holds it: a run on 2 ranks would not equal the run on 1, and a checkpoint
could not be resumed exactly on another number of ranks.

:class:`ExampleDropout` stands in for the layer's generator. At every step
it draws one key from that generator (the seed's stream, advanced once per
step on every rank, the ranks with an empty share included); the mask of
example ``i`` of the global batch (or column ``i`` of a stream) then comes
from its own stream, ``numpy.random.default_rng([key, call, i])``, where
``call`` counts the dropout draws within the step. So the masks follow from
the seed, the step and the global example index, whatever the split: the
ranks draw different masks because they hold different examples, and a
checkpoint keeps only the key stream's state, as it kept the layer's.

Each example's mask is drawn time-major, ``(T_x, n)``, so its first ``t``
steps are the same whatever ``T_x`` its batch was padded to (every rank pads
its share to its own longest sequence).
"""

from __future__ import annotations

import numpy as np


class ExampleDropout:
    """A stand-in for a layer's ``dropout_rng`` that draws one stream per (step, example).

    Parameters
    ----------
    generator : numpy.random.Generator
        The stream of the steps' keys; a checkpoint saves and restores its
        state (:attr:`bit_generator`), as it would the layer's own generator.

    Examples
    --------
    >>> import numpy as np
    >>> import xseq
    >>> from xseq.distributed import ExampleDropout
    >>> layer = xseq.LSTM(4, 3, num_layers=2, dropout=0.5, dtype="float64")
    >>> layer.dropout_rng = ExampleDropout(layer.dropout_rng)
    >>> layer.dropout_rng.start_step(examples=[7, 8])  # this rank holds examples 7 and 8 of the batch
    >>> y, _ = layer.forward(np.ones((4, 2, 5)), training=True)
    """

    def __init__(self, generator):
        if not isinstance(generator, np.random.Generator):
            raise TypeError(f"generator must be a numpy.random.Generator; got {type(generator).__name__}")
        self.generator = generator
        self._key = None
        self._examples = None
        self._calls = 0

    @property
    def bit_generator(self):
        """The key stream's bit generator: its ``state`` is what a checkpoint saves."""
        return self.generator.bit_generator

    def start_step(self, examples):
        """Begin a step: draw its key, and say which examples the next draws are for.

        Every rank calls it once per step, in step order, even with no
        example, so that the key stream stays the same on every rank.

        Parameters
        ----------
        examples : sequence of int
            The global index (in the step's global batch, or a stream's
            column) of every example of this rank's batch, in the batch's order.
        """
        examples = np.asarray(examples)
        if examples.ndim != 1 or (examples.size and (examples.dtype.kind not in "iu" or examples.min() < 0)):
            raise ValueError(f"examples must be a 1-D sequence of ints >= 0; got {examples!r}")
        self._key = int(self.generator.bit_generator.random_raw())
        self._examples, self._calls = examples.astype(np.int64), 0

    def random(self, shape):
        """Uniform ``[0, 1)`` floats of ``shape`` ``(T_x, m, n)``; column ``j`` from example ``examples[j]``'s stream.

        Raises
        ------
        RuntimeError
            Before :meth:`start_step`, or when ``m`` is not the number of examples given to it.
        """
        if self._examples is None:
            raise RuntimeError("ExampleDropout.random was called before start_step: the trainer must say which "
                               "examples a batch holds before the forward pass")
        T_x, m, n = shape
        if m != len(self._examples):
            raise RuntimeError(f"a dropout mask for a batch of m = {m} examples was asked for; start_step was "
                               f"given {len(self._examples)}")
        out = np.empty((T_x, m, n))
        for j, example in enumerate(self._examples):
            out[:, j, :] = np.random.default_rng([self._key, self._calls, int(example)]).random((T_x, n))
        self._calls += 1
        return out

    def __repr__(self):
        return f"ExampleDropout({self.generator!r})"
