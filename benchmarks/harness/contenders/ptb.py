"""``ptb.py``'s contenders -- xseq's stream trainer and the same loop with PyTorch's model math -- and their check.

The model is Zaremba, Sutskever and Vinyals's (2014) small Penn Treebank
configuration (:func:`small_recipe`): a word embedding, a 2 x 200 LSTM and a
projection to the vocabulary, trained on windows of 20 steps of 20 contiguous
columns with the state carried from window to window, the loss summed over a
window's steps and averaged over the columns, plain SGD at lr 1.0 halved every
epoch after the fourth, gradients clipped to global norm 5, every weight
uniform in +-0.1, no dropout.

* ``xseq``: :class:`xseq.lm.stream_train.StreamTrainer` on the NumPy backend,
  what ``xseq train --level word`` runs with those options.
* ``torch``: the same :class:`~xseq.lm.stream_train.StreamTrainer` loop (the
  same columns and windows from :func:`~xseq.lm.stream_train.batchify` and
  :func:`~xseq.lm.stream_train.window`, the same learning-rate schedule, the
  same bookkeeping) with its :meth:`~xseq.lm.trainer.Trainer.learn`
  and validation replaced by :class:`TorchStreamModel`: ``nn.Embedding(V, D)``
  -> ``nn.LSTM(D, n_a, num_layers)`` -> ``nn.Linear(n_a, V - 1)`` (xseq's
  projection scores ids 1 .. V-1, never ``<pad>``), starting from the xseq
  model's initial weights, ``F.cross_entropy(..., reduction="sum") / m``,
  autograd, ``clip_grads_with_norm_`` and ``torch.optim.SGD``; the carried
  state is detached between windows. Validation runs through the same
  :func:`~xseq.lm.stream_train.evaluate_stream`.

Clipping: torch scales the gradients with ``clip_grads_with_norm_`` (the second
half of ``clip_grad_norm_``) by the global norm computed as xseq computes it,
``sqrt(sum over arrays of sum(g * g))``. ``clip_grad_norm_``'s own norm (the
per-array ``vector_norm``) accumulates each array in one float32 sum on the
CPU (pytorch/pytorch#169237): for the output layer's gradient here it comes
out 8.8e-4 too small (torch 2.13), so the update of the first clipped window
(the second, at the paper's size) already differs by 3e-4 from xseq's, and the
third window's loss by 2.4e-4 -- a difference of the norm's rounding, not of
the model, which the check could not tell from a wrong model.

:func:`check` runs the first :data:`CHECKED_WINDOWS` windows of both, and of
xseq's array-API reference (``XSEQ_FUSED=0``), from the same weights: every
window's loss and every gradient (embedding, each layer's weights and biases,
``Wy``, ``by``) before clipping. Each window after the first starts from the
state the one before carried and from the weights its SGD step left, so the
check covers the carried state and the update too, and the clipping where a
checked window but the last was clipped (it says which were).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
from pathlib import Path

import numpy as np

from .. import checks, report
from .cpu import gradient_name, reference_path
from .lm import FIRST_LOSS_RTOL, check_step, losses_agree  # noqa: F401 (FIRST_LOSS_RTOL and losses_agree are used from here by ptb.py)

SPLITS = ("train", "valid", "test")
# md5 sums of Mikolov's files (../shared/data/ptb/README.md): the published numbers are for these.
PTB_MD5 = {"train": "f26c4b92c5fdc7b3f8c7cdcb991d8420", "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
           "test": "8b80168b89c18661a38ef683c0dc3721"}
# Zaremba et al.'s small configuration, perplexity train / valid / test (TensorFlow's PTB tutorial).
PAPER_SMALL = {"train": 37.99, "valid": 121.39, "test": 115.91}
CHECKED_WINDOWS = 3


class DataError(Exception):
    """The PTB directory or one of its files is missing or unreadable; the message says which and what is expected."""


def read_ptb(directory):
    """The lines of ``ptb.{train,valid,test}.txt`` in ``directory``, blank lines kept.

    Returns
    -------
    lines : dict
        ``split -> list of str``.
    mikolov : bool
        Whether all three files have the md5 sums of Mikolov's PTB (the data of the published numbers).

    Raises
    ------
    DataError
        The directory or a file is missing, or a file cannot be read as a corpus.
    """
    from xseq.lm.corpus import CorpusError, read_corpus

    directory = Path(directory)
    expected = ", ".join(f"ptb.{split}.txt" for split in SPLITS)
    if not directory.is_dir():
        raise DataError(f"the PTB data directory {str(directory)!r} does not exist; expected a directory with "
                        f"{expected} (Mikolov's Penn Treebank); pass --data DIR")
    lines, sums = {}, {}
    for split in SPLITS:
        path = directory / f"ptb.{split}.txt"
        if not path.is_file():
            raise DataError(f"{str(path)!r} does not exist; the --data directory must hold {expected}")
        try:
            lines[split] = read_corpus(path, keep_blank=True)
            sums[split] = hashlib.md5(path.read_bytes()).hexdigest()
        except (CorpusError, OSError) as exc:
            raise DataError(str(exc)) from None
    return lines, sums == PTB_MD5


def small_recipe(epochs=13, hidden_size=200, num_layers=2, batch_size=20, bptt=20, seed=0, dtype="float32", clip=5.0):
    """Zaremba et al.'s small configuration as a :class:`~xseq.lm.stream_train.StreamConfig` (the paper's defaults)."""
    from xseq.lm.stream_train import StreamConfig

    return StreamConfig(level="word", cell="lstm", hidden_size=hidden_size, num_layers=num_layers, dropout=0.0,
                        batch_size=batch_size, bptt=bptt, epochs=epochs, optimizer="sgd", lr=1.0, momentum=0.0,
                        lr_decay=0.5, decay_after=4, clip=clip, clip_mode="norm", init_scale=0.1, dtype=dtype,
                        seed=seed)


def perplexity(loss):
    """``exp(loss)``, ``inf`` where it overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


# ---------------------------------------------------------------- the contenders


def make_xseq_trainer(lines, config):
    """The xseq contender: a StreamTrainer on the training lines, validated on the valid lines."""
    from xseq.lm.stream_train import StreamTrainer

    return StreamTrainer(lines["train"], config, val_lines=lines["valid"], backend="numpy")


class TorchStreamModel:
    """PyTorch's ``Embedding -> LSTM -> Linear`` with the weights of a :class:`~xseq.lm.stream_model.StreamLM`.

    It answers the calls the stream trainer and :func:`~xseq.lm.stream_train.evaluate_stream`
    make of a model (:meth:`loss_and_backward`, :meth:`grads`, :meth:`nll`);
    states are torch tensors ``(num_layers, m, n_a)``, windows NumPy arrays ``(m, T)``.

    Parameters
    ----------
    weights : dict
        ``StreamLM.state_dict()``: ``"embedding"`` ``(V, D)``, the LSTM's arrays
        under torch's names, ``"Wy"`` ``(V-1, n_a)``, ``"by"`` ``(V-1,)``.
    num_layers : int
    """

    def __init__(self, weights, num_layers):
        import torch

        V, D = weights["embedding"].shape
        n_a = weights["Wy"].shape[1]
        dtype = getattr(torch, str(weights["embedding"].dtype))  # the xseq model's: float32 or float64
        self.embedding = torch.nn.Embedding(V, D, dtype=dtype)
        self.rnn = torch.nn.LSTM(D, n_a, num_layers=num_layers, dtype=dtype)
        self.linear = torch.nn.Linear(n_a, V - 1, dtype=dtype)
        rnn_weights = {k: torch.from_numpy(v) for k, v in weights.items() if k not in ("embedding", "Wy", "by")}
        with torch.no_grad():
            self.rnn.load_state_dict(rnn_weights)
            self.embedding.weight.copy_(torch.from_numpy(weights["embedding"]))
            self.linear.weight.copy_(torch.from_numpy(weights["Wy"]))
            self.linear.bias.copy_(torch.from_numpy(weights["by"]))
        # keyed like StreamLM.parameters(), so that gradients compare name by name
        self.named = {"embedding": self.embedding.weight, **dict(self.rnn.named_parameters()),
                      "Wy": self.linear.weight, "by": self.linear.bias}

    def parameters(self):
        return list(self.named.values())

    def _window_nll(self, inputs, targets, state):
        import torch
        import torch.nn.functional as F

        # xseq keeps the stream as int32 ids; torch's embedding and loss take int64 (Long) indices.
        x = torch.from_numpy(np.ascontiguousarray(inputs.T, dtype=np.int64))  # (T, m), time-major like nn.LSTM
        outputs, state = self.rnn(self.embedding(x), state)
        logits = self.linear(outputs)  # (T, m, V-1): row j scores id j + 1
        rows = torch.from_numpy(np.ascontiguousarray(targets.T, dtype=np.int64).reshape(-1) - 1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows, reduction="sum"), state

    def loss_and_backward(self, inputs, targets, state=None):
        """The window's summed NLL (float) and its final state (detached); gradients of ``nll / m`` in ``.grad``."""
        for p in self.parameters():
            p.grad = None
        nll, state = self._window_nll(inputs, targets, state)
        (nll / inputs.shape[0]).backward()
        return nll.item(), tuple(s.detach() for s in state)

    def grads(self):
        """Copies of the gradients as NumPy arrays, keyed like ``StreamLM.grads()``."""
        return {name: p.grad.numpy().copy() for name, p in self.named.items()}

    def nll(self, inputs, targets, state=None):
        """The window's summed NLL without gradients, and its final state."""
        import torch

        with torch.no_grad():
            nll, state = self._window_nll(inputs, targets, state)
        return nll.item(), state


def make_torch_trainer(lines, config):
    """The torch contender: xseq's StreamTrainer loop with the model math, clipping and SGD of PyTorch."""
    import torch

    from xseq.lm.stream_train import StreamTrainer, evaluate_stream
    from xseq.lm.train import DivergedError

    class TorchStreamTrainer(StreamTrainer):
        def __init__(self):
            super().__init__(lines["train"], config, val_lines=lines["valid"], backend="numpy")
            self.torch_model = TorchStreamModel(self.model.state_dict(), config.num_layers)
            self.torch_optimizer = torch.optim.SGD(self.torch_model.parameters(), lr=config.lr, momentum=0.0)
            # When a list, learn appends each window's gradients before clipping (the check reads them).
            self.gradient_log = None

        def learn(self, batch):
            inputs, targets = batch
            nll, state = self.torch_model.loss_and_backward(inputs, targets, self.data.state)
            loss = nll / targets.size
            if not math.isfinite(loss):
                raise DivergedError(f"training diverged at step {self.step + 1}: the training loss is {loss}")
            if self.gradient_log is not None:
                self.gradient_log.append(self.torch_model.grads())
            params = self.torch_model.parameters()
            # clip_grad_norm_'s own norm keeps one float32 accumulator per array on the CPU (pytorch#169237):
            # 8.8e-4 too small for Wy's gradient (10000 x 200) here, which alone sets torch's training apart
            # from the first clipped window on. This is xseq's formula, the squares summed pairwise as NumPy does.
            total_norm = math.sqrt(sum(float((p.grad * p.grad).sum()) for p in params))
            torch.nn.utils.clip_grads_with_norm_(params, config.clip, torch.tensor(total_norm))
            for group in self.torch_optimizer.param_groups:
                group["lr"] = self.optimizer.lr  # the schedule's rate, which train_step set for this epoch
            self.torch_optimizer.step()
            self.data.state = state
            return loss

        def validation_loss(self):
            return evaluate_stream(self.torch_model, self.val_data, self.config.bptt)

    return TorchStreamTrainer()


def make_trainer(contender, lines, config):
    """``"xseq"`` or ``"torch"``'s trainer, both starting from the weights xseq draws from ``config.seed``."""
    if contender == "xseq":
        return make_xseq_trainer(lines, config)
    if contender == "torch":
        return make_torch_trainer(lines, config)
    raise ValueError(f"contender must be 'xseq' or 'torch'; got {contender!r}")


def threads(contender):
    """The thread settings a contender's worker runs with, in words."""
    if contender == "torch":
        import torch

        return f"torch {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op threads"
    return f"OpenBLAS {openblas_threads()} threads"


def openblas_threads():
    """The thread count of NumPy's bundled OpenBLAS, or ``"default"`` where it cannot be asked."""
    threads = report.numpy_openblas_call(np, "get_num_threads", ctypes.c_int)
    return "default" if threads is None else threads


# ---------------------------------------------------------------- the check


def xseq_windows(trainer, windows):
    """Train an xseq trainer's first ``windows`` windows; each window's loss and gradients before clipping.

    Clipping returns new arrays, so the model's gradients stay as the backward pass computed them.
    """
    from xseq import to_numpy

    steps = []
    for _ in range(windows):
        loss = trainer.train_step()
        steps.append((loss, {gradient_name(k): np.asarray(to_numpy(v)) for k, v in trainer.model.grads().items()}))
    return steps


def torch_windows(trainer, windows):
    """The same for the torch trainer (``clip_grad_norm_`` scales ``.grad`` in place: its log copies them before)."""
    trainer.gradient_log = []
    losses = [trainer.train_step() for _ in range(windows)]
    return [(loss, {gradient_name(k): v for k, v in grads.items()})
            for loss, grads in zip(losses, trainer.gradient_log)]


def check(lines, config, windows=CHECKED_WINDOWS, out=print):
    """The first ``windows`` windows of xseq and torch against xseq's array-API reference.

    Every window's loss must be within :data:`FIRST_LOSS_RTOL` of the
    reference's, and every gradient must agree with the reference's
    (``SAME_FORMULAS`` for xseq, ``OTHER_IMPLEMENTATION`` for torch), at the
    size ``config`` gives: run it at the timed size.

    Returns
    -------
    check : checks.Check
        Labels ``"window K: CONTENDER"``; a loss out of bounds is a failure too.
    losses : dict
        ``contender -> [loss of each window]`` for ``"reference"``, ``"xseq"``, ``"torch"``.
    """
    with reference_path():
        reference = xseq_windows(make_xseq_trainer(lines, config), windows)
    norms = [math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
             for _, grads in reference]
    clipped = [k for k, norm in enumerate(norms[:-1], start=1) if norm > config.clip]
    out(f"check: global gradient norms of the reference's windows {', '.join(f'{n:.3f}' for n in norms)} "
        f"(clip {config.clip:g}): " + (f"the update of window(s) {', '.join(map(str, clipped))} was clipped, so "
                                       "clipping is covered" if clipped else
                                       "no update before the last window was clipped: clipping is NOT covered"))
    result = checks.Check()
    losses = {"reference": [loss for loss, _ in reference]}
    for name, run, tolerance in (
            ("xseq", lambda: xseq_windows(make_xseq_trainer(lines, config), windows), checks.SAME_FORMULAS),
            ("torch", lambda: torch_windows(make_torch_trainer(lines, config), windows),
             checks.OTHER_IMPLEMENTATION)):
        steps = run()
        losses[name] = [loss for loss, _ in steps]
        for k, ((loss, got), (want_loss, want)) in enumerate(zip(steps, reference), start=1):
            error = check_step(result, f"window {k}: {name}", loss, got, want_loss, want, tolerance)
            out(f"check: window {k} of {name}: loss {loss:.6f} (reference {want_loss:.6f}); {len(got)} gradients, "
                f"largest difference {error:.1e} of the reference's largest value")
    return result, losses
