"""What xseq's layers and models do alike with their weights: host copies, checked loading, the models' checkpoints.

* The layers (:class:`xseq.nn.layers.RecurrentLayer`, :class:`xseq.Attention`, :class:`xseq.Embedding`) keep their
  arrays in a dict attribute ``parameters``: :func:`host_copies`, :func:`host_copy` and :func:`checked_layer_state`
  are their ``state_dict`` and ``load_state_dict``, :func:`check_layer_array` the check of an array handed to them.
* The models (:class:`xseq.LanguageModel`, :class:`xseq.Seq2Seq`) keep every weight in one dict that their
  ``parameters()`` returns: :class:`ModelWeights` is what they do alike with it, down to their checkpoint files
  (the parameters as ``param/<name>`` arrays, :data:`PARAM_PREFIX`, beside the model's metadata), and
  :func:`seed_child` the independent random streams their parts are drawn from.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
from array_api_compat import is_array_api_obj

from ..backends.arrays import asarray, backend_name, dtype_of, namespace_of, to_numpy
from ..backends.checks import _dtype_name as dtype_name
from ..backends.checks import check_floating

#: The prefix of a parameter's array in a model's checkpoint: ``"param/<name>"``.
PARAM_PREFIX = "param/"


def seed_child(seed, index):
    """Child ``index`` of ``numpy.random.SeedSequence(seed)``: an independent stream for one part of a model."""
    return np.random.SeedSequence(seed).spawn(index + 1)[index]


# ---------------------------------------------------------------------- layers


def host_copies(params):
    """Host (NumPy) copies of the arrays (any backend) of the dict ``params``, under the same names."""
    return {k: np.array(to_numpy(v), copy=True) for k, v in params.items()}


def host_copy(value):
    """A NumPy copy of an array of any backend, or of an array-like: a layer never shares memory with the caller's
    array (or a torch module)."""
    return np.array(to_numpy(value) if is_array_api_obj(value) else value, copy=True)


def checked_layer_state(state, shapes, layer):
    """Host copies of the arrays of ``state``, in the order of ``shapes`` (name -> shape), once they fit.

    Parameters
    ----------
    state : dict
        Name -> array (any backend, or NumPy).
    shapes : dict
        The layer's parameter names and shapes.
    layer : str
        The layer's class name, for the messages.

    Raises
    ------
    KeyError
        A name of ``shapes`` is missing from ``state``, or ``state`` has a name ``shapes`` has not.
    ValueError
        An array's shape differs from its entry in ``shapes``.
    """
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    if missing:
        raise KeyError(f"state dict is missing keys {missing} of this {layer}")
    if unexpected:
        raise KeyError(f"state dict has unexpected keys {unexpected}; this {layer} has {list(shapes)}")
    host = {k: host_copy(v) for k, v in state.items()}
    for k, shape in shapes.items():
        if host[k].shape != shape:
            raise ValueError(f"state dict entry {k!r} has shape {host[k].shape}; expected {shape}")
    return {k: host[k] for k in shapes}


def floating_dtype(xp, dtype):
    """A layer's ``(dtype, dtype_name)``: ``dtype`` (``"float32"``, ``"float64"`` or a dtype of the namespace ``xp``)
    as a dtype of ``xp``, and ``"float32"`` or ``"float64"``; TypeError for a dtype that is not a real floating one."""
    resolved = dtype_of(xp, dtype)
    if not xp.isdtype(resolved, "real floating"):
        raise TypeError(f"dtype must be float32 or float64; got {dtype!r}")
    return resolved, f"float{xp.finfo(resolved).bits}"


def check_layer_array(layer, name, a):
    """``a`` (the argument ``name``) is a floating array of ``layer``'s backend (``layer.xp``) and dtype
    (``layer.dtype``); TypeError naming both otherwise."""
    xp = namespace_of(**{name: a})
    owner = type(layer).__name__
    if xp is not layer.xp:
        raise TypeError(f"{name} is a {backend_name(xp)} array but this {owner} holds {backend_name(layer.xp)} "
                        f"parameters; convert it with xseq.asarray({name}, backend={backend_name(layer.xp)!r})")
    check_floating(xp, name, a)
    if a.dtype != layer.dtype:
        raise TypeError(f"{name} has dtype {dtype_name(a.dtype)} but this {owner} holds {layer.dtype_name} "
                        "parameters; convert it first")


# ---------------------------------------------------------------------- models


class ModelWeights:
    """What :class:`xseq.LanguageModel` and :class:`xseq.Seq2Seq` do alike with their weights.

    A model keeps every weight in one dict, ``self._params`` (the object :meth:`parameters` returns at every call,
    the one an optimiser updates in place), and the gradients of its last ``loss_and_backward`` in
    ``self._grads``, keyed alike; it sets ``self.xp`` and ``self.dtype`` (its backend's namespace and dtype), and
    it names

    * ``_recurrent``: its recurrent layer (an :class:`xseq.LSTM`, say), whose dropout stream every dropout mask
      comes from and whose dtype name is the model's;
    * ``_checkpoint``: the module of its checkpoint file, :mod:`xseq.lm.checkpoint` (which sits above xseq.nn, so
      the model names it): :meth:`save` writes with its ``save_checkpoint``, :meth:`load` reads with its
      ``load_checkpoint``, :meth:`load_state_dict` checks with its ``checked_state_dict`` (a model may check more
      in ``_checked_state``), and what does not fit the file is its ``CheckpointError``;
    * ``checkpoint_contents()``, what it writes, and the class method ``from_checkpoint(arrays, meta, *, backend,
      where)``, which rebuilds it.
    """

    _checkpoint = None  # set by the model: see the class docstring

    # ------------------------------------------------------------------ structure

    @property
    def dropout(self):
        """The dropout probability."""
        return self._recurrent.dropout

    @property
    def dropout_rng(self):
        """The NumPy generator of every dropout mask (the recurrent layer's); a trainer may replace it (with
        :class:`xseq.distributed.ExampleDropout`)."""
        return self._recurrent.dropout_rng

    @dropout_rng.setter
    def dropout_rng(self, rng):
        self._recurrent.dropout_rng = rng

    @property
    def dtype_name(self):
        """``"float32"`` or ``"float64"``."""
        return self._recurrent.dtype_name

    @property
    def backend_name(self):
        """``"numpy"``, ``"cupy"``, ``"torch"`` or ``"array_api_strict"``."""
        return backend_name(self.xp)

    def parameters(self):
        """Every weight in one dict (the same object at every call); an optimiser updates it in place."""
        return self._params

    def grads(self):
        """The gradients of the last ``loss_and_backward``, keyed like :meth:`parameters`."""
        return self._grads

    def num_parameters(self):
        """The number of scalar weights (one shared by two parts, a tied output matrix, counted once)."""
        return sum(math.prod(p.shape) for p in self._params.values())

    def _from_host(self, a):
        """A host array as an array of this model's backend and dtype."""
        return asarray(a, backend=self.xp, dtype=self.dtype)

    def _mask(self, shape):
        """An inverted-dropout mask of ``shape`` from the dropout stream, in this model's dtype."""
        keep = self.dropout_rng.random(shape) >= self.dropout
        return self._from_host(keep / (1 - self.dropout))

    # ------------------------------------------------------------------ weights

    def state_dict(self):
        """Host (NumPy) copies of :meth:`parameters`."""
        return host_copies(self._params)

    def load_state_dict(self, state):
        """Replace every parameter with the arrays of ``state`` (NumPy or any backend), in the same dict object.

        float32 and float64 arrays are converted to the model's dtype; integer, bool and other arrays are
        refused, not cast.

        Raises
        ------
        ValueError
            ``state`` lacks a parameter, has one this model does not, an array of another shape, or NaN or
            infinite values.
        TypeError
            An array is not float32 or float64.
        """
        host = self._checked_state(state)
        for k in self._params:  # same dict object: an optimiser built on it stays attached
            self._params[k] = self._from_host(host[k])

    def _checked_state(self, state):
        """Host copies of the arrays of ``state``, checked against :meth:`parameters`."""
        return self._checkpoint.checked_state_dict(self._params, state, self)

    # ------------------------------------------------------------------ checkpoints

    def _parameter_arrays(self):
        """A checkpoint's parameter arrays: :meth:`state_dict` under ``"param/<name>"`` (:data:`PARAM_PREFIX`)."""
        return {PARAM_PREFIX + k: v for k, v in self.state_dict().items()}

    @staticmethod
    def _stored_parameters(arrays):
        """The parameters among a checkpoint's arrays: each ``"param/<name>"`` under ``<name>``."""
        return {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}

    @classmethod
    @contextlib.contextmanager
    def _invalid_model(cls, where):
        """A missing metadata entry (KeyError), a TypeError or a ValueError in the ``with`` block, while a model is
        rebuilt from a checkpoint, raised as a CheckpointError naming ``where``."""
        try:
            yield
        except KeyError as exc:
            raise cls._checkpoint.CheckpointError(
                f"{where} has an invalid model: no metadata entry {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise cls._checkpoint.CheckpointError(f"{where} has an invalid model: {exc}") from None

    def save(self, path, *, arrays=None, meta=None):
        """Write the model to one ``.npz`` checkpoint, atomically (see :func:`xseq.save_checkpoint`).

        Parameters
        ----------
        path : str or os.PathLike
        arrays, meta : dict, optional
            More arrays and metadata to store alongside (a trainer's state); their names must not collide with
            the model's.
        """
        own_arrays, own_meta = self.checkpoint_contents()
        arrays, meta = dict(arrays or {}), dict(meta or {})
        for name, extra, own in (("arrays", arrays, own_arrays), ("meta", meta, own_meta)):
            clash = sorted(set(extra) & set(own))
            if clash:
                raise ValueError(f"{name} keys {clash} are the model's own; choose other names")
        self._checkpoint.save_checkpoint(path, arrays={**own_arrays, **arrays}, meta={**own_meta, **meta})

    @classmethod
    def load(cls, path, *, backend="numpy"):
        """Read a model saved by :meth:`save` (or by training).

        Raises
        ------
        CheckpointError
            Missing, truncated, corrupt, wrong-version or non-model file; the message names the path.
        """
        arrays, meta = cls._checkpoint.load_checkpoint(path)
        return cls.from_checkpoint(arrays, meta, backend=backend, where=f"checkpoint {str(path)!r}")
