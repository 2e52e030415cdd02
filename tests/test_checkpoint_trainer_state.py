"""A checkpoint's trainer state is checked like its arrays (issue 20).

A saved run is edited in one field at a time into something no run writes:
an optimizer step count that is not the run's (10**40), a NaN among the
losses or in the validation history, negative Adam second moments, counters
that disagree with each other or with the corpus. Each one is refused on
resume with a CheckpointError naming the field (the command line: one line,
exit 2), never trained on until the loss diverges and ``--lr`` is blamed.
And ``--init-scale`` is bounded for the dtype, so that a first forward pass
cannot overflow.
"""

import numpy as np
import pytest

from xseq.distributed import ExampleDropout
from xseq.lm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xseq.lm.cli import main
from xseq.lm.stream_model import StreamLM
from xseq.lm.stream_train import StreamConfig, StreamTrainer, max_init_scale, window
from xseq.lm.train import TrainConfig, Trainer
from xseq.nn.optim import SGD, Adam

from .test_checkpoint_hostile import LINES, RUN, change_training_state
from .test_word_lm import LINES as WORDS
from .test_word_lm import one_line_error

# 11 training names in batches of 4: 3 steps per epoch; the run is saved at step 4, one batch into epoch 2.
LINE_STEP = 4
# test_word_lm's corpus in 3 columns of 59 tokens, windows of 4: 15 windows per epoch; saved at window 17, two
# windows into epoch 2.
STREAM = StreamConfig(level="word", hidden_size=8, batch_size=3, bptt=4, steps=17, lr_decay=0.5, decay_after=1)


@pytest.fixture
def line_run(tmp_path):
    path = tmp_path / "line_run.npz"
    Trainer(LINES, RUN, backend="numpy").run(out=path)
    return path


@pytest.fixture
def stream_run(tmp_path):
    path = tmp_path / "stream_run.npz"
    trainer = StreamTrainer(WORDS, STREAM, backend="numpy")
    trainer.run(out=path)
    assert (trainer.epoch, trainer.batch_in_epoch) == (1, 2)
    return path


def change_arrays(path, change):
    """Let ``change(arrays)`` edit the arrays saved at ``path`` (copies, so they may be written)."""
    arrays, meta = load_checkpoint(path)
    arrays = {name: value.copy() for name, value in arrays.items()}
    change(arrays)
    save_checkpoint(path, arrays=arrays, meta=meta)


def set_entry(name, index, value):
    def change(arrays):
        arrays[name][index] = value
    return change


# Edits that every trainer's state must refuse: (edit of the training state or None, edit of the arrays or
# None, what the message says). The stream trainer's step unit is a window; its token count tokens_seen.
COMMON = {
    "Adam step 10**40": (lambda s: s["optimizer"].update(step=10**40), None,
                         r"optimizer\['step'\] is 1000.*; expected {step}, the run's step count"),
    "Adam step one behind": (lambda s: s["optimizer"].update(step=s["step"] - 1), None,
                             r"optimizer\['step'\] is {behind}; expected {step}, the run's step count"),
    "Adam step a bool": (lambda s: s["optimizer"].update(step=True), None, r"optimizer\['step'\] is True"),
    "beta2 of another run": (lambda s: s["optimizer"].update(beta2=0.5), None,
                             r"optimizer\['beta2'\] is 0.5; expected 0.999, the setting the run was built with"),
    "eps NaN": (lambda s: s["optimizer"].update(eps=float("nan")), None, r"optimizer\['eps'\] is nan; expected 1e-08"),
    "a learning rate of another run": (lambda s: s["optimizer"].update(lr=123.0), None,
                                       r"optimizer\['lr'\] is 123.0; expected .*, the learning rate of the run's "),
    "NaN loss": (None, set_entry("train/losses", 2, np.nan),
                 r"array 'train/losses'\[2\] is nan; expected a finite loss >= 0 \(nats per token\); 1 of the "),
    "infinite loss": (None, set_entry("train/losses", 0, np.inf), r"array 'train/losses'\[0\] is inf"),
    "negative loss": (None, set_entry("train/losses", 1, -0.5), r"array 'train/losses'\[1\] is -0.5"),
    "negative second moments": (None, set_entry("optim/v/Wy", (0, 0), -2.0),
                                r"optimizer state\['v/Wy'\] holds negative values \(1 of \d+, the least -2.0\); "
                                r"expected second moments >= 0"),
    "NaN first moments": (None, set_entry("optim/m/by", 0, np.nan),
                          r"optimizer state\['m/by'\] holds NaN or infinite values \(1 of \d+\)"),
    "NaN val_loss": (lambda s: s["history"][0].update(val_loss=float("nan")), None,
                     r"history\[0\]\['val_loss'\] is nan; expected a finite number >= 0"),
    "infinite train_loss": (lambda s: s["history"][0].update(train_loss=float("inf")), None,
                            r"history\[0\]\['train_loss'\] is inf; expected a finite number >= 0"),
    "negative val_loss": (lambda s: s["history"][0].update(val_loss=-1.0), None,
                          r"history\[0\]\['val_loss'\] is -1.0; expected a finite number >= 0"),
    "an epoch not its step's": (lambda s: s["history"][0].update(epoch=7.0), None,
                                r"history\[0\]\['epoch'\] is 7.0; expected 1, the epoch of its step {per_epoch} "
                                r"with {per_epoch} steps per epoch"),
    "seconds running backwards": (lambda s: s["history"][0].update(seconds=s["history"][1]["seconds"] + 1), None,
                                  r"history\[1\]\['seconds'\] is .*; expected a finite number >= [1-9]"),
    "a corpus line count not the corpus's": (lambda s: s["corpus"].update(sequences=99), None,
                                             r"corpus\['sequences'\] is 99; expected {lines}, the lines of the corpus"),
}


def refused(path, resume, change_state, change_array, message):
    if change_state is not None:
        change_training_state(path, change_state)
    if change_array is not None:
        change_arrays(path, change_array)
    with pytest.raises(CheckpointError, match=r"run.npz' has an invalid training state: " + message):
        resume(path)


@pytest.mark.parametrize("case", COMMON)
def test_the_line_trainer_refuses(line_run, case):
    change_state, change_array, message = COMMON[case]
    message = message.format(step=LINE_STEP, behind=LINE_STEP - 1, per_epoch=3, lines=len(LINES))
    refused(line_run, lambda path: Trainer.resume(path, LINES, backend="numpy"), change_state, change_array,
            message)


@pytest.mark.parametrize("case", COMMON)
def test_the_stream_trainer_refuses(stream_run, case):
    change_state, change_array, message = COMMON[case]
    message = message.format(step=17, behind=16, per_epoch=15, lines=len(WORDS)).replace("steps per", "windows per")
    # The stream trainer's unit is a window.
    refused(stream_run, lambda path: StreamTrainer.resume(path, WORDS, backend="numpy"), change_state,
            change_array, message)


@pytest.mark.parametrize("kind", ["line", "stream"])
def test_the_tokens_seen_are_those_of_the_steps_taken(request, kind):
    """One token more than the run counted (its count is the count of the trainer that wrote it)."""
    path = request.getfixturevalue(f"{kind}_run")
    key, resume, position = {
        "line": ("chars_seen", lambda: Trainer.resume(path, LINES, backend="numpy"),
                 r"epoch 1 x 3 steps per epoch \+ batch_in_epoch 1"),
        "stream": ("tokens_seen", lambda: StreamTrainer.resume(path, WORDS, backend="numpy"),
                   r"epoch 1 x 15 windows per epoch \+ batch_in_epoch 2")}[kind]
    counted = load_checkpoint(path)[1]["trainer"][key]
    change_training_state(path, lambda s: s.update({key: counted + 1}))
    with pytest.raises(CheckpointError, match=rf"{key} is {counted + 1}; expected {counted}, the tokens predicted "
                                              rf"in {position}"):
        resume()


def test_a_validation_line_count_not_the_validation_corpus_is_refused(stream_run):
    change_training_state(stream_run, lambda s: s["validation"].update(sequences=1))
    with pytest.raises(CheckpointError, match=r"validation\['sequences'\] is 1; expected 4, the lines of the "):
        StreamTrainer.resume(stream_run, WORDS, backend="numpy")


def test_an_sgd_momentum_that_is_not_finite_is_refused(tmp_path):
    path = tmp_path / "run.npz"
    Trainer(LINES, TrainConfig(hidden_size=8, batch_size=4, steps=2, optimizer="sgd"), backend="numpy").run(out=path)
    change_arrays(path, set_entry("optim/velocity/Wy", (1, 1), -np.inf))
    with pytest.raises(CheckpointError, match=r"optimizer state\['velocity/Wy'\] holds NaN or infinite values"):
        Trainer.resume(path, LINES, backend="numpy")


def test_the_stream_learning_rate_follows_the_schedule_at_every_kind_of_stop(tmp_path):
    """Saved before any step, mid-epoch and at an epoch's end (the rate of the epoch just finished)."""
    config = StreamConfig(level="word", hidden_size=8, batch_size=3, bptt=4, epochs=3, lr_decay=0.5,
                          decay_after=1, optimizer="sgd")
    straight = StreamTrainer(WORDS, config, backend="numpy")
    straight.run()
    for steps in (0, 5, 15, 17, 30):
        path = tmp_path / f"at{steps}.npz"
        trainer = StreamTrainer(WORDS, config, backend="numpy")
        while trainer.step < steps:
            trainer.train_step()
        trainer.save(path)
        resumed = StreamTrainer.resume(path, WORDS, backend="numpy")
        assert resumed.optimizer.lr == trainer.optimizer.lr
        resumed.run()
        assert resumed.losses == straight.losses


def test_the_cli_refuses_a_step_of_10_to_the_40(tmp_path, line_run, capsys):
    change_training_state(line_run, lambda s: s["optimizer"].update(step=10**40))
    corpus = tmp_path / "names.txt"
    corpus.write_text("\n".join(LINES) + "\n")
    assert main(["train", str(corpus), "--resume", str(line_run), "--backend", "numpy", "--steps", "6",
                 "--out", str(tmp_path / "next.npz")]) == 2
    one_line_error(capsys, "run.npz", "optimizer['step'] is 1000", "expected 4, the run's step count")
    assert not (tmp_path / "next.npz").exists()


def test_the_cli_blames_negative_moments_on_the_file_not_on_the_learning_rate(tmp_path, stream_run, capsys):
    change_arrays(stream_run, lambda arrays: arrays.update({"optim/v/Wy": -np.abs(arrays["optim/v/Wy"]) - 1}))
    corpus = tmp_path / "words.txt"
    corpus.write_text("\n".join(WORDS) + "\n")
    assert main(["train", str(corpus), "--resume", str(stream_run), "--backend", "numpy", "--steps", "20",
                 "--samples", "0", "--out", str(tmp_path / "next.npz")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--lr" not in err and "diverged" not in err
    assert "invalid training state: optimizer state['v/Wy'] holds negative values" in err


def test_valid_runs_of_both_trainers_still_resume(line_run, stream_run):
    assert Trainer.resume(line_run, LINES, backend="numpy", steps=6).run() is True
    assert StreamTrainer.resume(stream_run, WORDS, backend="numpy", steps=20).run() is True


def test_adam_itself_refuses_second_moments_below_zero():
    params = {"W": np.ones(3)}
    adam = Adam(params)
    adam.step({"W": np.full(3, 0.5)})
    state = adam.state_dict()
    with pytest.raises(ValueError, match=r"state\['v/W'\] holds negative values \(1 of 3, the least -1e-09\)"):
        Adam(params).load_state_dict({**state, "v/W": np.array([0.1, -1e-9, 0.0])})
    with pytest.raises(ValueError, match=r"state\['m/W'\] holds NaN or infinite values \(2 of 3\)"):
        Adam(params).load_state_dict({**state, "m/W": np.array([np.nan, 0.0, -np.inf])})
    Adam(params).load_state_dict({**state, "v/W": np.array([0.0, -0.0, 1.0])})  # -0.0 is no negative value
    sgd = SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"state\['velocity/W'\] holds NaN or infinite values \(1 of 3\)"):
        sgd.load_state_dict({**sgd.state_dict(), "velocity/W": np.array([1.0, np.nan, -1.0])})


# ---------------------------------------------------------------------- --init-scale


def first_pass(model, trainer):
    """The first window's loss and gradients of ``model`` on ``trainer``'s data, with overflow an error."""
    inputs, targets = window(trainer.train_data, 0, trainer.config.bptt)
    model.dropout_rng.start_step(range(inputs.shape[0]))
    with np.errstate(over="raise", invalid="raise"):
        return model.loss_and_backward(inputs, targets, None, training=True)[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell, dropout", [("lstm", 0.0), ("gru", 0.5), ("rnn", 0.0)])
def test_the_largest_init_scale_does_not_overflow_and_ten_times_it_does(dtype, cell, dropout):
    config = dict(level="word", hidden_size=16, batch_size=3, bptt=4, cell=cell, num_layers=2, dropout=dropout,
                  dtype=dtype)
    bound = max_init_scale(dtype, 16, 16, dropout)
    trainer = StreamTrainer(WORDS, StreamConfig(**config, init_scale=bound), backend="numpy")
    assert np.isfinite(first_pass(trainer.model, trainer))
    # The bound is not loose by orders of magnitude: past it, the model (built directly) overflows.
    beyond = StreamLM(trainer.model.vocab, 16, cell=cell, num_layers=2, dropout=dropout, init_scale=10 * bound,
                      dtype=dtype)
    beyond.layer.dropout_rng = ExampleDropout(beyond.layer.dropout_rng)
    with pytest.raises(FloatingPointError, match="overflow"):
        first_pass(beyond, trainer)
    with pytest.raises(ValueError, match=r"init_scale \(--init-scale\) must be <= .* for " + dtype):
        StreamConfig(**config, init_scale=bound * (1 + 1e-6))


@pytest.mark.parametrize("dtype, scale, bound", [("float32", "1e300", "1.15e+18"), ("float32", "1e20", "1.15e+18"),
                                                 ("float64", "1e300", "8.36e+152")])
def test_the_cli_refuses_an_init_scale_beyond_the_dtype(tmp_path, capsys, dtype, scale, bound):
    corpus = tmp_path / "words.txt"
    corpus.write_text("\n".join(WORDS) + "\n")
    assert main(["train", str(corpus), "--level", "word", "--init-scale", scale, "--dtype", dtype, "--steps", "1",
                 "--out", str(tmp_path / "m.npz")]) == 2
    one_line_error(capsys, "--init-scale", f"must be <= {bound} for {dtype} with embed_size 128, hidden_size 128",
                   f"got {float(scale)!r}")
    assert not (tmp_path / "m.npz").exists()


def test_float64_takes_scales_float32_cannot():
    assert StreamConfig(init_scale=1e100, dtype="float64").init_scale == 1e100
    with pytest.raises(ValueError, match=r"--init-scale\) must be <= 1.15e\+18 for float32"):
        StreamConfig(init_scale=1e100)
