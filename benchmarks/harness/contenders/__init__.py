"""What the benchmarks time, one module per benchmark.

* ``naive``: the course's LSTM and RNN as a reader of the course writes them (NumPy);
* ``cpu``: ``bench_cpu.py``'s contenders (naive, xseq, torch) and its check;
* ``gpu``: ``bench_gpu.py``'s contenders (xseq's fused CuPy paths, its array-API path, cuDNN) and its check;
* ``lm``: ``lm_vs_torch.py``'s PyTorch trainer and its first-step check.

A contender is built for one case and returns what the method times (a step
function, or a whole run) together with a way to read what it computed, which
the checks compare with a reference before anything is timed.
"""
