"""What a sequence-to-sequence checkpoint holds: the format, the configuration and the shape of every parameter.

:class:`~xseq.seq2seq.model.Seq2Seq` writes ``{"format": "xseq.Seq2Seq", "format_version": 1, "model": config,
"dtype", "source_vocab", "target_vocab"}`` beside its ``param/<name>`` arrays. :func:`model_config` reads and checks
the configuration, :func:`parameter_shapes` says what it implies, and :func:`check_stored_parameters` compares the
stored arrays with it before anything is built, so that a configuration that disagrees with the file costs no
memory.
"""

from __future__ import annotations

import numbers

from ..backends.checks import check_sizes
from ..engine import sequence as engine
from ..lm.checkpoint import CheckpointError
from ..lm.checkpoint import checked_state_dict as checked_arrays
from ..lm.model_schema import check_config_keys, check_stored_arrays, stored_config
from ..nn.layers import GRU, LSTM, RNN
from ..nn.params import PARAM_PREFIX  # noqa: F401 (re-exported: the parameters' arrays are "param/<name>")

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
MODEL_FORMAT = "xseq.Seq2Seq"
MODEL_FORMAT_VERSION = 1
CONFIG_KEYS = ("cell", "hidden_size", "num_layers", "decoder_size", "embed_size", "attention_size",
               "feed_previous", "dropout")
SIZE_KEYS = ("hidden_size", "num_layers", "decoder_size", "embed_size", "attention_size")


def check_config(config):
    """ValueError or TypeError naming the first field of ``config`` (:meth:`~xseq.seq2seq.model.Seq2Seq.config`'s keys)
    that is wrong.

    Checks the values only; :func:`model_config` checks the keys.
    """
    cell = config["cell"]
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"cell must be one of {tuple(CELLS)}; got {cell!r}")
    check_sizes(**{k: config[k] for k in SIZE_KEYS})
    if not isinstance(config["feed_previous"], bool):
        raise TypeError(f"feed_previous must be True or False; got {config['feed_previous']!r}")
    dropout = config["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1); got {dropout!r}")


def model_config(meta, where="checkpoint"):
    """The configuration of a checkpoint's model metadata, checked; CheckpointError naming ``where`` otherwise."""
    fmt = meta.get("format")
    if fmt != MODEL_FORMAT:
        raise CheckpointError(f"{where} holds no xseq sequence-to-sequence model (format {fmt!r}; expected "
                              f"{MODEL_FORMAT!r})")
    config = stored_config(meta, where, MODEL_FORMAT_VERSION)
    check_config_keys(config, CONFIG_KEYS, where)
    try:
        check_config(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has an invalid model: {exc}") from None
    return config


def parameter_shapes(config, V_x, V_y):
    """The name and shape of every parameter of the model ``config`` describes, without building one.

    Parameters
    ----------
    config : dict
        :meth:`~xseq.seq2seq.model.Seq2Seq.config`'s keys (``dropout`` may be absent).
    V_x, V_y : int
        The source and target vocabulary sizes (specials included).

    Returns
    -------
    dict[str, tuple of int]
        In the order of :meth:`~xseq.seq2seq.model.Seq2Seq.parameters`, with ``G`` the encoder cell's gates,
        ``n_a`` ``hidden_size``, ``D`` ``embed_size``, ``n_s`` ``decoder_size``, ``n_e`` ``attention_size`` and
        ``n_enc = 2 n_a``:

        * ``"source_embedding"`` ``(V_x, D)``;
        * the encoder's arrays under PyTorch's names prefixed ``"encoder."``: ``encoder.weight_ih_l0``
          ``(G n_a, D)``, ``encoder.weight_hh_l0`` ``(G n_a, n_a)``, ``encoder.bias_ih_l0`` and
          ``encoder.bias_hh_l0`` ``(G n_a,)``, the same with ``_reverse``, then the layers above
          (``weight_ih_l{l}`` ``(G n_a, n_enc)``);
        * ``"attention.W1_a"`` ``(n_e, n_enc)``, ``"attention.W1_s"`` ``(n_e, n_s)``, ``"attention.b1"``
          ``(n_e,)``, ``"attention.W2"`` ``(1, n_e)``, ``"attention.b2"`` ``(1,)`` (:class:`xseq.Attention`);
        * ``"decoder.weight_ih"`` ``(4 n_s, n_enc + D)`` (``(4 n_s, n_enc)`` without ``feed_previous``),
          ``"decoder.weight_hh"`` ``(4 n_s, n_s)``, ``"decoder.bias_ih"``, ``"decoder.bias_hh"`` ``(4 n_s,)``:
          ``torch.nn.LSTMCell``'s, gates i, f, g, o;
        * ``"target_embedding"`` ``(V_y, D)``, with ``feed_previous`` only;
        * ``"Wy"`` ``(V_y - 1, n_s)`` and ``"by"`` ``(V_y - 1,)``: row ``v - 1`` scores id ``v`` (``<pad>`` is
          never scored).
    """
    G = engine.GATES[config["cell"]]
    n_a, D, n_s, n_e = config["hidden_size"], config["embed_size"], config["decoder_size"], config["attention_size"]
    n_enc = 2 * n_a
    shapes = {"source_embedding": (V_x, D)}
    for layer in range(config["num_layers"]):
        n_in = D if layer == 0 else n_enc
        for suffix in (f"_l{layer}", f"_l{layer}_reverse"):
            shapes.update({f"encoder.weight_ih{suffix}": (G * n_a, n_in), f"encoder.weight_hh{suffix}": (G * n_a, n_a),
                           f"encoder.bias_ih{suffix}": (G * n_a,), f"encoder.bias_hh{suffix}": (G * n_a,)})
    shapes.update({"attention.W1_a": (n_e, n_enc), "attention.W1_s": (n_e, n_s), "attention.b1": (n_e,),
                   "attention.W2": (1, n_e), "attention.b2": (1,)})
    shapes.update({"decoder.weight_ih": (4 * n_s, n_enc + (D if config["feed_previous"] else 0)),
                   "decoder.weight_hh": (4 * n_s, n_s), "decoder.bias_ih": (4 * n_s,),
                   "decoder.bias_hh": (4 * n_s,)})
    if config["feed_previous"]:
        shapes["target_embedding"] = (V_y, D)
    shapes.update({"Wy": (V_y - 1, n_s), "by": (V_y - 1,)})
    return shapes


def check_stored_parameters(state, config, V_x, V_y, dtype):
    """Compare stored host arrays ``state`` with what a checked ``config`` implies, before anything is allocated.

    Raises ValueError or TypeError naming the field or the array that does not fit.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    # Every encoder layer has eight arrays: this bounds num_layers by what the file holds before names are made.
    if 8 * config["num_layers"] > len(state):
        raise ValueError(f"num_layers = {config['num_layers']} needs at least {8 * config['num_layers']} encoder "
                         f"arrays; the checkpoint holds {len(state)} parameter arrays in all")
    shapes = parameter_shapes(config, V_x, V_y)
    source = ", ".join(f"{k}={config[k]!r}" for k in CONFIG_KEYS if k != "dropout") + f", V_x={V_x} and V_y={V_y}"
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"the stored parameters do not fit the model of {source}: missing {missing}, unexpected "
                         f"{unexpected}")
    check_stored_arrays(state, shapes, dtype, source)


def checked_state_dict(params, state, model):
    """:func:`xseq.lm.checkpoint.checked_state_dict`, for a ``state`` that must be a dict (TypeError otherwise)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of name -> array; got {type(state).__name__}")
    return checked_arrays(params, state, model)
