"""What a language model's checkpoint holds: the format names, the configuration and the shape of every parameter.

:class:`~xseq.lm.language_model.LanguageModel` writes ``{"format": "xseq.LanguageModel", "format_version": 1,
"model": config, "dtype", "vocab"}`` beside its ``param/<name>`` arrays; xseq 0.1.0 wrote ``"xseq.CharLM"`` (a
one-hot model) and ``"xseq.StreamLM"`` (an embedding model), whose configurations lack ``input``.
:func:`model_config` reads all three; :func:`check_stored_parameters` compares the stored arrays with what a
configuration implies before anything is built.
"""

from __future__ import annotations

import numpy as np

from ..backends.checks import check_sizes
from ..engine import sequence as engine
from ..nn.layers import GRU, LSTM, RNN
from .checkpoint import CheckpointError, checked_state_dict  # noqa: F401 (the models' state checks)

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
INPUTS = ("one_hot", "embedding")
MODEL_FORMAT = "xseq.LanguageModel"
# xseq 0.1.0 wrote one format per input; their configurations lack "input" (and, one-hot, the embedding's keys).
LEGACY_FORMATS = {"xseq.CharLM": "one_hot", "xseq.StreamLM": "embedding"}
CONFIG_KEYS = ("input", "cell", "hidden_size", "num_layers", "embed_size", "tie_weights", "dropout")


def bias_shape(input, V):
    """``by``'s shape: the course's column ``(V, 1)`` for a one-hot model, a vector ``(V-1,)`` otherwise."""
    return (V, 1) if input == "one_hot" else (V - 1,)


def stored_config(meta, where, version):
    """A copy of the configuration (the object ``"model"``) of a checkpoint's model metadata of ``format_version``
    ``version``; CheckpointError naming ``where`` for another version (``true`` is none) or no configuration."""
    found = meta.get("format_version")
    if isinstance(found, bool) or found != version:
        raise CheckpointError(f"{where} has model format_version {found!r}; this version of xseq reads {version}")
    config = meta.get("model")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} has an invalid model: metadata entry 'model' must be an object; got "
                              f"{type(config).__name__}")
    return dict(config)


def check_config_keys(config, keys, where):
    """CheckpointError naming ``where`` unless the stored ``config`` has exactly the entries ``keys``."""
    missing = [k for k in keys if k not in config]
    unknown = sorted(set(config) - set(keys))
    if missing or unknown:
        raise CheckpointError(f"{where} has an invalid model: its configuration lacks {missing} or has unknown "
                              f"entries {unknown}")


def model_config(meta, where="checkpoint", version=1):
    """The full configuration (``input`` and the embedding's keys included) of a checkpoint's model metadata,
    of this format or of xseq 0.1.0's two; CheckpointError for another format or version, or no configuration."""
    fmt = meta.get("format")
    if fmt != MODEL_FORMAT and fmt not in LEGACY_FORMATS:
        raise CheckpointError(f"{where} holds no xseq language model (format {fmt!r}; expected {MODEL_FORMAT!r})")
    config = stored_config(meta, where, version)
    if fmt in LEGACY_FORMATS:
        if "input" in config:
            raise CheckpointError(f"{where} has an invalid model: format {fmt!r} has no 'input' entry")
        config["input"] = LEGACY_FORMATS[fmt]
        if config["input"] == "one_hot":
            config.update(embed_size=None, tie_weights=False)
    check_config_keys(config, CONFIG_KEYS, where)
    if config["input"] not in INPUTS:
        raise CheckpointError(f"{where} has an invalid model: input must be one of {INPUTS}; got "
                              f"{config['input']!r}")
    if not isinstance(config["tie_weights"], bool):
        raise CheckpointError(f"{where} has an invalid model: tie_weights must be true or false; got "
                              f"{config['tie_weights']!r}")
    return config


def parameter_shapes(config, V):
    """The name and shape of every parameter of the model ``config`` describes, without building one.

    Parameters
    ----------
    config : dict
        :meth:`~xseq.lm.language_model.LanguageModel.config`'s keys (``dropout`` may be absent).
    V : int
        The vocabulary size.

    Returns
    -------
    dict[str, tuple of int]
        In the order of :meth:`~xseq.lm.language_model.LanguageModel.parameters`: ``"embedding"``
        ``(V, D)`` (embedding input), the layer's arrays under PyTorch's names
        (``weight_ih_l0`` is ``(G*n_a, n_x)``), ``"Wy"`` ``(n_y, n_a)`` unless
        tied, ``"by"``.
    """
    one_hot = config["input"] == "one_hot"
    G, n_a, D = engine.GATES[config["cell"]], config["hidden_size"], config["embed_size"]
    shapes = {} if one_hot else {"embedding": (V, D)}
    for layer in range(config["num_layers"]):
        shapes.update({f"weight_ih_l{layer}": (G * n_a, (V if one_hot else D) if layer == 0 else n_a),
                       f"weight_hh_l{layer}": (G * n_a, n_a),
                       f"bias_ih_l{layer}": (G * n_a,), f"bias_hh_l{layer}": (G * n_a,)})
    if not config["tie_weights"]:
        shapes["Wy"] = (V - (0 if one_hot else 1), n_a)
    shapes["by"] = bias_shape(config["input"], V)
    return shapes


def check_stored_parameters(state, config, V, dtype):
    """Compare stored host arrays ``state`` with what ``config`` implies, before anything is allocated.

    Raises ValueError or TypeError naming the field or the array that does not fit.
    """
    cell = config["cell"]
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"cell must be one of {tuple(CELLS)}; got {cell!r}")
    sizes = {"hidden_size": config["hidden_size"], "num_layers": config["num_layers"]}
    if config["input"] == "embedding":
        sizes["embed_size"] = config["embed_size"]
    elif config["embed_size"] is not None:
        raise ValueError(f"a one-hot model has no embed_size; got {config['embed_size']!r}")
    check_sizes(**sizes)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")
    # Every layer has four arrays: this bounds num_layers by what the file holds before names are made for it.
    if config["num_layers"] > len(state):
        raise ValueError(f"num_layers = {config['num_layers']} needs at least {4 * config['num_layers'] + 2} "
                         f"parameter arrays; the checkpoint holds {len(state)}")
    shapes = parameter_shapes(config, V)
    named = ("cell", "hidden_size", "num_layers") if config["input"] == "one_hot" else (
        "cell", "embed_size", "hidden_size", "num_layers", "tie_weights")
    source = ", ".join(f"{k}={config[k]!r}" for k in named) + f" and V={V}"
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the model of {source}: missing {missing}, unexpected {unexpected}")
    check_stored_arrays(state, shapes, dtype, source)


def check_stored_arrays(state, shapes, dtype, source):
    """TypeError or ValueError for the first stored array of ``state`` whose dtype is not ``dtype`` or whose shape
    is not its entry in ``shapes`` (every name of ``shapes`` being in ``state``); ``source`` says where the shapes
    come from, for the message."""
    for name, shape in shapes.items():
        a = state[name]
        if a.dtype != np.dtype(dtype):
            raise TypeError(f"parameter {name!r} has dtype {a.dtype}; expected {dtype}, the checkpoint's dtype")
        if a.shape != shape:
            raise ValueError(f"parameter {name!r} has shape {a.shape}; expected {shape} from {source}")


def model_input(meta):
    """The input (``"one_hot"`` or ``"embedding"``) a checkpoint's model metadata declares, unchecked; None when it
    declares none (:func:`model_config` checks it)."""
    if meta.get("format") in LEGACY_FORMATS:
        return LEGACY_FORMATS[meta["format"]]
    config = meta.get("model")
    return config.get("input") if isinstance(config, dict) else None
