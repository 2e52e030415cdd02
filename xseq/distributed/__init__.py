"""Training across processes and GPUs: data parallelism over MPI, with NCCL between GPUs.

The pieces of a data-parallel training loop, ChainerMN's way: a communicator
handed to an otherwise unchanged loop.

* :func:`from_environment` -- the job's communicator: :class:`MPICommunicator`
  under ``mpiexec`` (or ``srun``) with several processes, else
  :class:`SingleProcess`; :func:`gpu_communicator` picks each CuPy rank's GPU and
  sums its arrays with NCCL (:class:`NCCLCommunicator`);
* :func:`allreduce_arrays` -- a dict of gradients summed with one all-reduce per
  dtype and bucket (:func:`plan_buckets`, :func:`pack`, :func:`unpack`);
* :class:`ExampleDropout` -- dropout masks that follow the examples, so that a
  run is the same on any number of ranks;
* :func:`check_same_on_all_ranks`, :func:`digest` -- every rank holds the same
  parameters and data;
* :func:`abort_on_error` -- one rank's exception ends the whole job;
  :class:`CollectiveWatchdog` -- so does a collective that waits too long (a
  node's link down, a stopped rank); :func:`check_settings_agree` -- ranks
  started differently stop at the start, told what differs;
* :func:`apply_thread_defaults` -- ranks on one node share its cores.

``import xseq`` never imports ``mpi4py`` or CuPy: they are imported when a
communicator is made, and only under a launcher.
"""

from .buffers import (
    DEFAULT_BUCKET_BYTES,
    Bucket,
    allreduce_arrays,
    pack,
    plan_buckets,
    unpack,
)
from .communicator import (
    Communicator,
    DistributedError,
    MPICommunicator,
    SingleProcess,
    agree_or_raise,
    check_same_on_all_ranks,
    check_settings_agree,
    digest,
    from_environment,
    launcher_size,
)
from .dropout import ExampleDropout
from .failure import abort_on_error, rank_prefix, write_lines
from .nccl import NCCLCommunicator, gpu_communicator, use_local_gpu
from .threads import apply_thread_defaults, default_threads, limit_blas_threads
from .watchdog import DEFAULT_TIMEOUT_S, EXIT_TIMED_OUT, CollectiveWatchdog, end_job, note_step

__all__ = [
    "DEFAULT_BUCKET_BYTES", "DEFAULT_TIMEOUT_S", "EXIT_TIMED_OUT", "Bucket", "CollectiveWatchdog", "Communicator", "DistributedError", "ExampleDropout", "MPICommunicator",
    "NCCLCommunicator", "SingleProcess", "abort_on_error", "agree_or_raise", "allreduce_arrays",
    "apply_thread_defaults", "check_same_on_all_ranks", "check_settings_agree", "default_threads", "digest",
    "end_job", "from_environment", "gpu_communicator", "launcher_size", "limit_blas_threads", "note_step", "pack",
    "plan_buckets", "rank_prefix", "unpack", "use_local_gpu", "write_lines",
]
