"""The ``xseq`` command: train a language model, sample from it, evaluate it, describe it.

::

    xseq train [CORPUS] [--cell lstm|gru|rnn] [--hidden 128] [--layers 1] [--epochs N | --steps N]
               [--batch 32] [--lr LR] [--optimizer adam|sgd] [--clip 5] [--backend auto|numpy|cupy|torch]
               [--dtype float32|float64] [--out PATH] [--resume model.npz] [--plot loss.png] [--seed 0]
               [--max-seq-len 256]
               [--level char|word] [--bptt 20] [--embed D] [--tie-weights] [--init-scale S]
               [--lr-decay F] [--decay-after E] [--vocab-size N] [--min-count K] [--val-corpus FILE]
    xseq sample MODEL [-n 10] [--temperature 0.8] [--top-k K] [--prefix TEXT] [--max-len 50] [--seed 0]
    xseq evaluate MODEL CORPUS [--max-seq-len 256]
    xseq info MODEL

Two kinds of model: the line model (:class:`~xseq.lm.model.CharLM`, the
default: one line of the corpus is one sequence of characters) and the stream
model (:class:`~xseq.lm.stream_model.StreamLM`, with ``--level word`` or
``--bptt``: the corpus is one stream of words or characters, trained in
windows with the state carried, :mod:`xseq.lm.stream_train`). ``sample``,
``evaluate`` and ``info`` read either kind from the checkpoint.

Under an MPI launcher (``mpiexec -n 4 xseq train ...``) ``train`` and
``evaluate`` run on every process of the job (:mod:`xseq.distributed`):
training is data-parallel with ``--batch`` the global batch, the first line
says so, rank 0 alone prints and writes files, and an error on any rank ends
the whole job (its message prefixed with the rank). Without a launcher, or
without ``mpi4py``, they run as one process.

Also ``python -m xseq``. Bad input (a missing, empty or binary corpus, an
unwritable output, a corrupt model, an unknown or unusable backend, bad
option values) prints one line on stderr and exits with status 2. So do
sizes and counts the machine cannot serve: before any work, the memory a
command will need (model, one batch, the samples, the loss history) is
estimated from its options and compared with the memory available (see
:mod:`xseq.lm.resources`), and ``--layers`` and the run's total step count
have fixed maxima (``MAX_LAYERS``, ``MAX_STEPS``). An output never replaces
an input, and ``train`` replaces no file it was not told to write
(:func:`_check_files`); every file read must be a regular file. Ctrl-C during training
saves a checkpoint, then exits with status 130. When the reader of the
output goes away (``xseq sample m.npz | head -1``) the command stops
quietly with status 141, as a program killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import re
import shlex
import sys
import tempfile

import numpy as np

from ..backends.arrays import BackendUnavailableError, backend_name
from ..backends.arrays import backend as backend_named
from ..distributed import (
    DEFAULT_TIMEOUT_S,
    EXIT_TIMED_OUT,
    CollectiveWatchdog,
    DistributedError,
    SingleProcess,
    abort_on_error,
    apply_thread_defaults,
    check_settings_agree,
    end_job,
    from_environment,
    gpu_communicator,
    rank_prefix,
    use_local_gpu,
    write_lines,
)
from ..ops import blas, host
from ..ops.select import ops_for
from ..ops.switches import direct_enabled, fused_enabled, lanes_enabled
from . import resources
from .checkpoint import CheckpointError, load_checkpoint
from .corpus import CorpusError, builtin_corpus, builtin_corpus_path, open_corpus, read_corpus
from .files import Destination, DestinationError, atomic_write, file_identity, resolve_destination
from .language_model import SamplingError
from .model import CELLS, CharLM
from .stream_model import MODEL_FORMAT as STREAM_MODEL_FORMAT
from .stream_model import StreamLM
from .stream_text import (
    StreamCorpus,
    TokenTable,
    ValidationCorpusError,
    id_lookup,
    ids_of,
    read_file,
    unknown_tokens,
)
from .stream_train import (
    DEFAULT_BPTT,
    EVALUATION_WINDOW,
    STREAM_DEFAULT_LR,
    StreamConfig,
    StreamTrainer,
    batchify,
    evaluate_stream,
    reading_recipe,
)
from .train import (
    CLIP_MODES,
    DEFAULT_EPOCHS,
    DEFAULT_MAX_SEQ_LEN,
    EVALUATION_BATCH,
    OPTIMIZERS,
    DivergedError,
    TrainConfig,
    Trainer,
    evaluate,
    split_sequences,
)
from .vocab import SPECIALS

CLI_BACKENDS = ("auto", "numpy", "cupy", "torch")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a program killed by a closed pipe
MAX_LAYERS = 64  # far deeper than a plain recurrent stack trains; each layer is a loop over time steps
MAX_STEPS = 10**9  # optimiser steps of one run: weeks at a millisecond each
TEMPERATURE = 0.8  # of xseq sample, and of the samples printed after training
MAX_LEN = 50  # characters of a sample, of xseq sample and after training
SAMPLES = 10  # of xseq sample
SAMPLES_AFTER_TRAINING = 5
BUILTIN = "the built-in corpus (1990 US Census first names)"
DEFAULT_OUT = "model.npz"  # of xseq train without --out or --resume; never replaces a file
MAX_READING_WORKERS = 4  # processes numbering a large corpus's words (2: 13.5 -> 25 MB/s on 2 cores)
# Options that fix the recipe: on --resume they come from the checkpoint.
RECIPE_OPTIONS = {"cell": "--cell", "hidden_size": "--hidden", "num_layers": "--layers", "dropout": "--dropout",
                  "batch_size": "--batch", "optimizer": "--optimizer", "lr": "--lr", "momentum": "--momentum",
                  "clip": "--clip", "clip_mode": "--clip-mode", "val_fraction": "--val-fraction",
                  "max_seq_len": "--max-seq-len", "seed": "--seed", "dtype": "--dtype"}
# Options of stream models only (--level is also a stream option, but --level char alone is the line model).
STREAM_OPTIONS = {"bptt": "--bptt", "embed_size": "--embed", "tie_weights": "--tie-weights",
                  "init_scale": "--init-scale", "lr_decay": "--lr-decay", "decay_after": "--decay-after",
                  "vocab_size": "--vocab-size", "min_count": "--min-count"}
STREAM_RECIPE_OPTIONS = {**{k: v for k, v in RECIPE_OPTIONS.items() if k != "max_seq_len"},
                         "level": "--level", **STREAM_OPTIONS}
DEFAULTS = TrainConfig()
STREAM_DEFAULTS = StreamConfig()


class UsageError(Exception):
    """Bad input found by the command itself; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``xseq train: error: ... (see xseq train --help)``."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int_at_least(minimum, expected):
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


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


def _positive_float(text):
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0; got {text!r}")
    return value


def _seconds(text):
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0 (0 turns the timeout off); got {text!r}")
    return value


def _comm_timeout_option(parser):
    parser.add_argument("--comm-timeout", type=_seconds, dest="comm_timeout", default=DEFAULT_TIMEOUT_S,
                        metavar="SECONDS",
                        help="under mpiexec: end the job, on every rank that can, when one collective waits longer "
                             f"than this for the other ranks (a node cut off, a stopped rank); 0: wait forever "
                             f"(default {DEFAULT_TIMEOUT_S:g}, PyTorch's)")


def _decay_factor(text):
    value = _finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a factor in (0, 1]; got {text!r}")
    return value


def build_parser():
    """The ``xseq`` argument parser (sub-commands train, sample, evaluate, info)."""
    parser = _Parser(prog="xseq", description="Character- and word-level language models with the RNN, LSTM "
                                              "and GRU of the Sequence Models course, on any array API backend.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model on a corpus (one sequence per line)",
                                description="Train a language model. By default one line of CORPUS is one "
                                            "sequence of characters; 10% of them (--val-fraction) are held out "
                                            "for validation. With --level word or --bptt, CORPUS is one stream "
                                            "of tokens (see 'stream models' below).")
    train.add_argument("corpus", nargs="?", metavar="CORPUS",
                       help="UTF-8 text file, one sequence per line (default: the built-in first names)")
    # Recipe options default to None so that --resume can tell which were given.
    option = train.add_argument
    option("--cell", choices=tuple(CELLS), help="recurrent cell (default lstm)")
    option("--hidden", type=_positive_int, dest="hidden_size", metavar="N_A", help="hidden size n_a (default 128)")
    option("--layers", type=_positive_int, dest="num_layers", metavar="N", help="stacked layers (default 1)")
    option("--dropout", type=_finite_float, help="dropout between stacked layers (default 0)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, metavar="N",
                        help=f"epochs of the run, counted from its start when resuming (default {DEFAULT_EPOCHS})")
    length.add_argument("--steps", type=_positive_int, metavar="N",
                        help="optimizer steps of the run, instead of --epochs")
    option("--batch", type=_positive_int, dest="batch_size", metavar="M", help="sequences per step (default 32)")
    option("--lr", type=_finite_float, help="learning rate (default: adam 0.003, sgd 0.5; stream models: "
                                            f"sgd {STREAM_DEFAULT_LR['sgd']:g})")
    option("--optimizer", choices=OPTIMIZERS, help="optimizer (default adam)")
    option("--momentum", type=_finite_float, help="SGD momentum (default 0.9; stream models: 0)")
    option("--clip", type=_finite_float, help="gradient clipping threshold, 0 for none (default 5)")
    option("--clip-mode", choices=CLIP_MODES, dest="clip_mode",
           help="clip the global L2 norm or every value (default norm)")
    option("--val-fraction", type=_finite_float, dest="val_fraction", metavar="F",
           help="share of sequences held out for validation (default 0.1)")
    option("--backend", choices=CLI_BACKENDS, default="auto",
           help="array library; auto = cupy where a GPU can run it, else numpy (default auto)")
    option("--dtype", choices=("float32", "float64"), help="floating dtype (default float32)")
    option("--out", metavar="PATH",
           help=f"checkpoint written after every epoch and at the end (default: the --resume file, else "
                f"{DEFAULT_OUT}, which must not exist yet)")
    option("--resume", metavar="CHECKPOINT", help="continue the run saved in CHECKPOINT")
    option("--plot", metavar="PNG", help="write training and validation loss curves (needs matplotlib)")
    option("--seed", type=_non_negative_int, help="seeds weights, split, shuffling, dropout (default 0)")
    _comm_timeout_option(train)
    option("--samples", type=_non_negative_int, default=SAMPLES_AFTER_TRAINING, metavar="N",
           help=f"samples printed at the end (default {SAMPLES_AFTER_TRAINING})")
    option("--max-seq-len", type=_positive_int, dest="max_seq_len", metavar="N",
           help=f"split longer lines into pieces of N characters, each learned as a sequence of its own "
                f"(default {DEFAULT_MAX_SEQ_LEN}; line models)")
    stream = train.add_argument_group(
        "stream models", "--level word, or --bptt, trains on the corpus as one stream of tokens (every line "
                         "followed by <eos>) in windows of --bptt steps, the state carried from one to the next")
    stream.add_argument("--level", choices=("char", "word"),
                        help="tokens: characters, or whitespace-separated words (default char; word implies a "
                             "stream model)")
    stream.add_argument("--bptt", type=_positive_int, metavar="L",
                        help=f"steps per window of a stream model (default {DEFAULT_BPTT} with --level word)")
    stream.add_argument("--embed", type=_positive_int, dest="embed_size", metavar="D",
                        help="size of a token's embedding (default: the hidden size)")
    stream.add_argument("--tie-weights", action="store_true", default=None, dest="tie_weights",
                        help="share the embedding and the output matrix (needs --embed equal to --hidden)")
    stream.add_argument("--init-scale", type=_positive_float, dest="init_scale", metavar="S",
                        help="draw every weight uniform in [-S, S] (default: PyTorch's initialisation)")
    stream.add_argument("--lr-decay", type=_decay_factor, dest="lr_decay", metavar="F",
                        help="multiply the learning rate by F for every epoch past --decay-after (default 1)")
    stream.add_argument("--decay-after", type=_non_negative_int, dest="decay_after", metavar="E",
                        help="epochs at the full learning rate before --lr-decay applies (default 0)")
    stream.add_argument("--vocab-size", type=_int_at_least(3, "an integer >= 3 (it counts <pad>, <unk> and <eos>)"),
                        dest="vocab_size", metavar="N",
                        help="keep the N most frequent tokens, <pad>, <unk> and <eos> included (default: all)")
    stream.add_argument("--min-count", type=_positive_int, dest="min_count", metavar="K",
                        help="tokens seen fewer than K times in training become <unk> (default 1)")
    stream.add_argument("--val-corpus", dest="val_corpus", metavar="FILE",
                        help="validation file (default: the last --val-fraction of the corpus's lines)")
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser("sample", help="print samples of a trained model, one per line")
    sample.add_argument("model", metavar="MODEL", help="checkpoint written by xseq train")
    sample.add_argument("-n", type=_positive_int, default=SAMPLES, metavar="N",
                        help=f"number of samples (default {SAMPLES})")
    sample.add_argument("--temperature", type=_finite_float, default=TEMPERATURE, metavar="T",
                        help=f"below 1: safer, above 1: more varied (default {TEMPERATURE})")
    sample.add_argument("--top-k", type=_positive_int, dest="top_k", metavar="K",
                        help="draw only among the K likeliest tokens")
    sample.add_argument("--prefix", default="", metavar="TEXT",
                        help="text every sample starts with (words for a word model; unknown ones are read as <unk>)")
    sample.add_argument("--max-len", type=_positive_int, dest="max_len", default=MAX_LEN, metavar="N",
                        help=f"longest sample in tokens (characters or words), prefix included (default {MAX_LEN})")
    sample.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    sample.add_argument("--backend", choices=CLI_BACKENDS, default="auto", help="array library (default auto)")
    sample.set_defaults(func=cmd_sample)

    evaluate_ = commands.add_parser("evaluate", help="cross-entropy and perplexity of a model on a corpus")
    evaluate_.add_argument("model", metavar="MODEL", help="checkpoint written by xseq train")
    evaluate_.add_argument("corpus", metavar="CORPUS", help="UTF-8 text file, one sequence per line")
    evaluate_.add_argument("--backend", choices=CLI_BACKENDS, default="auto", help="array library (default auto)")
    evaluate_.add_argument("--max-seq-len", type=_positive_int, dest="max_seq_len", metavar="N",
                           help="line models: split longer lines into pieces of N characters, as training does "
                                f"(default {DEFAULT_MAX_SEQ_LEN}; give the model's training value)")
    _comm_timeout_option(evaluate_)
    evaluate_.set_defaults(func=cmd_evaluate)

    info = commands.add_parser("info", help="configuration, vocabulary, size and training history of a model")
    info.add_argument("model", metavar="MODEL", help="checkpoint written by xseq train")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None):
    """Run the ``xseq`` command line; returns the exit status.

    0 on success, 2 for bad input, 130 when interrupted, 141 when the reader
    of stdout went away (``xseq info m.npz | head -1``): then the command
    stops at once and quietly, as a program killed by SIGPIPE does.
    """
    try:
        status = _run(argv)
        sys.stdout.flush()  # output to a pipe is buffered: a closed pipe shows here, not at exit
    except BrokenPipeError:
        return _stdout_closed()
    return status


def _stdout_closed():
    # Point stdout at devnull, so that the interpreter's own flush at exit
    # does not fail again on what is left in the buffer (the recipe of the
    # Python documentation, "Note on SIGPIPE").
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # an in-process stdout without a file descriptor
        pass
    return EXIT_BROKEN_PIPE


def _run(argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code
    try:
        args.comm = _communicator(args)
    except DistributedError as exc:  # MPI cannot start: every rank fails alike
        args.comm = SingleProcess()
        _error(args, exc)
        return EXIT_BAD_INPUT
    with contextlib.ExitStack() as stack:
        stack.enter_context(abort_on_error(args.comm))
        if args.comm.rank != 0:  # rank 0 alone prints; every rank's errors go to stderr
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        status, every_rank = _command(args)
        # A failure of this rank alone would leave the others waiting for it: end them all.
        if status != 0 and not every_rank and args.comm.size > 1:
            args.comm.abort(status)
    return status


def _command(args):
    """Run the command; returns its exit status and whether every rank of the job ends with it."""
    try:
        if args.comm.size > 1:
            _check_ranks_agree(args)
        return args.func(args), True
    except (UsageError, CorpusError, CheckpointError, BackendUnavailableError) as exc:
        _error(args, exc)
        return EXIT_BAD_INPUT, False
    except DistributedError as exc:  # raised on every rank together
        _error(args, exc)
        return EXIT_BAD_INPUT, True
    except DivergedError as exc:  # every rank sees the same summed loss: rank 0 says it
        if args.comm.rank == 0:
            _error(args, f"{exc}; no checkpoint was written after it: lower --lr or clip the gradients (--clip)")
        return EXIT_BAD_INPUT, True
    except KeyboardInterrupt:
        write_lines([f"xseq {args.command}: {rank_prefix(args.comm)}interrupted"])
        return EXIT_INTERRUPTED, False
    except MemoryError:  # an estimate before the work was too low: still one line, never a traceback
        _error(args, "out of memory: the machine could not give what this command asked for; lower the sizes "
                     "(--hidden, --batch, --bptt, the corpus) or free memory")
        return EXIT_BAD_INPUT, False


def _error(args, message):
    """The error line, written in one piece: the launcher merges the ranks' stderr, and two lines must not glue."""
    write_lines([f"xseq {args.command}: error: {rank_prefix(args.comm)}{printable(str(message))}"])


def _communicator(args):
    """The processes of the job for ``train`` and ``evaluate`` (MPI under a launcher); the others run alone.

    With several ranks on a node, BLAS threads share its cores
    (:func:`~xseq.distributed.apply_thread_defaults`) and each rank takes the
    GPU of its local rank before any backend is chosen. A watchdog
    (``--comm-timeout``) ends the job when one collective waits too long.
    """
    if args.command not in ("train", "evaluate"):
        return SingleProcess()
    comm = from_environment()
    if comm.size > 1:
        apply_thread_defaults(comm)
        if args.backend in ("auto", "cupy"):
            use_local_gpu(comm)
        if args.comm_timeout > 0:
            comm.watchdog = _watchdog(args, comm)
    return comm


def _watchdog(args, comm):
    """A started watchdog whose expiry says which rank waited, at which step, and ends the job from this rank."""
    def expire(waited):
        step = "" if watchdog.step is None else f" (step {watchdog.step})"
        write_lines([f"xseq {args.command}: error: {rank_prefix(comm)}no reply from the other ranks in a collective "
                     f"for {args.comm_timeout:g} s{step}; ending the job (--comm-timeout {args.comm_timeout:g})"])
        end_job(args.comm, EXIT_TIMED_OUT)  # args.comm: NCCL's, once the GPUs have one

    watchdog = CollectiveWatchdog(args.comm_timeout, expire)
    return watchdog.start()


# Arguments that name files: each node reads its own copy (a trainer compares the corpora and parameters
# themselves across ranks) and rank 0 alone writes, so their paths may differ from node to node.
FILE_ARGUMENTS = ("corpus", "model", "out", "plot", "resume", "val_corpus")


def _check_ranks_agree(args):
    """DistributedError on every rank unless every rank runs the same command with the same options and
    arithmetic.

    The first collective of ``train`` and ``evaluate`` alike, so that ranks
    started with different commands meet here and stop, instead of waiting
    in different collectives for ever; then the options (the backend as
    resolved on this node) and the step implementation, which ranks on
    different paths would compute in different last bits, drifting apart.
    """
    check_settings_agree(args.comm, "the ranks' commands", {"command": f"xseq {args.command}"})
    xp = backend_named(args.backend)
    flags = _option_names(args.command)
    recipe = {flags[k]: v for k, v in vars(args).items() if k in flags and k not in FILE_ARGUMENTS}
    recipe["--backend"] = backend_name(xp)
    check_settings_agree(args.comm, "the ranks' options", recipe)
    check_settings_agree(args.comm, "the ranks' fast paths", _fast_path(xp))


def _option_names(command):
    """Each argument of ``xseq COMMAND`` by its destination: the option as typed (``--hidden``), or its metavar."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: max(a.option_strings, key=len) if a.option_strings else a.metavar
            for a in commands.choices[command]._actions if a.dest != "help"}


def _fast_path(xp):
    """What picks this rank's arithmetic: the step implementation per dtype, and the switches of the others."""
    paths = {}
    for dtype in ("float32", "float64"):
        ops = type(ops_for(xp, dtype)).__name__
        if ops == "NumpyOps":  # the host kernels could not be used; say why
            ops += f" ({host.library().reason})"
        paths[f"steps ({dtype})"] = ops
    paths.update({"XSEQ_FUSED": fused_enabled(), "XSEQ_DIRECT": direct_enabled(), "XSEQ_LANES": lanes_enabled(),
                  "XSEQ_ONEDNN": blas.enabled()})
    return paths


def _backend_for_ranks(args):
    """The backend of ``args.backend``; with several CuPy ranks, the communicator becomes the GPUs' (NCCL)."""
    xp = backend_named(args.backend)
    if args.comm.size > 1 and backend_name(xp) == "cupy":
        args.comm = gpu_communicator(args.comm)
    if args.comm.size > 1:
        _say(f"data-parallel over {args.comm.size} processes ({args.comm.description})")
    return xp


# ---------------------------------------------------------------------- helpers


def _check_writable(path, option):
    """Fail now, not after training, when :func:`atomic_write` could not replace ``path``.

    Checks what :func:`~xseq.lm.files.resolve_destination` checks (a device,
    FIFO or socket, a link planted in ``/tmp``, another user's file in a sticky
    directory), then creates and removes a file in the directory that will
    receive it, which catches what permission bits do not show (a full quota
    of inodes, some network file systems).
    """
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory; give a file name")
    try:
        target = resolve_destination(path)
    except DestinationError as exc:
        raise UsageError(f"cannot write {option} {path!r}: {exc.reason}") from None
    try:
        with tempfile.TemporaryFile(dir=os.path.dirname(target) or os.curdir):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {option} {path!r}: {exc.strerror or exc}") from None


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed: pip install 'xseq[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _load_model(path, backend):
    """The line or stream model of a checkpoint, by its format."""
    arrays, meta = load_checkpoint(path)
    return _model_from(arrays, meta, backend_named(backend), f"checkpoint {str(path)!r}")


def _model_from(arrays, meta, backend, where):
    kind = StreamLM if meta.get("format") == STREAM_MODEL_FORMAT else CharLM
    return kind.from_checkpoint(arrays, meta, backend=backend, where=where)


def _corpus(path, max_seq_len, option="--max-seq-len"):
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


def _check_files(args):
    """Settle ``--out`` and refuse, before any work, an output that is an input or another output.

    ``--out`` defaults to the ``--resume`` file (the run goes on in its own
    file), else to :data:`DEFAULT_OUT`, which must not exist: xseq replaces no
    file it was not told to write. Files are compared by identity (device and
    inode, links followed; the resolved path of a file not yet there), so a
    link or a hard link to the corpus is the corpus. Returns the
    :class:`~xseq.lm.files.Destination` the run writes.
    """
    named = args.out is not None or args.resume is not None
    if args.out is None:
        args.out = args.resume if args.resume is not None else DEFAULT_OUT
        if args.resume is None and os.path.lexists(args.out):
            raise UsageError(f"{args.out} already exists and --out was not given; xseq train replaces no file it "
                             f"was not told to write: give --out {args.out} to replace it, --resume {args.out} to "
                             "continue its run, or another --out")
    corpus = builtin_corpus_path() if args.corpus is None else args.corpus
    inputs = {"CORPUS": corpus, "--val-corpus": getattr(args, "val_corpus", None), "--resume": args.resume}
    outputs = {"--out": args.out, "--plot": args.plot}
    seen = {}
    for flag, path in [*inputs.items(), *outputs.items()]:
        if path is None:
            continue
        identity = file_identity(path)
        if identity in seen and flag in outputs and (seen[identity][0], flag) != ("--resume", "--out"):
            other, other_path = seen[identity]
            what = "an input" if other in inputs else "another output"
            raise UsageError(f"{flag} {path!r} is the same file as {other} {other_path!r}, {what}: writing it would "
                             f"destroy it; give {flag} another file")
        seen.setdefault(identity, (flag, path))
    return Destination(args.out, may_replace=named)


# ---------------------------------------------------------------------- train


def cmd_train(args):
    destination = _check_files(args)
    xp = _backend_for_ranks(args)
    comm = args.comm
    resumed = None if args.resume is None else load_checkpoint(args.resume)
    stream = _check_model_kind(args, resumed)
    plt = None
    if comm.rank == 0:  # rank 0 alone writes files
        _check_writable(args.out, "--out")
        if args.plot is not None:
            plt = _pyplot()
            _check_writable(args.plot, "--plot")
    given = {key: getattr(args, key) for key in RECIPE_OPTIONS if getattr(args, key) is not None}
    if stream:
        trainer = _stream_trainer(args, xp, resumed)
    elif args.resume is not None:
        lines, source = _corpus(args.corpus, _resumed_max_seq_len(resumed[1]), "--max-seq-len of the resumed run")
        trainer = Trainer.resume(args.resume, lines, backend=xp, epochs=args.epochs, steps=args.steps,
                                 source=source, comm=comm)
        saved = trainer.config
        for key, value in given.items():
            if value != getattr(saved, key):
                raise UsageError(f"{RECIPE_OPTIONS[key]} {value} differs from the resumed run's "
                                 f"{getattr(saved, key)}; leave it out when resuming (the checkpoint fixes it)")
        _check_training_fits(saved, lines, args.samples, xp, resumed=True)
    else:
        try:
            config = TrainConfig(epochs=args.epochs, steps=args.steps, **given)
            lines, source = _corpus(args.corpus, config.max_seq_len)
            _check_training_fits(config, lines, args.samples, xp, resumed=False)
            trainer = Trainer(lines, config, backend=xp, source=source, comm=comm)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    (_print_stream_plan if stream else _print_plan)(trainer)
    try:
        completed = trainer.run(out=destination, progress=True, log=_say, handle_sigint=True)
    except BrokenPipeError:  # stdout, not --out: main stops quietly
        raise
    except DestinationError as exc:
        raise UsageError(f"cannot write --out {args.out!r}: it {exc.reason}") from None
    except OSError as exc:
        raise UsageError(f"cannot write --out {args.out!r}: {exc}") from None
    if not completed:
        validation = "" if getattr(args, "val_corpus", None) is None else f" --val-corpus {shlex.quote(args.val_corpus)}"
        if comm.rank == 0:
            print(f"xseq train: interrupted at step {trainer.step}; checkpoint saved to {args.out}; "
                  f"continue with: xseq train {'' if args.corpus is None else shlex.quote(args.corpus) + ' '}"
                  f"--resume {shlex.quote(args.out)}{validation}", file=sys.stderr)
        return EXIT_INTERRUPTED

    if comm.rank != 0:
        return 0
    val = trainer.history[-1]["val_loss"]
    print(f"validation loss: {val:.4f} nats per {_unit(trainer.model)} (perplexity {_perplexity(val):.2f})")
    if args.samples:
        _print_training_samples(trainer.model, args.samples, trainer.config.seed)
    if plt is not None:
        _plot(plt, trainer, args.plot)
        print(f"loss curves written to {args.plot}")
    print(f"model saved to {args.out}")
    return 0


def _say(line):
    print(line, flush=True)


def _unit(model):
    """What the model predicts, for messages: "character", "word" or "token"."""
    if isinstance(model, StreamLM):
        return "token"
    return "character" if model.vocab.level == "char" else "token"


def _check_model_kind(args, resumed):
    """Whether ``xseq train`` runs a stream model; UsageError for options the other kind does not take."""
    if resumed is not None:
        stream = resumed[1].get("format") == STREAM_MODEL_FORMAT
        why = f"the resumed checkpoint {args.resume!r} holds a {'stream' if stream else 'line'} model"
    else:
        stream = args.level == "word" or args.bptt is not None
        why = "add --level word or --bptt L for a stream model" if not stream else "this is a stream model"
    if stream:
        if args.max_seq_len is not None:
            raise UsageError(f"--max-seq-len applies to line models, not stream models (--level word or --bptt), "
                             f"which read windows of --bptt steps; {why}")
        if args.val_corpus is not None and args.val_fraction is not None:
            raise UsageError(f"--val-fraction {args.val_fraction} has no effect with --val-corpus; give one of them")
        return True
    if args.level == "word":
        raise UsageError(f"--level word trains a stream model; {why}")
    for key, flag in {**STREAM_OPTIONS, "val_corpus": "--val-corpus"}.items():
        if getattr(args, key) is not None:
            raise UsageError(f"{flag} applies to stream models (--level word, or --bptt); {why}")
    return False


def _stream_trainer(args, xp, resumed):
    """The StreamTrainer of ``xseq train``: resumed from ``resumed`` (arrays, meta) or new; the corpus read as a
    stream in bounded memory (:class:`~xseq.lm.stream_text.StreamCorpus`)."""
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
        for key, value in given.items():
            if value != getattr(saved, key):
                raise UsageError(f"{STREAM_RECIPE_OPTIONS[key]} {value} differs from the resumed run's "
                                 f"{getattr(saved, key)}; leave it out when resuming (the checkpoint fixes it)")
        _check_stream_training_fits(saved, sizes, args.samples, xp, resumed=True)
        return trainer
    hidden = given.get("hidden_size", STREAM_DEFAULTS.hidden_size)
    if args.tie_weights and given.get("embed_size", hidden) != hidden:
        raise UsageError(f"--tie-weights needs --embed equal to --hidden (the output matrix is the embedding); "
                         f"got --embed {given['embed_size']} and --hidden {hidden}")
    given["level"] = args.level or "char"
    try:
        config = StreamConfig(epochs=args.epochs, steps=args.steps, **given)
        text, source = _stream_text(args, config.level, config.val_fraction)
        _check_stream_training_fits(config, _stream_sizes(text), args.samples, xp, resumed=False)
        return StreamTrainer(text, config, backend=xp, source=source, val_source=args.val_corpus, comm=args.comm)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _stream_sizes(text):
    """(training tokens, validation tokens, distinct tokens) of a StreamCorpus, for the memory check."""
    return text.train.tokens, text.validation.tokens, len(text.table) - 1


def _stream_text(args, level, val_fraction):
    """(StreamCorpus, description) of ``xseq train``'s CORPUS and ``--val-corpus`` for a stream model."""
    if args.corpus is None:
        val_lines = None if args.val_corpus is None else _val_lines(args.val_corpus)
        return StreamCorpus.from_lines(builtin_corpus(), val_lines, level=level, val_fraction=val_fraction), BUILTIN
    try:
        return StreamCorpus.from_files(args.corpus, args.val_corpus, level=level, val_fraction=val_fraction,
                                       memory=resources.available_memory(np), workers=_reading_workers(args.comm)),\
            args.corpus
    except ValidationCorpusError as exc:
        raise UsageError(f"--val-corpus: {exc}") from None


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


def _resumed_max_seq_len(meta):
    """The ``max_seq_len`` of a resumed line model's recipe, for the memory check before its corpus is read
    (the default where the file does not say: the resume checks it afterwards)."""
    recipe = meta.get("trainer", {}).get("config", {}) if isinstance(meta.get("trainer"), dict) else {}
    value = recipe.get("max_seq_len") if isinstance(recipe, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else DEFAULT_MAX_SEQ_LEN


def _perplexity(loss):
    """``exp(loss)``; inf where that overflows a float (a diverged model's loss of thousands of nats)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


# ---------------------------------------------------------------------- what the machine can do


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
    length, total_steps = _run_length(config, steps_per_epoch, resumed)
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
    _check_fits(xp, lambda **v: resources.training_bytes(**fixed, **v), values, options, "the run",
                f"{parameters:,} parameters, {vocab_size} tokens, batches of {config.batch_size} sequences of up "
                f"to {min(longest, config.max_seq_len)} characters, {samples:,} samples, {total_steps:,} steps")


def _run_length(config, steps_per_epoch, resumed):
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


def _check_stream_training_fits(config, sizes, samples, xp, *, resumed):
    """:func:`_check_training_fits` for a stream model: layers, windows, and memory (model, one window, samples).

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
    length, total_steps = _run_length(config, windows, resumed)
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
    _check_fits(xp, lambda **v: resources.stream_training_bytes(**fixed, **v), values, options, "the run",
                f"{parameters:,} parameters, {vocab_size:,} tokens in the vocabulary, windows of {config.batch_size} "
                f"x {config.bptt} steps, a stream of {all_tokens:,} tokens, {samples:,} samples, {total_steps:,} steps")


def _check_fits(xp, estimate, values, options, what, details):
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


def _print_plan(trainer):
    c, model = trainer.config, trainer.model
    n_train, n_val = len(trainer.train_ids), len(trainer.val_ids)
    resumed = f", resuming at step {trainer.step}" if trainer.step else ""
    split = ""
    if n_train + n_val > trainer.corpus["sequences"]:
        split = f" (lines longer than {c.max_seq_len} characters split into pieces)"
    _say(f"training {c.cell} (hidden {c.hidden_size}, {c.num_layers} layer{'s' * (c.num_layers > 1)}, "
         f"{model.num_parameters():,} parameters, {model.backend_name} {model.dtype_name}) "
         f"on {trainer.source}: {n_train} training + {n_val} validation sequences{split}, "
         f"{model.vocab_size} tokens; {trainer.total_steps} steps of {c.batch_size} "
         f"({trainer.steps_per_epoch} per epoch){resumed}")


def _print_stream_plan(trainer):
    c, model = trainer.config, trainer.model
    m, n = trainer.train_data.shape
    resumed = f", resuming at step {trainer.step}" if trainer.step else ""
    tied = ", tied" if c.tie_weights else ""
    dropped = f" ({trainer.dropped} dropped)" if trainer.dropped else ""
    validation = trainer.validation["source"] or f"the last {trainer.validation['sequences']} lines"
    _say(f"training {c.cell} (hidden {c.hidden_size}, {c.num_layers} layer{'s' * (c.num_layers > 1)}, embedding "
         f"{c.embed_size}{tied}, {model.num_parameters():,} parameters, {model.backend_name} {model.dtype_name}) "
         f"on {trainer.source}, {c.level} level: {model.vocab_size:,} tokens in the vocabulary; a stream of "
         f"{m * n:,} tokens{dropped} in {m} columns, {trainer.steps_per_epoch:,} windows of {c.bptt} steps per "
         f"epoch; validation on {validation}: {trainer.val_data.size:,} tokens in {trainer.val_data.shape[0]} "
         f"columns; {trainer.total_steps:,} steps{resumed}")


def _plot(plt, trainer, path):
    steps = range(1, len(trainer.losses) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, trainer.losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="training (per step)")
    window = max(1, trainer.steps_per_epoch)
    if len(trainer.losses) >= window > 1:
        smooth = np.convolve(trainer.losses, np.full(window, 1 / window), mode="valid")
        ax.plot(range(window, len(trainer.losses) + 1), smooth, color="tab:blue",
                label=f"training (mean of {window} steps)")
    ax.plot([r["step"] for r in trainer.history], [r["val_loss"] for r in trainer.history], "o-",
            color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(f"cross-entropy (nats per {_unit(trainer.model)})")
    ax.set_title(f"xseq {trainer.config.cell}, hidden {trainer.config.hidden_size}, on {trainer.source}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    except OSError as exc:
        raise UsageError(f"cannot write --plot {path!r}: {exc}") from None
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------- sample, evaluate, info

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


def _show(line):
    print(printable(line))


def _print_training_samples(model, n, seed):
    """The samples printed at the end of ``xseq train``; a model that cannot be sampled says why instead."""
    try:
        samples = model.sample(n, temperature=TEMPERATURE, max_len=MAX_LEN, seed=seed)
    except SamplingError as exc:
        print(f"samples: none: {exc}")
        return
    print("samples:")
    for text in samples:
        _show(f"  {text}")


def cmd_sample(args):
    model = _load_model(args.model, args.backend)
    shape = _model_shape(model)
    _check_fits(model.xp, lambda **v: resources.sampling_bytes(**shape, **v), {"n": args.n, "max_len": args.max_len},
                {"n": ("-n", args.n, SAMPLES), "max_len": ("--max-len", args.max_len, MAX_LEN)}, "sampling",
                f"{args.n:,} samples of up to {args.max_len:,} {_unit(model)}s drawn together")
    if isinstance(model, StreamLM):
        unknown = sorted({t for t in model.vocab.tokenize(args.prefix) if t not in model.vocab})
        if unknown:
            what = "word" if model.vocab.level == "word" else "character"
            print(f"xseq sample: warning: --prefix holds {len(unknown)} {what}{'s' * (len(unknown) > 1)} "
                  f"the model's vocabulary lacks, read as <unk>: {printable(' '.join(unknown))}", file=sys.stderr)
    try:
        samples = model.sample(args.n, temperature=args.temperature, top_k=args.top_k, prefix=args.prefix,
                               max_len=args.max_len, seed=args.seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for text in samples:
        _show(text)
    return 0


def cmd_evaluate(args):
    """Score a corpus; under a launcher every rank scores a share of the lines (a stream model: rank 0 alone)."""
    backend = _backend_for_ranks(args)
    arrays, meta = load_checkpoint(args.model)
    model = _model_from(arrays, meta, backend, f"checkpoint {str(args.model)!r}")
    if isinstance(model, StreamLM):
        # The file is one stream, its state carried from the first token to the last: cut into pieces it
        # would score another number, so rank 0 scores it alone.
        return _evaluate_stream(args, model) if args.comm.rank == 0 else 0
    if args.max_seq_len is None:
        args.max_seq_len = DEFAULT_MAX_SEQ_LEN
    lines, _ = _corpus(args.corpus, args.max_seq_len)
    vocab = model.vocab
    unknown = sum(t not in vocab for line in lines for t in vocab.tokenize(line))
    if unknown and args.comm.rank == 0:
        print(f"xseq evaluate: note: {unknown} characters of {args.corpus} are not in the model's vocabulary "
              "(they count as <unk>)", file=sys.stderr)
    pieces = split_sequences([vocab.encode(line) for line in lines], args.max_seq_len)
    T_x = max(len(p) for p in pieces) + 1
    m = min(len(pieces), EVALUATION_BATCH)
    shape = _model_shape(model)
    _check_fits(model.xp, lambda max_seq_len: resources.activation_bytes(**shape, m=m, T_x=min(T_x, max_seq_len + 1)),
                {"max_seq_len": args.max_seq_len},
                {"max_seq_len": ("--max-seq-len", args.max_seq_len, DEFAULT_MAX_SEQ_LEN)},
                "evaluating", f"batches of {m} sequences of up to {T_x - 1} characters, {model.vocab_size} tokens")
    loss = evaluate(model, pieces, max_seq_len=args.max_seq_len, comm=args.comm)
    characters = sum(len(p) for p in pieces)
    split = "" if len(pieces) == len(lines) else f" (split into {len(pieces)} of at most {args.max_seq_len} characters)"
    print(f"{args.corpus}: {len(lines)} sequence{'s' * (len(lines) != 1)}{split}, {characters} characters "
          f"+ {len(pieces)} end-of-sequence tokens")
    print(f"cross-entropy: {loss:.4f} nats per character")
    print(f"perplexity: {_perplexity(loss):.3f}")
    return 0


def _evaluate_stream(args, model):
    """``xseq evaluate`` of a stream model: the whole file as one stream (one column) from the zero state, read in
    bounded memory."""
    if args.max_seq_len is not None:
        raise UsageError(f"--max-seq-len applies to line models; {args.model} is a stream model, which scores "
                         "the file as one stream")
    vocab, unit = model.vocab, _unit(model)
    shape = _model_shape(model)
    window = resources.stream_activation_bytes(**shape, embed_size=model.embed_size, m=1, T=EVALUATION_WINDOW)
    available = resources.available_memory(model.xp)
    table = TokenTable(vocab.level)
    (stretch,) = read_file(args.corpus, table, memory=None if available is None else max(available - window, 0))
    tokens = stretch.tokens
    need = window + resources.BYTES_PER_STREAM_TOKEN * tokens
    if available is not None and need > available:
        raise UsageError(f"evaluating {args.corpus} ({tokens:,} tokens) would need about "
                         f"{resources.format_bytes(need)} of memory; {resources.format_bytes(available)} is available")
    unknown = unknown_tokens(stretch, table, vocab)
    if unknown:
        print(f"xseq evaluate: note: {unknown} {unit}s of {args.corpus} are not in the model's vocabulary "
              "(they count as <unk>)", file=sys.stderr)
    try:
        data = batchify(ids_of(stretch, id_lookup(table, vocab)), 1)
    except ValueError as exc:
        raise UsageError(f"{args.corpus}: {exc}") from None
    loss = evaluate_stream(model, data, EVALUATION_WINDOW)
    print(f"{args.corpus}: {stretch.lines} line{'s' * (stretch.lines != 1)}, {tokens:,} tokens ({vocab.level}s and "
          f"<eos>) scored as one stream from the zero state: {tokens - 1:,} predicted")
    print(f"cross-entropy: {loss:.4f} nats per {unit}")
    print(f"perplexity: {_perplexity(loss):.3f}")
    return 0


def _model_shape(model):
    """The keyword arguments of the memory estimates of :mod:`xseq.lm.resources` that a model fixes."""
    return {"cell": model.cell, "hidden_size": model.hidden_size, "num_layers": model.num_layers,
            "vocab_size": model.vocab_size, "dtype": model.dtype_name}


def cmd_info(args):
    arrays, meta = load_checkpoint(args.model)
    where = f"checkpoint {args.model!r}"
    model = _model_from(arrays, meta, "numpy", where)
    stream = isinstance(model, StreamLM)
    c, vocab = model.config(), model.vocab
    embedding = f", embedding {c['embed_size']}{' tied to the output' * c['tie_weights']}" if stream else ""
    _show(f"model: {c['cell']}, hidden size {c['hidden_size']}, {c['num_layers']} "
          f"layer{'s' * (c['num_layers'] > 1)}{embedding}, dropout {c['dropout']:g}, {model.dtype_name}"
          f"{', stream model' if stream else ''}")
    shown = "".join(vocab.tokens[3:]) if vocab.level == "char" else " ".join(vocab.tokens[3:13]) + " ..."
    tokenizer = "" if vocab.tokenizer is None else f", {vocab.tokenizer} tokenizer"
    _show(f"vocabulary: {len(vocab)} tokens ({vocab.level} level{tokenizer}): <pad> <unk> <eos> {shown!r}")
    _show(f"parameters: {model.num_parameters():,}")
    state = meta.get("trainer")
    if not isinstance(state, dict):
        _show("training: no training state recorded")
        return 0
    try:
        (_print_stream_history if stream else _print_history)(state, arrays.get("train/losses"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has an invalid training state: {type(exc).__name__}: {exc}") from None
    return 0


def _print_history(state, losses):
    r, corpus, history = state["config"], state["corpus"], state["history"]
    clip = "none" if not r["clip"] else f"{r['clip_mode']} {r['clip']:g}"
    _show(f"recipe: {r['optimizer']} lr {r['lr']:g}, batch {r['batch_size']}, clip {clip}, "
          f"validation fraction {r['val_fraction']:g}, seed {r['seed']}")
    _show(f"corpus: {corpus['source']}; {corpus['sequences']} sequences, sha256 {corpus['sha256'][:12]}")
    _show(f"trained: {state['step']} steps ({state['epoch']} whole epoch{'s' * (state['epoch'] != 1)}), "
          f"{state['chars_seen']:,} characters, {state['seconds']:.1f} s")
    if losses is not None and len(losses):
        _show(f"training loss: first step {losses[0]:.4f}, last step {losses[-1]:.4f}")
    if history:
        best = min(history, key=lambda h: h["val_loss"])
        last = history[-1]
        _show(f"validation loss: last {last['val_loss']:.4f} (epoch {last['epoch']:g}), "
              f"best {best['val_loss']:.4f} (epoch {best['epoch']:g})")


def _print_stream_history(state, losses):
    r, corpus, validation, history = state["config"], state["corpus"], state["validation"], state["history"]
    clip = "none" if not r["clip"] else f"{r['clip_mode']} {r['clip']:g}"
    decay = "" if r["lr_decay"] == 1 else f" x{r['lr_decay']:g} per epoch after epoch {r['decay_after']}"
    init = "" if r["init_scale"] is None else f", init scale {r['init_scale']:g}"
    momentum = f" momentum {r['momentum']:g}" if r["optimizer"] == "sgd" and r["momentum"] else ""
    _show(f"recipe: {r['optimizer']}{momentum} lr {r['lr']:g}{decay}, batch {r['batch_size']}, bptt {r['bptt']}, "
          f"clip {clip}{init}, seed {r['seed']}")
    _show(f"corpus: {corpus['source']}; {corpus['sequences']} lines, sha256 {corpus['sha256'][:12]}")
    held_out = validation["source"] or "the end of the corpus"
    _show(f"validation: {held_out}; {validation['sequences']} lines, sha256 {validation['sha256'][:12]}")
    _show(f"trained: {state['step']} windows ({state['epoch']} whole epoch{'s' * (state['epoch'] != 1)}), "
          f"{state['tokens_seen']:,} tokens, {state['seconds']:.1f} s")
    if losses is not None and len(losses):
        _show(f"training loss: first window {losses[0]:.4f}, last window {losses[-1]:.4f} (nats per token)")
    if history:
        best = min(history, key=lambda h: h["val_loss"])
        last = history[-1]
        _show(f"validation loss: last {last['val_loss']:.4f} (perplexity {_perplexity(last['val_loss']):.2f}, "
              f"epoch {last['epoch']:g}), best {best['val_loss']:.4f} (perplexity "
              f"{_perplexity(best['val_loss']):.2f}, epoch {best['epoch']:g})")
