"""xseq: the RNN, LSTM and GRU of the Sequence Models course, on any array API backend."""

from ._backend import BackendUnavailableError, asarray, backend, to_numpy
from .activations import sigmoid, softmax
from .gru import gru_backward, gru_cell_backward, gru_cell_forward, gru_forward
from .lstm import lstm_backward, lstm_cell_backward, lstm_cell_forward, lstm_forward
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

__version__ = "0.1.0"
