"""The *lines* plan of ``xseq train``, ``evaluate`` and ``info``: one line of the corpus is one sequence.

A plan is what the command line needs of one way of reading text (see
:mod:`xseq.lm.cli`, "Plans"): which options it takes, how it reads its corpus
and builds or resumes its trainer, what it checks against the machine, and
how it prints its plan, scores a file and describes a saved run. This one
drives :class:`~xseq.lm.model.CharLM` and :class:`~xseq.lm.train.Trainer`.
"""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np

from . import resources
from .plan_common import LanguageModelPlan
from .corpus import builtin_corpus, open_corpus, read_corpus
from .model import CharLM
from .lines_data import evaluate, split_sequences
from .recipe import DEFAULT_EPOCHS, DEFAULT_MAX_SEQ_LEN, EVALUATION_BATCH, TrainConfig
from .train import Trainer
from .usage import (
    BUILTIN,
    MAX_LEN,
    SAMPLES_AFTER_TRAINING,
    UsageError,
    check_fits,
    check_resumed_recipe,
    model_shape,
    positive_int,
    run_length,
    say,
    show,
    show_losses,
    show_validation,
)
from .vocab import SPECIALS

# Options that fix the recipe: on --resume they come from the checkpoint.
RECIPE_OPTIONS = {"cell": "--cell", "hidden_size": "--hidden", "num_layers": "--layers", "dropout": "--dropout",
                  "batch_size": "--batch", "optimizer": "--optimizer", "lr": "--lr", "momentum": "--momentum",
                  "clip": "--clip", "clip_mode": "--clip-mode", "val_fraction": "--val-fraction",
                  "max_seq_len": "--max-seq-len", "seed": "--seed", "dtype": "--dtype"}
DEFAULTS = TrainConfig()


class LinePlan(LanguageModelPlan):
    """One line a sequence: padded batches with lengths, a random validation split (the default plan)."""

    NAME = "line"
    MODEL = CharLM
    DESCRIPTION = "line models"
    OPTIONS = {"max_seq_len": "--max-seq-len"}  # the options of this plan alone
    WHY_NEW = "add --level word or --bptt L for a stream model"
    SELECTED_BY = None  # every run no other plan selects

    def selected_by(self, args):
        """The default: every ``xseq train`` another plan does not claim."""
        return True

    def check_options(self, args, why, foreign):
        """UsageError for an option of another plan (``foreign``: option key -> (flag, that plan's description)),
        ``why`` saying which plan runs."""
        if args.level == "word":
            raise UsageError(f"--level word trains a stream model; {why}")
        for key, (flag, description) in foreign.items():
            if getattr(args, key) is not None:
                raise UsageError(f"{flag} applies to {description}; {why}")

    def unit(self, model):
        """What the model predicts, for messages."""
        return "character" if model.vocab.level == "char" else "token"

    # ------------------------------------------------------------------ options

    def add_train_arguments(self, parser):
        """This plan's own options of ``xseq train``."""
        parser.add_argument("--max-seq-len", type=positive_int, dest="max_seq_len", metavar="N",
                            help="split longer lines into pieces of N characters, each learned as a sequence of its "
                                 f"own (default {DEFAULT_MAX_SEQ_LEN}; line models)")

    def add_evaluate_arguments(self, parser):
        """This plan's own options of ``xseq evaluate``."""
        parser.add_argument("--max-seq-len", type=positive_int, dest="max_seq_len", metavar="N",
                            help="line models: split longer lines into pieces of N characters, as training does "
                                 f"(default {DEFAULT_MAX_SEQ_LEN}; give the model's training value)")

    # ------------------------------------------------------------------ train

    def trainer(self, args, xp, resumed):
        """The Trainer of ``xseq train``: resumed from ``resumed`` (arrays, meta) or new."""
        given = {key: getattr(args, key) for key in RECIPE_OPTIONS if getattr(args, key) is not None}
        if resumed is not None:
            lines, source = corpus(args.corpus, _resumed_max_seq_len(resumed[1]), "--max-seq-len of the resumed run")
            trainer = Trainer.resume(args.resume, lines, backend=xp, epochs=args.epochs, steps=args.steps,
                                     source=source, comm=args.comm)
            saved = trainer.config
            check_resumed_recipe(given, saved, RECIPE_OPTIONS)
            _check_training_fits(saved, lines, args.samples, xp, resumed=True)
            return trainer
        try:
            config = TrainConfig(epochs=args.epochs, steps=args.steps, **given)
            lines, source = corpus(args.corpus, config.max_seq_len)
            _check_training_fits(config, lines, args.samples, xp, resumed=False)
            return Trainer(lines, config, backend=xp, source=source, comm=args.comm)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def print_plan(self, trainer):
        c, model = trainer.config, trainer.model
        n_train, n_val = len(trainer.train_ids), len(trainer.val_ids)
        resumed = f", resuming at step {trainer.step}" if trainer.step else ""
        split = ""
        if n_train + n_val > trainer.corpus["sequences"]:
            split = f" (lines longer than {c.max_seq_len} characters split into pieces)"
        say(f"training {c.cell} (hidden {c.hidden_size}, {c.num_layers} layer{'s' * (c.num_layers > 1)}, "
            f"{model.num_parameters():,} parameters, {model.backend_name} {model.dtype_name}) "
            f"on {trainer.source}: {n_train} training + {n_val} validation sequences{split}, "
            f"{model.vocab_size} tokens; {trainer.total_steps} steps of {c.batch_size} "
            f"({trainer.steps_per_epoch} per epoch){resumed}")

    # ------------------------------------------------------------------ evaluate, sample, info

    def evaluate_model(self, args, model):
        """``xseq evaluate``: every rank scores a share of the lines, cut as training cut them; ``(what was scored,
        nats per character)``."""
        if args.max_seq_len is None:
            args.max_seq_len = DEFAULT_MAX_SEQ_LEN
        lines, _ = corpus(args.corpus, args.max_seq_len)
        vocab = model.vocab
        unknown = sum(t not in vocab for line in lines for t in vocab.tokenize(line))
        if unknown and args.comm.rank == 0:
            print(f"xseq evaluate: note: {unknown} characters of {args.corpus} are not in the model's vocabulary "
                  "(they count as <unk>)", file=sys.stderr)
        pieces = split_sequences([vocab.encode(line) for line in lines], args.max_seq_len)
        T_x = max(len(p) for p in pieces) + 1
        m = min(len(pieces), EVALUATION_BATCH)
        shape = model_shape(model)
        check_fits(model.xp, lambda max_seq_len: resources.activation_bytes(**shape, m=m,
                                                                            T_x=min(T_x, max_seq_len + 1)),
                   {"max_seq_len": args.max_seq_len},
                   {"max_seq_len": ("--max-seq-len", args.max_seq_len, DEFAULT_MAX_SEQ_LEN)},
                   "evaluating", f"batches of {m} sequences of up to {T_x - 1} characters, {model.vocab_size} tokens")
        loss = evaluate(model, pieces, max_seq_len=args.max_seq_len, comm=args.comm)
        characters = sum(len(p) for p in pieces)
        split = ("" if len(pieces) == len(lines)
                 else f" (split into {len(pieces)} of at most {args.max_seq_len} characters)")
        return (f"{args.corpus}: {len(lines)} sequence{'s' * (len(lines) != 1)}{split}, {characters} characters "
                f"+ {len(pieces)} end-of-sequence tokens"), loss

    def note_prefix(self, model, prefix):
        """A line model refuses a prefix with unknown characters itself (:meth:`CharLM.sample`)."""

    def describe(self, config):
        """What ``xseq info``'s model line adds for this plan: ``(after the layers, at the end)``."""
        return "", ""

    def print_history(self, state, losses):
        r, corpus_record, history = state["config"], state["corpus"], state["history"]
        clip = "none" if not r["clip"] else f"{r['clip_mode']} {r['clip']:g}"
        show(f"recipe: {r['optimizer']} lr {r['lr']:g}, batch {r['batch_size']}, clip {clip}, "
             f"validation fraction {r['val_fraction']:g}, seed {r['seed']}")
        show(f"corpus: {corpus_record['source']}; {corpus_record['sequences']} sequences, "
             f"sha256 {corpus_record['sha256'][:12]}")
        show(f"trained: {state['step']} steps ({state['epoch']} whole epoch{'s' * (state['epoch'] != 1)}), "
             f"{state['chars_seen']:,} characters, {state['seconds']:.1f} s")
        show_losses(losses, "step")
        show_validation(history, with_perplexity=False)


def corpus(path, max_seq_len, option="--max-seq-len"):
    """(lines, description) of a line model's CORPUS argument, the built-in corpus when None.

    A line model holds its corpus as Python lines and lists of ids
    (:func:`~xseq.lm.resources.line_corpus_bytes`): a file too large for that is
    refused before it is read, with the stream models' way to read it.
    """
    if path is None:
        return builtin_corpus(), BUILTIN
    with open_corpus(path) as f:  # a FIFO, a device or a directory is refused here, at once
        size = os.fstat(f.fileno()).st_size
    need = resources.line_corpus_bytes(size, max_seq_len)
    available = resources.available_memory(np)
    if available is not None and need > available:
        raise UsageError(f"{path}: a line model would hold this {resources.format_bytes(size)} corpus in about "
                         f"{resources.format_bytes(need)} of memory ({option} {max_seq_len}); "
                         f"{resources.format_bytes(available)} is available; train a stream model instead "
                         "(--level word, or --bptt L), which reads a corpus of any size in bounded memory")
    return read_corpus(path), path


def _resumed_max_seq_len(meta):
    """The ``max_seq_len`` of a resumed line model's recipe, for the memory check before its corpus is read
    (the default where the file does not say: the resume checks it afterwards)."""
    recipe = meta.get("trainer", {}).get("config", {}) if isinstance(meta.get("trainer"), dict) else {}
    value = recipe.get("max_seq_len") if isinstance(recipe, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else DEFAULT_MAX_SEQ_LEN


def _check_training_fits(config, lines, samples, xp, *, resumed):
    """Refuse, before any work, a run whose layers, steps or memory are beyond this machine.

    The memory estimate bounds the data from the corpus alone: at most one
    piece per ``max_seq_len`` characters of a line, the vocabulary at most
    every distinct character. On ``--resume`` only the options that may still
    be given (the run's length and ``--samples``) are offered as the ones to lower.
    """
    longest = max(len(line) for line in lines)
    pieces = sum(-(-len(line) // config.max_seq_len) for line in lines)
    steps_per_epoch = -(-pieces // config.batch_size)
    length, total_steps = run_length(config, steps_per_epoch, resumed)
    vocab_size = len(SPECIALS) + len(set(itertools.chain.from_iterable(lines)))
    values = {"hidden_size": config.hidden_size, "num_layers": config.num_layers, "batch_size": config.batch_size,
              "max_seq_len": config.max_seq_len, "total_steps": total_steps, "samples": samples}
    fixed = {"cell": config.cell, "vocab_size": vocab_size, "dtype": config.dtype, "train_sequences": pieces,
             "val_sequences": pieces, "longest": longest, "sample_len": MAX_LEN}
    options = {"total_steps": (*length, DEFAULT_EPOCHS * steps_per_epoch),
               "samples": ("--samples", samples, SAMPLES_AFTER_TRAINING)}
    if not resumed:
        options.update({key: (RECIPE_OPTIONS[key], values[key], getattr(DEFAULTS, key))
                        for key in ("hidden_size", "num_layers", "batch_size", "max_seq_len")})
    parameters = resources.parameter_count(config.cell, config.hidden_size, config.num_layers, vocab_size)
    check_fits(xp, lambda **v: resources.training_bytes(**fixed, **v), values, options, "the run",
               f"{parameters:,} parameters, {vocab_size} tokens, batches of {config.batch_size} sequences of up "
               f"to {min(longest, config.max_seq_len)} characters, {samples:,} samples, {total_steps:,} steps")
