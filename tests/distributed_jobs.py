"""Programs that tests/test_distributed.py runs under ``mpiexec``: ``python -m tests.distributed_jobs JOB [ARGS]``.

Every rank checks what it can see itself and fails (aborting the job) when a check fails; rank 0 prints one
JSON line with what the test compares.
"""

import json
import sys
import warnings

import numpy as np

import xseq
from xseq.distributed import (
    DistributedError,
    MPICommunicator,
    NCCLCommunicator,
    abort_on_error,
    allreduce_arrays,
    check_same_on_all_ranks,
    from_environment,
    gpu_communicator,
)

from .distributed_fakes import DeviceArray, FakeCuda, MPIBackedNCCL


def report(comm, **values):
    if comm.rank == 0:
        print(json.dumps(values), flush=True)


def collectives(comm):
    """Sums, broadcasts and barriers of NumPy arrays (in place) and of other libraries' (through the host)."""
    assert isinstance(comm, MPICommunicator), type(comm)
    a = np.arange(4.0) * (comm.rank + 1)
    summed = comm.allreduce_sum(a)
    assert summed is a  # NumPy: in place, no copy
    strict = xseq.backend("array_api_strict")
    s = comm.allreduce_sum(strict.asarray(np.full(3, float(comm.rank), dtype=np.float32)))
    assert type(s).__module__.startswith("array_api_strict") and s.dtype == strict.float32
    sent = comm.broadcast(np.arange(3.0) if comm.rank == 1 else np.zeros(3), root=1)
    obj = comm.broadcast({"rank": comm.rank, "text": "héllo"}, root=0)
    comm.barrier()
    grads = {"W": np.full((2, 3), comm.rank + 1.0), "n": np.full(2, comm.rank, dtype=np.int64),
             "h": np.full(3, 1.0, dtype=np.float32)}
    reduced = allreduce_arrays(comm, grads, bucket_bytes=16)
    check_same_on_all_ranks(comm, "the job", "same everywhere")
    report(comm, size=comm.size, local=[comm.local_rank, comm.local_size], summed=summed.tolist(),
           strict=np.asarray(s).tolist(), sent=sent.tolist(), obj=obj,
           reduced={k: np.asarray(v).tolist() for k, v in reduced.items()})


def disagree(comm):
    """A value that differs on one rank, and a broadcast of the wrong shape: every rank raises, none hangs."""
    messages = []
    for attempt in (lambda: check_same_on_all_ranks(comm, "the corpus fingerprints", "odd" if comm.rank == 1 else "x"),
                    lambda: comm.broadcast(np.zeros(3 if comm.rank == 1 else 2), root=0)):
        try:
            attempt()
        except DistributedError as exc:
            messages.append(str(exc))
    everyone = comm.comm.gather(messages, root=0)
    report(comm, messages=everyone)


def raises(comm, seconds):
    """The last rank raises while the others wait in an all-reduce that will never complete."""
    import time

    with abort_on_error(comm):
        if comm.rank == comm.size - 1:
            time.sleep(float(seconds))
            raise ValueError("cannot read the corpus on this node")
        comm.allreduce_sum(np.ones(3))
        print("an all-reduce completed without every rank", flush=True)


def nccl(comm, available_on):
    """gpu_communicator over MPI with CUDA and NCCL stand-ins: the unique id exchange, the sums, the fallback."""
    available_on = {int(r) for r in available_on.split(",") if r}
    cuda = FakeCuda(devices=comm.local_size)
    fake = MPIBackedNCCL(comm.comm)
    fake.available = comm.rank in available_on
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = gpu_communicator(comm, nccl=fake, cuda=cuda)
    device = DeviceArray(np.full(5, comm.rank + 1.0, dtype=np.float32))
    summed = made.allreduce_sum(device)
    assert (summed is device) == isinstance(made, NCCLCommunicator)  # NCCL sums in place; the host path copies
    broadcast = made.broadcast(DeviceArray(np.full(2, float(comm.rank))), root=1)
    seen = {"kind": type(made).__name__, "device": cuda.used, "ids": fake.ids,
            "warnings": [str(w.message) for w in caught],
            "sum": np.asarray(summed).tolist(), "broadcast": np.asarray(broadcast).tolist()}
    gathered = comm.comm.gather(seen, root=0)
    if isinstance(made, NCCLCommunicator):
        assert made.description == "MPI + NCCL"
    report(comm, ranks=gathered)


# ---------------------------------------------------------------------- training: the same run on any number of ranks

# 18 names: 16 training sequences and 2 held out, so batches of 5 end each epoch with a batch of 1, which leaves
# ranks 1 and 2 of three (and rank 1 of two) without an example.
NAMES = ["anna", "bob", "carla", "dmitri", "eve", "fatima", "gus", "hana", "ivo", "jun", "kofi", "lena", "mo",
         "nadia", "oskar", "pia", "quinn", "rui"]
WORDS = ("the cat sat on the mat", "a dog ran in the park", "", "the dog sat on a log", "cats and dogs ran",
         "the park is green", "a log in the park", "on the mat sat the cat", "dogs sat", "the end")


def line_config(**recipe):
    from xseq.lm.train import TrainConfig

    return TrainConfig(**{"hidden_size": 6, "batch_size": 5, "dtype": "float64", "steps": 9, "seed": 3, **recipe})


def pair_config(**recipe):
    from xseq.lm.recipe import Seq2SeqConfig

    return Seq2SeqConfig(**{"hidden_size": 4, "decoder_size": 5, "embed_size": 3, "attention_size": 3,
                            "batch_size": 5, "dtype": "float64", "steps": 9, "seed": 6, **recipe})


def stream_config(**recipe):
    from xseq.lm.stream_train import StreamConfig

    return StreamConfig(**{"hidden_size": 6, "embed_size": 5, "level": "word", "bptt": 3, "dtype": "float64",
                           "steps": 9, "seed": 4, "val_fraction": 0.2, **recipe})


#: name -> (trainer kind, recipe): LSTM and GRU, Adam and SGD, clipping by norm and by value, dropout, lines and
#: streams; every step of every run is compared.
RUNS = {
    "lines-lstm-adam-norm-dropout": ("lines", dict(cell="lstm", num_layers=2, dropout=0.3, optimizer="adam",
                                                   clip=0.5, clip_mode="norm")),
    "lines-gru-sgd-value": ("lines", dict(cell="gru", optimizer="sgd", lr=0.5, momentum=0.9, clip=0.05,
                                          clip_mode="value")),
    "stream-lstm-sgd-value-dropout": ("stream", dict(cell="lstm", num_layers=2, dropout=0.2, batch_size=5,
                                                     optimizer="sgd", lr=1.0, clip=0.05, clip_mode="value")),
    # one column: every rank but rank 0 has none
    "stream-gru-adam-norm": ("stream", dict(cell="gru", batch_size=1, optimizer="adam", clip=0.5, clip_mode="norm")),
    # tied weights: the embedding's gradient is dense and travels whole (untied, only the window's rows do)
    "stream-rnn-sgd-tied": ("stream", dict(cell="rnn", embed_size=6, tie_weights=True, batch_size=4, optimizer="sgd",
                                           lr=0.5)),
    # sequence to sequence: 18 training pairs of dates, batches of 5 then 3
    "pairs-lstm-adam-dropout": ("pairs", dict(cell="lstm", dropout=0.2, optimizer="adam", clip=0.5)),
}


def make_trainer(kind, recipe, comm):
    from xseq.lm.stream_train import StreamTrainer
    from xseq.lm.train import Trainer

    if kind == "lines":
        return Trainer(NAMES, line_config(**recipe), backend="numpy", source="names", comm=comm)
    if kind == "pairs":
        from xseq.lm.pairs_data import PairData
        from xseq.lm.trainer import Trainer as OneTrainer
        from xseq.seq2seq.dates import date_pairs

        return OneTrainer(PairData(date_pairs(20, seed=5), pair_config(**recipe), source="dates"), backend="numpy",
                          comm=comm)
    return StreamTrainer(list(WORDS) * 3, stream_config(**recipe), backend="numpy", source="words", comm=comm)


def results(trainer):
    """What a run is compared by: every parameter, every step's loss, every validation loss."""
    return {**{f"param/{k}": np.asarray(xseq.to_numpy(v)) for k, v in trainer.model.parameters().items()},
            "losses": np.asarray(trainer.losses), "val": np.asarray([r["val_loss"] for r in trainer.history])}


def count_examples(model):
    """Make ``model`` count the examples (sequences, or columns) of every batch it learns from."""
    learned = model.loss_and_backward
    model.examples = 0

    def counted(*args, **kwargs):
        first = args[0]
        model.examples += first.shape[1] if first.ndim == 3 else first.shape[0]  # (V, m, T) or (m, T)
        return learned(*args, **kwargs)

    model.loss_and_backward = counted


def train_grid(comm, outdir, size):
    """Every run of :data:`RUNS` on this job's ranks; rank 0 writes each one's results and every rank's share."""
    import os

    from xseq.distributed import SingleProcess

    assert comm.size == int(size) and isinstance(comm, SingleProcess) == (comm.size == 1), (comm, size)
    for name, (kind, recipe) in RUNS.items():
        trainer = make_trainer(kind, recipe, comm)
        count_examples(trainer.model)
        assert trainer.run() is True
        shares = comm.comm.gather(trainer.model.examples, root=0) if comm.size > 1 else [trainer.model.examples]
        if comm.rank == 0:
            np.savez(os.path.join(outdir, f"{name}.npz"), **results(trainer), shares=np.asarray(shares))


# ---------------------------------------------------------------------- the command line, with a fault planted


def cli(comm, fault, rank, step, *argv):
    """``xseq`` with ``Trainer.learn`` of rank ``rank`` raising (``fault`` "raise"), asking to stop ("stop"),
    stopping its own process with SIGSTOP ("sigstop") or taking its node's link down ("link-down": ``eth0`` of
    the network namespace it runs in, see tests/test_two_nodes.py) at step ``step``; the job's exit status is the
    command's."""
    import os
    import signal
    import subprocess

    from xseq.lm import cli as command
    from xseq.lm.stream_train import StreamTrainer
    from xseq.lm.train import Trainer

    def planted(learn):
        def wrapper(self, *args):
            if comm.rank == int(rank) and self.step + 1 == int(step):
                if fault == "raise":
                    raise RuntimeError(f"planted failure at step {self.step + 1}")
                if fault == "sigstop":
                    os.kill(os.getpid(), signal.SIGSTOP)
                elif fault == "link-down":
                    subprocess.run(["ip", "link", "set", "dev", "eth0", "down"], check=True, timeout=30)
                else:
                    self.stop_requested = True
            return learn(self, *args)

        return wrapper

    Trainer.learn = planted(Trainer.learn)
    StreamTrainer.learn = planted(StreamTrainer.learn)
    sys.exit(command.main(list(argv)))


JOBS = {"collectives": collectives, "disagree": disagree, "raises": raises, "nccl": nccl, "train-grid": train_grid}


def main(argv):
    comm = from_environment()
    if argv[0] == "cli":  # the command handles its own failures
        cli(comm, *argv[1:])
    with abort_on_error(comm):
        JOBS[argv[0]](comm, *argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
