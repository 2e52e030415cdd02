"""Crafted checkpoints: every one gives CheckpointError (CLI: exit 2, one line) without costing what it claims.

Each file here is a few kilobytes that declares gigabytes (an array shape, a
zip member's size, a hidden size or a layer count), nests its metadata too
deep, holds a number Python will not convert, is not a regular file, or
carries a training state or weights that would train or sample wrongly.
Memory is bounded two ways: in-process loads run under ``tracemalloc``
(NumPy reports its array buffers to it), and CLI runs get an address-space
limit far below what the files claim, so an allocation of what the file
declares fails with MemoryError (a traceback, exit 1) instead of passing.
"""

import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import xseq
from xseq.lm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xseq.lm.model import CharLM, parameter_shapes  # parameter_shapes: the model's, re-exported
from xseq.lm.train import TrainConfig, Trainer

from .test_cli import NAMES, assert_bad_input, env, xseq_cli

VOCAB = xseq.Vocabulary.from_text(NAMES.split())
GIB = 2**30
# The whole CLI process may map this much: its imports take about 160 MiB, and every crafted
# file given to it claims 4 GiB or more.
ADDRESS_SPACE = GIB
# What an in-process load of a crafted file of a few kilobytes may allocate at its peak.
PEAK_LIMIT = 8 * 2**20


def xseq_cli_bounded(*args, cwd, timeout=120):
    """``python -m xseq ARGS`` with its address space limited to ADDRESS_SPACE (Linux only)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS bounds a process's memory on Linux only")
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run([sys.executable, "-m", "xseq", *map(str, args)], cwd=cwd, env=env(), preexec_fn=limit,
                          capture_output=True, text=True, timeout=timeout, check=False)


def load_with_peak(load, path):
    """Run ``load(path)``, which must raise CheckpointError; returns (the error, peak traced bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            load(path)
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------- crafting files by hand


def npy(header, data=b""):
    """A version 1.0 ``.npy`` file whose header dict is the literal text ``header``, then ``data``."""
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def npy_of(array):
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def meta_member(header):
    """The ``__meta__.npy`` member of a JSON header given as a dict or as raw text."""
    text = header if isinstance(header, str) else json.dumps(header)
    return npy_of(np.frombuffer(text.encode("utf-8"), dtype=np.uint8))


def xseq_header(arrays=(), meta=None):
    return {"format": "xseq.checkpoint", "format_version": 1, "arrays": list(arrays), "meta": meta or {}}


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    """An archive holding ``members`` (name -> bytes) in order."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def declare_size(path, member, size):
    """Make both zip headers of ``member`` declare ``size`` bytes (stored, uncompressed), whatever it holds."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, sizes_at, name_at in ((b"PK\x03\x04", 18, 30), (b"PK\x01\x02", 20, 46)):
        at = data.find(signature)
        while data[at + name_at:at + name_at + len(name)] != name:
            at = data.find(signature, at + 4)
            assert at >= 0, f"no {signature!r} header for {member!r}"
        struct.pack_into("<II", data, at + sizes_at, size, size)
    path.write_bytes(bytes(data))
    return path


def f8_header(shape):
    return f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"


# ---------------------------------------------------------------------- what is not a checkpoint at all


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero (POSIX)")
def test_a_device_is_named_as_one_and_not_read():
    with pytest.raises(CheckpointError, match="'/dev/zero' is a character device, not a regular file"):
        load_checkpoint("/dev/zero")


def test_text_and_empty_files_are_not_zip_archives(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("just some text\n")
    with pytest.raises(CheckpointError, match="'.*notes.npz' cannot be read: it is not a zip archive") as info:
        load_checkpoint(text)
    assert "pickle" not in str(info.value)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="'.*empty.npz' cannot be read: it is empty"):
        load_checkpoint(empty)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX only")
def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    # In subprocesses: with no writer, an ordinary open() waits for ever, and the timeout ends the test.
    for args in (["info", fifo], ["sample", fifo, "--backend", "numpy"]):
        assert_bad_input(xseq_cli(*args, cwd=tmp_path), "model.npz", "is a FIFO (named pipe), not a regular file")


# ---------------------------------------------------------------------- sizes the file cannot back


def test_an_array_shape_beyond_its_data_is_refused_before_allocation(tmp_path):
    path = write_zip(tmp_path / "c.npz", {"__meta__.npy": meta_member(xseq_header(["W"])),
                                          "array/W.npy": npy(f8_header((10**12,)), bytes(64))})
    error, peak = load_with_peak(load_checkpoint, path)
    assert "'array/W.npy' declares shape (1000000000000,) of float64 (8,000,000,000,000 bytes) " \
           "but holds 64 bytes of data" in str(error)
    assert peak < PEAK_LIMIT
    assert_bad_input(xseq_cli_bounded("info", path, cwd=tmp_path), "c.npz", "truncated or corrupt")


@pytest.mark.parametrize("header, data, message", [
    (f8_header((2,)), bytes(64), r"declares shape \(2,\) of float64 \(16 bytes\) but holds 64 bytes"),
    (f8_header((-8,)), bytes(64), r"declares shape \(-8,\)"),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", bytes(8), "holds pickled \\(object\\) data"),
], ids=["more data than the shape", "a negative dimension", "object dtype"])
def test_array_headers_must_describe_their_data(tmp_path, header, data, message):
    path = write_zip(tmp_path / "c.npz", {"__meta__.npy": meta_member(xseq_header(["W"])),
                                          "array/W.npy": npy(header, data)})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_an_unlisted_member_declaring_4_gib_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, arrays={"W": np.ones(3)}, meta={})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("array/extra.npy", npy(f8_header((2**29,)), bytes(64)))
    declare_size(path, "array/extra.npy", 4 * GIB - 2)
    assert path.stat().st_size < 2000
    error, peak = load_with_peak(load_checkpoint, path)
    assert "'array/extra.npy' declares 4,294,967,294 bytes" in str(error)
    assert peak < PEAK_LIMIT
    assert_bad_input(xseq_cli_bounded("info", path, cwd=tmp_path), "c.npz", "declares 4,294,967,294 bytes")


def test_an_unlisted_member_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, arrays={"W": np.ones(3)}, meta={})
    with zipfile.ZipFile(path, "a") as archive:
        # Were it read, its data would not match its shape.
        archive.writestr("array/extra.npy", npy(f8_header((2**29,)), bytes(64)))
    with pytest.raises(CheckpointError, match=r"holds entries its metadata does not list: \['array/extra'\]"):
        load_checkpoint(path)


def test_members_that_overlap_are_refused(tmp_path):
    """Two members whose declared extents share bytes: each fits in the file, together they exceed it."""
    path = tmp_path / "c.npz"
    inner = {"__meta__.npy": meta_member(xseq_header(["A", "B"])), "array/B.npy": npy_of(np.zeros(1000))}
    a_data = npy_of(np.zeros(1000))
    write_zip(path, {"array/A.npy": a_data, **inner})
    # Make A's entry span A's data and everything up to B's end: its size is then still
    # within the file, and only the sum over members shows that bytes are counted twice.
    with zipfile.ZipFile(path) as archive:
        b = archive.getinfo("array/B.npy")
        b_end = b.header_offset + 30 + len(b.filename) + len(b.extra) + b.compress_size
    a_offset = 30 + len("array/A.npy")
    declare_size(path, "array/A.npy", b_end - a_offset)
    with pytest.raises(CheckpointError, match=r"member '[^']+' declares [\d,]+ bytes, [\d,]+ stored at offset"):
        load_checkpoint(path)


def test_compressed_encrypted_and_duplicate_members_are_refused(tmp_path):
    members = {"__meta__.npy": meta_member(xseq_header(["W"])), "array/W.npy": npy_of(np.zeros(1000))}
    path = write_zip(tmp_path / "deflated.npz", members, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="member '__meta__.npy' is compressed; xseq writes and reads "
                                              "uncompressed archives only"):
        load_checkpoint(path)
    path = write_zip(tmp_path / "encrypted.npz", members)
    data = bytearray(path.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            data[at + flags_at] |= 1  # bit 0: encrypted
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="member '__meta__.npy' is encrypted"):
        load_checkpoint(path)
    path = write_zip(tmp_path / "twice.npz", members)
    with zipfile.ZipFile(path, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("array/W.npy", npy_of(np.ones(1000)))
    with pytest.raises(CheckpointError, match="holds the member 'array/W.npy' twice"):
        load_checkpoint(path)


def test_fortran_ordered_empty_and_text_arrays_still_round_trip(tmp_path):
    arrays = {"F": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "E": np.zeros((0, 5), dtype=np.float32),
              "S": np.array(["ab", "c"]), "B": np.array(True)}
    save_checkpoint(tmp_path / "c.npz", arrays=arrays, meta={})
    loaded, _ = load_checkpoint(tmp_path / "c.npz")
    for name, value in arrays.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)
    loaded["F"][0, 0] = 7  # writable, like np.load's arrays


# ---------------------------------------------------------------------- the JSON metadata


@pytest.mark.parametrize("text, message", [
    ("[" * 200_000 + "]" * 200_000, "nests 200000 levels deep; xseq metadata nests at most 64"),
    ('{"format": "xseq.checkpoint", "format_version": 1, "arrays": [], "meta": {"n": ' + "7" * 5000 + "}}",
     "holds a number of more than 64 digits"),
])
def test_metadata_too_deep_or_with_too_long_a_number(tmp_path, text, message):
    path = write_zip(tmp_path / "c.npz", {"__meta__.npy": meta_member(text)})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert_bad_input(xseq_cli_bounded("info", path, cwd=tmp_path), "c.npz", message)


def test_brackets_and_digits_inside_strings_do_not_count(tmp_path):
    meta = {"text": "[{" * 1000 + '\\"' + "9" * 500, "state": 2**128 - 1}
    save_checkpoint(tmp_path / "c.npz", arrays={}, meta=meta)
    assert load_checkpoint(tmp_path / "c.npz") == ({}, meta)


# ---------------------------------------------------------------------- the model: configuration and weights


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_parameter_shapes_are_the_models(cell):
    model = CharLM(VOCAB, 5, cell=cell, num_layers=3)
    assert parameter_shapes(model.config(), len(VOCAB)) == {k: tuple(v.shape) for k, v in model.parameters().items()}
    words = xseq.StreamLM(VOCAB, 5, cell=cell, num_layers=2, embed_size=3)
    assert parameter_shapes(words.config(), len(VOCAB)) == {k: tuple(v.shape) for k, v in words.parameters().items()}


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 2_000_000_000, f"expected (8000000000, {len(VOCAB)}) from cell='lstm', hidden_size=2000000000"),
    ("hidden_size", 60_000, f"expected (240000, {len(VOCAB)}) from cell='lstm', hidden_size=60000"),
    ("num_layers", 3_000, "num_layers = 3000 needs at least 12002 parameter arrays; the checkpoint holds 6"),
    ("num_layers", 100_000, "num_layers = 100000 needs at least 400002 parameter arrays; the checkpoint holds 6"),
])
def test_a_configuration_that_contradicts_the_arrays_is_refused_before_building(tmp_path, field, value, message):
    """hidden_size 128 arrays: building the model the metadata claims would take gigabytes."""
    arrays, meta = CharLM(VOCAB, 128).checkpoint_contents()
    meta["model"][field] = value
    path = tmp_path / "lie.npz"
    save_checkpoint(path, arrays=arrays, meta=meta)
    assert_bad_input(xseq_cli_bounded("info", path, cwd=tmp_path), "lie.npz", "invalid model", message)
    if field == "hidden_size" and value == 60_000:
        corpus = tmp_path / "names.txt"
        corpus.write_text(NAMES)
        for args in (["sample", path], ["evaluate", path, corpus]):
            assert_bad_input(xseq_cli_bounded(*args, "--backend", "numpy", cwd=tmp_path), "lie.npz", message)


def test_a_cell_that_is_not_a_name_is_named_in_the_error(tmp_path):
    arrays, meta = CharLM(VOCAB, 4).checkpoint_contents()
    meta["model"]["cell"] = ["lstm"]
    save_checkpoint(tmp_path / "c.npz", arrays=arrays, meta=meta)
    with pytest.raises(CheckpointError, match=r"cell must be one of \('rnn', 'lstm', 'gru'\); got \['lstm'\]"):
        CharLM.load(tmp_path / "c.npz")


@pytest.mark.parametrize("dtype", ["int64", "bool", "uint8", "float64", "float16"])
def test_parameters_of_another_dtype_are_refused_not_cast(tmp_path, dtype):
    arrays, meta = CharLM(VOCAB, 4).checkpoint_contents()
    arrays["param/Wy"] = (arrays["param/Wy"] * 10).astype(dtype)
    save_checkpoint(tmp_path / "c.npz", arrays=arrays, meta=meta)
    with pytest.raises(CheckpointError, match=f"parameter 'Wy' has dtype {dtype}; expected float32, "
                                              "the checkpoint's dtype"):
        CharLM.load(tmp_path / "c.npz")


@pytest.mark.parametrize("dtype", ["int64", "bool", "uint8"])
def test_load_state_dict_refuses_integer_and_bool_arrays(dtype):
    model = CharLM(VOCAB, 4)
    state = model.state_dict()
    with pytest.raises(TypeError, match=f"state dict entry 'by' has dtype {dtype}; expected float32 or float64"):
        model.load_state_dict({**state, "by": state["by"].astype(dtype)})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_at_load(tmp_path, bad):
    model = CharLM(VOCAB, 4)
    state = model.state_dict()
    state["Wy"][1, 2] = bad
    with pytest.raises(ValueError, match="state dict entry 'Wy' holds 1 NaN or infinite values"):
        model.load_state_dict(state)
    arrays, meta = model.checkpoint_contents()
    arrays["param/Wy"] = state["Wy"]
    path = tmp_path / "nan.npz"
    save_checkpoint(path, arrays=arrays, meta=meta)
    with pytest.raises(CheckpointError, match=r"nan.npz' has an invalid model: .*'Wy' holds 1 NaN or infinite"):
        CharLM.load(path)


def test_a_nan_weight_stops_sample_and_evaluate(tmp_path):
    model = CharLM(VOCAB, 4)
    arrays, meta = model.checkpoint_contents()
    arrays["param/Wy"][0, 0] = np.nan
    path = tmp_path / "nan.npz"
    save_checkpoint(path, arrays=arrays, meta=meta)
    corpus = tmp_path / "names.txt"
    corpus.write_text(NAMES)
    for args in (["sample", path, "--backend", "numpy"], ["evaluate", path, corpus, "--backend", "numpy"],
                 ["info", path]):
        assert_bad_input(xseq_cli(*args, cwd=tmp_path), "nan.npz", "'Wy' holds 1 NaN or infinite values")


# ---------------------------------------------------------------------- the training state of --resume

LINES = NAMES.split()
# 11 training names in batches of 4: 3 steps per epoch, so the run is saved at step 4, one batch into epoch 2.
RUN = TrainConfig(hidden_size=8, batch_size=4, steps=4)


@pytest.fixture
def saved_run(tmp_path):
    path = tmp_path / "run.npz"
    Trainer(LINES, RUN, backend="numpy").run(out=path)
    return path


def change_training_state(path, change):
    """Let ``change(state)`` edit the training state saved at ``path``."""
    arrays, meta = load_checkpoint(path)
    change(meta["trainer"])
    save_checkpoint(path, arrays=arrays, meta=meta)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(batch_in_epoch=999), "batch_in_epoch is 999; expected an int with 0 <= batch_in_epoch < 3"),
    (lambda s: s.update(batch_in_epoch="1"), "batch_in_epoch is '1'; expected an int"),
    (lambda s: s.update(batch_in_epoch=-3), "batch_in_epoch is -3; expected an int"),
    (lambda s: s.update(batch_in_epoch=True), "batch_in_epoch is True; expected an int"),
    (lambda s: s.update(batch_in_epoch=2), r"step 4 is not epoch 1 x 3 steps per epoch \+ batch_in_epoch 2"),
    (lambda s: s.update(epoch=1.0), "epoch is 1.0; expected an int"),
    (lambda s: s["history"][0].pop("step"), r"history\[0\] is .*; expected a record with the keys"),
    (lambda s: s["history"][1].update(step=99), r"history\[1\]\['step'\] is 99; expected an int with 3 <= "),
    (lambda s: s["history"][0].update(val_loss="low"), r"history\[0\]\['val_loss'\] is 'low'; expected a number"),
    (lambda s: s["shuffle_rng"]["state"].update(state=-1),
     r"shuffle_rng\['state'\]\['state'\] is -1; expected an int with 0 <= value < 2\*\*128"),
    (lambda s: s["dropout_rng"].update(bit_generator="MT19937"),
     r"dropout_rng\['bit_generator'\] is 'MT19937'; expected 'PCG64'"),
    (lambda s: s["dropout_rng"].pop("uinteger"), r"dropout_rng is .*; expected an object with the keys"),
    (lambda s: s["config"].update(cell="gru"), r"config\['cell'\] is 'gru'; expected the model's 'lstm'"),
    (lambda s: s["config"].update(hidden_size=16), r"config\['hidden_size'\] is 16; expected the model's 8"),
    (lambda s: s["config"].pop("seed"), r"config is .*; expected the recipe with every field of format "
                                         r"version 1; it lacks \['seed'\]"),
    (lambda s: s.update(chars_seen=-1), "chars_seen is -1; expected an int with 0 <= chars_seen"),
    (lambda s: s.update(seconds=float("nan")), "seconds is nan; expected a finite number >= 0"),
    (lambda s: s["corpus"].update(sequences="12"), r"corpus\['sequences'\] is '12'; expected an int"),
    (lambda s: s.pop("history"), "no entry 'history'"),
])
def test_an_invalid_training_state_is_refused_on_resume(saved_run, change, message):
    change_training_state(saved_run, change)
    with pytest.raises(CheckpointError, match=r"run.npz' has an invalid training state: " + message):
        Trainer.resume(saved_run, LINES, backend="numpy")


def test_non_finite_optimizer_state_and_misshapen_losses_are_refused(saved_run):
    arrays, meta = load_checkpoint(saved_run)
    moments = {**arrays, "optim/m/Wy": arrays["optim/m/Wy"].copy()}
    moments["optim/m/Wy"][0, 0] = np.inf
    save_checkpoint(saved_run, arrays=moments, meta=meta)
    with pytest.raises(CheckpointError, match=r"optimizer state\['m/Wy'\] holds NaN or infinite values"):
        Trainer.resume(saved_run, LINES, backend="numpy")
    save_checkpoint(saved_run, arrays={**arrays, "train/losses": arrays["train/losses"][:, None]}, meta=meta)
    with pytest.raises(CheckpointError, match=r"array 'train/losses' is 'float64 \(4, 1\)'; expected the float "
                                              r"losses of the 4 steps, shape \(4,\)"):
        Trainer.resume(saved_run, LINES, backend="numpy")


def test_the_untouched_run_still_resumes(saved_run):
    trainer = Trainer.resume(saved_run, LINES, backend="numpy", steps=6)
    assert (trainer.step, trainer.epoch, trainer.batch_in_epoch) == (4, 1, 1)
    assert trainer.run() is True and trainer.step == 6


def test_resume_from_the_cli_refuses_a_negative_batch_in_epoch(tmp_path, saved_run):
    change_training_state(saved_run, lambda s: s.update(batch_in_epoch=-3))
    corpus = tmp_path / "names.txt"
    corpus.write_text(NAMES)
    done = xseq_cli("train", corpus, "--resume", saved_run, "--out", tmp_path / "next.npz", "--backend", "numpy",
                    cwd=tmp_path)
    assert_bad_input(done, "run.npz", "batch_in_epoch is -3")
    assert not (tmp_path / "next.npz").exists()


# ---------------------------------------------------------------- the models' shared checks (xseq.nn.params)

def _seq2seq():
    from xseq.seq2seq.model import Seq2Seq

    specials = ["<pad>", "<unk>", "<eos>"]
    return Seq2Seq(xseq.Vocabulary([*specials, *"abc"]), xseq.Vocabulary([*specials, *"xy"]), hidden_size=3,
                   decoder_size=4, embed_size=3, attention_size=3, seed=0)


@pytest.mark.parametrize("make", [lambda: CharLM(VOCAB, 4), _seq2seq], ids=["language-model", "seq2seq"])
@pytest.mark.parametrize("change, message", [
    (dict(format_version=True), "has model format_version True; this version of xseq reads 1"),
    (dict(format_version=2), "has model format_version 2; this version of xseq reads 1"),
    (dict(model=["lstm"]), "invalid model: metadata entry 'model' must be an object; got list"),
])
def test_both_models_refuse_another_version_or_a_configuration_that_is_not_an_object(tmp_path, make, change,
                                                                                     message):
    model = make()
    arrays, meta = model.checkpoint_contents()
    meta.update(change)
    save_checkpoint(tmp_path / "m.npz", arrays=arrays, meta=meta)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        type(model).load(tmp_path / "m.npz")


def test_seq2seq_load_state_dict_wants_a_dict():
    model = _seq2seq()
    with pytest.raises(TypeError, match="must be a dict"):
        model.load_state_dict(list(model.state_dict().items()))


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_layers_refuse_a_dtype_that_is_not_floating(dtype):
    with pytest.raises((TypeError, ValueError), match=dtype):
        xseq.Embedding(10, 4, dtype=dtype)
    with pytest.raises((TypeError, ValueError), match=dtype):
        xseq.Attention(4, 4, dtype=dtype)
