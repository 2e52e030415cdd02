"""``lm_vs_torch.py``'s contenders -- xseq's Trainer and the same loop with PyTorch's model math -- and their check.

* ``xseq``: :class:`xseq.lm.train.Trainer` on the NumPy backend, exactly what
  ``xseq train`` runs;
* ``torch``: the same :class:`~xseq.lm.train.Trainer` loop (same split, same batch
  order, same per-epoch validation, same bookkeeping) with its
  :meth:`~xseq.lm.trainer.Trainer.learn` and ``validation_loss`` replaced by a
  ``torch.nn.LSTM`` (or ``GRU``/``RNN``) + ``torch.nn.Linear`` model that
  starts from xseq's initial weights, trained with ``torch.optim.Adam`` (same
  hyperparameters), ``torch.nn.utils.clip_grad_norm_`` and ``F.cross_entropy``
  over the valid positions; autograd for the backward pass. Batches are built
  by the same NumPy code for both and handed to torch with ``torch.from_numpy``.

:func:`check_first_step` runs the first training step of both, and of xseq's
array-API reference (``XSEQ_FUSED=0``), from the same weights on the same
batch, and compares the losses and every gradient.
"""

from __future__ import annotations

import numpy as np

from .. import checks
from .cpu import gradient_name, reference_path

# The first step's losses (same weights, same batch, float32): equal to six decimals in every run so far.
FIRST_LOSS_RTOL = 1e-5


def make_torch_trainer(lines, config):
    """A Trainer whose model math is PyTorch's, starting from the xseq model's initial weights."""
    import torch
    import torch.nn.functional as F

    from xseq.lm.train import Trainer

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

        def forward_backward(self, sequences):
            """The batch's loss; its gradients are left in the parameters' ``.grad``."""
            logits, targets = self._forward(sequences)
            loss = F.cross_entropy(logits, targets)
            self.torch_optimizer.zero_grad()
            loss.backward()
            return loss.item()

        def clip_and_step(self):
            torch.nn.utils.clip_grad_norm_(self.torch_params, config.clip)
            self.torch_optimizer.step()

        def gradients(self):
            """The parameters' gradients as NumPy arrays, keyed like xseq's ``CharLM.grads()``."""
            grads = {name: p.grad.numpy().copy() for name, p in self.rnn.named_parameters()}
            grads["Wy"] = self.linear.weight.grad.numpy().copy()
            grads["by"] = self.linear.bias.grad.numpy()[:, None].copy()
            return grads

        def learn(self, sequences):
            loss = self.forward_backward(sequences)
            self.clip_and_step()
            return loss

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


def xseq_first_step(trainer):
    """Run an xseq Trainer's first training step; returns its loss and its gradients (named as in the checks).

    Clipping returns new arrays, so the model's gradients stay as the backward pass computed them.
    """
    from xseq import to_numpy

    loss = trainer.train_step()
    return loss, {gradient_name(k): np.asarray(to_numpy(v)) for k, v in trainer.model.grads().items()}


def torch_first_step(trainer):
    """Run the torch trainer's first training step; returns its loss and its gradients before clipping.

    ``clip_grad_norm_`` scales ``.grad`` in place, so the gradients are copied
    between the backward pass and the update, inside the same ``train_step``.
    """
    kept = {}

    def learn(sequences):
        loss = trainer.forward_backward(sequences)
        kept.update(trainer.gradients())
        trainer.clip_and_step()
        return loss

    trainer.learn = learn
    loss = trainer.train_step()
    return loss, {gradient_name(k): v for k, v in kept.items()}


def check_first_step(lines, config, out=print):
    """The first step of xseq and torch against xseq's array-API reference: the loss and every gradient.

    Returns
    -------
    check : checks.Check
        The gradients compared (``SAME_FORMULAS`` for xseq, ``OTHER_IMPLEMENTATION`` for torch) and,
        as a failure, a first-step loss more than :data:`FIRST_LOSS_RTOL` from the reference's.
    losses : dict
        ``{"reference": ..., "xseq": ..., "torch": ...}``, the three first-step losses.
    """
    from xseq.lm.train import Trainer

    with reference_path():
        ref_loss, want = xseq_first_step(Trainer(lines, config, backend="numpy"))
    result = checks.Check()
    losses = {"reference": ref_loss}
    for name, run, tolerance in (
            ("xseq", lambda: xseq_first_step(Trainer(lines, config, backend="numpy")), checks.SAME_FORMULAS),
            ("torch", lambda: torch_first_step(make_torch_trainer(lines, config)), checks.OTHER_IMPLEMENTATION)):
        loss, got = run()
        losses[name] = loss
        error = check_step(result, f"first step: {name}", loss, got, ref_loss, want, tolerance)
        out(f"check: first step of {name}: loss {loss:.6f} (reference {ref_loss:.6f}); {len(got)} gradients, "
            f"largest difference {error:.1e} of the reference's largest value")
    return result, losses


def check_step(result, label, loss, got, want_loss, want, tolerance):
    """One step's gradients ``got`` and ``loss`` against the reference's, failures into ``result``.

    Returns the gradients' largest difference (relative to the reference's largest value).
    """
    error = result.compare(label, got, want, tolerance, checks.gradient_names(want))
    if not losses_agree(loss, want_loss):
        result.failures.append(f"{label}: loss {loss:.6f} differs from the reference's {want_loss:.6f} by "
                               f"more than {FIRST_LOSS_RTOL:.0e} of it")
    return error


def losses_agree(loss, reference):
    """Whether ``loss`` is within :data:`FIRST_LOSS_RTOL` of ``reference`` (relative)."""
    return abs(loss - reference) <= FIRST_LOSS_RTOL * abs(reference)
