"""Language model: xseq against PyTorch (CPU), same model, same recipe, same data.

What is compared (``harness/contenders/lm.py``)
-----------------------------------------------
The default ``xseq train`` run on the built-in corpus (LSTM, hidden 128,
one layer, Adam lr 0.003, batch 32, global-norm clipping at 5, 15 epochs,
float32; ``--epochs``, ``--hidden`` and ``--cell`` change it) trained twice:

* ``xseq``: :class:`xseq.lm.train.Trainer` on the NumPy backend, exactly what
  ``xseq train`` runs;
* ``torch``: the same :class:`~xseq.lm.train.Trainer` loop (same split, same
  batch order, same per-epoch validation, same bookkeeping) with its model
  math replaced by ``torch.nn.LSTM`` (or ``GRU``/``RNN``) + ``torch.nn.Linear``
  starting from xseq's initial weights, ``torch.optim.Adam``,
  ``clip_grad_norm_`` and ``F.cross_entropy``; autograd for the backward pass.

Check
-----
Before timing, the parent runs the first training step of xseq, of torch and
of xseq's array-API reference (``XSEQ_FUSED=0``), from the same weights on the
same batch: each loss must be within ``FIRST_LOSS_RTOL`` (1e-5, relative) of
the reference's, and every gradient (every layer's weights and biases, the
output layer's) must agree with the reference's (``harness/checks.py``). Then
every timed run's own first-step loss must be within the same tolerance of the
reference's before its time is printed. A difference stops the script with
exit status 1.

Reported: each side's final validation loss (mean cross-entropy per
character, ``<eos>`` included, nats), its wall time (the whole run: every
training step plus the per-epoch validations; median over ``--repeats``
runs), and a unigram baseline: the cross-entropy on the validation split of
the character distribution of the training split (add-one smoothed over the
tokens a model can emit). Targets (issue 5): xseq's validation loss within
3% of torch's, and its time at most 1.5 times torch's.

Every run is a fresh process (``--worker xseq|torch``); rounds alternate
which side goes first. Thread counts are the libraries' defaults (NumPy's
OpenBLAS and torch both use every core).

Usage::

    python benchmarks/lm_vs_torch.py                # ~2 min on 2 cores
    python benchmarks/lm_vs_torch.py --epochs 2 --repeats 1   # quick look
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# benchmarks/ is on sys.path as this script's directory, wherever it is run from
from harness import method, report  # noqa: E402
from harness.contenders import lm  # noqa: E402

import xseq  # noqa: E402
from xseq.lm.train import TrainConfig, Trainer, split_corpus  # noqa: E402

LOSS_TARGET = 0.03  # xseq's validation loss at most 3% above torch's
TIME_TARGET = 1.5  # xseq's wall time at most 1.5x torch's
SCRIPT = Path(__file__).resolve()


def recipe(args):
    return TrainConfig(cell=args.cell, hidden_size=args.hidden, epochs=args.epochs)


def worker(side, args):
    """Train one side; print a JSON line with its results."""
    lines = xseq.builtin_corpus()
    config = recipe(args)
    trainer = lm.make_torch_trainer(lines, config) if side == "torch" else Trainer(lines, config, backend="numpy")
    started = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - started
    print(json.dumps({"side": side, "seconds": seconds, "val_loss": trainer.history[-1]["val_loss"],
                      "val_history": [h["val_loss"] for h in trainer.history], "first_loss": trainer.losses[0],
                      "steps": trainer.step, "chars": trainer.chars_seen}))


def unigram_baseline(config):
    """Cross-entropy (nats per token) on the validation split of the training split's smoothed unigram model."""
    lines = xseq.builtin_corpus()
    vocab = xseq.Vocabulary.from_text(lines)
    train, val = split_corpus(lines, config.val_fraction, config.seed)
    counts = np.ones(len(vocab))  # add-one smoothing...
    counts[[vocab.pad_id, vocab.unk_id]] = 0  # ...over the tokens a model can emit
    for line in train:
        np.add.at(counts, vocab.encode(line, add_eos=True), 1)
    log_p = np.log(counts / counts.sum(), where=counts > 0, out=np.full(len(vocab), -np.inf))
    tokens = [t for line in val for t in vocab.encode(line, add_eos=True)]
    return float(-log_p[tokens].mean())


def run_worker(side, args):
    argv = ["--worker", side, "--epochs", str(args.epochs), "--hidden", str(args.hidden), "--cell", args.cell]
    try:
        return method.run_json(SCRIPT, argv)
    except method.WorkerFailed as exc:
        sys.exit(f"the {side} worker failed: {exc}")


def machine():
    import torch

    return (f"{report.cpu_model()}, {report.usable_cores()} cores; Python {platform.python_version()}, "
            f"NumPy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"xseq {xseq.__version__}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (median time)")
    parser.add_argument("--worker", choices=("xseq", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    if args.worker:
        worker(args.worker, args)
        return 0

    config = recipe(args)
    print(f"machine: {machine()}")
    print(f"recipe: {config.cell}, hidden {config.hidden_size}, 1 layer, Adam lr {config.lr}, "
          f"batch {config.batch_size}, clip norm {config.clip}, {config.epochs} epochs, {config.dtype}, "
          f"built-in corpus; {args.repeats} run(s) each")
    check, first = lm.check_first_step(xseq.builtin_corpus(), config)
    check.exit_if_failed()
    reference_loss = first["reference"]

    runs = {"xseq": [], "torch": []}
    for round_ in range(args.repeats):
        for side in method.rotated(("xseq", "torch"), round_):
            result = run_worker(side, args)
            if not lm.losses_agree(result["first_loss"], reference_loss):
                sys.exit(f"check failed: the {side} run's first-step loss {result['first_loss']:.6f} differs from "
                         f"the reference's {reference_loss:.6f} by more than {lm.FIRST_LOSS_RTOL:.0e} of it: the two "
                         "sides did not start from the same model on the same batch")
            runs[side].append(result)
            print(f"  round {round_ + 1} {side:5s}: {result['seconds']:6.1f} s  val {result['val_loss']:.4f}",
                  flush=True)
    x, t = runs["xseq"][0], runs["torch"][0]
    x_time = statistics.median(r["seconds"] for r in runs["xseq"])
    t_time = statistics.median(r["seconds"] for r in runs["torch"])
    baseline = unigram_baseline(config)
    loss_gap = x["val_loss"] / t["val_loss"] - 1
    ratio = x_time / t_time
    print(f"first-step loss (same weights, same batch): xseq {x['first_loss']:.6f}, torch {t['first_loss']:.6f}; "
          f"every run within {lm.FIRST_LOSS_RTOL:.0e} of the reference's {reference_loss:.6f}")
    print(f"{'':22s}{'xseq':>10s}{'torch':>10s}")
    print(f"{'validation loss':22s}{x['val_loss']:10.4f}{t['val_loss']:10.4f}   (nats per character)")
    print(f"{'best validation loss':22s}{min(x['val_history']):10.4f}{min(t['val_history']):10.4f}")
    print(f"{'wall time (s)':22s}{x_time:10.1f}{t_time:10.1f}   (median of {args.repeats})")
    print(f"{'characters per second':22s}{x['chars'] / x_time:10,.0f}{t['chars'] / t_time:10,.0f}")
    print(f"unigram baseline: {baseline:.4f} nats per character (perplexity {math.exp(baseline):.2f})")
    loss_ok, time_ok = loss_gap <= LOSS_TARGET, ratio <= TIME_TARGET
    print(f"target: validation loss within {LOSS_TARGET:.0%} of torch's: {loss_gap:+.2%} "
          f"-> {'met' if loss_ok else 'NOT met'}")
    print(f"target: time within {TIME_TARGET}x torch's: {ratio:.2f}x -> {'met' if time_ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
