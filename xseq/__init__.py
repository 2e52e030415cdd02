"""xseq: the RNN, LSTM and GRU of the Sequence Models course, on any array API backend."""

from ._backend import BackendUnavailableError, asarray, backend, to_numpy
from .activations import sigmoid, softmax
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .corpus import CorpusError, builtin_corpus, read_corpus
from .gru import gru_backward, gru_cell_backward, gru_cell_forward, gru_forward
from .layers import GRU, LSTM, RNN
from .losses import softmax_cross_entropy
from .lstm import lstm_backward, lstm_cell_backward, lstm_cell_forward, lstm_forward
from .model import CharLM
from .optim import SGD, Adam, clip_by_global_norm, clip_by_value
from .parameters import (
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
from .rnn import rnn_backward, rnn_cell_backward, rnn_cell_forward, rnn_forward
from .train import Trainer, TrainConfig
from .vocab import Vocabulary, one_hot, pad_ids, word_tokenize

__version__ = "0.1.0"
