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

Plans
-----
Two ways of reading text, each a *plan* (:data:`PLANS`): the line plan
(:mod:`xseq.lm.plan_lines`, :class:`~xseq.lm.model.CharLM`, the default: one
line of the corpus is one sequence of characters) and the stream plan
(:mod:`xseq.lm.plan_stream`, :class:`~xseq.lm.stream_model.StreamLM`, with
``--level word`` or ``--bptt``: the corpus is one stream of words or
characters, trained in windows with the state carried). A plan says which
options select it and which it takes, reads its corpus, builds or resumes its
trainer and checks it against the machine, prints its plan line, scores a file
and describes a saved run; the commands call it and never branch on the kind of
model. ``train --resume``, ``sample``, ``evaluate`` and ``info`` take the plan
of the checkpoint's model format.

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
(:func:`~xseq.lm.outputs.check_files`); every file read must be a regular file. Ctrl-C during training
saves a checkpoint, then exits with status 130. When the reader of the
output goes away (``xseq sample m.npz | head -1``) the command stops
quietly with status 141, as a program killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys


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
from ..ops.inference import inference_mode
from ..ops.select import ops_for
from ..ops.switches import direct_enabled, fused_enabled, lanes_enabled
from .checkpoint import CheckpointError, load_checkpoint
from .corpus import CorpusError
from .files import DestinationError
from .language_model import CELLS
from .outputs import DEFAULT_OUT, check_files, check_writable, plot, pyplot
from .plans import PLANS
from .recipe import STREAM_DEFAULT_LR
from .recipe import CLIP_MODES, DEFAULT_EPOCHS, OPTIMIZERS, DivergedError
from .usage import (
    MAX_LEN,
    SAMPLES,
    SAMPLES_AFTER_TRAINING,
    TEMPERATURE,
    UsageError,
    finite_float,
    non_negative_int,
    positive_int,
    printable,
    say,
)

CLI_BACKENDS = ("auto", "numpy", "cupy", "torch")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a program killed by a closed pipe


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``xseq train: error: ... (see xseq train --help)``."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _seconds(text):
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0 (0 turns the timeout off); got {text!r}")
    return value


def _comm_timeout_option(parser):
    parser.add_argument("--comm-timeout", type=_seconds, dest="comm_timeout", default=DEFAULT_TIMEOUT_S,
                        metavar="SECONDS",
                        help="under mpiexec: end the job, on every rank that can, when one collective waits longer "
                             f"than this for the other ranks (a node cut off, a stopped rank); 0: wait forever "
                             f"(default {DEFAULT_TIMEOUT_S:g}, PyTorch's)")


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
    option("--hidden", type=positive_int, dest="hidden_size", metavar="N_A", help="hidden size n_a (default 128)")
    option("--layers", type=positive_int, dest="num_layers", metavar="N", help="stacked layers (default 1)")
    option("--dropout", type=finite_float, help="dropout between stacked layers (default 0)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_int, metavar="N",
                        help=f"epochs of the run, counted from its start when resuming (default {DEFAULT_EPOCHS})")
    length.add_argument("--steps", type=positive_int, metavar="N",
                        help="optimizer steps of the run, instead of --epochs")
    option("--batch", type=positive_int, dest="batch_size", metavar="M", help="sequences per step (default 32)")
    option("--lr", type=finite_float, help="learning rate (default: adam 0.003, sgd 0.5; stream models: "
                                            f"sgd {STREAM_DEFAULT_LR['sgd']:g})")
    option("--optimizer", choices=OPTIMIZERS, help="optimizer (default adam)")
    option("--momentum", type=finite_float, help="SGD momentum (default 0.9; stream models: 0)")
    option("--clip", type=finite_float, help="gradient clipping threshold, 0 for none (default 5)")
    option("--clip-mode", choices=CLIP_MODES, dest="clip_mode",
           help="clip the global L2 norm or every value (default norm)")
    option("--val-fraction", type=finite_float, dest="val_fraction", metavar="F",
           help="share of sequences held out for validation (default 0.1)")
    option("--backend", choices=CLI_BACKENDS, default="auto",
           help="array library; auto = cupy where a GPU can run it, else numpy (default auto)")
    option("--dtype", choices=("float32", "float64"), help="floating dtype (default float32)")
    option("--out", metavar="PATH",
           help=f"checkpoint written after every epoch and at the end (default: the --resume file, else "
                f"{DEFAULT_OUT}, which must not exist yet)")
    option("--resume", metavar="CHECKPOINT", help="continue the run saved in CHECKPOINT")
    option("--plot", metavar="PNG", help="write training and validation loss curves (needs matplotlib)")
    option("--seed", type=non_negative_int, help="seeds weights, split, shuffling, dropout (default 0)")
    _comm_timeout_option(train)
    option("--samples", type=non_negative_int, default=SAMPLES_AFTER_TRAINING, metavar="N",
           help=f"samples printed at the end (default {SAMPLES_AFTER_TRAINING})")
    for plan in PLANS:  # each plan's own options
        plan.add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser("sample", help="print samples of a trained model, one per line")
    sample.add_argument("model", metavar="MODEL", help="checkpoint written by xseq train")
    sample.add_argument("-n", type=positive_int, default=SAMPLES, metavar="N",
                        help=f"number of samples (default {SAMPLES})")
    sample.add_argument("--temperature", type=finite_float, default=TEMPERATURE, metavar="T",
                        help=f"below 1: safer, above 1: more varied (default {TEMPERATURE})")
    sample.add_argument("--top-k", type=positive_int, dest="top_k", metavar="K",
                        help="draw only among the K likeliest tokens")
    sample.add_argument("--prefix", default="", metavar="TEXT",
                        help="text every sample starts with (words for a word model; unknown ones are read as <unk>)")
    sample.add_argument("--max-len", type=positive_int, dest="max_len", default=MAX_LEN, metavar="N",
                        help=f"longest sample in tokens (characters or words), prefix included (default {MAX_LEN})")
    sample.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    sample.add_argument("--backend", choices=CLI_BACKENDS, default="auto", help="array library (default auto)")
    sample.set_defaults(func=cmd_sample)

    evaluate_ = commands.add_parser("evaluate", help="cross-entropy and perplexity of a model on a corpus")
    evaluate_.add_argument("model", metavar="MODEL", help="checkpoint written by xseq train")
    evaluate_.add_argument("corpus", metavar="CORPUS", help="UTF-8 text file, one sequence per line")
    evaluate_.add_argument("--backend", choices=CLI_BACKENDS, default="auto", help="array library (default auto)")
    for plan in PLANS:
        plan.add_evaluate_arguments(evaluate_)
    _comm_timeout_option(evaluate_)
    evaluate_.set_defaults(func=cmd_evaluate)

    info = commands.add_parser("info", help="configuration, vocabulary, size and training history of a model")
    info.add_argument("model", metavar="MODEL", help="checkpoint written by xseq train")
    info.set_defaults(func=cmd_info)
    for plan in PLANS:  # a plan's own commands (translate)
        plan.add_commands(commands)
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
        say(f"data-parallel over {args.comm.size} processes ({args.comm.description})")
    return xp


# ---------------------------------------------------------------------- helpers


# ---------------------------------------------------------------------- train


def cmd_train(args):
    destination = check_files(args)
    xp = _backend_for_ranks(args)
    comm = args.comm
    resumed = None if args.resume is None else load_checkpoint(args.resume)
    plan = _train_plan(args, resumed)
    plt = None
    if comm.rank == 0:  # rank 0 alone writes files
        check_writable(args.out, "--out")
        if args.plot is not None:
            plt = pyplot()
            check_writable(args.plot, "--plot")
    trainer = plan.trainer(args, xp, resumed)
    plan.print_plan(trainer)
    try:
        completed = trainer.run(out=destination, progress=True, log=say, handle_sigint=True)
    except BrokenPipeError:  # stdout, not --out: main stops quietly
        raise
    except DestinationError as exc:
        raise UsageError(f"cannot write --out {args.out!r}: it {exc.reason}") from None
    except OSError as exc:
        raise UsageError(f"cannot write --out {args.out!r}: {exc}") from None
    if not completed:
        val_corpus = getattr(args, "val_corpus", None)
        validation = "" if val_corpus is None else f" --val-corpus {shlex.quote(val_corpus)}"
        if comm.rank == 0:
            print(f"xseq train: interrupted at step {trainer.step}; checkpoint saved to {args.out}; "
                  f"continue with: xseq train {'' if args.corpus is None else shlex.quote(args.corpus) + ' '}"
                  f"--resume {shlex.quote(args.out)}{validation}", file=sys.stderr)
        return EXIT_INTERRUPTED

    if comm.rank != 0:
        return 0
    plan.after_training(trainer, args)
    unit = plan.unit(trainer.model)
    if plt is not None:
        plot(plt, trainer, args.plot, unit)
        print(f"loss curves written to {args.plot}")
    print(f"model saved to {args.out}")
    return 0


def _train_plan(args, resumed):
    """The plan of ``xseq train``: the resumed checkpoint's, else the first that the options select; UsageError
    for an option of another plan."""
    if resumed is not None:
        plan = _plan_of(resumed[1])
        why = f"the resumed checkpoint {args.resume!r} holds a {plan.NAME} model"
    else:
        plan = next(p for p in PLANS if p.selected_by(args))
        why = plan.WHY_NEW
    foreign = {key: (flag, other.DESCRIPTION) for other in PLANS if other is not plan
               for key, flag in other.OPTIONS.items()}
    plan.check_options(args, why, foreign)
    claimed = next((p for p in PLANS if p.SELECTED_BY and p.selected_by(args)), plan)
    if claimed is not plan:
        raise UsageError(f"{claimed.SELECTED_BY} trains a {claimed.NAME} model; {why}")
    return plan


def _plan_of(meta):
    """The plan a checkpoint belongs to (the line plan when none owns it: its model says what is wrong with the
    file)."""
    return next((plan for plan in PLANS if plan.owns(meta)), PLANS[-1])


# ---------------------------------------------------------------------- sample, evaluate, info


def _model(args, meta, arrays, backend):
    plan = _plan_of(meta)
    return plan, plan.MODEL.from_checkpoint(arrays, meta, backend=backend, where=f"checkpoint {str(args.model)!r}")


def cmd_sample(args):
    arrays, meta = load_checkpoint(args.model)
    plan, model = _model(args, meta, arrays, backend_named(args.backend))
    with inference_mode():  # nothing kept for a backward pass
        plan.sample(args, model)
    return 0


def cmd_evaluate(args):
    """Score a corpus as the model's plan reads text (under a launcher: a share on every rank, or a stream on
    rank 0 alone)."""
    backend = _backend_for_ranks(args)
    arrays, meta = load_checkpoint(args.model)
    plan, model = _model(args, meta, arrays, backend)
    with inference_mode():
        lines = plan.evaluate(args, model)
    for line in lines or ():
        print(line)
    return 0


def cmd_info(args):
    arrays, meta = load_checkpoint(args.model)
    plan, model = _model(args, meta, arrays, "numpy")
    try:
        plan.info(model, meta, arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {args.model!r} has an invalid training state: {type(exc).__name__}: "
                              f"{exc}") from None
    return 0
