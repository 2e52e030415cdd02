"""The stream model: :class:`~xseq.lm.language_model.LanguageModel` with an embedding input.

:class:`StreamLM` is the word-level model of Zaremba, Sutskever and Vinyals
(2014) and of PyTorch's ``word_language_model`` (embedding, recurrent stack,
projection to ids 1 .. V-1, optionally tied), which the *stream* plan trains on
one token stream in windows of ``bptt`` steps, the state carried
(:mod:`xseq.lm.plan_stream`); see :mod:`xseq.lm.language_model` for the model.
"""

from __future__ import annotations

from .language_model import LanguageModel

MODEL_FORMAT = "xseq.StreamLM"  # the format xseq 0.1.0 wrote for this model; it still loads


class StreamLM(LanguageModel):
    """:class:`~xseq.lm.language_model.LanguageModel` with ``input="embedding"``; the other parameters are its own.

    Parameters
    ----------
    vocab : Vocabulary
    hidden_size : int, default 128
    cell, num_layers, embed_size, tie_weights, dropout, init_scale, backend, dtype, seed
        As :class:`~xseq.lm.language_model.LanguageModel`.
    """

    INPUT = "embedding"

    def __init__(self, vocab, hidden_size=128, *, cell="lstm", num_layers=1, embed_size=None, tie_weights=False,
                 dropout=0.0, init_scale=None, backend="numpy", dtype="float32", seed=0):
        super().__init__(vocab, hidden_size, input="embedding", cell=cell, num_layers=num_layers,
                         embed_size=embed_size, tie_weights=tie_weights, dropout=dropout, init_scale=init_scale,
                         backend=backend, dtype=dtype, seed=seed)
