"""xseq: the RNN, LSTM and GRU of the Sequence Models course, on any array API backend.

The package is layered; each layer imports only the ones below it (``.importlinter`` holds the
contracts, checked in CI):

* :mod:`xseq.lm` -- the language-model application: vocabulary, corpus, model, trainer,
  checkpoints, the command line;
* :mod:`xseq.distributed` -- training across processes;
* :mod:`xseq.nn` -- layers (RNN/LSTM/GRU stacks, the embedding), losses and optimisers;
* :mod:`xseq.course` -- the course's cells, sequence functions and parameter dictionaries;
* :mod:`xseq.engine` -- the fast whole-sequence engine;
* :mod:`xseq.ops` -- the step implementations below the engine and the one place that picks them;
* :mod:`xseq.backends` -- array namespaces and argument checks.

Everything public is importable from ``xseq`` itself.
"""

from ._version import __version__
from .backends.arrays import BackendUnavailableError, asarray, backend, to_numpy
from .course.activations import sigmoid, softmax
from .course.gru import gru_backward, gru_cell_backward, gru_cell_forward, gru_forward
from .course.lstm import (
    lstm_backward,
    lstm_cell_backward,
    lstm_cell_forward,
    lstm_forward,
)
from .course.parameters import (
    gru_parameters_from_torch,
    gru_parameters_to_torch,
    init_gru_parameters,
    init_lstm_parameters,
    init_rnn_parameters,
    lstm_parameters_from_torch,
    lstm_parameters_to_torch,
    rnn_parameters_from_torch,
    rnn_parameters_to_torch,
)
from .course.rnn import rnn_backward, rnn_cell_backward, rnn_cell_forward, rnn_forward
from .lm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .lm.corpus import CorpusError, builtin_corpus, read_corpus
from .lm.language_model import LanguageModel
from .lm.model import CharLM
from .lm.stream_model import StreamLM
from .lm.stream_train import StreamConfig, StreamTrainer
from .lm.train import TrainConfig, Trainer
from .lm.batches import one_hot, pad_ids
from .lm.vocab import Vocabulary, word_tokenize
from .nn.attention import Attention
from .nn.embedding import Embedding
from .nn.layers import GRU, LSTM, RNN
from .nn.losses import softmax_cross_entropy
from .nn.optim import SGD, Adam, clip_by_global_norm, clip_by_value
from .nn.projection_loss import projection_cross_entropy, projection_nll
from .seq2seq.model import Seq2Seq
from .ops.inference import InferenceModeError, inference_mode, is_inference_mode_enabled
from .ops.runtime import CPURuntime, cpu_runtime
