"""Penn Treebank: Zaremba et al.'s small LSTM language model, against the paper and against PyTorch.

The recipe (``harness/contenders/ptb.py``)
------------------------------------------
Zaremba, Sutskever and Vinyals (2014), "small": word embedding 200, a 2 x 200
LSTM, a 10,000-way softmax; windows of 20 steps (bptt) over 20 contiguous
columns, the state carried from window to window; the cross-entropy summed over
a window's steps and averaged over the columns; plain SGD at lr 1.0, halved
every epoch after the fourth; gradients clipped to global norm 5; every weight
uniform in +-0.1; no dropout; 13 epochs; float32. Every line of the corpus,
blank ones included, is followed by ``<eos>``. The data is Mikolov's PTB in
``--data`` (default ``../shared/data/ptb`` next to the repository; the
script says whether the files have the md5 sums of the published data).

Modes
-----
* ``--full``: xseq alone, the whole recipe (``--epochs``, default 13):
  train and validation perplexity after every epoch (validation as the
  TensorFlow tutorial runs it: the training batch and windows, from a zero
  state), and at the end the test perplexity of the test file read as one
  stream (the tutorial's batch 1, the state carried). Target: test perplexity
  at most 118 (the published 115.91). ``--checkpoint PATH`` saves after every
  epoch and, when PATH exists, resumes from it.
* default, the comparison: the same model trained one epoch by xseq
  (:class:`xseq.lm.stream_train.StreamTrainer`, NumPy) and by PyTorch (the same
  trainer loop, windows and schedule with ``nn.Embedding``/``nn.LSTM``/``nn.Linear``,
  ``F.cross_entropy``, ``clip_grads_with_norm_`` and ``torch.optim.SGD``), from the
  same initial weights, each in a fresh process of its own; their validation
  perplexities after the epoch and their times for the epoch. Targets: the
  validation perplexities within 1% of each other, and xseq's time per epoch
  at most 1.0x torch's.

Check
-----
Before anything is timed, a check process trains the first three windows of
xseq, of torch and of xseq's array-API reference (``XSEQ_FUSED=0``) from the
same weights at the timed size: every window's loss within 1e-5 (relative) of
the reference's and every gradient (embedding, every LSTM weight and bias,
``Wy``, ``by``) within ``checks.SAME_FORMULAS`` (xseq) or
``checks.OTHER_IMPLEMENTATION`` (torch) of the reference's. Each window starts
from the state the one before carried and the weights its SGD step left; at
the paper's size the second window's update is clipped (gradient norm 6.5 >
5), so the clipping is covered too (the check prints the norms). A difference
stops the script with exit status 1. Each timed worker's own first-window
loss must then agree with the reference's in the same way before its numbers
are printed.

torch's clipping uses the global norm computed as xseq computes it: the norm
of ``clip_grad_norm_`` is 8.8e-4 off for the output layer's gradient on the
CPU (``harness/contenders/ptb.py`` says more). Even so the two trainings part
after a few dozen windows: early training at lr 1 amplifies float32 rounding
(xseq against its own array-API path parts as fast), so the perplexities after
an epoch agree as two runs of one model with different roundings do, not
digit for digit.

Method
------
Each worker (``--worker xseq|torch``) is a new interpreter that imports one
library's model, builds its trainer, and times its pass over the epoch's
windows with ``time.perf_counter`` (the validation pass is timed apart);
``--rounds`` runs both again, the other one first (one round by default: an
epoch takes a minute or more, long enough to average out the machine's
drift over seconds, though not a colleague's process; ``--wait-idle``
waits for idle CPUs before each worker). Thread counts are the libraries'
defaults (NumPy's OpenBLAS and torch both use every core); each worker
reports its own. xseq workers start without
``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` (``harness/method.py``).

Usage::

    python benchmarks/ptb.py                                   # check + one epoch each
    python benchmarks/ptb.py --windows 200                     # quick look: 200 windows each
    python benchmarks/ptb.py --full --checkpoint ptb_small.npz # 13 epochs of xseq, resumable
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# benchmarks/ is on sys.path as this script's directory, wherever it is run from
from harness import method, report  # noqa: E402
from harness.contenders import ptb  # noqa: E402

SCRIPT = Path(__file__).resolve()
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ptb"
TEST_TARGET = 118.0  # test perplexity after the small recipe's 13 epochs (published: 115.91)
PERPLEXITY_TARGET = 0.01  # xseq's validation perplexity within 1% of torch's after one epoch
TIME_TARGET = 1.0  # xseq's time per epoch at most torch's
CONTENDERS = ("xseq", "torch")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="directory with ptb.train.txt, ptb.valid.txt, ptb.test.txt (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="train xseq alone for --epochs epochs and report "
                        "train/valid/test perplexity against the paper")
    parser.add_argument("--epochs", type=int, default=13, help="--full: epochs (default 13, the paper's)")
    parser.add_argument("--checkpoint", type=Path, help="--full: save after every epoch; resume when it exists")
    parser.add_argument("--rounds", type=int, default=1, help="comparison: epochs of each contender, alternating "
                        "which goes first (default 1)")
    parser.add_argument("--windows", type=int, help="comparison: train only the first WINDOWS windows of the "
                        "epoch (a quick look; default: the whole epoch)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="comparison: before each worker, wait up to SECONDS for idle CPUs")
    parser.add_argument("--hidden", type=int, default=200, help="LSTM units and embedding size (paper: 200)")
    parser.add_argument("--layers", type=int, default=2, help="LSTM layers (paper: 2)")
    parser.add_argument("--batch", type=int, default=20, help="columns (paper: 20)")
    parser.add_argument("--bptt", type=int, default=20, help="steps per window (paper: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("epochs", "rounds", "windows", "hidden", "layers", "batch", "bptt"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1; got {value}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0; got {args.seed}")
    if args.wait_idle < 0:
        parser.error(f"--wait-idle must be >= 0; got {args.wait_idle}")
    return args


def recipe(args, epochs=1):
    return ptb.small_recipe(epochs=epochs, hidden_size=args.hidden, num_layers=args.layers, batch_size=args.batch,
                            bptt=args.bptt, seed=args.seed)


def is_papers_recipe(args):
    return (args.hidden, args.layers, args.batch, args.bptt) == (200, 2, 20, 20)


def size_argv(args):
    """The command-line options that fix the data and the model, for the check and the workers."""
    return ["--data", str(args.data), "--hidden", str(args.hidden), "--layers", str(args.layers),
            "--batch", str(args.batch), "--bptt", str(args.bptt), "--seed", str(args.seed),
            *(["--windows", str(args.windows)] if args.windows else [])]


def describe(config, trainer=None):
    """The recipe in one line (with the trainer: the vocabulary and the stream's length too)."""
    line = (f"recipe: {config.num_layers} x {config.hidden_size} LSTM, embedding {config.embed_size}, bptt "
            f"{config.bptt}, batch {config.batch_size}, SGD lr {config.lr:g} x{config.lr_decay:g} per epoch after "
            f"epoch {config.decay_after}, clip {config.clip:g} (global norm), init +-{config.init_scale:g}, "
            f"dropout {config.dropout:g}, {config.dtype}, seed {config.seed}")
    if trainer is not None:
        V = trainer.model.vocab_size
        line += (f"\nstream: V = {V:,} ({V - 1:,} output classes), {trainer.train_data.size:,} training tokens in "
                 f"{trainer.train_data.shape[0]} columns ({trainer.dropped} dropped), {trainer.steps_per_epoch:,} "
                 f"windows per epoch, {trainer.val_data.size:,} validation tokens")
    return line


# ---------------------------------------------------------------- the processes the comparison starts


def run_worker(args, lines):
    """Train one contender for one epoch (or ``--windows``); print a JSON line with its results."""
    trainer = ptb.make_trainer(args.worker, lines, recipe(args))
    windows = min(args.windows or trainer.steps_per_epoch, trainer.steps_per_epoch)
    started = time.perf_counter()
    for _ in range(windows):
        trainer.train_step()
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    val_loss = trainer.validation_loss()
    print(json.dumps({"contender": args.worker, "seconds": seconds, "val_seconds": time.perf_counter() - started,
                      "windows": windows, "tokens": trainer.chars_seen, "first_loss": trainer.losses[0],
                      "train_loss": sum(trainer.losses) / len(trainer.losses), "val_loss": val_loss,
                      "threads": ptb.threads(args.worker)}))
    return 0


def run_check(args, lines):
    """The check process: the libraries, then the first windows of every contender against the reference."""
    info = report.library_info()
    print(f"NumPy {info['numpy']}; BLAS: {info['blas']}")
    print(f"torch {info['torch']}: {info['torch_threads']} threads; {info['torch_blas']}")
    print(f"xseq's NumPy steps: {info['xseq_steps']}")
    config = recipe(args)
    print(describe(config, ptb.make_xseq_trainer(lines, config)))
    result, losses = ptb.check(lines, config)
    result.exit_if_failed()
    print(json.dumps({"reference": losses["reference"]}))
    return 0


def start(args, argv, strip_openblas=False):
    """Run this script with ``argv`` in a new interpreter; its output but the last line echoed, that line's JSON."""
    env = method.environment(strip_openblas=strip_openblas)
    done = subprocess.run([sys.executable, str(SCRIPT), *argv, *size_argv(args)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1] if done.returncode == 0 else lines:
        print(f"  {line}", flush=True)
    if done.returncode != 0:
        print(done.stderr.rstrip(), file=sys.stderr)
        return None
    return json.loads(lines[-1])


# ---------------------------------------------------------------- the comparison


def compare(args, mikolov):
    print("Machine")
    for line in report.machine_lines():
        print(f"  {line}")
    idle = method.cpu_idle(1.0)
    if idle is not None and idle < 0.85:
        print(f"warning: the CPUs were only {idle:.0%} idle before the run: other processes are busy and the "
              "times will be off (each library uses every core); see --wait-idle")
    print(f"data: {args.data} ({'Mikolov' if mikolov else 'NOT Mikolov'}'s PTB by md5)")
    print("check: the first windows of xseq and torch against xseq's array-API reference, at the timed size",
          flush=True)
    checked = start(args, ["--check"])
    if checked is None:
        print("the check failed (see above): nothing is timed", file=sys.stderr)
        return 1
    reference = checked["reference"][0]

    what = f"the first {args.windows} windows of an epoch" if args.windows else "one epoch"
    print(f"timing: {args.rounds} round(s) of {what} of each contender, each in a new interpreter, the order "
          "alternating from round to round", flush=True)
    waiter = method.IdleWaiter(args.wait_idle) if args.wait_idle > 0 else None
    runs = {contender: [] for contender in CONTENDERS}
    ratios = []
    for round_ in range(args.rounds):
        for contender in method.rotated(CONTENDERS, round_):
            if waiter is not None:
                waiter.wait()
            result = start(args, ["--worker", contender], strip_openblas=contender == "xseq")
            if result is None:
                print(f"the {contender} worker failed (see above)", file=sys.stderr)
                return 1
            if not ptb.losses_agree(result["first_loss"], reference):
                print(f"check failed: the {contender} run's first-window loss {result['first_loss']:.6f} differs "
                      f"from the reference's {reference:.6f} by more than {ptb.FIRST_LOSS_RTOL:.0e} of it: it did "
                      "not start from the checked model on the checked window", file=sys.stderr)
                return 1
            runs[contender].append(result)
            print(f"  round {round_ + 1} {contender:5s}: {result['windows']:,} windows in {result['seconds']:.1f} s, "
                  f"validation {result['val_seconds']:.1f} s, valid perplexity "
                  f"{ptb.perplexity(result['val_loss']):.2f} ({result['threads']})", flush=True)
        ratios.append(runs["xseq"][-1]["seconds"] / runs["torch"][-1]["seconds"])
    if waiter is not None:
        print(f"waited {waiter.waited:.0f} s in all for idle CPUs; {waiter.busy} of {waiter.turns} workers started "
              "on a busy machine")
    print_comparison(args, runs, ratios)
    return 0


def print_comparison(args, runs, ratios):
    x, t = runs["xseq"][0], runs["torch"][0]  # same weights, same windows: the same numbers every round
    x_ppl, t_ppl = ptb.perplexity(x["val_loss"]), ptb.perplexity(t["val_loss"])
    x_time = statistics.median(r["seconds"] for r in runs["xseq"])
    t_time = statistics.median(r["seconds"] for r in runs["torch"])
    rows = [
        ["train perplexity (mean over the windows)", f"{ptb.perplexity(x['train_loss']):.2f}",
         f"{ptb.perplexity(t['train_loss']):.2f}"],
        ["valid perplexity after them", f"{x_ppl:.2f}", f"{t_ppl:.2f}"],
        [f"training time, {x['windows']:,} windows (s)", f"{x_time:.1f}", f"{t_time:.1f}"],
        ["tokens per second", f"{x['tokens'] / x_time:,.0f}", f"{t['tokens'] / t_time:,.0f}"],
        ["validation time (s)", f"{statistics.median(r['val_seconds'] for r in runs['xseq']):.1f}",
         f"{statistics.median(r['val_seconds'] for r in runs['torch']):.1f}"],
    ]
    print()
    for line in report.markdown_table(["", "xseq", "torch"], rows, right_from=1):
        print(line)
    print()
    gap = x_ppl / t_ppl - 1
    ratio = statistics.median(ratios)
    spread = f" [{min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} rounds]" if len(ratios) > 1 else ""
    ppl_ok, time_ok = abs(gap) <= PERPLEXITY_TARGET, ratio <= TIME_TARGET
    print(f"target: valid perplexity within {PERPLEXITY_TARGET:.0%} of torch's: {gap:+.3%} -> "
          f"{'met' if ppl_ok else 'NOT met'}")
    print(f"target: time per epoch at most {TIME_TARGET:.1f}x torch's: {ratio:.2f}x{spread} -> "
          f"{'met' if time_ok else 'NOT met'}")
    if args.windows:
        print(f"note: --windows {args.windows}: a part of the epoch, so these are not the targets' numbers")
    else:
        print(report.targets_verdict(ppl_ok and time_ok, checked=True))


# ---------------------------------------------------------------- the full run


def full(args, lines, mikolov):
    from xseq.lm.checkpoint import CheckpointError
    from xseq.lm.stream_train import StreamTrainer, evaluate_stream, stream_ids

    config = recipe(args, epochs=args.epochs)
    print("Machine")
    for line in report.machine_lines():
        print(f"  {line}")
    print(f"data: {args.data} ({'Mikolov' if mikolov else 'NOT Mikolov'}'s PTB by md5)")
    if args.checkpoint is not None and args.checkpoint.exists():
        try:
            trainer = StreamTrainer.resume(args.checkpoint, lines["train"], val_lines=lines["valid"],
                                           backend="numpy", epochs=args.epochs)
        except CheckpointError as exc:
            print(f"ptb.py: error: {exc}", file=sys.stderr)
            return 2
        if trainer.config != config:
            print(f"ptb.py: error: {args.checkpoint} holds a run of another recipe "
                  f"({describe(trainer.config).removeprefix('recipe: ')}); pass the same options or another "
                  "--checkpoint", file=sys.stderr)
            return 2
        print(f"resumed from {args.checkpoint} after epoch {trainer.epoch} (step {trainer.step})")
    else:
        trainer = ptb.make_xseq_trainer(lines, config)
    print(describe(config, trainer))
    print(f"threads: {ptb.threads('xseq')}; xseq's NumPy steps: {report.xseq_steps()}", flush=True)
    if not trainer.run(out=args.checkpoint, log=lambda line: print(line, flush=True), handle_sigint=True):
        saved = (f"saved to {args.checkpoint}: the same command resumes" if args.checkpoint
                 else "not saved (no --checkpoint)")
        print(f"stopped at step {trainer.step} (epoch {trainer.epoch}, window {trainer.batch_in_epoch}); {saved}")
        return 1

    started = time.perf_counter()
    test_ids = stream_ids(trainer.model.vocab, lines["test"])
    test_loss = evaluate_stream(trainer.model, test_ids[None, :])
    last = trainer.history[-1]
    print(f"test: {len(test_ids):,} tokens as one stream, the state carried, in {time.perf_counter() - started:.1f} s")
    print(f"training time: {trainer.seconds:.0f} s for {trainer.epoch} epochs "
          f"({trainer.seconds / max(trainer.epoch, 1):.0f} s per epoch, validation excluded)")
    print()
    rows = [["Zaremba et al. 2014 (small)", *(f"{ptb.PAPER_SMALL[s]:.2f}" for s in ptb.SPLITS)],
            [f"xseq, {trainer.epoch} epochs", f"{ptb.perplexity(last['train_loss']):.2f}",
             f"{ptb.perplexity(last['val_loss']):.2f}", f"{ptb.perplexity(test_loss):.2f}"]]
    for line in report.markdown_table(["perplexity", "train", "valid", "test"], rows, right_from=1):
        print(line)
    print()
    if not (mikolov and is_papers_recipe(args) and args.epochs == 13):
        print("note: not the paper's data, model or 13 epochs: the target is not judged")
    else:
        met = ptb.perplexity(test_loss) <= TEST_TARGET
        print(f"target: test perplexity at most {TEST_TARGET:g}: {ptb.perplexity(test_loss):.2f} -> "
              f"{'met' if met else 'NOT met'}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        lines, mikolov = ptb.read_ptb(args.data)
    except ptb.DataError as exc:
        print(f"ptb.py: error: {exc}", file=sys.stderr)
        return 2
    if args.worker:
        return run_worker(args, lines)
    if args.check:
        return run_check(args, lines)
    if args.full:
        return full(args, lines, mikolov)
    return compare(args, mikolov)


if __name__ == "__main__":
    sys.exit(main())
