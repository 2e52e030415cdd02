"""Training across processes and GPUs (MPI, NCCL)."""
