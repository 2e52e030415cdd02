"""What every ``xseq`` command and every plan (:mod:`xseq.lm.plan_lines`, :mod:`xseq.lm.plan_stream`) shares.

Bad input found by a command is a :class:`UsageError` (one line, exit status 2); the run's length and memory are
checked against fixed maxima and the machine (:func:`run_length`, :func:`check_fits`); text that came from a
checkpoint is printed through :func:`printable`, so a crafted token cannot act on the terminal.
"""

from __future__ import annotations

import argparse

import math
import re

from ..backends.arrays import backend_name
from . import resources

MAX_LAYERS = 64  # far deeper than a plain recurrent stack trains; each layer is a loop over time steps
MAX_STEPS = 10**9  # optimiser steps of one run: weeks at a millisecond each
TEMPERATURE = 0.8  # of xseq sample, and of the samples printed after training
MAX_LEN = 50  # characters of a sample, of xseq sample and after training
SAMPLES = 10  # of xseq sample
SAMPLES_AFTER_TRAINING = 5
BUILTIN = "the built-in corpus (1990 US Census first names)"
# Why: see docs/decisions/017-stream-corpus-worker-processes.md
MAX_READING_WORKERS = 4  # processes numbering a large corpus's words (2: 13.5 -> 25 MB/s on 2 cores)


class UsageError(Exception):
    """Bad input found by the command itself; reported as one line, exit status 2."""


def say(line):
    """Print a line of progress at once (stdout may be a pipe)."""
    print(line, flush=True)


def perplexity(loss):
    """``exp(loss)``; inf where that overflows a float (a diverged model's loss of thousands of nats)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


# What a terminal acts on instead of showing: the C0 and C1 controls but the tab, DEL, the line and paragraph
# separators, the bidirectional marks, embeddings, overrides and isolates (they reorder what follows), and lone
# surrogates (which UTF-8 cannot carry). A checkpoint's tokens may hold any of them: the file can be crafted, and
# text can hold controls (a character-level vocabulary keeps every character but the newline).
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                          r"\u2066-\u2069\ud800-\udfff]")


def printable(text):
    """``text`` with what a terminal would act on written as Python escapes: ``"\\x1b"``, ``"\\n"``, ``"\\u202e"``.

    Every line xseq prints from a checkpoint (samples, the vocabulary, the
    training record) goes through it, so that it stays one line of visible
    text. A tab is kept; a backslash in the text is not escaped.
    """
    return _UNPRINTABLE.sub(lambda match: repr(match.group())[1:-1], text)


def show(line):
    """Print a line that holds text from a model or a checkpoint (:func:`printable`)."""
    print(printable(line))


def show_losses(losses, step, note=""):
    """``xseq info``'s line on a saved run's training losses (``step``: what a step is called)."""
    if losses is not None and len(losses):
        show(f"training loss: first {step} {losses[0]:.4f}, last {step} {losses[-1]:.4f}{note}")


def show_validation(history, *, with_perplexity):
    """``xseq info``'s line on a saved run's validation: the last record and the best."""
    if not history:
        return

    def record(r):
        ppl = f"perplexity {perplexity(r['val_loss']):.2f}, " if with_perplexity else ""
        return f"{r['val_loss']:.4f} ({ppl}epoch {r['epoch']:g})"

    show(f"validation loss: last {record(history[-1])}, best {record(min(history, key=lambda h: h['val_loss']))}")


def model_shape(model):
    """The keyword arguments of the memory estimates of :mod:`xseq.lm.resources` that a model fixes."""
    return {"cell": model.cell, "hidden_size": model.hidden_size, "num_layers": model.num_layers,
            "vocab_size": model.vocab_size, "dtype": model.dtype_name}


def run_length(config, steps_per_epoch, resumed):
    """``((option, value), total optimizer steps)`` of a run; UsageError beyond :data:`MAX_LAYERS` layers (of a new
    run) or :data:`MAX_STEPS` steps."""
    if config.num_layers > MAX_LAYERS and not resumed:
        raise UsageError(f"--layers {config.num_layers} is more than the {MAX_LAYERS} layers xseq train allows "
                         f"(every layer is a loop over the time steps; deep plain recurrent stacks do not train)")
    if config.steps is not None:
        length = ("--steps", config.steps)
        total_steps = config.steps
    else:
        length = ("--epochs", config.epochs)
        total_steps = config.epochs * steps_per_epoch
    if total_steps > MAX_STEPS:
        about = "" if config.steps is not None else f" (about {total_steps:,} optimizer steps)"
        raise UsageError(f"{length[0]} {length[1]}{about} is more than the {MAX_STEPS:,} optimizer steps "
                         f"xseq train allows in one run")
    return length, total_steps


def check_resumed_recipe(given, saved, flags):
    """UsageError for a recipe option given on ``--resume`` (``given``: key -> value) that differs from the saved
    run's recipe ``saved``; ``flags`` maps keys to the options as typed."""
    for key, value in given.items():
        if value != getattr(saved, key):
            raise UsageError(f"{flags[key]} {value} differs from the resumed run's {getattr(saved, key)}; leave it "
                             "out when resuming (the checkpoint fixes it)")


def check_fits(xp, estimate, values, options, what, details):
    """UsageError when ``estimate(**values)`` bytes exceed the memory of ``xp``'s device.

    ``options`` maps keys of ``values`` to ``(option, given value, default)``:
    the error names the one whose default would lower the estimate the most.
    """
    available = resources.available_memory(xp)
    need = estimate(**values)
    if available is None or need <= available:
        return
    key = resources.biggest_cause(estimate, values, {k: default for k, (_, _, default) in options.items()})
    option, value, _ = options[key]
    where = "on the GPU" if backend_name(xp) == "cupy" else "on this machine"
    raise UsageError(f"{option} {value}: {what} would need about {resources.format_bytes(need)} of memory "
                     f"({details}); {resources.format_bytes(available)} is available {where}; lower {option}")

# ---------------------------------------------------------------------- argparse types (every plan's options)


def int_at_least(minimum, expected):
    """An argparse type: an integer >= ``minimum``; ``expected`` words the error."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")


def finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


def positive_float(text):
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0; got {text!r}")
    return value


def decay_factor(text):
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a factor in (0, 1]; got {text!r}")
    return value
