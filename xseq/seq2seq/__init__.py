"""Sequence to sequence: translating one text into another, the course's Neural Machine Translation with attention.

* :mod:`xseq.seq2seq.model` -- :class:`~xseq.seq2seq.model.Seq2Seq`: the encoder, the attention and the decoder,
  the loss and its explicit backward pass, checkpoints;
* :mod:`xseq.seq2seq.decode` -- greedy decoding, beam search, sampling, texts in and out;
* :mod:`xseq.seq2seq.inputs` -- the checks of a batch of id pairs;
* :mod:`xseq.seq2seq.schema` -- the checkpoint's configuration and the shape of every parameter;
* :mod:`xseq.seq2seq.dates` makes its example data: human-readable dates and their ISO form.
"""
