"""The *stream* plan of ``xseq train``, ``evaluate``, ``sample`` and ``info``: the corpus is one token stream.

``--level word`` or ``--bptt L`` chooses it: every line followed by ``<eos>``,
one stream cut into contiguous columns and trained in windows with the state
carried (:mod:`xseq.lm.stream_train`), the corpus read in bounded memory
(:mod:`xseq.lm.stream_text`). See :mod:`xseq.lm.plan_lines` for what a plan is.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from . import resources
from .plan_common import LanguageModelPlan
from .corpus import CorpusError, builtin_corpus, read_corpus
from .plan_lines import RECIPE_OPTIONS
from .stream_model import StreamLM
from .stream_text import StreamCorpus, TokenTable, ValidationCorpusError, id_lookup, ids_of, read_file, unknown_tokens
from .stream_train import (
    DEFAULT_BPTT,
    EVALUATION_WINDOW,
    StreamConfig,
    StreamTrainer,
    batchify,
    evaluate_stream,
    reading_recipe,
)
from .recipe import DEFAULT_EPOCHS
from .usage import (
    BUILTIN,
    MAX_LEN,
    MAX_READING_WORKERS,
    SAMPLES_AFTER_TRAINING,
    UsageError,
    check_fits,
    check_resumed_recipe,
    decay_factor,
    int_at_least,
    model_shape,
    non_negative_int,
    positive_float,
    positive_int,
    printable,
    run_length,
    say,
    show,
    show_losses,
    show_validation,
)
from .vocab import SPECIALS

# Options of stream models only (--level is also a stream option, but --level char alone is the line model).
STREAM_OPTIONS = {"bptt": "--bptt", "embed_size": "--embed", "tie_weights": "--tie-weights",
                  "init_scale": "--init-scale", "lr_decay": "--lr-decay", "decay_after": "--decay-after",
                  "vocab_size": "--vocab-size", "min_count": "--min-count"}
STREAM_RECIPE_OPTIONS = {**{k: v for k, v in RECIPE_OPTIONS.items() if k != "max_seq_len"},
                         "level": "--level", **STREAM_OPTIONS}
STREAM_DEFAULTS = StreamConfig()


class StreamPlan(LanguageModelPlan):
    """One token stream in contiguous columns, windows of ``--bptt`` steps, the state carried between them."""

    NAME = "stream"
    MODEL = StreamLM
    DESCRIPTION = "stream models (--level word, or --bptt)"
    OPTIONS = {**STREAM_OPTIONS, "val_corpus": "--val-corpus"}  # the options of this plan alone
    WHY_NEW = "this is a stream model"
    SELECTED_BY = "--level word or --bptt"

    def selected_by(self, args):
        """``--level word``, or ``--bptt`` at any level."""
        return args.level == "word" or args.bptt is not None

    def check_options(self, args, why, foreign):
        """UsageError for an option of another plan, or for options that contradict each other."""
        if args.max_seq_len is not None:
            raise UsageError(f"--max-seq-len applies to line models, not stream models (--level word or --bptt), "
                             f"which read windows of --bptt steps; {why}")
        if args.val_corpus is not None and args.val_fraction is not None:
            raise UsageError(f"--val-fraction {args.val_fraction} has no effect with --val-corpus; give one of them")

    def unit(self, model):
        """What the model predicts, for messages."""
        return "token"

    # ------------------------------------------------------------------ options

    def add_train_arguments(self, parser):
        """This plan's own options of ``xseq train``, in a group of their own."""
        stream = parser.add_argument_group(
            "stream models", "--level word, or --bptt, trains on the corpus as one stream of tokens (every line "
                             "followed by <eos>) in windows of --bptt steps, the state carried from one to the next")
        stream.add_argument("--level", choices=("char", "word"),
                            help="tokens: characters, or whitespace-separated words (default char; word implies a "
                                 "stream model)")
        stream.add_argument("--bptt", type=positive_int, metavar="L",
                            help=f"steps per window of a stream model (default {DEFAULT_BPTT} with --level word)")
        stream.add_argument("--embed", type=positive_int, dest="embed_size", metavar="D",
                            help="size of a token's embedding (default: the hidden size)")
        stream.add_argument("--tie-weights", action="store_true", default=None, dest="tie_weights",
                            help="share the embedding and the output matrix (needs --embed equal to --hidden)")
        stream.add_argument("--init-scale", type=positive_float, dest="init_scale", metavar="S",
                            help="draw every weight uniform in [-S, S] (default: PyTorch's initialisation)")
        stream.add_argument("--lr-decay", type=decay_factor, dest="lr_decay", metavar="F",
                            help="multiply the learning rate by F for every epoch past --decay-after (default 1)")
        stream.add_argument("--decay-after", type=non_negative_int, dest="decay_after", metavar="E",
                            help="epochs at the full learning rate before --lr-decay applies (default 0)")
        stream.add_argument("--vocab-size", type=int_at_least(3, "an integer >= 3 (it counts <pad>, <unk> and <eos>)"),
                            dest="vocab_size", metavar="N",
                            help="keep the N most frequent tokens, <pad>, <unk> and <eos> included (default: all)")
        stream.add_argument("--min-count", type=positive_int, dest="min_count", metavar="K",
                            help="tokens seen fewer than K times in training become <unk> (default 1)")
        stream.add_argument("--val-corpus", dest="val_corpus", metavar="FILE",
                            help="validation file (default: the last --val-fraction of the corpus's lines)")

    def add_evaluate_arguments(self, parser):
        """A stream model scores a file as one stream: no option of its own."""

    # ------------------------------------------------------------------ train

    def trainer(self, args, xp, resumed):
        """The StreamTrainer of ``xseq train``: resumed from ``resumed`` (arrays, meta) or new; the corpus read as
        a stream in bounded memory (:class:`~xseq.lm.stream_text.StreamCorpus`)."""
        given = {key: getattr(args, key) for key in STREAM_RECIPE_OPTIONS if getattr(args, key) is not None}
        if resumed is not None:
            arrays, meta = resumed
            where = f"checkpoint {args.resume!r}"
            text, source = _stream_text(args, *reading_recipe(meta, where))
            sizes = _stream_sizes(text)
            trainer = StreamTrainer.from_checkpoint(arrays, meta, text, backend=xp, epochs=args.epochs,
                                                    steps=args.steps, source=source, val_source=args.val_corpus,
                                                    where=where, comm=args.comm)
            saved = trainer.config
            check_resumed_recipe(given, saved, STREAM_RECIPE_OPTIONS)
            _check_training_fits(saved, sizes, args.samples, xp, resumed=True)
            return trainer
        hidden = given.get("hidden_size", STREAM_DEFAULTS.hidden_size)
        if args.tie_weights and given.get("embed_size", hidden) != hidden:
            raise UsageError(f"--tie-weights needs --embed equal to --hidden (the output matrix is the embedding); "
                             f"got --embed {given['embed_size']} and --hidden {hidden}")
        given["level"] = args.level or "char"
        try:
            config = StreamConfig(epochs=args.epochs, steps=args.steps, **given)
            text, source = _stream_text(args, config.level, config.val_fraction)
            _check_training_fits(config, _stream_sizes(text), args.samples, xp, resumed=False)
            return StreamTrainer(text, config, backend=xp, source=source, val_source=args.val_corpus,
                                 comm=args.comm)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def print_plan(self, trainer):
        c, model = trainer.config, trainer.model
        m, n = trainer.train_data.shape
        resumed = f", resuming at step {trainer.step}" if trainer.step else ""
        tied = ", tied" if c.tie_weights else ""
        dropped = f" ({trainer.dropped} dropped)" if trainer.dropped else ""
        validation = trainer.validation["source"] or f"the last {trainer.validation['sequences']} lines"
        say(f"training {c.cell} (hidden {c.hidden_size}, {c.num_layers} layer{'s' * (c.num_layers > 1)}, embedding "
            f"{c.embed_size}{tied}, {model.num_parameters():,} parameters, {model.backend_name} {model.dtype_name}) "
            f"on {trainer.source}, {c.level} level: {model.vocab_size:,} tokens in the vocabulary; a stream of "
            f"{m * n:,} tokens{dropped} in {m} columns, {trainer.steps_per_epoch:,} windows of {c.bptt} steps per "
            f"epoch; validation on {validation}: {trainer.val_data.size:,} tokens in {trainer.val_data.shape[0]} "
            f"columns; {trainer.total_steps:,} steps{resumed}")

    # ------------------------------------------------------------------ evaluate, sample, info

    def evaluate_model(self, args, model):
        """``xseq evaluate``: the whole file as one stream (one column) from the zero state, read in bounded
        memory. Its state is carried from the first token to the last: cut into pieces it would score another
        number, so under a launcher rank 0 scores it alone (the others return None). ``(what was scored, nats per
        token)``."""
        if args.comm.rank != 0:
            return None
        if args.max_seq_len is not None:
            raise UsageError(f"--max-seq-len applies to line models; {args.model} is a stream model, which scores "
                             "the file as one stream")
        vocab, unit = model.vocab, self.unit(model)
        window = resources.stream_activation_bytes(**model_shape(model), embed_size=model.embed_size, m=1,
                                                   T=EVALUATION_WINDOW)
        available = resources.available_memory(model.xp)
        table = TokenTable(vocab.level)
        (stretch,) = read_file(args.corpus, table, memory=None if available is None else max(available - window, 0))
        tokens = stretch.tokens
        need = window + resources.BYTES_PER_STREAM_TOKEN * tokens
        if available is not None and need > available:
            raise UsageError(f"evaluating {args.corpus} ({tokens:,} tokens) would need about "
                             f"{resources.format_bytes(need)} of memory; {resources.format_bytes(available)} is "
                             "available")
        unknown = unknown_tokens(stretch, table, vocab)
        if unknown:
            print(f"xseq evaluate: note: {unknown} {unit}s of {args.corpus} are not in the model's vocabulary "
                  "(they count as <unk>)", file=sys.stderr)
        try:
            data = batchify(ids_of(stretch, id_lookup(table, vocab)), 1)
        except ValueError as exc:
            raise UsageError(f"{args.corpus}: {exc}") from None
        loss = evaluate_stream(model, data, EVALUATION_WINDOW)
        return (f"{args.corpus}: {stretch.lines} line{'s' * (stretch.lines != 1)}, {tokens:,} tokens "
                f"({vocab.level}s and <eos>) scored as one stream from the zero state: {tokens - 1:,} predicted"), loss

    def note_prefix(self, model, prefix):
        """Warn that the prefix's tokens the vocabulary lacks are read as ``<unk>``."""
        unknown = sorted({t for t in model.vocab.tokenize(prefix) if t not in model.vocab})
        if unknown:
            what = "word" if model.vocab.level == "word" else "character"
            print(f"xseq sample: warning: --prefix holds {len(unknown)} {what}{'s' * (len(unknown) > 1)} "
                  f"the model's vocabulary lacks, read as <unk>: {printable(' '.join(unknown))}", file=sys.stderr)

    def describe(self, config):
        """What ``xseq info``'s model line adds for this plan: ``(after the layers, at the end)``."""
        return f", embedding {config['embed_size']}{' tied to the output' * config['tie_weights']}", ", stream model"

    def print_history(self, state, losses):
        r, corpus, validation, history = state["config"], state["corpus"], state["validation"], state["history"]
        clip = "none" if not r["clip"] else f"{r['clip_mode']} {r['clip']:g}"
        decay = "" if r["lr_decay"] == 1 else f" x{r['lr_decay']:g} per epoch after epoch {r['decay_after']}"
        init = "" if r["init_scale"] is None else f", init scale {r['init_scale']:g}"
        momentum = f" momentum {r['momentum']:g}" if r["optimizer"] == "sgd" and r["momentum"] else ""
        show(f"recipe: {r['optimizer']}{momentum} lr {r['lr']:g}{decay}, batch {r['batch_size']}, bptt {r['bptt']}, "
             f"clip {clip}{init}, seed {r['seed']}")
        show(f"corpus: {corpus['source']}; {corpus['sequences']} lines, sha256 {corpus['sha256'][:12]}")
        held_out = validation["source"] or "the end of the corpus"
        show(f"validation: {held_out}; {validation['sequences']} lines, sha256 {validation['sha256'][:12]}")
        show(f"trained: {state['step']} windows ({state['epoch']} whole epoch{'s' * (state['epoch'] != 1)}), "
             f"{state['tokens_seen']:,} tokens, {state['seconds']:.1f} s")
        show_losses(losses, "window", " (nats per token)")
        show_validation(history, with_perplexity=True)


def _stream_sizes(text):
    """(training tokens, validation tokens, distinct tokens) of a StreamCorpus, for the memory check."""
    return text.train.tokens, text.validation.tokens, len(text.table) - 1


def _stream_text(args, level, val_fraction):
    """(StreamCorpus, description) of ``xseq train``'s CORPUS and ``--val-corpus`` for a stream model."""
    if args.corpus is None:
        val_lines = None if args.val_corpus is None else _val_lines(args.val_corpus)
        return StreamCorpus.from_lines(builtin_corpus(), val_lines, level=level, val_fraction=val_fraction), BUILTIN
    try:
        text = StreamCorpus.from_files(args.corpus, args.val_corpus, level=level, val_fraction=val_fraction,
                                       memory=resources.available_memory(np), workers=_reading_workers(args.comm))
    except ValidationCorpusError as exc:
        raise UsageError(f"--val-corpus: {exc}") from None
    return text, args.corpus


def _reading_workers(comm):
    """Processes that number a large corpus's words: one per usable core (at most 4), or this one alone under a
    launcher, whose ranks have the cores already."""
    if comm.size > 1:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_READING_WORKERS, cores)


def _val_lines(path):
    try:
        return read_corpus(path, keep_blank=True)
    except CorpusError as exc:
        raise UsageError(f"--val-corpus: {exc}") from None


def _check_training_fits(config, sizes, samples, xp, *, resumed):
    """Refuse, before any work, a stream run whose layers, windows or memory (model, one window, samples) are
    beyond this machine.

    ``sizes`` are the training and validation streams' tokens and the
    distinct tokens of the corpus (:func:`_stream_sizes`), which bound the
    vocabulary (with ``--vocab-size``).
    """
    tokens, held_out, distinct = sizes
    columns = tokens // config.batch_size
    if columns < 2:
        raise UsageError(f"--batch {config.batch_size}: the training stream has {tokens} tokens (with <eos>), too few "
                         f"for {config.batch_size} columns of at least 2 tokens each; lower --batch")
    windows = -(-(columns - 1) // config.bptt)
    length, total_steps = run_length(config, windows, resumed)
    vocab_size = len(SPECIALS) + distinct
    if config.vocab_size is not None:
        vocab_size = min(vocab_size, config.vocab_size)
    all_tokens = tokens + held_out
    values = {"hidden_size": config.hidden_size, "num_layers": config.num_layers, "batch_size": config.batch_size,
              "bptt": config.bptt, "embed_size": config.embed_size, "total_steps": total_steps, "samples": samples}
    fixed = {"cell": config.cell, "vocab_size": vocab_size, "dtype": config.dtype, "tie_weights": config.tie_weights,
             "tokens": all_tokens, "sample_len": MAX_LEN}
    options = {"total_steps": (*length, DEFAULT_EPOCHS * windows),
               "samples": ("--samples", samples, SAMPLES_AFTER_TRAINING)}
    if not resumed:
        defaults = {"hidden_size": STREAM_DEFAULTS.hidden_size, "num_layers": STREAM_DEFAULTS.num_layers,
                    "batch_size": STREAM_DEFAULTS.batch_size, "bptt": DEFAULT_BPTT,
                    "embed_size": min(config.embed_size, STREAM_DEFAULTS.hidden_size)}
        options.update({key: (STREAM_RECIPE_OPTIONS[key], values[key], default) for key, default in defaults.items()})
    parameters = resources.stream_parameter_count(config.cell, config.hidden_size, config.num_layers,
                                                  config.embed_size, vocab_size, config.tie_weights)
    check_fits(xp, lambda **v: resources.stream_training_bytes(**fixed, **v), values, options, "the run",
               f"{parameters:,} parameters, {vocab_size:,} tokens in the vocabulary, windows of {config.batch_size} "
               f"x {config.bptt} steps, a stream of {all_tokens:,} tokens, {samples:,} samples, {total_steps:,} steps")
