"""``bench_distributed.py``'s cases -- the character model and Penn Treebank's small model, trained by xseq's
trainers over MPI -- the all-reduce timer, and the check that 2 ranks train what 1 process trains.

* ``char``: what ``xseq train`` trains by default (:class:`xseq.lm.train.Trainer`: a 128-unit LSTM over
  one-hot characters, batches of 32 lines of the built-in first names, Adam, clipping by norm 5).
* ``ptb-small``: Zaremba et al.'s small configuration (:class:`xseq.lm.stream_train.StreamTrainer`: a
  10,000-word vocabulary, embedding 200, a 2 x 200 LSTM, 20 columns, windows of 20 steps, SGD at lr 1,
  clipping by norm 5, weights uniform in +-0.1) on a synthetic stream of words drawn from a Zipf law over
  the vocabulary: a step costs what a step on the real text costs, and no data set is needed.
"""

from __future__ import annotations

import time

import numpy as np

CASES = ("char", "ptb-small")
PTB_VOCABULARY = 10_000  # words, <unk> and <eos>: the paper's 10,000-way softmax
PTB_LINES = 2_000  # lines of 20 words: about 2,100 windows of 20 steps per epoch in 20 columns
PTB_LINE_WORDS = 20


def synthetic_ptb_lines(seed=0):
    """Lines of words ``w0`` ... drawn from a Zipf law (exponent 1.1) over :data:`PTB_VOCABULARY` - 2 words."""
    rng = np.random.default_rng(seed)
    words = PTB_VOCABULARY - 2  # <unk> and <eos> are the two others
    ranks = np.arange(1, words + 1)
    p = ranks ** -1.1
    drawn = rng.choice(words, size=(PTB_LINES, PTB_LINE_WORDS), p=p / p.sum())
    # Every word at least once, so the vocabulary is the whole 10,000.
    drawn.reshape(-1)[:words] = rng.permutation(words)
    return [" ".join(f"w{i}" for i in row) for row in drawn]


def make_trainer(case, comm, dtype="float32", steps=None):
    """The trainer of ``case`` on the ranks of ``comm`` (every rank calls it alike)."""
    if case == "char":
        import xseq
        from xseq.lm.train import TrainConfig, Trainer

        config = TrainConfig(dtype=dtype, steps=steps, seed=0)
        return Trainer(xseq.builtin_corpus(), config, backend="numpy", source="built-in", comm=comm)
    if case == "ptb-small":
        from xseq.lm.stream_train import StreamConfig, StreamTrainer

        config = StreamConfig(level="word", cell="lstm", hidden_size=200, num_layers=2, batch_size=20, bptt=20,
                              optimizer="sgd", lr=1.0, momentum=0.0, clip=5.0, clip_mode="norm", init_scale=0.1,
                              vocab_size=PTB_VOCABULARY + 1, dtype=dtype, steps=steps, seed=0)
        return StreamTrainer(synthetic_ptb_lines(), config, backend="numpy", source="synthetic", comm=comm)
    raise ValueError(f"case must be one of {CASES}; got {case!r}")


class TimedCommunicator:
    """A communicator that adds up the seconds its all-reduces take (waiting for the other ranks included)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.local_rank, self.local_size = comm.local_rank, comm.local_size
        self.description = comm.description
        self.seconds = 0.0
        self.calls = 0
        self.bytes = 0

    def allreduce_sum(self, array):
        started = time.perf_counter()
        summed = self.comm.allreduce_sum(array)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self.bytes += int(np.prod(array.shape)) * array.dtype.itemsize
        return summed

    def broadcast(self, value, root=0):
        return self.comm.broadcast(value, root)

    def barrier(self):
        self.comm.barrier()

    def abort(self, code=1):
        self.comm.abort(code)


def gradient_bytes(trainer):
    """Bytes of one step's gradients: every parameter's size."""
    return sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in trainer.model.parameters().values())


def time_steps(case, comm, steps, warmup):
    """Per-step times of ``case`` on ``comm``'s ranks: the step, its all-reduces, and an isolated all-reduce.

    Returns rank 0's medians in milliseconds (``step``, ``allreduce`` within the step, ``isolated``: a
    buffer of the bytes a step sends summed alone after a barrier, the transfer without waiting for a
    slower rank), the gradients' size in bytes (``bytes``), the median bytes a step's all-reduces send
    (``sent``: 0 on one process) and the all-reduce calls per step.
    """
    timed = TimedCommunicator(comm)
    trainer = make_trainer(case, timed)
    for _ in range(warmup):
        trainer.train_step()
    step_ms, reduce_ms, sent = [], [], []
    calls = timed.calls
    for _ in range(steps):
        comm.barrier()  # every rank starts the step together: what is timed is the step, not the last one's skew
        reduce_before, bytes_before = timed.seconds, timed.bytes
        started = time.perf_counter()
        trainer.train_step()
        step_ms.append((time.perf_counter() - started) * 1e3)
        reduce_ms.append((timed.seconds - reduce_before) * 1e3)
        sent.append(timed.bytes - bytes_before)
    calls = (timed.calls - calls) / steps
    nbytes = gradient_bytes(trainer)
    sent_bytes = int(np.median(sent))
    isolated = []
    # What a step sends (the embedding's gradient travels as the rows of the window's ids), summed alone.
    buffer = np.ones(max(sent_bytes, 1) // np.dtype(trainer.config.dtype).itemsize, dtype=trainer.config.dtype)
    for _ in range(steps if comm.size > 1 else 0):
        comm.barrier()
        started = time.perf_counter()
        comm.allreduce_sum(buffer)
        isolated.append((time.perf_counter() - started) * 1e3)
    return {"step": float(np.median(step_ms)), "allreduce": float(np.median(reduce_ms)),
            "isolated": float(np.median(isolated)) if isolated else 0.0, "bytes": nbytes, "sent": sent_bytes,
            "calls": calls,
            "ranks": comm.size}


def check_steps(case, comm, steps):
    """``steps`` float64 steps of ``case``; the parameters after them, as host arrays."""
    from xseq import to_numpy

    trainer = make_trainer(case, comm, dtype="float64")
    for _ in range(steps):
        trainer.train_step()
    return {k: np.asarray(to_numpy(v)) for k, v in trainer.model.parameters().items()}
