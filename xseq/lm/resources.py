"""What a command will need, estimated before it starts, and what the machine has.

The command line compares these estimates with the memory the backend can
still take, so that a flag like ``--hidden 1000000000000`` is refused at once
(naming the flag) instead of ending in a ``MemoryError`` hours later. The
estimates are deliberate over-estimates: their factors were measured with
``tracemalloc`` on the NumPy path (peak of a training step, a validation pass
and sampling) and rounded up, so that they are upper bounds within a factor of
about two.
"""

from __future__ import annotations

import math
import os

from ..backends.arrays import backend_name
from ..engine.sequence import GATES
from ..nn.projection_loss import default_chunk_rows
from .language_model import parameter_shapes
from .recipe import EVALUATION_BATCH

DTYPE_BYTES = {"float32": 4, "float64": 8}
# Weights, gradients, optimiser moments, their float64 initial draw, the
# optimiser's temporaries and the host copies a checkpoint makes: measured 9-10.
PARAMETER_COPIES = 12
# Per hidden unit, example and step of every layer: gates, states, outputs and
# their gradients (measured: LSTM 8.5, GRU 8.4, RNN 3.1 for 2G + 4 = 12, 10, 6).
ACTIVATIONS_PER_GATE = 2
ACTIVATIONS_PER_LAYER = 4
# Per vocabulary entry, example and step: one-hot input, logits, the loss's
# temporaries and their gradients (measured about 7).
ACTIVATIONS_PER_TOKEN = 10
# A training step's loss is a Python float in a list, then a float64 in the checkpoint.
BYTES_PER_STEP = 48
# Stream models. The projection's logits are bounded by its chunking (xseq.nn.projection_loss): one
# buffer of at most LOGITS_BUDGET_BYTES, plus the array-API reference's temporaries on other backends.
LOGITS_COPIES = 3
# Per window row (a step of one column): the embedding's rows, their dropout and gradient, the output
# dropout and the projection's dh and its reshaped copies.
EMBEDDING_COPIES = 4
OUTPUT_COPIES = 4
# Per token of a stream: its id while the lines are encoded (a Python int in a list), then int64 ids.
BYTES_PER_STREAM_TOKEN = 8  # the stream's int32 ids, and as much again for the windows and the pieces read
# A line model's corpus in memory: 32 bytes a byte measured (a 20 MB file of short lines, xseq train --steps 1:
# 745 MB resident, of which 90 MB the interpreter, NumPy and the model), rounded up.
LINE_CORPUS_BYTES_PER_BYTE = 40


def parameter_count(cell, hidden_size, num_layers, vocab_size):
    """Scalar weights of a :class:`~xseq.CharLM`: the recurrent stack plus ``Wy`` ``(V, n_a)`` and ``by``."""
    G, n_a, V = GATES[cell], hidden_size, vocab_size
    stack = G * n_a * (V + n_a + 2) + (num_layers - 1) * G * n_a * (2 * n_a + 2)
    return stack + V * (n_a + 1)


def model_bytes(cell, hidden_size, num_layers, vocab_size, dtype):
    """Memory of a model's weights and everything a training run keeps beside them."""
    return PARAMETER_COPIES * parameter_count(cell, hidden_size, num_layers, vocab_size) * DTYPE_BYTES[dtype]


def activation_bytes(cell, hidden_size, num_layers, vocab_size, dtype, m, T_x):
    """Memory of one forward and backward pass over ``m`` sequences of ``T_x`` steps."""
    per_step = (ACTIVATIONS_PER_TOKEN * vocab_size
                + num_layers * (ACTIVATIONS_PER_GATE * GATES[cell] + ACTIVATIONS_PER_LAYER) * hidden_size)
    return m * T_x * per_step * DTYPE_BYTES[dtype]


def sampling_bytes(cell, hidden_size, num_layers, vocab_size, dtype, n, max_len):
    """Memory of :meth:`~xseq.lm.model.CharLM.sample` drawing ``n`` samples of up to ``max_len`` tokens together."""
    # The ids (int64) and the decoded text of every sample, the host float64
    # scores of one step, and the layers' state and cache of one step.
    per_sample = (16 * max_len + ACTIVATIONS_PER_TOKEN * vocab_size * 8
                  + activation_bytes(cell, hidden_size, num_layers, 0, dtype, 1, 1)
                  + 256)
    return n * per_sample


def training_bytes(*, cell, hidden_size, num_layers, vocab_size, dtype, batch_size, train_sequences,
                   val_sequences, longest, max_seq_len, total_steps, samples, sample_len):
    """Peak memory of ``xseq train``: the model, the larger of one step, one validation batch and
    the final samples, and the loss history.

    ``longest`` is the longest line in tokens; lines longer than ``max_seq_len``
    are split, so a batch has at most ``min(longest, max_seq_len) + 1`` steps.
    """
    T_x = min(longest, max_seq_len) + 1
    model = (cell, hidden_size, num_layers, vocab_size, dtype)
    busiest = max(activation_bytes(*model, min(batch_size, train_sequences), T_x),
                  activation_bytes(*model, min(EVALUATION_BATCH, val_sequences), T_x),
                  sampling_bytes(*model, samples, sample_len))
    return model_bytes(*model) + busiest + BYTES_PER_STEP * total_steps


def stream_parameter_count(cell, hidden_size, num_layers, embed_size, vocab_size, tie_weights):
    """Scalar weights of a :class:`~xseq.lm.language_model.LanguageModel` with an embedding input."""
    shapes = parameter_shapes({"input": "embedding", "cell": cell, "hidden_size": hidden_size,
                               "num_layers": num_layers, "embed_size": embed_size, "tie_weights": tie_weights},
                              vocab_size)
    return sum(math.prod(shape) for shape in shapes.values())


def stream_activation_bytes(cell, hidden_size, num_layers, embed_size, vocab_size, dtype, m, T):
    """Memory of one window of ``m`` columns and ``T`` steps of a stream model, forward and backward.

    The logits are bounded by the projection loss's chunking, never ``m * T * V``.
    """
    item = DTYPE_BYTES[dtype]
    rows = m * T
    logits = min(rows, default_chunk_rows(vocab_size - 1, item)) * (vocab_size - 1) * item * LOGITS_COPIES
    per_row = (EMBEDDING_COPIES * embed_size + OUTPUT_COPIES * hidden_size
               + num_layers * (ACTIVATIONS_PER_GATE * GATES[cell] + ACTIVATIONS_PER_LAYER) * hidden_size)
    return logits + rows * per_row * item


def stream_training_bytes(*, cell, hidden_size, num_layers, embed_size, tie_weights, vocab_size, dtype,
                          batch_size, bptt, tokens, total_steps, samples, sample_len):
    """Peak memory of ``xseq train`` for a stream model: the model, the larger of one window (training or
    validation: the same size) and the final samples, the encoded streams and the loss history.

    ``tokens`` counts the training and validation streams together.
    """
    weights = stream_parameter_count(cell, hidden_size, num_layers, embed_size, vocab_size, tie_weights)
    busiest = max(stream_activation_bytes(cell, hidden_size, num_layers, embed_size, vocab_size, dtype,
                                          batch_size, bptt),
                  sampling_bytes(cell, hidden_size, num_layers, vocab_size, dtype, samples, sample_len))
    return (PARAMETER_COPIES * weights * DTYPE_BYTES[dtype] + busiest + BYTES_PER_STREAM_TOKEN * tokens
            + BYTES_PER_STEP * total_steps)


def biggest_cause(estimate, values, defaults):
    """The name in ``defaults`` whose reset to its default value lowers ``estimate(**values)`` the most."""
    return min(defaults, key=lambda name: estimate(**{**values, name: defaults[name]}))


def available_memory(xp):
    """Bytes that arrays of the namespace ``xp`` may still take, or None where that cannot be told.

    CuPy: the free memory of the current GPU, plus what CuPy's memory pool holds unused. Every other backend keeps its
    arrays in host memory: ``MemAvailable`` of ``/proc/meminfo`` (or, without
    it, the physical memory), lowered to what a cgroup v2 memory limit leaves.
    """
    if backend_name(xp) == "cupy":
        import cupy

        free, _ = cupy.cuda.Device().mem_info
        return free + cupy.get_default_memory_pool().free_bytes()  # blocks CuPy holds but may reuse
    return _host_available()


def _host_available():
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    for limit in (_cgroup_room(), _address_space_room()):
        if limit is not None:
            available = min(available, limit)
    return available


def _proc_bytes(path, field):
    """A ``kB`` field of a ``/proc`` file (``MemAvailable`` of ``/proc/meminfo``), in bytes; None where absent."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room():
    """What a cgroup v2 memory limit on this process still allows, or None without one."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            current = int(f.read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - current, 0)


def _address_space_room():
    """What ``RLIMIT_AS`` (``ulimit -v``) still allows this process to map, or None without a limit."""
    try:
        import resource

        limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return None
    if limit == resource.RLIM_INFINITY:
        return None
    return max(limit - (_proc_bytes("/proc/self/status", "VmSize") or 0), 0)  # what is mapped already


def line_corpus_bytes(size, max_seq_len):
    """Memory a line model's corpus of ``size`` bytes takes while read and encoded (the text, its lines, their
    ids as Python lists, the pieces of at most ``max_seq_len``): :data:`LINE_CORPUS_BYTES_PER_BYTE` a byte, more
    for short pieces."""
    return LINE_CORPUS_BYTES_PER_BYTE * size * (1 + 4 / max_seq_len)


def format_bytes(n):
    """``n`` bytes in binary units: ``"512 B"``, ``"3.1 GiB"``, ``"1.7e+11 TiB"`` for absurd sizes."""
    if n > 1e300:  # beyond a float: flags of hundreds of digits
        return "more than 1e+288 TiB"
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if n < 10_000 else f"{n:.2g} {unit}"
