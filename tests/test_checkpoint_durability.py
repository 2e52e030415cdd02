"""xseq.lm.checkpoint's durability: the data reaches the disk before the rename, and the rename after it.

Observed through the public save path with ``os.fsync`` and ``os.replace``
wrapped: each call is recorded with the file (device and inode) it acts on,
so the test does not depend on how the writer opens its files.
"""

import os
import stat

import numpy as np
import pytest

from xseq.lm.checkpoint import load_checkpoint, save_checkpoint


def identity(st):
    return st.st_dev, st.st_ino


@pytest.mark.skipif(os.name != "posix", reason="only POSIX lets a program fsync a directory")
def test_save_fsyncs_the_data_before_the_rename_and_the_directory_after_it(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)  # a relative path: the directory to sync is the destination's, not the cwd
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", identity(st), stat.S_ISDIR(st.st_mode)))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", identity(os.stat(src))))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(os.path.join("runs", "m.npz"), arrays={"w": np.arange(3.0)}, meta={})
    monkeypatch.undo()

    destination = tmp_path / "runs" / "m.npz"
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert len(renames) == 1, events
    rename = renames[0]
    written = events[rename][1]
    assert written == identity(os.stat(destination)), "the renamed file is the checkpoint"
    assert ("fsync", written, False) in events[:rename], "the data was not fsync-ed before the rename"
    assert events[-1] == ("fsync", identity(os.stat(tmp_path / "runs")), True), (
        f"the last fsync is not of the destination's directory after the rename: {events}")
    assert load_checkpoint(destination)[0]["w"].tolist() == [0.0, 1.0, 2.0]
