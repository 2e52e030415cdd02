"""xseq: the RNN, LSTM and GRU of the Sequence Models course, on any array API backend."""

from ._backend import BackendUnavailableError, asarray, backend, to_numpy
from .activations import sigmoid, softmax
from .rnn import rnn_backward, rnn_cell_backward, rnn_cell_forward, rnn_forward

__version__ = "0.1.0"
from .lstm import lstm_backward, lstm_cell_backward, lstm_cell_forward, lstm_forward
from .gru import gru_backward, gru_cell_backward, gru_cell_forward, gru_forward
