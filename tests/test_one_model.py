"""One model and one trainer: every input with every averaging, either input under the line plan, a third plan.

The model (:class:`xseq.LanguageModel`) is configured by its input; the trainer (:class:`xseq.lm.trainer.Trainer`)
takes any plan's data. These tests prove the parts the two plans of the command line do not use: a one-hot model
averaged over streams, an embedding model averaged over tokens with a mask, an embedding model trained by the line
plan, and a plan written here, outside xseq, that trains, saves and resumes exactly.
"""

import dataclasses

import numpy as np
import pytest

import xseq
from xseq.lm.checkpoint import CheckpointError, load_checkpoint
from xseq.lm.lines_data import LineData, share
from xseq.lm.model_schema import parameter_shapes
from xseq.lm.stream_data import StreamData
from xseq.lm.trainer import Trainer

from .helpers import numeric_gradient, relative_error

NAMES = ["anna", "bob", "carla", "dan", "eve", "fay", "gus", "hal", "ida", "jo", "kim", "lea"] * 3
VOCAB = xseq.Vocabulary.from_text(NAMES)


def model_of(input, **kwargs):
    return xseq.LanguageModel(VOCAB, 3, input=input, cell="lstm", dtype="float64", seed=4, **kwargs)


def a_batch(first):
    """Ids (m, T) with a mask leaving out the padding; targets of an embedding model are >= 1 where predicted."""
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, len(VOCAB), size=(3, 5))
    targets = rng.integers(first, len(VOCAB), size=(3, 5))
    mask = np.ones((3, 5), dtype=bool)
    mask[1, 3:] = mask[2, 4:] = False
    targets[~mask] = 0  # padding: <pad>, which only a masked-out position may hold
    return inputs, targets, mask


@pytest.mark.parametrize("input", ["one_hot", "embedding"])
@pytest.mark.parametrize("average", ["tokens", "streams"])
def test_every_input_and_averaging_gives_the_gradient_of_its_loss(input, average):
    model = model_of(input)
    rng = np.random.default_rng(1)
    model.load_state_dict({k: rng.standard_normal(v.shape) * 0.5 for k, v in model.state_dict().items()})
    inputs, targets, mask = a_batch(0 if input == "one_hot" else 1)
    loss, _ = model.loss_and_backward(inputs, targets, mask=mask, average=average, training=False)
    analytic = {k: np.asarray(xseq.to_numpy(g)) for k, g in model.grads().items()}
    total, _ = model.nll(inputs, targets, mask=mask)
    count, m = int(mask.sum()), inputs.shape[0]
    # what is returned: the mean over the predicted tokens, or the sum; the gradients: of the mean, or of sum / m
    assert loss == pytest.approx(total / count if average == "tokens" else total, rel=1e-12)
    divisor = count if average == "tokens" else m

    def objective(arrays):
        model.load_state_dict(arrays)
        return model.nll(inputs, targets, mask=mask)[0] / divisor

    params = model.state_dict()
    for name in params:
        assert relative_error(numeric_gradient(objective, params, name), analytic[name]) < 1e-6, name


def test_masked_positions_change_nothing_and_a_predicted_pad_is_refused():
    """A masked-out position's target is not part of the loss; a predicted <pad> is an embedding model's error."""
    for input in ("one_hot", "embedding"):
        model = model_of(input)
        inputs, targets, mask = a_batch(1)
        before, _ = model.nll(inputs, targets, mask=mask)
        targets[~mask] = 1
        assert model.nll(inputs, targets, mask=mask)[0] == pytest.approx(before, rel=1e-12)
        assert model.nll(inputs, targets)[0] != pytest.approx(before, rel=1e-6)  # unmasked, they count
    targets[1, 4], mask[1, 4] = 0, True
    with pytest.raises(ValueError, match=r"targets\[1\]\[4\] = 0 is <pad> \(id 0\), which an embedding model"):
        model_of("embedding").loss_and_backward(inputs, targets, mask=mask)


def test_the_configuration_names_the_input_and_its_shapes():
    course, words = model_of("one_hot"), model_of("embedding", embed_size=2)
    assert course.config()["input"] == "one_hot" and course.embed_size is None and course.embedding is None
    assert words.config() == {"input": "embedding", "cell": "lstm", "hidden_size": 3, "num_layers": 1,
                              "embed_size": 2, "tie_weights": False, "dropout": 0.0}
    for model in (course, words):
        assert parameter_shapes(model.config(), len(VOCAB)) == {k: tuple(v.shape) for k, v in
                                                                 model.parameters().items()}
    with pytest.raises(ValueError, match="a one-hot input has no embedding"):
        model_of("one_hot", embed_size=3)
    with pytest.raises(ValueError, match="input must be one of"):
        model_of("bag")


def test_a_checkpoint_loads_as_the_model_of_its_input(tmp_path):
    model_of("embedding").save(tmp_path / "w.npz")
    model_of("one_hot").save(tmp_path / "c.npz")
    assert type(xseq.LanguageModel.load(tmp_path / "w.npz")) is xseq.LanguageModel
    assert isinstance(xseq.StreamLM.load(tmp_path / "w.npz"), xseq.StreamLM)
    assert isinstance(xseq.CharLM.load(tmp_path / "c.npz"), xseq.CharLM)
    with pytest.raises(CheckpointError, match="with one_hot input, not a StreamLM"):
        xseq.StreamLM.load(tmp_path / "c.npz")
    _, meta = load_checkpoint(tmp_path / "w.npz")
    assert meta["format"] == "xseq.LanguageModel" and meta["model"]["input"] == "embedding"


class EmbeddedLines(LineData):
    """The line plan with an embedding model: the same batches, another input."""

    def new_model(self, backend):
        c = self.config
        return xseq.LanguageModel(xseq.Vocabulary.from_text(self.lines), c.hidden_size, input="embedding",
                                  cell=c.cell, backend=backend, dtype=c.dtype, seed=c.seed)


def test_the_line_plan_trains_an_embedding_model_too():
    config = xseq.TrainConfig(hidden_size=8, batch_size=6, steps=12, dtype="float64", lr=0.05)
    trainer = Trainer(EmbeddedLines(NAMES, config), backend="numpy")
    first = trainer.validation_loss()
    assert trainer.run()
    assert trainer.model.input == "embedding" and trainer.history[-1]["val_loss"] < first - 0.2


# ---------------------------------------------------------------------- a third plan, written outside xseq


class Chunks:
    """A plan of this test: the corpus as one string, cut into chunks of ``L`` characters, learned in order,
    ``B`` chunks a step, from the zero state; the last two chunks validate. Nothing of xseq is changed for it."""

    KIND = "chunks"
    MODEL = xseq.LanguageModel
    token_unit, step_unit, tokens_key = "chars", "steps", "chars_seen"
    L, B = 6, 3

    def __init__(self, lines, config, source=None):
        self.lines, self.config, self.source = list(lines), config, source
        self.corpus = {"source": source, "sha256": str(hash("".join(lines))), "sequences": len(lines)}

    @classmethod
    def resumed(cls, where, state, model, *, epochs=None, steps=None, lines):
        config = dataclasses.replace(xseq.TrainConfig(**state["config"]), epochs=epochs, steps=steps)
        return cls(lines, config, state["corpus"]["source"])

    def new_model(self, backend):
        return xseq.LanguageModel(xseq.Vocabulary.from_text(self.lines), self.config.hidden_size, input="embedding",
                                  backend=backend, dtype=self.config.dtype, seed=self.config.seed)

    def attach(self, model):
        ids = np.asarray(model.vocab.encode("".join(self.lines)), dtype=np.int64)
        n = len(ids) // (self.L + 1)
        chunks = ids[:n * (self.L + 1)].reshape(n, self.L + 1)
        self.train, self.val = chunks[:-2], chunks[-2:]

    def fingerprints(self):
        return {"training corpora": self.corpus["sha256"]}

    @property
    def steps_per_epoch(self):
        return -(-len(self.train) // self.B)

    def batch(self, k):
        return self.train[k * self.B:(k + 1) * self.B]

    def tokens(self, batch):
        return batch[:, 1:].size

    def share(self, batch, comm):
        start, stop = share(len(batch), comm)
        return start, stop, (stop - start) / len(batch)

    def loss_and_backward(self, model, batch, start, stop, weight):
        part = batch[start:stop]
        loss, _ = model.loss_and_backward(part[:, :-1], part[:, 1:], average="tokens")
        return loss, loss * weight

    def sparse_rows(self, batch, model):
        return None

    def step_taken(self):
        pass

    def epoch_done(self):
        pass

    def validation_loss(self, model, comm):
        return model.nll(self.val[:, :-1], self.val[:, 1:])[0] / self.val[:, 1:].size

    def format_record(self, record, lr):
        return f"step {record['step']} val {record['val_loss']:.4f}"

    def checkpoint_extras(self, model, comm, batch_in_epoch):
        return {}, {}

    def restore_position(self, where, arrays, state, batch_in_epoch, model, comm):
        pass

    def tokens_after(self, epoch, batch_in_epoch):
        return (epoch * len(self.train) + min(batch_in_epoch * self.B, len(self.train))) * self.L


def test_a_third_plan_trains_saves_and_resumes_exactly_on_the_one_trainer(tmp_path):
    config = xseq.TrainConfig(hidden_size=6, steps=7, dtype="float64", seed=2)
    straight = Trainer(Chunks(NAMES, config, "names"), backend="numpy")
    logged = []
    assert straight.run(log=logged.append)
    assert logged and logged[-1].startswith("step 7 val ")

    half = Trainer(Chunks(NAMES, dataclasses.replace(config, steps=3), "names"), backend="numpy")
    half.run(out=tmp_path / "chunks.npz")
    _, meta = load_checkpoint(tmp_path / "chunks.npz")
    assert meta["trainer"]["kind"] == "chunks" and meta["trainer"]["chars_seen"] == half.chars_seen
    arrays, meta = load_checkpoint(tmp_path / "chunks.npz")
    resumed = Trainer.restore(arrays, meta, Chunks, backend="numpy", steps=7, lines=NAMES)
    assert resumed.step == 3 and resumed.source == "names"
    resumed.run()
    assert resumed.losses == straight.losses
    for name, value in straight.model.parameters().items():
        np.testing.assert_array_equal(xseq.to_numpy(resumed.model.parameters()[name]), xseq.to_numpy(value))
    # a checkpoint of another plan is refused: by its model's input, or (the same input) by the plan's name
    with pytest.raises(CheckpointError, match="embedding input, not a CharLM"):
        Trainer.restore(arrays, meta, LineData, backend="numpy", lines=NAMES)
    with pytest.raises(CheckpointError, match="kind 'chunks'; this version of xseq reads 1, 'stream'"):
        Trainer.restore(arrays, meta, StreamData, backend="numpy", text=(NAMES, None))
