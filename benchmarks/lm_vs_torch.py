"""Language model: xseq against PyTorch (CPU), same model, same recipe, same data.

What is compared
----------------
The default ``xseq train`` run on the built-in corpus (LSTM, hidden 128,
one layer, Adam lr 0.003, batch 32, global-norm clipping at 5, 15 epochs,
float32; ``--epochs``, ``--hidden`` and ``--cell`` change it) trained twice:

* ``xseq``: :class:`xseq.train.Trainer` on the NumPy backend, exactly what
  ``xseq train`` runs;
* ``torch``: the same :class:`~xseq.train.Trainer` loop (same split, same
  batch order, same per-epoch validation, same bookkeeping) with its
  :meth:`~xseq.train.Trainer.learn` and ``validation_loss`` replaced by a
  ``torch.nn.LSTM`` (or ``GRU``/``RNN``) + ``torch.nn.Linear`` model that
  starts from xseq's initial weights, trained with ``torch.optim.Adam``
  (same hyperparameters), ``torch.nn.utils.clip_grad_norm_`` and
  ``F.cross_entropy`` over the valid positions; autograd for the backward
  pass. Batches are built by the same NumPy code for both and handed to torch
  with ``torch.from_numpy``.

Both start from identical weights and see identical batches, so their first
training losses agree to float32 rounding; the script checks it.

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
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import xseq  # noqa: E402
from xseq.train import Trainer, TrainConfig, split_corpus  # noqa: E402

LOSS_TARGET = 0.03  # xseq's validation loss at most 3% above torch's
TIME_TARGET = 1.5  # xseq's wall time at most 1.5x torch's


def recipe(args):
    return TrainConfig(cell=args.cell, hidden_size=args.hidden, epochs=args.epochs)


# ---------------------------------------------------------------------- workers


def make_torch_trainer(lines, config):
    """A Trainer whose model math is PyTorch's, starting from the xseq model's initial weights."""
    import torch
    import torch.nn.functional as F

    class TorchTrainer(Trainer):
        def __init__(self):
            super().__init__(lines, config, backend="numpy")
            xseq_model = self.model
            self.rnn = xseq_model.layer.to_torch()
            weights = xseq_model.state_dict()
            self.linear = torch.nn.Linear(xseq_model.hidden_size, xseq_model.vocab_size)
            with torch.no_grad():
                self.linear.weight.copy_(torch.from_numpy(weights["Wy"]))
                self.linear.bias.copy_(torch.from_numpy(weights["by"][:, 0]))
            self.torch_params = list(self.rnn.parameters()) + list(self.linear.parameters())
            self.torch_optimizer = torch.optim.Adam(self.torch_params, lr=config.lr)

        def _forward(self, sequences):
            X, targets, mask = self.model.batch(sequences)  # NumPy: (V, m, T_x), (m, T_x), (m, T_x)
            x = torch.from_numpy(np.ascontiguousarray(np.transpose(X, (2, 1, 0))))  # (T_x, m, V)
            logits = self.linear(self.rnn(x)[0])  # (T_x, m, V)
            valid = torch.from_numpy(np.ascontiguousarray(mask.T))
            return logits[valid], torch.from_numpy(np.ascontiguousarray(targets.T))[valid]

        def learn(self, sequences):
            logits, targets = self._forward(sequences)
            loss = F.cross_entropy(logits, targets)
            self.torch_optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.torch_params, config.clip)
            self.torch_optimizer.step()
            return loss.item()

        def validation_loss(self):
            order = sorted(self.val_ids, key=len)
            total = count = 0
            with torch.no_grad():
                for start in range(0, len(order), 256):
                    logits, targets = self._forward(order[start:start + 256])
                    total += F.cross_entropy(logits, targets, reduction="sum").item()
                    count += targets.numel()
            return total / count

    return TorchTrainer()


def worker(side, args):
    """Train one side; print a JSON line with its results."""
    lines = xseq.builtin_corpus()
    config = recipe(args)
    trainer = make_torch_trainer(lines, config) if side == "torch" else Trainer(lines, config, backend="numpy")
    started = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - started
    print(json.dumps({"side": side, "seconds": seconds, "val_loss": trainer.history[-1]["val_loss"],
                      "val_history": [h["val_loss"] for h in trainer.history], "first_loss": trainer.losses[0],
                      "steps": trainer.step, "chars": trainer.chars_seen}))


# ---------------------------------------------------------------------- parent


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
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--epochs", str(args.epochs),
               "--hidden", str(args.hidden), "--cell", args.cell]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the {side} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine():
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), xseq {xseq.__version__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (median time)")
    parser.add_argument("--worker", choices=("xseq", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)
        return 0

    config = recipe(args)
    print(f"machine: {machine()}")
    print(f"recipe: {config.cell}, hidden {config.hidden_size}, 1 layer, Adam lr {config.lr}, "
          f"batch {config.batch_size}, clip norm {config.clip}, {config.epochs} epochs, {config.dtype}, "
          f"built-in corpus; {args.repeats} run(s) each")
    runs = {"xseq": [], "torch": []}
    for round_ in range(args.repeats):
        for side in (("xseq", "torch") if round_ % 2 == 0 else ("torch", "xseq")):
            result = run_worker(side, args)
            runs[side].append(result)
            print(f"  round {round_ + 1} {side:5s}: {result['seconds']:6.1f} s  val {result['val_loss']:.4f}",
                  flush=True)
    x, t = runs["xseq"][0], runs["torch"][0]
    x_time = statistics.median(r["seconds"] for r in runs["xseq"])
    t_time = statistics.median(r["seconds"] for r in runs["torch"])
    baseline = unigram_baseline(config)
    loss_gap = x["val_loss"] / t["val_loss"] - 1
    ratio = x_time / t_time
    print(f"first-step loss (same weights, same batch): xseq {x['first_loss']:.6f}, torch {t['first_loss']:.6f}")
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
