"""Reading a corpus of WikiText-103's size: speed and peak memory of xseq's stream reader (issue 20).

Generates a word corpus (default 500 MB: Zipf-distributed words over a 267,000-word vocabulary, WikiText-103's,
lines of 0-200 words, about 1 in 8 blank), then runs each contender in its own process and reports wall time,
MB/s and peak resident memory (``ru_maxrss`` of the child):

* ``xseq-read``: :meth:`xseq.lm.stream_text.StreamCorpus.from_files` (count the lines, read, count and encode
  the tokens in pieces), the vocabulary, and the ids (int32) -- everything before a model exists;
* ``xseq-train``: ``xseq train CORPUS --level word`` (a small model) until it prints its plan, the line before
  the first window is trained: the reading, the memory checks, the vocabulary, the ids and the model;
* ``torch-example`` (when torch is installed): the reading of PyTorch's ``word_language_model`` example
  (its ``data.Corpus``: a dictionary built line by line, then every line's ids as a tensor, concatenated),
  written again here, the peer.

``xseq-read-1`` is the same with one process (``workers=1``). Each contender runs ``--rounds`` times (default 3),
in turns; the table gives medians of the wall time (the process's whole life, interpreter and imports included:
what the MB/s column divides by) and of the reading alone. Targets (issue 20): read, counted
and encoded at >= 20 MB/s with a peak resident memory of at most 3 GB.

    python benchmarks/bench_corpus.py [--mb 500] [--rounds 3] [--corpus PATH] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import report  # noqa: E402

VOCABULARY = 267_735  # WikiText-103's vocabulary
TARGET_MB_S = 20.0
TARGET_PEAK_GB = 3.0


def generate(path, megabytes, seed=0):
    """Write a word corpus of about ``megabytes`` MB to ``path``, deterministically, in chunks."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" if i % 7 else f"word{i}" for i in range(VOCABULARY)])
    target = int(megabytes * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            ranks = rng.zipf(1.1, size=2_000_000)
            ranks = ranks[ranks <= VOCABULARY] - 1
            lengths = rng.integers(0, 200, size=len(ranks) // 100)
            lengths[rng.random(len(lengths)) < 0.125] = 0
            ends = np.cumsum(lengths)
            ends = ends[ends <= len(ranks)]
            tokens = words[ranks[:ends[-1]]]
            lines = [" ".join(line) for line in np.split(tokens, ends[:-1])]
            text = " \n".join(lines) + " \n"  # WikiText's lines end with a space
            f.write(text)
            written += len(text.encode("utf-8"))
    return Path(path).stat().st_size


def contender_xseq_read(corpus, workers=None):
    from xseq.lm.usage import MAX_READING_WORKERS
    from xseq.lm.stream_text import StreamCorpus

    if workers is None:  # as xseq train chooses in one process
        workers = min(MAX_READING_WORKERS, len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    text = StreamCorpus.from_files(corpus, level="word", val_fraction=0.01, workers=workers)
    vocab = text.vocabulary()
    train, val = text.ids(vocab)
    return {"seconds": time.perf_counter() - start, "tokens": int(train.size + val.size), "vocab": len(vocab)}


def contender_torch_example(corpus):
    import torch

    start = time.perf_counter()
    index, words = {}, []
    with open(corpus, encoding="utf-8") as f:  # its Dictionary: every word of every line, and <eos>
        for line in f:
            for word in line.split() + ["<eos>"]:
                if word not in index:
                    index[word] = len(words)
                    words.append(word)
    ids = []
    with open(corpus, encoding="utf-8") as f:  # its tokenize(): one tensor a line, then one cat
        for line in f:
            ids.append(torch.tensor([index[w] for w in line.split() + ["<eos>"]], dtype=torch.int64))
    stream = torch.cat(ids)
    return {"seconds": time.perf_counter() - start, "tokens": int(stream.numel()), "vocab": len(words)}


def run_contender(name, corpus):
    """One contender in a fresh process: its result, wall time and peak resident memory."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if name == "xseq-train":
        with tempfile.TemporaryDirectory() as tmp:
            argv = [sys.executable, "-m", "xseq", "train", str(corpus), "--level", "word", "--steps", "1",
                    "--hidden", "32", "--batch", "20", "--bptt", "20", "--val-fraction", "0.01", "--vocab-size",
                    "50000", "--samples", "0", "--out", str(Path(tmp) / "m.npz")]
            result = _until_training_starts(argv, env)
    else:
        argv = [sys.executable, __file__, "--child", name, "--corpus", str(corpus)]
        result = _measured(argv, env)
        result.update(json.loads(result.pop("stdout").strip().splitlines()[-1]))
    return result


def _measured(argv, env):
    """Run ``argv``; its wall time and peak resident memory (``ru_maxrss`` of the children: this process runs one
    contender, see :func:`one_round`, so it is that contender's)."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"wall": wall, "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "stdout": done.stdout}


def _until_training_starts(argv, env):
    """Run ``xseq train`` until it prints its plan (the line before the first window is trained), then end it:
    the time to that line and the peak resident memory until then."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("training "):
                break
        else:
            raise RuntimeError(f"{' '.join(argv)} ended before training: {process.stderr.read()[-2000:]}")
        wall = time.perf_counter() - start
    finally:
        process.kill()
        process.communicate()
    return {"wall": wall, "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "stdout": ""}


def _gb(kilobytes):
    return kilobytes * 1024 / 1e9


def one_round(name, corpus):
    """Run one contender from a fresh process, so that ru_maxrss of the children is that contender's alone."""
    done = subprocess.run([sys.executable, __file__, "--round", name, "--corpus", str(corpus)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=500.0, help="size of the generated corpus (default 500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", help="use this corpus instead of generating one")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpus")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--round", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = {"xseq-read": contender_xseq_read, "xseq-read-1": lambda c: contender_xseq_read(c, workers=1),
                  "torch-example": contender_torch_example}[args.child](args.corpus)
        print(json.dumps(result))
        return 0
    if args.round:
        result = run_contender(args.round, args.corpus)
        result.pop("stdout", None)
        print(json.dumps(result))
        return 0

    for line in report.machine_lines():
        print(line)
    workdir = tempfile.mkdtemp(prefix="xseq-corpus-")
    corpus = Path(args.corpus) if args.corpus else Path(workdir) / "corpus.txt"
    if not args.corpus:
        start = time.perf_counter()
        generate(corpus, args.mb)
        print(f"generated {corpus} in {time.perf_counter() - start:.1f} s")
    size = corpus.stat().st_size
    print(f"corpus: {size / 1e6:.1f} MB")
    contenders = ["xseq-read", "xseq-read-1", "xseq-train"]
    try:
        import torch  # noqa: F401

        contenders.append("torch-example")
    except ImportError:
        print("torch is not installed: the torch-example contender is left out")
    results = {name: [] for name in contenders}
    try:
        for round_ in range(args.rounds):
            for name in contenders[round_ % len(contenders):] + contenders[:round_ % len(contenders)]:
                results[name].append(one_round(name, corpus))
                last = results[name][-1]
                print(f"round {round_ + 1}: {name}: {last['wall']:.1f} s, peak {_gb(last['peak_kb']):.2f} GB",
                      flush=True)
    finally:
        if not args.keep and not args.corpus:
            corpus.unlink(missing_ok=True)
            os.rmdir(workdir)
    counted = {name: {r["tokens"] for r in results[name]} for name in contenders if "tokens" in results[name][0]}
    if len({n for ns in counted.values() for n in ns}) != 1:
        raise SystemExit(f"check failed: the contenders read different numbers of tokens: {counted}")
    print(f"check: every contender read the same {next(iter(counted['xseq-read'])):,} tokens (<eos> included)")
    rows = []
    peer = statistics.median(r["wall"] for r in results["torch-example"]) if "torch-example" in results else None
    for name in contenders:
        wall = statistics.median(r["wall"] for r in results[name])
        inside = [r["seconds"] for r in results[name] if "seconds" in r]
        reading = f"{statistics.median(inside):.1f}" if inside else "-"
        peak = _gb(statistics.median(r["peak_kb"] for r in results[name]))
        ratio = "" if peer is None else f"{wall / peer:.2f}"
        rows.append([name, f"{wall:.1f}", reading, f"{size / 1e6 / wall:.1f}", f"{peak:.2f}", ratio])
    print("\n".join(report.markdown_table(["contender", "wall s", "reading s", "MB/s (wall)", "peak RSS GB",
                                           "x torch-example (wall)"], rows, right_from=1)))
    read = results["xseq-read"]
    rate = size / 1e6 / statistics.median(r["wall"] for r in read)  # the process's whole life, imports included
    peak = _gb(max(r["peak_kb"] for r in read + results["xseq-train"]))
    met = rate >= TARGET_MB_S and peak <= TARGET_PEAK_GB
    print(f"targets: read >= {TARGET_MB_S:g} MB/s ({rate:.1f}), peak <= {TARGET_PEAK_GB:g} GB ({peak:.2f} GB): "
          f"{'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
