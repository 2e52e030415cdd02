"""Sequence to sequence with attention: xseq against PyTorch (CPU), same model, same weights, same batches.

What is compared
----------------
One epoch of training on the built-in dates (``xseq.seq2seq.dates.date_pairs``, 10,000 pairs by default, in one
shuffled order cut into batches of ``--batch``), float32, Adam (lr 0.01) with global-norm clipping at 5, the
default :class:`xseq.seq2seq.model.Seq2Seq` (bidirectional LSTM encoder, 32 units a direction; attention of 10
units; LSTM decoder of 64 fed the context and the previous target token; characters embedded in 16):

* ``xseq``: ``Seq2Seq.loss_and_backward``, ``xseq.clip_by_global_norm``, ``xseq.Adam`` on the NumPy backend;
* ``torch``: the same model written in PyTorch (``nn.Embedding``; ``nn.LSTM(bidirectional=True)`` over
  ``pack_padded_sequence(..., enforce_sorted=False)``; the attention formula; an ``nn.LSTMCell`` loop;
  ``nn.Linear``; ``F.cross_entropy`` over the target tokens), from xseq's initial weights, autograd for the
  backward pass, ``clip_grad_norm_`` and ``torch.optim.Adam``.

Both get the same NumPy batches; everything a step derives from them (the decoder's previous tokens, the labels,
the mask) is computed inside the timed step by each side.

Check
-----
Before timing, the parent runs the first training step of both from the same weights on the same batch, in
float64 and in float32: the losses and every gradient are compared (float64: at most 1e-9 of the largest value;
float32: the harness's ``OTHER_IMPLEMENTATION``, 1e-4). Every timed run reports its first five losses; they must
agree with the other side's within 1e-4 (relative), or the script stops with exit status 1.

Timing: each side trains in a fresh process (``--worker xseq|torch``): two warm-up steps, the initial weights and
a new optimiser restored, then the epoch, timed whole. Rounds alternate which side goes first; the medians of
``--repeats`` rounds and their ratio are printed (the target's), and the median of each round's own ratio. Thread counts are the libraries' defaults (NumPy's OpenBLAS and
torch both use every core); the xseq worker runs without the OpenBLAS overrides of this workplace (as
``bench_cpu.py``'s NumPy workers: ``harness.method.environment(strip_openblas=True)``). The load average is printed
before and after: other work on the machine slows small products by large factors.

Target (issue 23): xseq's time per epoch at most 0.9x torch's.

Usage::

    python benchmarks/bench_seq2seq.py                   # 3 rounds, about 1 min on 2 cores
    python benchmarks/bench_seq2seq.py --pairs 2000 --repeats 1   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness import checks, method, report  # noqa: E402

TIME_TARGET = 0.9
LOSS_RTOL = 1e-4
SCRIPT = Path(__file__).resolve()
LR, CLIP, SEED = 0.01, 5.0, 0


# ---------------------------------------------------------------- the data and the two models


def make_data(pairs, batch):
    """Vocabularies and the epoch's batches: ``(source, source_lengths, target, target_lengths)`` NumPy arrays."""
    import xseq
    from xseq.seq2seq.dates import date_pairs

    data = date_pairs(pairs, seed=SEED)
    source_vocab = xseq.Vocabulary.from_text([s for s, _ in data])
    target_vocab = xseq.Vocabulary.from_text([t for _, t in data])
    order = np.random.default_rng(SEED).permutation(len(data))
    batches = []
    for start in range(0, len(data), batch):
        chunk = [data[i] for i in order[start:start + batch]]
        sources = [source_vocab.encode(s) for s, _ in chunk]
        targets = [target_vocab.encode(t) for _, t in chunk]
        batches.append((pad(sources), np.array([len(s) for s in sources]), pad(targets),
                        np.array([len(t) for t in targets])))
    return source_vocab, target_vocab, batches


def pad(rows):
    out = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def xseq_model(source_vocab, target_vocab, dtype, cell):
    from xseq.seq2seq.model import Seq2Seq

    return Seq2Seq(source_vocab, target_vocab, cell=cell, dtype=dtype, seed=SEED)


def torch_model(model):
    """The xseq model written in PyTorch, with its weights: an ``nn.Module`` whose ``forward`` returns the loss."""
    import torch
    import torch.nn.functional as F
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    eos = model.target_vocab.eos_id
    dtype = getattr(torch, model.dtype_name)
    weights = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    n_a, n_s, D = model.hidden_size, model.decoder_size, model.embed_size
    n_enc, n_e = 2 * n_a, model.attention_size

    class TorchSeq2Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.source_embedding = torch.nn.Embedding(len(model.source_vocab), D, dtype=dtype)
            self.encoder = getattr(torch.nn, model.encoder.torch_name)(
                D, n_a, num_layers=model.num_layers, bidirectional=True, batch_first=True, dtype=dtype)
            self.keys = torch.nn.Linear(n_enc, n_e, dtype=dtype)                 # W1_a, b1
            self.query = torch.nn.Linear(n_s, n_e, bias=False, dtype=dtype)      # W1_s
            self.energy = torch.nn.Linear(n_e, 1, dtype=dtype)                   # W2, b2
            self.cell = torch.nn.LSTMCell(n_enc + D, n_s, dtype=dtype)
            self.target_embedding = torch.nn.Embedding(len(model.target_vocab), D, dtype=dtype)
            self.out = torch.nn.Linear(n_s, len(model.target_vocab) - 1, dtype=dtype)
            with torch.no_grad():
                for name, tensor in self.named_tensors().items():
                    tensor.copy_(weights[name])

        def named_tensors(self):
            """xseq's parameter names -> this module's tensors."""
            named = {"source_embedding": self.source_embedding.weight, "target_embedding": self.target_embedding.weight,
                     "attention.W1_a": self.keys.weight, "attention.b1": self.keys.bias,
                     "attention.W1_s": self.query.weight, "attention.W2": self.energy.weight,
                     "attention.b2": self.energy.bias, "Wy": self.out.weight, "by": self.out.bias}
            named.update({"encoder." + k: p for k, p in self.encoder.named_parameters()})
            named.update({"decoder." + k: p for k, p in self.cell.named_parameters()})
            return named

        def forward(self, source, source_lengths, target, target_lengths):
            m, T_x = source.shape
            T = int(target_lengths.max()) + 1
            previous = np.zeros((m, T), dtype=np.int64)
            previous[:, 0] = eos
            previous[:, 1:] = target[:, :T - 1]
            labels = np.zeros((m, T), dtype=np.int64)
            labels[:, :target.shape[1]] = target[:, :T]
            labels[np.arange(m), target_lengths] = eos
            predicted = torch.from_numpy(np.arange(T)[None, :] <= target_lengths[:, None])
            previous, labels = torch.from_numpy(previous), torch.from_numpy(labels)
            lengths = torch.from_numpy(source_lengths)
            x = self.source_embedding(torch.from_numpy(source))
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            a, _ = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=T_x)
            keys = self.keys(a)                                                 # (m, T_x, n_e)
            invalid = torch.arange(T_x)[None, :] >= lengths[:, None]
            e_previous = self.target_embedding(previous)                        # (m, T, D)
            s = torch.zeros((m, n_s), dtype=dtype)
            c = torch.zeros((m, n_s), dtype=dtype)
            states = []
            for t in range(T):
                energies = self.energy(torch.tanh(keys + self.query(s)[:, None, :]))[..., 0]
                alphas = torch.softmax(energies.masked_fill(invalid, -torch.inf), dim=1)
                context = torch.bmm(alphas[:, None, :], a)[:, 0, :]
                s, c = self.cell(torch.cat([context, e_previous[:, t]], dim=1), (s, c))
                states.append(s)
            logits = self.out(torch.stack(states, dim=1)[predicted])
            return F.cross_entropy(logits, labels[predicted] - 1)

    return TorchSeq2Seq()


class XseqSide:
    def __init__(self, model):
        import xseq

        self.xseq, self.model = xseq, model
        self.initial = model.state_dict()
        self.reset()

    def reset(self):
        self.model.load_state_dict(self.initial)
        self.optimizer = self.xseq.Adam(self.model.parameters(), lr=LR)

    def forward_backward(self, batch):
        return self.model.loss_and_backward(*batch)

    def gradients(self):
        return {k: np.asarray(self.xseq.to_numpy(v)) for k, v in self.model.grads().items()}

    def step(self, batch):
        loss = self.model.loss_and_backward(*batch)
        self.optimizer.step(self.xseq.clip_by_global_norm(self.model.grads(), CLIP)[0])
        return loss


class TorchSide:
    def __init__(self, model):
        import torch

        self.torch, self.module = torch, torch_model(model)
        self.initial = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.reset()

    def reset(self):
        self.module.load_state_dict(self.initial)
        self.optimizer = self.torch.optim.Adam(self.module.parameters(), lr=LR)

    def forward_backward(self, batch):
        self.optimizer.zero_grad()
        loss = self.module(*batch)
        loss.backward()
        return loss.item()

    def gradients(self):
        return {k: p.grad.numpy().copy() for k, p in self.module.named_tensors().items()}

    def step(self, batch):
        loss = self.forward_backward(batch)
        self.torch.nn.utils.clip_grad_norm_(self.module.parameters(), CLIP)
        self.optimizer.step()
        return loss


def side(name, pairs, batch, dtype, cell):
    source_vocab, target_vocab, batches = make_data(pairs, batch)
    model = xseq_model(source_vocab, target_vocab, dtype, cell)
    return (XseqSide(model) if name == "xseq" else TorchSide(model)), batches


# ---------------------------------------------------------------- worker and check


def worker(name, args):
    """Train one side for one epoch; print a JSON line with its time and losses."""
    trainer, batches = side(name, args.pairs, args.batch, "float32", args.cell)
    for batch in batches[:2]:  # warm-up: builds, caches, thread pools
        trainer.step(batch)
    trainer.reset()
    losses = []
    started = time.perf_counter()
    for batch in batches:
        losses.append(trainer.step(batch))
    seconds = time.perf_counter() - started
    print(json.dumps({"side": name, "seconds": seconds, "torch_threads": torch_threads(name),
                      "first_losses": losses[:5], "last_loss": float(np.mean(losses[-20:])), "steps": len(batches)}))


def torch_threads(name):
    if name != "torch":
        return None
    import torch

    return torch.get_num_threads()


def check_first_step(args):
    """The first step of both sides from the same weights on the same batch, float64 and float32."""
    result = checks.Check()
    tolerances = {"float64": checks.Tolerance("same model, float64", 1e-9), "float32": checks.OTHER_IMPLEMENTATION}
    for dtype, tolerance in tolerances.items():
        source_vocab, target_vocab, batches = make_data(min(args.pairs, 4 * args.batch), args.batch)
        model = xseq_model(source_vocab, target_vocab, dtype, args.cell)
        sides = {"xseq": XseqSide(model), "torch": TorchSide(xseq_model(source_vocab, target_vocab, dtype, args.cell))}
        losses = {name: s.forward_backward(batches[0]) for name, s in sides.items()}
        want = {"d" + k: v for k, v in sides["torch"].gradients().items()}
        got = {"d" + k: v for k, v in sides["xseq"].gradients().items()}
        # The gradient of b2 is 0 up to rounding (the softmax ignores a shift of every score): compared with the
        # largest gradient of all instead of its own.
        scale = max(float(np.max(np.abs(g))) for g in want.values())
        for name, grads in (("xseq", got), ("torch", want)):
            b2 = float(np.max(np.abs(grads.pop("dattention.b2"))))
            if not b2 <= tolerance.bound * scale:
                result.failures.append(f"first step, {dtype}: {name}'s gradient of b2 is {b2:.1e}, not 0")
        error = result.compare(f"first step, {dtype}", got, want, tolerance, checks.gradient_names(want))
        loss_error = abs(losses["xseq"] - losses["torch"]) / abs(losses["torch"])
        if not loss_error <= tolerance.bound:
            result.failures.append(f"first step, {dtype}: loss {losses['xseq']!r} vs torch's {losses['torch']!r}")
        print(f"check: first step, {dtype}: loss xseq {losses['xseq']:.10f}, torch {losses['torch']:.10f} "
              f"(relative difference {loss_error:.1e}); {len(got)} gradients (and b2's, 0), largest difference "
              f"{error:.1e} of torch's largest value (tolerance {tolerance})", flush=True)
    result.exit_if_failed()


def run_worker(name, args):
    argv = ["--worker", name, "--pairs", str(args.pairs), "--batch", str(args.batch), "--cell", args.cell]
    threads = {} if args.threads is None else {"OPENBLAS_NUM_THREADS": str(args.threads),
                                               "OMP_NUM_THREADS": str(args.threads)}
    env = method.environment(strip_openblas=name == "xseq", **threads)
    try:
        return method.run_json(SCRIPT, argv, env=env)
    except method.WorkerFailed as exc:
        sys.exit(f"the {name} worker failed: {exc}")


def load():
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000, help="training pairs (one epoch)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm", help="the encoder's cell")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (median time)")
    parser.add_argument("--threads", type=int, help="threads of both sides (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS; "
                        "torch reads the latter); default: the libraries' own (every core)")
    parser.add_argument("--worker", choices=("xseq", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.pairs < 1 or args.batch < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats, --pairs, --batch and --threads must be >= 1")
    if args.worker:
        worker(args.worker, args)
        return 0

    import torch

    import xseq

    print(f"machine: {report.cpu_model()}, {report.usable_cores()} cores; Python {platform.python_version()}, "
          f"NumPy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"xseq {xseq.__version__}")
    print(f"xseq steps: {report.xseq_steps()}")
    print(f"recipe: {args.pairs} date pairs, batch {args.batch}, {args.cell} encoder 32x2, decoder 64, attention 10, "
          f"embeddings 16, float32, Adam lr {LR}, clip norm {CLIP}; "
          f"{'default threads' if args.threads is None else f'{args.threads} thread(s) each'}; {args.repeats} round(s)")
    check_first_step(args)
    print(f"load average before: {load()}", flush=True)
    runs = {"xseq": [], "torch": []}
    for round_ in range(args.repeats):
        for name in method.rotated(("xseq", "torch"), round_):
            result = run_worker(name, args)
            runs[name].append(result)
            print(f"  round {round_ + 1} {name:5s}: {result['seconds']:6.2f} s  last loss {result['last_loss']:.4f}",
                  flush=True)
    print(f"load average after: {load()}")
    for x, t in zip(runs["xseq"], runs["torch"]):
        close = np.allclose(x["first_losses"], t["first_losses"], rtol=LOSS_RTOL, atol=0)
        if not close:
            sys.exit(f"check failed: the first losses differ: xseq {x['first_losses']}, torch {t['first_losses']}")
    x_time = statistics.median(r["seconds"] for r in runs["xseq"])
    t_time = statistics.median(r["seconds"] for r in runs["torch"])
    steps = runs["xseq"][0]["steps"]
    ratio = x_time / t_time
    # each round's own ratio too: its two runs ran seconds apart, under the same load
    round_ratio = statistics.median(x["seconds"] / t["seconds"] for x, t in zip(runs["xseq"], runs["torch"]))
    rows = [["time per epoch (s)", f"{x_time:.2f}", f"{t_time:.2f}"],
            ["ms per step", report.fmt_ms(1e3 * x_time / steps), report.fmt_ms(1e3 * t_time / steps)],
            ["mean loss, last 20 steps", f"{runs['xseq'][0]['last_loss']:.4f}", f"{runs['torch'][0]['last_loss']:.4f}"]]
    print("\n".join(report.aligned_table(["", "xseq", "torch"], rows)))
    first = [round(v, 6) for v in runs["xseq"][0]["first_losses"]]
    print(f"first five losses agree within {LOSS_RTOL:.0e} in every round: xseq's {first}")
    ok = ratio <= TIME_TARGET
    print(f"target: time per epoch at most {TIME_TARGET}x torch's: {ratio:.2f}x (median of the rounds' own ratios: "
          f"{round_ratio:.2f}x) -> {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
