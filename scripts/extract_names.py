"""Build xseq/lm/data/names.txt, the built-in corpus, from the 1990 US Census name files.

Where the data comes from
-------------------------
The US Census Bureau published the first names of the 1990 census with their
frequencies (files ``dist.male.first`` and ``dist.female.first``). These
files are in the public domain. The ``names`` package by Trey Hunner
(https://github.com/treyhunner/names, MIT licence for the code; the data
files are public domain, as its README says) ships them; this script reads
them from its source distribution ``names-0.3.0.tar.gz`` on PyPI.

What it writes
--------------
Every first name of both files, lower-case (the usual form for a character
language model, and the course's dinosaur-names exercise), deduplicated (a
name in both files appears once) and sorted; one per line, UTF-8, ending in
a newline, no header: 5,163 names of letters a-z.

How to reproduce
----------------
Either let the script fetch the sdist with pip (``--download``; this runs
``python -m pip download --no-deps -d TMPDIR names==0.3.0``)::

    python scripts/extract_names.py --download

or download it yourself and pass its path (the script then uses no network)::

    pip download --no-deps -d /tmp/names names==0.3.0
    python scripts/extract_names.py --sdist /tmp/names/names-0.3.0.tar.gz

Without one of the two options the script downloads nothing and stops. The
sdist's SHA-256 is checked against the one recorded below, so the output is
byte-for-byte the committed file. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "names-0.3.0.tar.gz"
SDIST_SHA256 = "726e46254f2ed03f1ffb5d941dae3bc67c35123941c29becd02d48d0caa2a671"
MEMBERS = ("names-0.3.0/names/dist.male.first", "names-0.3.0/names/dist.female.first")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "xseq" / "lm" / "data" / "names.txt"
# A census line is "NAME  freq  cumulative-freq  rank", e.g. "JAMES   3.318  3.318   1".
LINE = re.compile(r"^([A-Z]+)\s+[0-9.]+\s+[0-9.]+\s+[0-9]+$")


def download_sdist(directory):
    """Fetch the sdist with pip into ``directory``; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(directory), "names==0.3.0"]
    print("running:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    path = Path(directory) / SDIST_NAME
    if not path.is_file():
        raise SystemExit(f"pip did not produce {path}")
    return path


def check_sha256(path):
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{path} has SHA-256 {digest}; expected {SDIST_SHA256} (names 0.3.0 from PyPI)")


def read_names(sdist):
    """The lower-cased first names of both census files in the sdist, as a sorted list."""
    names = set()
    with tarfile.open(sdist, "r:gz") as tar:
        for member in MEMBERS:
            f = tar.extractfile(member)
            if f is None:
                raise SystemExit(f"{sdist} has no file {member}")
            for number, line in enumerate(f.read().decode("ascii").splitlines(), start=1):
                if not line.strip():
                    continue
                match = LINE.match(line.strip())
                if match is None:
                    raise SystemExit(f"{member} line {number} is not a census line: {line!r}")
                names.add(match.group(1).lower())
    return sorted(names)


def write_atomically(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sdist", type=Path, help=f"path of an already downloaded {SDIST_NAME}")
    source.add_argument("--download", action="store_true", help="fetch the sdist with pip into a temporary directory")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        sdist = download_sdist(tmp) if args.download else args.sdist
        if not Path(sdist).is_file():
            raise SystemExit(f"{sdist} does not exist")
        check_sha256(sdist)
        names = read_names(sdist)
    write_atomically(args.output, "".join(name + "\n" for name in names))
    print(f"wrote {len(names)} names to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
