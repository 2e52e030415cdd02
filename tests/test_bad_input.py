"""Bad input gets a clear error: its type and the words of its message are checked.

A shape mismatch names the argument, its shape and the expected shape (in the
course's letters and in numbers); a missing key names the key; a wrong rank,
an integer dtype, mixed dtypes, T_x = 0, a cache from the wrong function and
two array libraries in one call each have their own message. Nothing is
broadcast silently.
"""

import re

import numpy as np
import pytest

import xseq
from xseq.backends.arrays import backend_name

N_X, N_A, N_Y, M, T_X = 3, 5, 2, 10, 4
INIT = {"rnn": xseq.init_rnn_parameters, "lstm": xseq.init_lstm_parameters, "gru": xseq.init_gru_parameters}

# function -> (function, kind, its array arguments in order with their shapes, input name, n_a source)
FORWARD = {
    "rnn_cell_forward": (xseq.rnn_cell_forward, "rnn", {"xt": (N_X, M), "a_prev": (N_A, M)}, "Waa"),
    "rnn_forward": (xseq.rnn_forward, "rnn", {"x": (N_X, M, T_X), "a0": (N_A, M)}, "Waa"),
    "lstm_cell_forward": (
        xseq.lstm_cell_forward, "lstm", {"xt": (N_X, M), "a_prev": (N_A, M), "c_prev": (N_A, M)}, "Wf"),
    "lstm_forward": (xseq.lstm_forward, "lstm", {"x": (N_X, M, T_X), "a0": (N_A, M)}, "Wf"),
    "gru_cell_forward": (xseq.gru_cell_forward, "gru", {"xt": (N_X, M), "a_prev": (N_A, M)}, "Wr"),
    "gru_forward": (xseq.gru_forward, "gru", {"x": (N_X, M, T_X), "a0": (N_A, M)}, "Wr"),
}
SEQUENCE_FORWARDS = ["rnn_forward", "lstm_forward", "gru_forward"]

# every parameter's documented layout and shape
LAYOUT = {
    "rnn": {"Wax": ("(n_a, n_x)", (N_A, N_X)), "Waa": ("(n_a, n_a)", (N_A, N_A)),
            "Wya": ("(n_y, n_a)", (N_Y, N_A)), "ba": ("(n_a, 1)", (N_A, 1)), "by": ("(n_y, 1)", (N_Y, 1))},
    "lstm": {
        **{f"W{g}": ("(n_a, n_a + n_x)", (N_A, N_A + N_X)) for g in "fico"},
        **{f"b{g}": ("(n_a, 1)", (N_A, 1)) for g in "fico"},
        "Wy": ("(n_y, n_a)", (N_Y, N_A)), "by": ("(n_y, 1)", (N_Y, 1)),
    },
    "gru": {
        **{f"W{g}": ("(n_a, n_a + n_x)", (N_A, N_A + N_X)) for g in "rzn"},
        **{b: ("(n_a, 1)", (N_A, 1)) for b in ("br", "bz", "bn", "bhn")},
        "Wy": ("(n_y, n_a)", (N_Y, N_A)), "by": ("(n_y, 1)", (N_Y, 1)),
    },
}
# parameters whose rows define n_a or n_y: a wrong row count there moves the expectation, not the error
ROW_SOURCES = {"Waa", "Wya", "Wf", "Wr", "Wy"}


def array(shape, dtype="float32", seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def inputs(function, dtype="float32", **replace):
    _, _, shapes, _ = FORWARD[function]
    args = {name: array(shape, dtype, seed=k) for k, (name, shape) in enumerate(shapes.items())}
    args.update(replace)
    return args


def call(function, replace=None, parameters=None, dtype="float32"):
    """Call a forward function on good inputs of ``dtype`` with some of them replaced."""
    fn, kind, _, _ = FORWARD[function]
    p = INIT[kind](N_X, N_A, N_Y, dtype=dtype)
    p.update(parameters or {})
    return fn(*inputs(function, dtype, **(replace or {})).values(), p)


def shape_message(name, shape, layout, expected):
    return re.escape(f"{name} has shape {tuple(shape)}; expected {layout} = {tuple(expected)}")


def input_name(function):
    return next(iter(FORWARD[function][2]))


def state_names(function):
    return list(FORWARD[function][2])[1:]


def all_states():
    return [(f, s) for f in FORWARD for s in state_names(f)]


def all_parameters():
    return [(f, key) for f, (_, kind, _, _) in FORWARD.items() for key in LAYOUT[kind]]


# ---------------------------------------------------------------- states and inputs of the wrong shape

@pytest.mark.parametrize("function,state", all_states())
def test_state_with_wrong_n_a(function, state):
    source = FORWARD[function][3]
    x = input_name(function)
    with pytest.raises(ValueError, match=shape_message(state, (N_A - 1, M), "(n_a, m)", (N_A, M))
                       + re.escape(f" from {source} and {x}")):
        call(function, {state: array((N_A - 1, M))})


def test_the_issue_example():
    with pytest.raises(ValueError) as info:
        call("rnn_cell_forward", {"a_prev": array((4, 10))})
    assert str(info.value) == "a_prev has shape (4, 10); expected (n_a, m) = (5, 10) from Waa and xt"


@pytest.mark.parametrize("function,state", all_states())
def test_state_with_one_example_is_not_broadcast(function, state):
    with pytest.raises(ValueError, match=shape_message(state, (N_A, 1), "(n_a, m)", (N_A, M))):
        call(function, {state: array((N_A, 1))})


@pytest.mark.parametrize("function,state", all_states())
def test_state_as_a_vector_is_not_broadcast(function, state):
    with pytest.raises(ValueError, match=re.escape(f"{state} has shape ({N_A},); expected (n_a, m) = ({N_A}, {M})")):
        call(function, {state: array((N_A,))})


@pytest.mark.parametrize("function", list(FORWARD))
def test_input_with_other_m_than_the_state(function):
    """xt with m = 1 against a_prev with m = 10 (and the other way round) is rejected, not broadcast."""
    x = input_name(function)
    state = state_names(function)[0]
    source = FORWARD[function][3]
    shape = (N_X, 1) if x == "xt" else (N_X, 1, T_X)
    with pytest.raises(ValueError, match=shape_message(state, (N_A, M), "(n_a, m)", (N_A, 1))
                       + re.escape(f" from {source} and {x}")):
        call(function, {x: array(shape)})
    with pytest.raises(ValueError, match=shape_message(state, (N_A, 1), "(n_a, m)", (N_A, M))):
        call(function, {state: array((N_A, 1))})


def test_xt_with_m_5_against_a_prev_with_m_1():
    with pytest.raises(ValueError, match=re.escape("a_prev has shape (5, 1); expected (n_a, m) = (5, 5) from Waa and xt")):
        xseq.rnn_cell_forward(array((N_X, 5)), array((N_A, 1)), INIT["rnn"](N_X, N_A, N_Y))


@pytest.mark.parametrize("function", list(FORWARD))
def test_input_with_wrong_n_x(function):
    """The input's n_x disagrees with the weights: the weight that acts on it is named, with the input."""
    fn, kind, _, source = FORWARD[function]
    x = input_name(function)
    shape = (N_X + 1, M) if x == "xt" else (N_X + 1, M, T_X)
    if kind == "rnn":
        expected = shape_message("Wax", (N_A, N_X), "(n_a, n_x)", (N_A, N_X + 1))
    else:
        expected = shape_message(source, (N_A, N_A + N_X), "(n_a, n_a + n_x)", (N_A, N_A + N_X + 1))
    with pytest.raises(ValueError, match=expected + re.escape(f" from {source} and {x}")):
        call(function, {x: array(shape)})


# ---------------------------------------------------------------- parameters of the wrong shape

@pytest.mark.parametrize("function,key", all_parameters())
def test_parameter_with_an_extra_column(function, key):
    kind = FORWARD[function][1]
    layout, good = LAYOUT[kind][key]
    bad = (good[0], good[1] + 1)
    with pytest.raises(ValueError, match=shape_message(key, bad, layout, good)):
        call(function, parameters={key: array(bad)})


@pytest.mark.parametrize("function,key", [(f, k) for f, k in all_parameters() if k not in ROW_SOURCES])
def test_parameter_with_an_extra_row(function, key):
    kind = FORWARD[function][1]
    layout, good = LAYOUT[kind][key]
    bad = (good[0] + 1, good[1])
    with pytest.raises(ValueError, match=shape_message(key, bad, layout, good)):
        call(function, parameters={key: array(bad)})


@pytest.mark.parametrize("function,key", [(f, k) for f, k in all_parameters() if k not in ROW_SOURCES])
@pytest.mark.parametrize("bad", ["vector", "1x1", "scalar", "3-D"])
def test_parameter_is_not_broadcast(function, key, bad):
    """ba of shape (n_a,), (1, 1), () or (n_a, 1, 1) is rejected with the expected shape."""
    kind = FORWARD[function][1]
    layout, good = LAYOUT[kind][key]
    shape = {"vector": (good[0],), "1x1": (1, 1), "scalar": (), "3-D": good + (1,)}[bad]
    if shape == good:
        pytest.skip("already the right shape")
    with pytest.raises(ValueError, match=shape_message(key, shape, layout, good)):
        call(function, parameters={key: array(shape)})


def test_bias_with_m_columns_is_not_broadcast():
    with pytest.raises(ValueError, match=shape_message("ba", (N_A, M), "(n_a, 1)", (N_A, 1)) + " from Waa"):
        call("rnn_cell_forward", parameters={"ba": array((N_A, M))})


@pytest.mark.parametrize("function", list(FORWARD))
def test_source_of_n_a_with_wrong_rank(function):
    source = FORWARD[function][3]
    with pytest.raises(ValueError, match=re.escape(f"{source} has 1 dimensions, shape ({N_A},); expected 2")):
        call(function, parameters={source: array((N_A,))})


def test_non_square_waa():
    with pytest.raises(ValueError, match=shape_message("Waa", (N_A, N_A + 1), "(n_a, n_a)", (N_A, N_A))):
        call("rnn_forward", parameters={"Waa": array((N_A, N_A + 1))})


# ---------------------------------------------------------------- missing keys, not a dict

@pytest.mark.parametrize("function,key", all_parameters())
def test_missing_parameter_key(function, key):
    fn, kind, _, _ = FORWARD[function]
    p = INIT[kind](N_X, N_A, N_Y)
    del p[key]
    with pytest.raises(KeyError, match=re.escape(f"parameters is missing key '{key}' needed by {function}")):
        fn(*inputs(function).values(), p)


def test_parameters_must_be_a_dict():
    with pytest.raises(TypeError, match=r"parameters must be a dict with keys \['Wax', 'Waa', 'Wya', 'ba', 'by'\]; got list"):
        xseq.rnn_cell_forward(array((N_X, M)), array((N_A, M)), [1, 2])


# ---------------------------------------------------------------- wrong rank, T_x = 0

@pytest.mark.parametrize("function", SEQUENCE_FORWARDS)
def test_sequence_input_must_be_3d(function):
    with pytest.raises(ValueError, match=re.escape(f"x has 2 dimensions, shape ({N_X}, {M}); expected 3: (n_x, m, T_x)")):
        call(function, {"x": array((N_X, M))})


@pytest.mark.parametrize("function", [f for f in FORWARD if f not in SEQUENCE_FORWARDS])
def test_step_input_must_be_2d(function):
    with pytest.raises(ValueError, match=re.escape(f"xt has 3 dimensions, shape ({N_X}, {M}, {T_X}); expected 2: (n_x, m)")):
        call(function, {"xt": array((N_X, M, T_X))})


@pytest.mark.parametrize("function", SEQUENCE_FORWARDS)
def test_empty_sequence(function):
    with pytest.raises(ValueError, match=re.escape(f"x has shape ({N_X}, {M}, 0): T_x = 0; a sequence needs at least one time step")):
        call(function, {"x": array((N_X, M, 0))})


def test_softmax_of_a_scalar():
    with pytest.raises(ValueError, match=r"x has shape \(\); expected at least one dimension"):
        xseq.softmax(np.ones(()))


# ---------------------------------------------------------------- dtypes

@pytest.mark.parametrize("bad", ["int64", "int32", "bool"])
def test_integer_input(xp, bad):
    name = backend_name(xp)
    p = {k: xseq.asarray(v, backend=name) for k, v in INIT["rnn"](N_X, N_A, N_Y).items()}
    xt = xp.asarray(np.ones((N_X, M), dtype=bad))
    a_prev = xseq.asarray(array((N_A, M)), backend=name)
    with pytest.raises(TypeError, match=re.escape(f"xt has dtype {bad}; expected a real floating dtype (float32 or float64)")):
        xseq.rnn_cell_forward(xt, a_prev, p)
    with pytest.raises(TypeError, match=re.escape(f"x has dtype {bad}; expected a real floating dtype")):
        xseq.sigmoid(xt)
    with pytest.raises(TypeError, match=re.escape(f"x has dtype {bad}; expected a real floating dtype")):
        xseq.softmax(xt)


@pytest.mark.parametrize("function,key", [("rnn_forward", "Waa"), ("lstm_cell_forward", "bf"), ("gru_forward", "Wy")])
def test_integer_parameter(function, key):
    kind = FORWARD[function][1]
    good = LAYOUT[kind][key][1]
    with pytest.raises(TypeError, match=re.escape(f"{key} has dtype int64; expected a real floating dtype")):
        call(function, parameters={key: np.ones(good, dtype=np.int64)})


@pytest.mark.parametrize("function", list(FORWARD))
def test_integer_state(function):
    state = state_names(function)[-1]
    with pytest.raises(TypeError, match=re.escape(f"{state} has dtype int64; expected a real floating dtype")):
        call(function, {state: np.ones((N_A, M), dtype=np.int64)})


def test_mixed_dtypes_names_both(xp):
    name = backend_name(xp)
    p = {k: xseq.asarray(v, backend=name) for k, v in INIT["rnn"](N_X, N_A, N_Y).items()}
    xt = xseq.asarray(array((N_X, M)), backend=name, dtype="float64")
    a_prev = xseq.asarray(array((N_A, M)), backend=name, dtype="float32")
    with pytest.raises(TypeError, match=re.escape("mixed dtypes: a_prev is float32 but xt is float64")):
        xseq.rnn_cell_forward(xt, a_prev, p)


@pytest.mark.parametrize("function", list(FORWARD))
def test_mixed_dtypes_input_and_parameters(function):
    x = input_name(function)
    with pytest.raises(TypeError, match=r"mixed dtypes: .* is float32 but " + x + " is float64"):
        call(function, {x: inputs(function, "float64")[x]})


@pytest.mark.parametrize("function,key", [("rnn_cell_forward", "Wya"), ("lstm_forward", "bo"), ("gru_cell_forward", "bhn")])
def test_mixed_dtypes_in_parameters(function, key):
    x = input_name(function)
    kind = FORWARD[function][1]
    good = LAYOUT[kind][key][1]
    with pytest.raises(TypeError, match=re.escape(f"mixed dtypes: {key} is float64 but {x} is float32")):
        call(function, parameters={key: array(good, "float64")})


def test_mixed_dtypes_in_backward():
    _, _, caches = call("rnn_forward")
    with pytest.raises(TypeError, match=re.escape("mixed dtypes: x is float32 but da is float64")):
        xseq.rnn_backward(array((N_A, M, T_X), "float64"), caches)
    _, _, _, cache = call("lstm_cell_forward")
    with pytest.raises(TypeError, match=re.escape("mixed dtypes: dc_next is float64 but da_next is float32")):
        xseq.lstm_cell_backward(array((N_A, M)), array((N_A, M), "float64"), cache)


@pytest.mark.parametrize("bad,kind", [([[1.0] * M] * N_X, "list"), (3.0, "float"), (None, "NoneType")])
def test_input_that_is_not_an_array(bad, kind):
    with pytest.raises(TypeError, match=re.escape(f"xt must be an array (NumPy, CuPy, PyTorch, ...); got {kind}")):
        xseq.rnn_cell_forward(bad, array((N_A, M)), INIT["rnn"](N_X, N_A, N_Y))
    with pytest.raises(TypeError, match=re.escape(f"da must be an array (NumPy, CuPy, PyTorch, ...); got {kind}")):
        xseq.rnn_backward(bad, call("rnn_forward")[-1])


# ---------------------------------------------------------------- caches

PRODUCER = {
    "rnn_cell_backward": "rnn_cell_forward", "rnn_backward": "rnn_forward",
    "lstm_cell_backward": "lstm_cell_forward", "lstm_backward": "lstm_forward",
    "gru_cell_backward": "gru_cell_forward", "gru_backward": "gru_forward",
}


def caches_of_every_forward():
    return {function: call(function)[-1] for function in FORWARD}


def backward(function, cache, **replace):
    fn = getattr(xseq, function)
    if function == "lstm_cell_backward":
        return fn(replace.get("da_next", array((N_A, M))), replace.get("dc_next", array((N_A, M))), cache)
    if function.endswith("_cell_backward"):
        return fn(replace.get("da_next", array((N_A, M))), cache)
    return fn(replace.get("da", array((N_A, M, T_X))), cache)


@pytest.mark.parametrize("function", list(PRODUCER))
def test_cache_from_the_wrong_function(function):
    caches = caches_of_every_forward()
    for producer, cache in caches.items():
        if producer == PRODUCER[function]:
            continue
        with pytest.raises(TypeError, match=re.escape(
                f"{function} needs the cache returned by {PRODUCER[function]}; got a cache from {producer}")):
            backward(function, cache)


@pytest.mark.parametrize("function", list(PRODUCER))
def test_plain_tuple_cache(function):
    own = caches_of_every_forward()[PRODUCER[function]]
    for bad, kind in ((tuple(own), "tuple"), (list(own), "list"), (None, "NoneType"), ({}, "dict")):
        with pytest.raises(TypeError, match=re.escape(
                f"{function} needs the cache returned by {PRODUCER[function]}; got a {kind}")):
            backward(function, bad)


def test_the_issue_cache_examples():
    caches = caches_of_every_forward()
    with pytest.raises(TypeError, match="rnn_backward needs the cache returned by rnn_forward; got a cache from lstm_forward"):
        xseq.rnn_backward(array((N_A, M, T_X)), caches["lstm_forward"])
    with pytest.raises(TypeError, match="lstm_cell_backward needs the cache returned by lstm_cell_forward; "
                                        "got a cache from rnn_cell_forward"):
        xseq.lstm_cell_backward(array((N_A, M)), array((N_A, M)), caches["rnn_cell_forward"])


# ---------------------------------------------------------------- upstream gradients of the wrong shape

@pytest.mark.parametrize("function", ["rnn_backward", "lstm_backward", "gru_backward"])
@pytest.mark.parametrize("shape", [(N_A, M, T_X - 1), (N_A, M, 1), (N_A, 1, T_X), (1, M, T_X), (N_A + 1, M, T_X)])
def test_sequence_gradient_of_wrong_shape(function, shape):
    cache = caches_of_every_forward()[PRODUCER[function]]
    with pytest.raises(ValueError, match=shape_message("da", shape, "(n_a, m, T_x)", (N_A, M, T_X))
                       + re.escape(f" from the caches of {PRODUCER[function]}")):
        backward(function, cache, da=array(shape))


@pytest.mark.parametrize("function", ["rnn_backward", "lstm_backward", "gru_backward"])
def test_sequence_gradient_of_wrong_rank(function):
    cache = caches_of_every_forward()[PRODUCER[function]]
    with pytest.raises(ValueError, match=re.escape(f"da has 2 dimensions, shape ({N_A}, {M}); expected 3: (n_a, m, T_x)")):
        backward(function, cache, da=array((N_A, M)))


@pytest.mark.parametrize("function", ["rnn_cell_backward", "lstm_cell_backward", "gru_cell_backward"])
@pytest.mark.parametrize("shape", [(N_A, 1), (1, M), (N_A,), (N_A, M, 1)])
def test_step_gradient_of_wrong_shape(function, shape):
    cache = caches_of_every_forward()[PRODUCER[function]]
    with pytest.raises(ValueError, match=shape_message("da_next", shape, "(n_a, m)", (N_A, M)) + " from the cache"):
        backward(function, cache, da_next=array(shape))
    if function == "lstm_cell_backward":
        with pytest.raises(ValueError, match=shape_message("dc_next", shape, "(n_a, m)", (N_A, M))):
            backward(function, cache, dc_next=array(shape))


# ---------------------------------------------------------------- initialisation and backend arguments

@pytest.mark.parametrize("kind", list(INIT))
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "5", None])
def test_init_sizes_must_be_positive_integers(kind, bad):
    with pytest.raises(ValueError, match=re.escape(f"n_a must be a positive integer; got {bad!r}")):
        INIT[kind](N_X, bad, N_Y)


@pytest.mark.parametrize("kind", list(INIT))
def test_init_dtype_and_backend(kind):
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\); got 'int32'"):
        INIT[kind](N_X, N_A, N_Y, dtype="int32")
    with pytest.raises(ValueError, match=r"backend must be one of .*; got 'jax'"):
        INIT[kind](N_X, N_A, N_Y, backend="jax")
