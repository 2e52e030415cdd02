"""A saved training run, checked like its arrays: the trainer state's schema, shared by every trainer.

A checkpoint's ``trainer`` entry (counters, recipe, corpus records, random
streams, optimiser settings, history) and its ``train/losses`` and
``optim/...`` arrays are checked field by field before a run resumes: each
against its type and range, against the others and against the corpus the
trainer was set up on (:func:`restore_run`). A trainer supplies what depends on
how it reads text: ``steps_per_epoch``, ``_restore_position`` (where it stood
in its epoch), ``_tokens_after`` and ``_lr_after``, and its plan's
``data.step_unit`` and ``data.tokens_key``. A field that fails is a CheckpointError naming the file, the
field, its value and what was expected.
"""

from __future__ import annotations

import contextlib
import math
import reprlib

import numpy as np

from .checkpoint import CheckpointError

OPTIM_PREFIX = "optim/"
LOSSES_KEY = "train/losses"


def restore_run(trainer, where, arrays, state):
    """Put a saved run's counters, optimiser, random streams, losses and history in place, each checked.

    Every field is checked for its type and range and against the others
    and the corpus (the trainer is already set up on it): ``step`` is
    ``epoch`` whole epochs plus ``batch_in_epoch`` steps, the optimiser
    took exactly ``step`` steps with the run's hyperparameters, the
    tokens seen are those of the ``step`` batches, there is one finite
    loss per step and every validation record agrees with its step.
    CheckpointError names the field, its value and what was expected.
    """
    per_epoch = trainer.steps_per_epoch
    step = state_int(where, "step", state["step"], 0)
    epoch = state_int(where, "epoch", state["epoch"], 0)
    batch_in_epoch = state_int(where, "batch_in_epoch", state["batch_in_epoch"], 0, per_epoch)
    if step != epoch * per_epoch + batch_in_epoch:
        raise CheckpointError(f"{where} has an invalid training state: step {step} is not epoch {epoch} "
                              f"x {per_epoch} {trainer.data.step_unit} per epoch + batch_in_epoch {batch_in_epoch}")
    trainer.step, trainer.epoch, trainer.batch_in_epoch = step, epoch, batch_in_epoch
    trainer._restore_position(where, arrays, state)
    restore_optimizer(trainer, where, arrays, state["optimizer"])
    rng = trainer.model.dropout_rng
    rng.bit_generator.state = check_rng_state(where, "dropout_rng", state["dropout_rng"], rng)
    trainer.losses = check_losses(where, arrays[LOSSES_KEY], step, trainer.data.step_unit)
    trainer.history = check_history(where, state["history"], step, per_epoch, trainer.data.step_unit)
    trainer.seconds = state_real(where, "seconds", state["seconds"], 0)
    tokens = state_int(where, trainer.data.tokens_key, state[trainer.data.tokens_key], 0)
    expected = trainer._tokens_after(epoch, batch_in_epoch)
    if tokens != expected:
        raise state_error(where, trainer.data.tokens_key, tokens, f"{expected}, the tokens predicted in epoch {epoch} "
                           f"x {per_epoch} {trainer.data.step_unit} per epoch + batch_in_epoch {batch_in_epoch}")
    trainer.chars_seen = tokens


def restore_optimizer(trainer, where, arrays, saved):
    """The optimiser's saved state, checked against the run before it is loaded.

    Its step count must be the run's (one optimiser step per training
    step) and its hyperparameters those the run built it with (the
    learning rate: :meth:`~xseq.lm.train.Trainer._lr_after`); the optimiser itself refuses moments
    that are not finite, or second moments below 0.
    """
    if not isinstance(saved, dict):
        raise state_error(where, "optimizer", saved, "an object with the optimizer's kind, step and settings")
    built = {key: value for key, value in trainer.optimizer.state_dict().items() if not hasattr(value, "shape")}
    lr = trainer._lr_after(trainer.step, trainer.epoch, trainer.batch_in_epoch)
    expected = {**built, "step": trainer.step, "lr": lr}
    why = {"step": "the run's step count (one optimizer step per training step)",
           "lr": "the learning rate of the run's recipe at its step", "optimizer": "the recipe's optimizer"}
    for key, value in expected.items():
        if key in saved and (isinstance(saved[key], bool) or saved[key] != value):
            raise state_error(where, f"optimizer[{key!r}]", saved[key],
                               f"{value!r}, {why.get(key, 'the setting the run was built with')}")
    optimizer_arrays = {k[len(OPTIM_PREFIX):]: v for k, v in arrays.items() if k.startswith(OPTIM_PREFIX)}
    try:
        trainer.optimizer.load_state_dict({**saved, **optimizer_arrays})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has an invalid training state: optimizer {exc}") from None


_HISTORY_FIELDS = ("epoch", "step", "train_loss", "val_loss", "seconds")


def state_error(where, field, value, expected):
    return CheckpointError(f"{where} has an invalid training state: {field} is {reprlib.repr(value)}; "
                           f"expected {expected}")


def state_int(where, field, value, low, high=None):
    """``value``, an int (not a bool) with ``low <= value`` and, when given, ``value < high``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value >= high):
        bound = f"{low} <= {field}" + ("" if high is None else f" < {high}")
        raise state_error(where, field, value, f"an int with {bound}")
    return value


def is_real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def state_real(where, field, value, low):
    """``value`` as a float: a finite number (not a bool) ``>= low``."""
    if not is_real(value) or not math.isfinite(value) or value < low:
        raise state_error(where, field, value, f"a finite number >= {low}")
    return float(value)


def check_corpus_record(where, record):
    """The saved run's corpus record: ``sha256`` (str), ``source`` (str or None), ``sequences`` (int)."""
    if not isinstance(record, dict):
        raise state_error(where, "corpus", record, "an object with 'source', 'sha256' and 'sequences'")
    if not isinstance(record["sha256"], str):
        raise state_error(where, "corpus['sha256']", record["sha256"], "a hex string")
    if record["source"] is not None and not isinstance(record["source"], str):
        raise state_error(where, "corpus['source']", record["source"], "a string or null")
    state_int(where, "corpus['sequences']", record["sequences"], 0)
    return record


@contextlib.contextmanager
def invalid_state(where):
    """Inside: a missing entry (KeyError) or a value of the wrong type or range (TypeError, ValueError) of a
    saved training state is a CheckpointError naming ``where``."""
    try:
        yield
    except KeyError as exc:
        raise CheckpointError(f"{where} has an invalid training state: no entry {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has an invalid training state: {type(exc).__name__}: {exc}") from None


def check_same_corpus(where, record, sha256, lines, source, unit):
    """The saved run's corpus ``record``, which must be that of the corpus given to resume it (fingerprint
    ``sha256``, ``lines`` lines or sequences, ``unit`` naming them); CheckpointError otherwise."""
    recorded = check_corpus_record(where, record)
    if recorded["sha256"] != sha256:
        raise CheckpointError(
            f"{where} was trained on another corpus ({recorded['source'] or 'unknown source'}, "
            f"{recorded['sequences']} {unit}) than {source or 'the given one'} ({lines} {unit}); resume with the "
            "same corpus")
    check_counted(where, "corpus['sequences']", recorded["sequences"], lines)
    return recorded


def check_counted(where, field, recorded, lines):
    """A corpus record's count of lines, which must be ``lines``, that of the corpus its fingerprint matched."""
    if recorded != lines:
        raise state_error(where, field, recorded, f"{lines}, the lines of the corpus whose SHA-256 it records")


def check_losses(where, losses, step, unit):
    """The saved losses as floats: one finite number >= 0 (a mean cross-entropy) per step."""
    if losses.ndim != 1 or losses.dtype.kind != "f" or len(losses) != step:
        raise state_error(where, f"array {LOSSES_KEY!r}", f"{losses.dtype} {losses.shape}",
                           f"the float losses of the {step} {unit}, shape ({step},)")
    bad = np.flatnonzero(~(np.isfinite(losses) & (losses >= 0)))
    if bad.size:
        raise state_error(where, f"array {LOSSES_KEY!r}[{bad[0]}]", float(losses[bad[0]]),
                           f"a finite loss >= 0 (nats per token); {bad.size} of the {step} are not")
    return [float(x) for x in losses]


def check_rng_state(where, field, value, generator):
    """``value`` if it has the layout of ``generator.bit_generator.state`` (PCG64: nested dicts of str and int).

    Its strings must be the generator's (the bit generator's name) and its
    integers ints in ``[0, 2**128)``, the range of PCG64's state words.
    """
    def check(saved, current, at):
        if isinstance(current, dict):
            if not isinstance(saved, dict) or set(saved) != set(current):
                raise state_error(where, at, saved, f"an object with the keys {sorted(current)}")
            for key in current:
                check(saved[key], current[key], f"{at}[{key!r}]")
        elif isinstance(current, str):
            if saved != current:
                raise state_error(where, at, saved, repr(current))
        elif isinstance(saved, bool) or not isinstance(saved, int) or not 0 <= saved < 2**128:
            raise state_error(where, at, saved, "an int with 0 <= value < 2**128")

    check(value, generator.bit_generator.state, field)
    return value


def check_history(where, history, step, per_epoch, unit="steps"):
    """The saved validation records, as :meth:`~xseq.lm.train.Trainer.validate` writes them after ``step`` steps at
    most.

    Each has every field; steps are in order and at most ``step``; each
    ``epoch`` is its step's, in epochs of ``per_epoch`` steps (``unit``); losses are
    finite numbers >= 0 (``train_loss`` may be None); ``seconds`` never
    decrease.
    """
    if not isinstance(history, list):
        raise state_error(where, "history", history, "a list of validation records")
    previous = seconds = 0
    for i, record in enumerate(history):
        at = f"history[{i}]"
        if not isinstance(record, dict) or set(record) != set(_HISTORY_FIELDS):
            raise state_error(where, at, record, f"a record with the keys {list(_HISTORY_FIELDS)}")
        previous = state_int(where, f"{at}['step']", record["step"], previous, step + 1)
        epoch = round(previous // per_epoch + previous % per_epoch / per_epoch, 4)
        if state_real(where, f"{at}['epoch']", record["epoch"], 0) != epoch:
            raise state_error(where, f"{at}['epoch']", record["epoch"],
                               f"{epoch:g}, the epoch of its step {previous} with {per_epoch} {unit} per epoch")
        seconds = state_real(where, f"{at}['seconds']", record["seconds"], seconds)
        for key in ("train_loss", "val_loss"):
            if key == "train_loss" and record[key] is None:
                continue
            if not is_real(record[key]):
                raise state_error(where, f"{at}[{key!r}]", record[key], "a number")
            state_real(where, f"{at}[{key!r}]", record[key], 0)
    return list(history)


def saved_recipe(where, saved, config_class, agreed, epochs=None, steps=None):
    """The recipe of a saved run as ``config_class``: every field present and no other, a new length if given
    (``epochs``, ``steps``), and every field of ``agreed`` (name -> the model's value) equal to the model's.
    CheckpointError naming the field otherwise."""
    fields = tuple(config_class.__dataclass_fields__)
    missing = [field for field in fields if not isinstance(saved, dict) or field not in saved]
    if missing:
        raise state_error(where, "config", saved, f"the recipe with every field; it lacks {missing}")
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise state_error(where, "config", saved, f"only the recipe's fields; it has {unknown}")
    config = dict(saved)
    if epochs is not None or steps is not None:
        config.update(epochs=epochs, steps=steps)
    config = config_class(**config)
    for field, value in agreed.items():
        if getattr(config, field) != value:
            raise state_error(where, f"config[{field!r}]", getattr(config, field), f"the model's {value!r}")
    return config

