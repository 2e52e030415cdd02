"""Sequence to sequence: translating one text into another, the course's Neural Machine Translation with attention.

:mod:`xseq.seq2seq.dates` makes its example data: human-readable dates and their ISO form.
"""
