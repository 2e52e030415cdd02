"""Checkpoints: round trip, atomic replacement, and clear errors for every kind of bad file."""

import json
import os
import pickle

import numpy as np
import pytest

import xseq
from xseq.lm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xseq.lm.files import atomic_write
from xseq.lm.vocab import Vocabulary


def leftovers(directory, keep):
    return sorted(set(os.listdir(directory)) - set(keep))


def test_round_trip(tmp_path):
    vocab = Vocabulary.from_text(["zoë", "amy"])
    arrays = {
        "params/Wax": np.arange(6, dtype=np.float32).reshape(3, 2),
        "params/by": np.zeros((4, 1)),
        "opt/step": 7,
        "opt/kind": "Adam",
        "mask": np.array([True, False]),
        "ids": [[1, 2], [3, 4]],
    }
    meta = {"model": "lstm", "n_a": 50, "loss": [3.2, float("nan")], "vocab": vocab.to_json(), "note": "日本"}
    path = tmp_path / "model.npz"
    save_checkpoint(path, arrays=arrays, meta=meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert set(loaded) == set(arrays)
    for name, value in arrays.items():
        assert isinstance(loaded[name], np.ndarray)
        np.testing.assert_array_equal(loaded[name], np.asarray(value))
        assert loaded[name].dtype == np.asarray(value).dtype
    assert loaded_meta["model"] == "lstm" and loaded_meta["n_a"] == 50 and loaded_meta["note"] == "日本"
    assert loaded_meta["loss"][0] == 3.2 and np.isnan(loaded_meta["loss"][1])
    assert Vocabulary.from_json(loaded_meta["vocab"]) == vocab
    assert leftovers(tmp_path, ["model.npz"]) == []


def test_backend_arrays_come_back_as_numpy(tmp_path, xp):
    a = xseq.asarray(np.arange(4.0), backend=xp, dtype="float32")
    save_checkpoint(tmp_path / "c.npz", arrays={"a": a}, meta={})
    loaded, meta = load_checkpoint(tmp_path / "c.npz")
    assert meta == {}
    assert isinstance(loaded["a"], np.ndarray) and loaded["a"].dtype == np.float32
    np.testing.assert_array_equal(loaded["a"], np.arange(4.0))


def test_path_is_used_as_given(tmp_path):
    save_checkpoint(tmp_path / "ckpt", arrays={}, meta={"a": 1})
    assert os.listdir(tmp_path) == ["ckpt"]
    assert load_checkpoint(str(tmp_path / "ckpt")) == ({}, {"a": 1})


def test_file_mode_follows_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.npz", arrays={}, meta={})
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "c.npz").st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------- atomicity


@pytest.fixture
def old_checkpoint(tmp_path):
    path = tmp_path / "model.npz"
    save_checkpoint(path, arrays={"W": np.ones(3)}, meta={"epoch": 1})
    return path, path.read_bytes()


def test_failure_inside_savez_keeps_the_old_file(old_checkpoint, monkeypatch):
    path, before = old_checkpoint
    real_savez = np.savez

    def savez_then_crash(file, **arrays):
        real_savez(file, **arrays)  # a complete archive is already in the temp file...
        file.write(b"garbage")
        raise RuntimeError("crash in the middle of the save")  # ...but the save is interrupted

    monkeypatch.setattr(np, "savez", savez_then_crash)
    with pytest.raises(RuntimeError, match="crash in the middle"):
        save_checkpoint(path, arrays={"W": np.zeros(3)}, meta={"epoch": 2})
    assert path.read_bytes() == before
    assert leftovers(path.parent, [path.name]) == []
    arrays, meta = load_checkpoint(path)
    assert meta == {"epoch": 1} and np.array_equal(arrays["W"], np.ones(3))


@pytest.mark.parametrize("target", ["fsync", "replace"])
def test_failure_at_fsync_or_rename_keeps_the_old_file(old_checkpoint, monkeypatch, target):
    path, before = old_checkpoint

    def broken(*args):
        raise OSError(f"{target} failed")

    monkeypatch.setattr(os, target, broken)
    with pytest.raises(OSError, match=f"{target} failed"):
        save_checkpoint(path, arrays={"W": np.zeros(3)}, meta={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(path.parent, [path.name]) == []


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def broken(file, **arrays):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "new.npz", arrays={"W": np.ones(2)}, meta={})
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x", interrupted)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_file(old_checkpoint, keep):
    path, before = old_checkpoint
    cut = int(len(before) * keep) if isinstance(keep, float) else (len(before) + keep if keep < 0 else keep)
    path.write_bytes(before[:cut])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_corrupt_array_bytes(old_checkpoint):
    path, before = old_checkpoint
    # Flip bytes inside the stored W array (its float64 ones: 00 00 00 00 00 00 f0 3f).
    at = before.index(np.ones(3).tobytes())
    damaged = bytearray(before)
    damaged[at + 6] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_not_an_archive(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("just some text\n")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    npy = tmp_path / "single.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(CheckpointError, match="single .npy array, not an .npz"):
        load_checkpoint(npy)


def test_missing_meta(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, W=np.ones(3))
    with pytest.raises(CheckpointError, match="has no '__meta__' entry"):
        load_checkpoint(path)


def write_raw(path, header, **arrays):
    meta = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, __meta__=meta, **arrays)


@pytest.mark.parametrize(
    "header, message",
    [
        (
            {"format": "xseq.checkpoint", "format_version": 2, "arrays": [], "meta": {}},
            "format_version 2; this version of xseq reads format_version 1",
        ),
        ({"format": "xseq.checkpoint", "arrays": [], "meta": {}}, "format_version None"),
        ({"format": "other", "format_version": 1, "arrays": [], "meta": {}}, "has format 'other'"),
        ({"format": "xseq.checkpoint", "format_version": 1, "meta": {}}, "lacks its 'arrays' list"),
        (
            {"format": "xseq.checkpoint", "format_version": 1, "arrays": ["W"], "meta": {}},
            "lists array 'W' but does not contain it",
        ),
        ([1, 2], "has format 'list'"),
    ],
)
def test_bad_header(tmp_path, header, message):
    path = tmp_path / "c.npz"
    write_raw(path, header)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_unlisted_entries_and_bad_meta_bytes(tmp_path):
    path = tmp_path / "c.npz"
    write_raw(path, {"format": "xseq.checkpoint", "format_version": 1, "arrays": [], "meta": {}}, extra=np.ones(1))
    with pytest.raises(CheckpointError, match="does not list"):
        load_checkpoint(path)
    np.savez(path, __meta__=np.frombuffer(b"\xff{", dtype=np.uint8))
    with pytest.raises(CheckpointError, match="is not UTF-8 JSON"):
        load_checkpoint(path)
    np.savez(path, __meta__=np.ones(3))
    with pytest.raises(CheckpointError, match="expected the 1-D uint8 bytes"):
        load_checkpoint(path)


class _Marker:
    """Unpickling this would create a file: proof that loading ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_data_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    header = {"format": "xseq.checkpoint", "format_version": 1, "arrays": ["evil"], "meta": {}}
    path = tmp_path / "c.npz"
    evil = np.empty(1, dtype=object)
    evil[0] = _Marker(marker)
    write_raw(path, header, **{"array/evil": evil})
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_save_errors(tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(TypeError, match="meta must be JSON-serialisable"):
        save_checkpoint(path, arrays={}, meta={"f": object()})
    with pytest.raises(TypeError, match="meta must be a dict"):
        save_checkpoint(path, arrays={}, meta=[1])
    with pytest.raises(TypeError, match="arrays must be a dict"):
        save_checkpoint(path, arrays=[np.ones(1)], meta={})
    with pytest.raises(TypeError, match=r"arrays\['o'\] has dtype object"):
        save_checkpoint(path, arrays={"o": np.array([{}], dtype=object)}, meta={})
    with pytest.raises(TypeError, match="non-empty str"):
        save_checkpoint(path, arrays={"": np.ones(1)}, meta={})
    assert os.listdir(tmp_path) == []


def test_checkpoint_error_is_an_exception():
    assert issubclass(CheckpointError, Exception)
