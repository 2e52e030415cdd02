"""xseq.distributed without MPI: flat buffers and buckets, the single-process communicator, launcher
detection, example-keyed dropout, digests, failure handling, thread defaults, and the NCCL path's logic
with stand-ins for NCCL and CUDA. The same pieces across real MPI processes: tests/test_distributed.py."""

import argparse
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import xseq
from xseq.distributed import (
    Bucket,
    CollectiveWatchdog,
    ExampleDropout,
    NCCLCommunicator,
    SingleProcess,
    abort_on_error,
    allreduce_arrays,
    apply_thread_defaults,
    check_same_on_all_ranks,
    check_settings_agree,
    default_threads,
    digest,
    from_environment,
    gpu_communicator,
    launcher_size,
    pack,
    plan_buckets,
    unpack,
    use_local_gpu,
)
from xseq.distributed.nccl import NCCL_TYPES, _device_buffer

from .distributed_fakes import DeviceArray, FakeCuda, FakeNCCL

# ---------------------------------------------------------------------- buckets, pack, unpack


def arrays_of(xp):
    rng = np.random.default_rng(0)
    host = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,)), "n": np.arange(5, dtype=np.int64),
            "V": rng.normal(size=(2, 2, 2)).astype(np.float32), "c": rng.normal(size=(1, 1))}
    return {k: xp.asarray(v) for k, v in host.items()}


def test_buckets_group_by_dtype_in_order_and_hold_every_array_once():
    arrays = arrays_of(np)
    buckets = plan_buckets(arrays)
    assert [(b.dtype, b.names) for b in buckets] == [("float64", ("W", "b", "c")), ("int64", ("n",)),
                                                      ("float32", ("V",))]
    assert buckets[0].shapes == ((3, 4), (4,), (1, 1)) and buckets[0].nbytes == 17 * 8


def test_buckets_respect_the_byte_limit_and_an_array_larger_than_a_bucket_goes_alone():
    arrays = {"a": np.zeros(10), "big": np.zeros(100), "b": np.zeros(3), "c": np.zeros(5), "d": np.zeros(2)}
    buckets = plan_buckets(arrays, bucket_bytes=80)
    assert [b.names for b in buckets] == [("a",), ("big",), ("b", "c", "d")]
    assert all(b.nbytes <= 80 for b in buckets if len(b.names) > 1)
    assert [b.names for b in plan_buckets(arrays, bucket_bytes=1)] == [(n,) for n in arrays]


@pytest.mark.parametrize("value", [0, -1, 2.5, True, None])
def test_bucket_bytes_is_checked(value):
    with pytest.raises(ValueError, match=f"bucket_bytes must be an int >= 1; got {value!r}"):
        plan_buckets({"a": np.zeros(2)}, bucket_bytes=value)


def test_pack_then_unpack_gives_the_arrays_back(xp):
    arrays = arrays_of(xp)
    for bucket in plan_buckets(arrays):
        flat = pack(arrays, bucket)
        assert flat.ndim == 1 and flat.shape[0] == sum(bucket.sizes)
        for name, value in unpack(flat, bucket).items():
            assert type(value) is type(arrays[name]) and value.dtype == arrays[name].dtype
            np.testing.assert_array_equal(xseq.to_numpy(value), xseq.to_numpy(arrays[name]))


def test_pack_refuses_an_array_that_does_not_fit_the_bucket():
    bucket = Bucket("float64", ("W",), ((3, 4),))
    with pytest.raises(ValueError, match=r"arrays\['W'\] has dtype float32 and shape \(3, 4\); the bucket expects "
                                         r"float64 \(3, 4\)"):
        pack({"W": np.zeros((3, 4), dtype=np.float32)}, bucket)
    with pytest.raises(ValueError, match=r"flat has shape \(11,\); the bucket holds \(12,\)"):
        unpack(np.zeros(11), bucket)


class RecordingCommunicator(SingleProcess):
    """Size 2 in appearance: every all-reduce doubles its array (two ranks holding the same values)."""

    size = 2

    def __init__(self):
        self.calls = []

    def allreduce_sum(self, array):
        self.calls.append((str(array.dtype), tuple(array.shape)))
        return array * 2


def test_allreduce_arrays_sums_with_one_call_per_bucket_and_keeps_the_keys_and_inputs(xp):
    arrays = arrays_of(xp)
    before = {k: np.array(xseq.to_numpy(v), copy=True) for k, v in arrays.items()}
    comm = RecordingCommunicator()
    summed = allreduce_arrays(comm, arrays)
    assert list(summed) == list(arrays)
    assert len(comm.calls) == 3  # float64, int64, float32
    for name in arrays:
        np.testing.assert_array_equal(xseq.to_numpy(summed[name]), 2 * before[name])
        np.testing.assert_array_equal(xseq.to_numpy(arrays[name]), before[name])
    comm.calls.clear()
    allreduce_arrays(comm, arrays, bucket_bytes=8)
    assert len(comm.calls) == 5


@pytest.mark.parametrize("tie", [False, True])
def test_a_stream_step_sends_only_its_windows_embedding_rows_and_gets_the_whole_matrixs_sums(tie):
    """An embedding's gradient is zero outside the rows of the window's ids (on every rank: every rank holds the
    whole window): only those rows travel, and the sums scattered back equal the whole matrix's exactly. A tied
    embedding is also the output matrix, dense: it travels whole."""
    from xseq.lm.stream_train import StreamConfig, StreamTrainer, window

    words = ["the cat sat on the mat", "a dog ran in the park", "the dog sat on a log", "cats and dogs ran far",
             "one two three four five six seven eight nine ten"] * 2
    config = StreamConfig(hidden_size=6, embed_size=6, level="word", bptt=3, batch_size=2, dtype="float64",
                          steps=1, seed=1, tie_weights=tie)
    trainer = StreamTrainer(words, config, backend="numpy", source="words")
    inputs, targets = window(trainer.train_data, 1, config.bptt)
    trainer.model.loss_and_backward(inputs, targets)
    grads = {k: np.array(v, copy=True) for k, v in trainer.model.grads().items()}
    rows = trainer.data.sparse_rows((inputs, targets), trainer.model)
    if tie:
        assert rows is None
        return
    ids = np.unique(inputs)
    assert list(rows) == ["embedding"] and np.array_equal(rows["embedding"], ids)
    V, D = grads["embedding"].shape
    assert 0 < ids.size < V - 5
    untouched = np.setdiff1d(np.arange(V), ids)
    assert not grads["embedding"][untouched].any() and grads["embedding"][ids].any()

    trainer.comm = dense_comm = RecordingCommunicator()
    dense, dense_loss = trainer._reduce(grads, 0.5, 1.25)
    trainer.comm = sparse_comm = RecordingCommunicator()
    sparse, sparse_loss = trainer._reduce(grads, 0.5, 1.25, rows=rows)
    assert list(sparse) == list(dense) and sparse_loss == dense_loss == 2.5
    for name in dense:
        np.testing.assert_array_equal(sparse[name], dense[name], err_msg=name)
    sent = [sum(np.prod(shape) for _, shape in comm.calls) for comm in (dense_comm, sparse_comm)]
    assert sent[0] - sent[1] == (V - ids.size) * D


# ---------------------------------------------------------------------- the single process


def test_single_process_is_the_identity():
    comm = SingleProcess()
    assert (comm.rank, comm.size, comm.local_rank, comm.local_size) == (0, 1, 0, 1)
    a = np.arange(3.0)
    assert comm.allreduce_sum(a) is a
    assert comm.broadcast({"x": 1}) == {"x": 1}
    comm.barrier()
    with pytest.raises(SystemExit) as exited:
        comm.abort(3)
    assert exited.value.code == 3
    check_same_on_all_ranks(comm, "the corpus", "abc")


@pytest.mark.parametrize("root", [1, -1, True, "0"])
def test_broadcast_root_is_checked(root):
    with pytest.raises(ValueError, match=r"root must be a rank, an int with 0 <= root < size = 1"):
        SingleProcess().broadcast(1, root=root)


@pytest.mark.parametrize("value, message", [
    (np.array([True]), "got dtype bool"),
    ([1.0, 2.0], "takes an array; got list"),
])
def test_allreduce_refuses_what_it_cannot_sum(value, message):
    with pytest.raises(TypeError, match=message):
        SingleProcess().allreduce_sum(value)


# ---------------------------------------------------------------------- launchers


@pytest.mark.parametrize("environ, size", [
    ({}, None),
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, None),  # a batch script's plain python
    ({"PMI_SIZE": "4", "PMI_RANK": "1"}, 4),  # MPICH / Intel MPI (Hydra)
    ({"OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "0"}, 8),  # Open MPI
    ({"MV2_COMM_WORLD_SIZE": "2"}, 2),  # MVAPICH
    ({"PMIX_RANK": "0"}, 0),  # PMIx: a rank, the size comes from MPI
])
def test_launcher_size(environ, size):
    assert launcher_size(environ) == size


@pytest.mark.parametrize("environ", [{}, {"PMI_SIZE": "1", "PMI_RANK": "0"}])
def test_without_a_launcher_of_several_processes_it_is_one_process(environ):
    assert isinstance(from_environment(environ), SingleProcess)


def run_python(code, env=None):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_a_launcher_mpi4py_is_not_imported():
    out = run_python("""
        import sys
        from xseq.distributed import from_environment
        print(type(from_environment({})).__name__, "mpi4py" in sys.modules)
    """)
    assert out == "SingleProcess False"


def test_a_launcher_without_mpi4py_warns_and_trains_as_one_process():
    out = run_python("""
        import sys, warnings
        sys.modules["mpi4py"] = None  # as if it were not installed
        from xseq.distributed import from_environment
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            comm = from_environment({"PMI_SIZE": "4", "PMI_RANK": "2"})
        print(type(comm).__name__, "|", caught[0].category.__name__, "|", caught[0].message)
    """)
    kind, category, message = out.split(" | ")
    assert (kind, category) == ("SingleProcess", "RuntimeWarning")
    assert "of 4 processes" in message and "mpi4py is not installed" in message and "xseq[mpi]" in message


# ---------------------------------------------------------------------- dropout that follows the examples


def dropout_layer(cell):
    kind = {"lstm": xseq.LSTM, "gru": xseq.GRU}[cell]
    layer = kind(5, 4, num_layers=3, dropout=0.4, dtype="float64", seed=1)
    layer.dropout_rng = ExampleDropout(layer.dropout_rng)
    return layer


def forward_at_step(layer, x, examples, step):
    """The layer's outputs at training step ``step`` (counted from the stream's start) for ``examples``."""
    layer.dropout_rng.generator = np.random.default_rng(9)
    for _ in range(step):
        layer.dropout_rng.start_step([])
    layer.dropout_rng.start_step(examples)
    return layer.forward(x, training=True)[0]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_examples_dropout_does_not_depend_on_its_batch_or_its_padding(cell):
    """A rank's share of a batch is padded to its own longest sequence: the masks of the steps an example has
    must be the same as in the whole batch, whatever it is batched with."""
    layer = dropout_layer(cell)
    x = np.random.default_rng(2).normal(size=(5, 3, 7))
    whole = forward_at_step(layer, x, [20, 21, 22], step=4)
    part = forward_at_step(layer, x[:, [2, 1], :5], [22, 21], step=4)
    # Equal up to the rounding of products of other shapes; another mask would differ by about 0.1.
    np.testing.assert_allclose(part[:, 1, :], whole[:, 1, :5], rtol=0, atol=1e-14)
    np.testing.assert_allclose(part[:, 0, :], whole[:, 2, :5], rtol=0, atol=1e-14)
    alone = forward_at_step(layer, x[:, [1], :5], [21], step=4)
    np.testing.assert_allclose(alone[:, 0, :], whole[:, 1, :5], rtol=0, atol=1e-14)
    later = forward_at_step(layer, x[:, [1], :5], [21], step=5)
    assert np.abs(later[:, 0, :] - whole[:, 1, :5]).max() > 1e-3


def test_dropout_streams_differ_by_step_example_seed_and_layer_and_the_state_resumes_them():
    def masks(seed=0, steps_before=0, example=0):
        rng = ExampleDropout(np.random.default_rng(seed))
        for _ in range(steps_before):
            rng.start_step([])
        rng.start_step([example])
        return rng.random((6, 1, 5)), rng.random((6, 1, 5))

    first, second = masks()
    assert not np.array_equal(first, second)  # two dropout layers of one step
    for other in (masks(seed=1), masks(steps_before=1), masks(example=1)):
        assert not np.array_equal(first, other[0])
    np.testing.assert_array_equal(first, masks()[0])

    saved = ExampleDropout(np.random.default_rng(0))
    saved.start_step([0])
    state = saved.bit_generator.state
    resumed = ExampleDropout(np.random.default_rng(123))
    resumed.bit_generator.state = state
    for rng in (saved, resumed):
        rng.start_step([3])
    np.testing.assert_array_equal(saved.random((2, 1, 2)), resumed.random((2, 1, 2)))


def test_dropout_says_what_is_missing():
    rng = ExampleDropout(np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="called before start_step"):
        rng.random((2, 1, 3))
    rng.start_step([1, 2])
    with pytest.raises(RuntimeError, match="batch of m = 3 examples was asked for; start_step was given 2"):
        rng.random((2, 3, 3))
    for bad in ([-1], [[0]], [0.5]):
        with pytest.raises(ValueError, match="examples must be a 1-D sequence of ints >= 0"):
            rng.start_step(bad)
    with pytest.raises(TypeError, match="generator must be a numpy.random.Generator; got int"):
        ExampleDropout(0)


# ---------------------------------------------------------------------- digests


def test_digest_sees_names_dtypes_shapes_and_values():
    base = {"a": np.arange(4.0), "b": np.ones((2, 2))}
    same = digest({"b": np.ones((2, 2)), "a": np.arange(4.0)})
    assert digest(base) == same
    for changed in ({**base, "a": np.arange(4.0) + 1e-15 * np.arange(4.0)},
                    {**base, "a": np.arange(4.0, dtype=np.float32)},
                    {**base, "b": np.ones(4)}, {"a2": base["a"], "b": base["b"]}):
        assert digest(changed) != same


# ---------------------------------------------------------------------- failures


class AbortRecorder(SingleProcess):
    size, rank = 3, 1

    def __init__(self):
        self.aborted = None

    def abort(self, code=1):
        self.aborted = code


@pytest.mark.parametrize("raised, code", [(ValueError("bad corpus"), 1), (KeyboardInterrupt(), 130),
                                          (SystemExit(2), 2)])
def test_an_error_on_one_rank_is_printed_with_the_rank_and_aborts_the_job(raised, code):
    comm, out = AbortRecorder(), io.StringIO()
    with abort_on_error(comm, file=out):
        raise raised
    assert comm.aborted == code
    lines = out.getvalue().splitlines()
    assert all(line.startswith("[rank 1/3] ") for line in lines)
    assert lines[-1] == "[rank 1/3] ending all 3 processes of the job"
    if isinstance(raised, ValueError):
        assert "[rank 1/3] ValueError: bad corpus" in lines


def test_a_single_process_and_a_clean_exit_are_not_aborted():
    with pytest.raises(ValueError, match="alone"):
        with abort_on_error(SingleProcess()):
            raise ValueError("alone")
    comm = AbortRecorder()
    with pytest.raises(SystemExit):
        with abort_on_error(comm):
            raise SystemExit(0)
    assert comm.aborted is None


# ---------------------------------------------------------------------- threads


@pytest.mark.parametrize("local_size, cpus, total, expected", [
    (1, 16, 16, 16), (4, 16, 16, 4), (3, 16, 16, 5), (32, 16, 16, 1), (4, 4, 16, 4), (4, 1, 16, 1)])
def test_default_threads_share_the_cores_of_a_node(local_size, cpus, total, expected):
    assert default_threads(local_size, cpus=cpus, total_cpus=total) == expected


class Node(SingleProcess):
    def __init__(self, local_size):
        self.local_size = local_size


def test_thread_defaults_leave_a_single_rank_and_a_users_choice_alone():
    assert apply_thread_defaults(Node(1), environ={}) is None
    assert apply_thread_defaults(Node(2), environ={"OMP_NUM_THREADS": "3"}) is None


def test_thread_defaults_set_numpys_openblas():
    """In a child process, not to change this one's thread pool."""
    out = run_python("""
        import ctypes
        import numpy
        from xseq.distributed import SingleProcess, apply_thread_defaults
        from xseq.distributed.threads import loaded_thread_pools

        class Node(SingleProcess):
            local_size = 64
        libraries = [path for kind, path in loaded_thread_pools() if kind == "openblas"]
        if not libraries:
            print("none")
        else:
            library = ctypes.CDLL(libraries[0])
            getter = next(getattr(library, n) for n in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                                                         "openblas_get_num_threads64_") if hasattr(library, n))
            print(apply_thread_defaults(Node(), environ={}), getter())
    """, env={"OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": "", "MKL_NUM_THREADS": ""})
    if out == "none":
        pytest.skip("NumPy here is not built on OpenBLAS")
    assert out == "1 1"


# ---------------------------------------------------------------------- the NCCL path, with stand-ins


def test_device_arrays_go_to_nccl_on_the_current_stream_and_host_arrays_to_mpi():
    comm = RecordingCommunicator()
    comm.rank, comm.local_rank, comm.local_size = 0, 0, 1
    nccl = NCCLCommunicator(comm, nccl=FakeNCCL, cuda=FakeCuda(1, stream=77))
    assert nccl.comm.args == (2, tuple(range(128)), 0)
    device = DeviceArray(np.zeros((3, 4), dtype=np.float32))
    assert nccl.allreduce_sum(device) is device
    pointer = device.host.ctypes.data
    assert nccl.comm.calls == [("allReduce", pointer, pointer, 12, NCCL_TYPES["f4"], 0, 77)]
    host = np.ones(3)
    np.testing.assert_array_equal(nccl.allreduce_sum(host), 2 * host)  # through MPI, not NCCL
    assert comm.calls == [("float64", (3,))] and len(nccl.comm.calls) == 1


def test_device_buffers_must_be_contiguous_and_of_a_type_nccl_sums():
    with pytest.raises(ValueError, match="must be C-contiguous"):
        _device_buffer("allreduce_sum", DeviceArray(np.zeros((4, 4))[:, ::2]))
    with pytest.raises(TypeError, match="NCCL cannot sum arrays of type '<c16'"):
        _device_buffer("allreduce_sum", DeviceArray(np.zeros(2, dtype=np.complex128)))
    pointer, count, datatype = _device_buffer("x", DeviceArray(np.zeros((2, 5), dtype=np.float64)))
    assert (count, datatype) == (10, NCCL_TYPES["f8"])


def test_one_process_uses_its_gpu_and_stays_the_single_process_communicator():
    cuda = FakeCuda(4)
    comm = SingleProcess()
    assert gpu_communicator(comm, nccl=FakeNCCL, cuda=cuda) is comm
    assert cuda.used == [0]


def test_a_rank_takes_the_gpu_of_its_local_rank_and_nccl_when_every_rank_has_one():
    comm = RecordingCommunicator()
    comm.rank, comm.local_rank, comm.local_size = 1, 1, 2
    cuda = FakeCuda(2)
    made = gpu_communicator(comm, nccl=FakeNCCL, cuda=cuda)
    assert isinstance(made, NCCLCommunicator) and cuda.used == [1] and made.description == "MPI + NCCL"


def test_ranks_that_share_a_gpu_sum_through_the_host_with_a_warning():
    comm = RecordingCommunicator()
    comm.rank, comm.local_rank, comm.local_size = 1, 3, 4
    cuda = FakeCuda(2)
    with pytest.warns(RuntimeWarning, match="4 ranks share the 2 GPUs of this node, and NCCL refuses two ranks "
                                            "on one device"):
        assert gpu_communicator(comm, nccl=FakeNCCL, cuda=cuda) is comm
    assert cuda.used == [1]


def test_without_nccl_the_sums_go_through_the_host_with_a_warning():
    class NoNCCL:
        available = False

    comm = RecordingCommunicator()
    comm.rank, comm.local_rank, comm.local_size = 0, 0, 1
    with pytest.warns(RuntimeWarning, match="NCCL is not available to CuPy"):
        assert gpu_communicator(comm, nccl=NoNCCL, cuda=FakeCuda(1)) is comm


def test_the_local_rank_picks_the_gpu_and_a_machine_without_one_is_left_alone():
    comm = RecordingCommunicator()
    comm.local_rank = 5
    cuda = FakeCuda(4)
    assert use_local_gpu(comm, cuda=cuda) == 1 and cuda.used == [1]
    none = FakeCuda(0)
    assert use_local_gpu(comm, cuda=none) is None and none.used == []


def test_thread_defaults_set_an_openmp_runtimes_threads_too():
    """PyTorch's CPU threads run on its OpenMP runtime (libgomp): limited with NumPy's BLAS."""
    pytest.importorskip("torch", reason="PyTorch brings an OpenMP runtime (libgomp) to limit")
    out = run_python("""
        import torch
        from xseq.distributed import SingleProcess, apply_thread_defaults
        from xseq.distributed.threads import loaded_thread_pools

        class Node(SingleProcess):
            local_size = 64
        kinds = sorted({kind for kind, _ in loaded_thread_pools()})
        print(",".join(kinds), apply_thread_defaults(Node(), environ={}), torch.get_num_threads())
    """, env={"OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": "", "MKL_NUM_THREADS": ""})
    kinds, threads, torch_threads = out.split()
    assert "libgomp" in kinds.split(",") and (threads, torch_threads) == ("1", "1")


def test_a_launcher_whose_mpi_cannot_start_is_one_clear_error():
    """mpi4py is there but its MPI is not (no library, or MPI_Init fails): the command says so, exit 2."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install mpi4py")
    out = run_python("""
        import contextlib, io, sys
        sys.modules["mpi4py.MPI"] = None  # as if its MPI library could not be loaded
        from xseq.distributed import DistributedError, from_environment
        try:
            from_environment({"PMI_SIZE": "2", "PMI_RANK": "0"})
        except DistributedError as exc:
            print(exc)
        from xseq.lm import cli
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            status = cli.main(["evaluate", "model.npz", "corpus.txt"])
        print(status, errors.getvalue().strip())
    """, env={"PMI_SIZE": "2", "PMI_RANK": "0"})
    direct, command = out.splitlines()
    assert direct.startswith("started by an MPI launcher, but MPI cannot start in this process: ")
    assert command.startswith("2 xseq evaluate: error: started by an MPI launcher, but MPI cannot start")


# ---------------------------------------------------------------------- lines that stay whole, the watchdog, agreement


class RecordingRaw(io.RawIOBase):
    """A file descriptor's stand-in that records every write, as the operating system sees them."""

    def __init__(self):
        self.writes = []

    def writable(self):
        return True

    def write(self, data):
        self.writes.append(bytes(data).decode())
        return len(data)


def unbuffered_text(raw):
    """A text stream over ``raw`` as Python's stderr is: no buffer, every ``write`` goes straight through."""
    return io.TextIOWrapper(raw, encoding="utf-8", write_through=True)


def test_an_error_line_reaches_stderr_in_one_write_so_two_ranks_lines_never_glue(monkeypatch):
    """The launcher merges the ranks' stderr as it receives it: a line written in two pieces (``print`` writes the
    text, then the newline) can take another rank's line between them."""
    from xseq.lm import cli

    raw = RecordingRaw()
    monkeypatch.setattr(sys, "stderr", unbuffered_text(raw))
    args = argparse.Namespace(command="train", comm=AbortRecorder())
    cli._error(args, "the corpus is missing")
    assert raw.writes == ["xseq train: error: [rank 1/3] the corpus is missing\n"]


def test_a_ranks_traceback_and_its_last_line_go_out_in_one_write():
    raw = RecordingRaw()
    comm = AbortRecorder()
    with abort_on_error(comm, file=unbuffered_text(raw)):
        raise ValueError("bad corpus")
    assert len(raw.writes) == 1 and raw.writes[0].endswith("[rank 1/3] ending all 3 processes of the job\n")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_watchdog_expires_once_when_one_collective_waits_longer_than_the_timeout():
    clock, expired = Clock(), []
    watchdog = CollectiveWatchdog(10, expired.append, clock=clock)
    clock.now += 1000
    assert not watchdog.check()  # no collective waiting: time between collectives never counts
    watchdog.begin()
    clock.now += 10
    assert not watchdog.check() and expired == []
    watchdog.end()
    watchdog.begin()  # each collective has the whole timeout
    clock.now += 9
    assert not watchdog.check()
    clock.now += 2
    assert watchdog.check() and expired == [11]
    clock.now += 50
    assert not watchdog.check() and expired == [11]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), True, "10"])
def test_the_watchdogs_timeout_is_checked(timeout):
    with pytest.raises(ValueError, match=f"timeout must be a finite number of seconds > 0; got {timeout!r}"):
        CollectiveWatchdog(timeout, print)


class HangingMPI:
    """mpi4py's communicator in appearance; each collective lets ``clock`` run 30 s and the watchdog look."""

    def __init__(self, clock, watchdog):
        self.clock, self.watchdog, self.looked = clock, watchdog, []

    def _hang(self, *args, **kwargs):
        self.clock.now += 30
        self.looked.append(self.watchdog.check())

    Barrier = Allreduce = Bcast = _hang

    def bcast(self, value, root=0):
        self._hang()
        return value


def test_every_mpi_collective_is_timed_by_the_communicators_watchdog():
    from xseq.distributed import MPICommunicator

    clock, expired = Clock(), []
    comm = MPICommunicator.__new__(MPICommunicator)  # no MPI: the collectives are HangingMPI's
    comm.rank, comm.size, comm._MPI = 0, 2, argparse.Namespace(IN_PLACE=None, SUM=None)
    comm.watchdog = CollectiveWatchdog(20, expired.append, clock=clock)
    comm.comm = HangingMPI(clock, comm.watchdog)
    for collective in (comm.barrier, lambda: comm.allreduce_sum(np.ones(2)), lambda: comm.broadcast({"a": 1})):
        comm.watchdog._expired = False
        collective()
    assert comm.comm.looked == [True, True, True] and expired == [30, 30, 30]
    comm.watchdog.begin()
    comm.watchdog.end()
    clock.now += 100
    assert not comm.watchdog.check()


def test_the_trainer_tells_the_watchdog_its_step():
    from xseq.lm.train import TrainConfig, Trainer

    class Watched(RecordingCommunicator):
        watchdog = CollectiveWatchdog(10, print)
        steps = []

        def allreduce_sum(self, array):
            self.steps.append(self.watchdog.step)
            return array

    names = ["anna", "bob", "carla", "dmitri", "eve", "fatima", "gus", "hana", "ivo", "jun"]
    trainer = Trainer(names, TrainConfig(hidden_size=4, batch_size=4, steps=3), backend="numpy", comm=Watched())
    trainer._check_ranks_agree = lambda *args, **kwargs: None  # one process that says it is two
    trainer.comm.broadcast = lambda value, root=0: value
    assert trainer.run() is True
    assert {1, 2, 3} <= set(Watched.steps)


def test_strings_that_differ_are_shown_where_they_differ():
    """A recipe differing in one field: the message shows that field, not the same first characters twice."""
    from xseq.distributed.communicator import _where_they_differ

    a = repr(sorted({"batch_size": 5, "cell": "lstm", "clip": 5.0, "dropout": 0.0, "hidden_size": 16, "lr": 0.003}
                    .items()))
    b = a.replace("16", "24")
    ours, theirs = _where_they_differ(a, b)
    assert ours != theirs and "16" in ours and "24" in theirs
    assert _where_they_differ("short", "other") == ("'short'", "'other'")


def test_check_settings_agree_is_silent_when_every_rank_agrees():
    check_settings_agree(SingleProcess(), "the ranks' options", {"--hidden": 16})
