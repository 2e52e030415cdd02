"""xseq.lm.train: the recipe, the validation split, learning, checkpoints and exact resumption."""

import numpy as np
import pytest

import xseq
from xseq.lm.checkpoint import CheckpointError, load_checkpoint
from xseq.lm.model import CharLM
from xseq.lm.train import TrainConfig, Trainer, split_corpus

LINES = xseq.builtin_corpus()[::25]  # 207 names, a-z
SMALL = dict(hidden_size=12, batch_size=16)  # 12 steps per epoch


def trainer(**config):
    return Trainer(LINES, TrainConfig(**{**SMALL, **config}), backend="numpy", source="test names")


def test_split_is_deterministic_and_holds_out_at_least_one():
    train, val = split_corpus(LINES, 0.1, seed=0)
    assert (train, val) == split_corpus(LINES, 0.1, seed=0)
    assert len(val) == round(0.1 * len(LINES)) and sorted(train + val) == sorted(LINES)
    assert split_corpus(LINES, 0.1, seed=1)[1] != val
    assert [len(part) for part in split_corpus(["a", "b"], 0.01, 0)] == [1, 1]
    assert [len(part) for part in split_corpus(["a", "b"], 0.99, 0)] == [1, 1]
    with pytest.raises(ValueError, match="the corpus has 1 sequence; training needs at least 2"):
        split_corpus(["only"], 0.1, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"cell": "cnn"}, "cell must be one of"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ({"hidden_size": 0}, "hidden_size must be >= 1"),
    ({"epochs": 2, "steps": 3}, "give epochs or steps, not both"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"clip": -1.0}, "clip must be >= 0"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"dtype": "float16"}, "dtype must be one of"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_a_short_run_lowers_the_validation_loss():
    t = trainer(hidden_size=24, epochs=4, lr=0.01)
    before = t.validation_loss()
    assert before == pytest.approx(np.log(len(t.model.vocab)), rel=0.05)  # untrained: nearly uniform
    assert t.run() is True
    assert [h["epoch"] for h in t.history] == [1, 2, 3, 4]
    assert t.step == 4 * t.steps_per_epoch == len(t.losses)
    assert t.history[-1]["val_loss"] < before - 0.5
    assert np.mean(t.losses[-5:]) < np.mean(t.losses[:5])


@pytest.mark.parametrize("config", [
    dict(),
    dict(cell="gru", num_layers=2, dropout=0.3),  # exercises the dropout stream
    dict(cell="rnn", optimizer="sgd", lr=0.5, momentum=0.9, clip=0.05, clip_mode="value"),
])
@pytest.mark.parametrize("stop", [17, 24])  # mid-epoch, and at an epoch's end
def test_resuming_gives_exactly_the_uninterrupted_losses(tmp_path, config, stop):
    total = 30
    straight = trainer(steps=total, **config)
    straight.run()

    first = trainer(steps=stop, **config)
    first.run(out=tmp_path / "run.npz")
    resumed = Trainer.resume(tmp_path / "run.npz", LINES, backend="numpy", steps=total)
    assert resumed.step == stop
    resumed.run()

    assert resumed.losses == straight.losses  # bit-identical floats
    assert resumed.chars_seen == straight.chars_seen
    epoch_end = [h for h in straight.history if h["epoch"] == int(h["epoch"])]
    resumed_end = [h for h in resumed.history if h["epoch"] == int(h["epoch"])]
    assert [h["val_loss"] for h in resumed_end] == [h["val_loss"] for h in epoch_end]
    for k, v in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v)


def test_a_stop_request_ends_the_run_saves_it_and_it_resumes(tmp_path):
    straight = trainer(steps=20)
    straight.run()

    t = trainer(steps=20)
    original = t.learn

    def learn_then_stop(sequences):
        loss = original(sequences)
        if len(t.losses) == 6:  # the 7th step is running
            t.stop_requested = True
        return loss

    t.learn = learn_then_stop
    assert t.run(out=tmp_path / "stopped.npz") is False
    assert t.step == 7
    resumed = Trainer.resume(tmp_path / "stopped.npz", LINES, backend="numpy")
    assert resumed.step == 7 and resumed.total_steps == 20
    assert resumed.run() is True
    assert resumed.losses == straight.losses


def test_the_checkpoint_holds_model_optimizer_vocabulary_and_recipe(tmp_path):
    t = trainer(steps=5, seed=3)
    t.run(out=tmp_path / "m.npz")
    arrays, meta = load_checkpoint(tmp_path / "m.npz")
    assert meta["format"] == "xseq.LanguageModel" and meta["format_version"] == 1
    assert meta["model"]["input"] == "one_hot" and meta["trainer"]["kind"] == "line"
    assert xseq.Vocabulary.from_json(meta["vocab"]) == t.model.vocab
    state = meta["trainer"]
    assert state["config"]["seed"] == 3 and state["step"] == 5 and state["optimizer"]["optimizer"] == "Adam"
    assert state["corpus"]["source"] == "test names" and state["corpus"]["sequences"] == len(LINES)
    assert {f"optim/m/{k}" for k in t.model.parameters()} <= set(arrays)
    assert arrays["train/losses"].tolist() == t.losses
    model = CharLM.load(tmp_path / "m.npz")
    for k, v in t.model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


def test_resume_refuses_another_corpus_and_a_model_without_training_state(tmp_path):
    trainer(steps=2).run(out=tmp_path / "m.npz")
    with pytest.raises(CheckpointError, match="was trained on another corpus"):
        Trainer.resume(tmp_path / "m.npz", LINES[:-1], backend="numpy", source="short.txt")
    CharLM(xseq.Vocabulary.from_text(LINES), 4).save(tmp_path / "bare.npz")
    with pytest.raises(CheckpointError, match="no training state"):
        Trainer.resume(tmp_path / "bare.npz", LINES, backend="numpy")


@pytest.mark.parametrize("clip_mode", ["norm", "value"])
def test_a_step_applies_the_clipped_gradients(clip_mode):
    """With a threshold far below the gradients, an SGD step moves every weight by -lr times the clipped gradient."""
    clip, lr = 1e-3, 0.5
    t = trainer(optimizer="sgd", lr=lr, momentum=0.0, clip=clip, clip_mode=clip_mode, dtype="float64")
    batch = t.train_ids[:SMALL["batch_size"]]
    # No dropout, so this backward gives the very gradients learn() is about to clip.
    t.model.sequences_loss_and_backward(batch)
    grads = {k: xseq.to_numpy(g).copy() for k, g in t.model.grads().items()}
    before = t.model.state_dict()
    t.learn(batch)
    after = t.model.state_dict()

    if clip_mode == "norm":
        norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
        assert norm > 50 * clip, "premise: the gradients are far longer than the threshold"
        clipped = {k: g * (clip / norm) for k, g in grads.items()}
    else:
        entries = np.concatenate([g.ravel() for g in grads.values()])
        assert np.mean(np.abs(entries) > clip) > 0.1, "premise: many entries are beyond the threshold"
        clipped = {k: np.clip(g, -clip, clip) for k, g in grads.items()}
    assert after.keys() == clipped.keys()
    for k, p in after.items():
        np.testing.assert_allclose(p - before[k], -lr * clipped[k], rtol=1e-9, atol=1e-15, err_msg=k)
